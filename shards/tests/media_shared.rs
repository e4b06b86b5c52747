//! Proves that identical media uploaded by users on different shards is stored once (2 shards,
//! real `nova` process): both media are ready and served byte-identical while every blob
//! (original and renditions) is one file on disk, linked from both shard stores and the shared
//! store; deleting one user's media keeps the other's served, deleting the second frees the
//! bytes everywhere; a tus upload shares like a plain one; a SIGKILL and the crash leftovers
//! of every step (shared names alone, shard names not committed, temp files, separate copies
//! from before sharing) are cleaned and shared by the start-up sweep, nothing acknowledged
//! lost; a backup holds shared content once and restores to a working, shared data dir.

// Helpers outside `#[test]` functions panic to fail the test, like the tests themselves.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use sha2::{Digest, Sha256};

const READY_TIMEOUT: Duration = Duration::from_secs(180);

fn sha(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A 640x480 JPEG test pattern (made with the ffmpeg command); `seed` changes its content.
fn photo(dir: &Path, seed: u32) -> Vec<u8> {
    let path = dir.join(format!("photo-{seed}.jpg"));
    let out = Command::new("ffmpeg")
        .args([
            "-hide_banner",
            "-loglevel",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
        ])
        .arg(format!("testsrc2=s=640x480:r=1:d=1,hue=h={seed}"))
        .args(["-frames:v", "1", "-q:v", "3"])
        .arg(&path)
        .output()
        .expect("the ffmpeg command (Debian package ffmpeg) is needed by these tests");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read(&path).unwrap()
}

fn upload(server: &Server, m: &Member, bytes: &[u8]) -> u64 {
    let r = server.req(
        &Req::post("/v1/media")
            .bearer(&m.token)
            .raw("application/octet-stream", bytes.to_vec())
            .timeout(Duration::from_secs(60)),
    );
    r.expect(202);
    r.str("media.id").parse().unwrap()
}

/// The same through tus: create, one PATCH with every byte; the media id it became.
fn upload_tus(server: &Server, m: &Member, bytes: &[u8]) -> u64 {
    let created = server.req(
        &Req::post("/v1/uploads")
            .bearer(&m.token)
            .header("Tus-Resumable", "1.0.0")
            .header("Upload-Length", &bytes.len().to_string()),
    );
    created.expect(201);
    let location = created.header("location").unwrap().to_string();
    let done = server.req(
        &Req::new("PATCH", &location)
            .bearer(&m.token)
            .header("Tus-Resumable", "1.0.0")
            .header("Upload-Offset", "0")
            .raw("application/offset+octet-stream", bytes.to_vec())
            .timeout(Duration::from_secs(60)),
    );
    done.expect(204);
    done.header("nova-media-id").unwrap().parse().unwrap()
}

fn wait_ready(server: &Server, m: &Member, id: u64) -> Resp {
    let started = Instant::now();
    loop {
        let r = server.get(&format!("/v1/media/{id}"), m.auth());
        r.expect(200);
        match r.str("media.state") {
            "ready" => return r,
            "failed" => panic!("media {id} failed: {}", r.text()),
            _ => {}
        }
        assert!(
            started.elapsed() < READY_TIMEOUT,
            "media {id}: {}",
            r.text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Every rendition of a ready media, downloaded: name -> bytes.
fn downloads(server: &Server, media: &Resp) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for r in media.at("media.renditions").as_array().unwrap() {
        let name = r.get("name").unwrap().as_str().unwrap().to_string();
        let got = server.req(&Req::get(r.get("url").unwrap().as_str().unwrap()));
        got.expect(200);
        out.insert(name, got.body.clone());
    }
    assert!(!out.is_empty(), "no renditions: {}", media.text());
    out
}

/// One file under `<data>/media`: where, its name, inode and link count.
#[derive(Debug, Clone)]
struct Stored {
    path: PathBuf,
    name: String,
    inode: u64,
    links: u64,
    bytes: u64,
}

/// Every blob-named file under `dir` (any store, any depth).
fn stored(dir: &Path) -> Vec<Stored> {
    let mut out = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            if meta.is_dir() {
                dirs.push(path);
                continue;
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit()) {
                out.push(Stored {
                    path,
                    name,
                    inode: meta.ino(),
                    links: meta.nlink(),
                    bytes: meta.len(),
                });
            }
        }
    }
    out
}

fn named<'a>(files: &'a [Stored], name: &str) -> Vec<&'a Stored> {
    files.iter().filter(|f| f.name == name).collect()
}

/// Where each file of `name` is, relative to `<data>/media` ("shard-0", "blobs", ...).
fn stores_of(files: &[Stored], media: &Path, name: &str) -> BTreeSet<String> {
    named(files, name)
        .iter()
        .map(|f| {
            let rel = f.path.strip_prefix(media).unwrap();
            rel.components()
                .next()
                .unwrap()
                .as_os_str()
                .to_string_lossy()
                .into_owned()
        })
        .collect()
}

/// Bytes of the blob files: counted per name (what one copy per shard would take) and per
/// distinct inode (what the disk holds).
fn bytes_on_disk(files: &[Stored]) -> (u64, u64) {
    let per_shard_name: u64 = files
        .iter()
        .filter(|f| !f.path.to_string_lossy().contains("/media/blobs/"))
        .map(|f| f.bytes)
        .sum();
    let inodes: BTreeMap<u64, u64> = files.iter().map(|f| (f.inode, f.bytes)).collect();
    (per_shard_name, inodes.values().sum())
}

/// Requires every file of each of `names` to be one inode linked from exactly `want` stores
/// (and nothing else), the link count saying so.
fn check_shared(media: &Path, names: &BTreeSet<String>, want: &[&str]) {
    let files = stored(media);
    for name in names {
        let these = named(&files, name);
        let inodes: BTreeSet<u64> = these.iter().map(|f| f.inode).collect();
        assert_eq!(inodes.len(), 1, "{name}: {these:#?}");
        let stores = stores_of(&files, media, name);
        let want: BTreeSet<String> = want.iter().map(|s| s.to_string()).collect();
        assert_eq!(stores, want, "{name}: {these:#?}");
        assert_eq!(these[0].links, want.len() as u64, "{name}: {these:#?}");
    }
}

/// The blob names of a ready media: its original and every rendition.
fn blob_names(original: &[u8], served: &BTreeMap<String, Vec<u8>>) -> BTreeSet<String> {
    let mut names: BTreeSet<String> = served.values().map(|b| sha(b)).collect();
    names.insert(sha(original));
    names
}

#[test]
fn identical_uploads_on_two_shards_are_one_file_until_both_are_deleted() {
    let server = Server::start(&[]);
    let scratch = tempfile::tempdir().unwrap();
    let media = server.launch().data_dir().join("media");
    let a = server.member_on_shard(0);
    let b = server.member_on_shard(1);
    let bytes = photo(scratch.path(), 0);

    let id_a = upload(&server, &a, &bytes);
    let id_b = upload(&server, &b, &bytes);
    let ready_a = wait_ready(&server, &a, id_a);
    let ready_b = wait_ready(&server, &b, id_b);
    let served_a = downloads(&server, &ready_a);
    let served_b = downloads(&server, &ready_b);
    assert_eq!(served_a, served_b, "renditions differ between the shards");
    let names = blob_names(&bytes, &served_a);
    assert!(names.len() >= 3, "original and renditions: {names:?}");

    // On disk: each blob is one inode, named in both shard stores and the shared store.
    check_shared(&media, &names, &["blobs", "shard-0", "shard-1"]);
    let (per_shard, inodes) = bytes_on_disk(&stored(&media));
    eprintln!(
        "2 identical uploads on 2 shards: {per_shard} bytes of shard names, {inodes} bytes on disk"
    );
    assert_eq!(per_shard, 2 * inodes);
    // The quota stays each user's own.
    for m in [&a, &b] {
        let me = server.get("/v1/me", m.auth());
        let used = me.at("user.media.used_bytes").as_u64().unwrap();
        assert_eq!(used, inodes, "{}", me.text());
    }

    // A third upload of the same bytes through tus, on shard 0: nothing new on disk.
    let a2 = server.member_on_shard(0);
    let id_t = upload_tus(&server, &a2, &bytes);
    let ready_t = wait_ready(&server, &a2, id_t);
    assert_eq!(downloads(&server, &ready_t), served_a);
    check_shared(&media, &names, &["blobs", "shard-0", "shard-1"]);
    server
        .req(&Req::new("DELETE", &format!("/v1/media/{id_t}")).bearer(&a2.token))
        .expect(204);
    check_shared(&media, &names, &["blobs", "shard-0", "shard-1"]);

    // Deleting shard 0's media: shard 1's is still served, from the same bytes.
    server
        .req(&Req::new("DELETE", &format!("/v1/media/{id_a}")).bearer(&a.token))
        .expect(204);
    server
        .get(&format!("/v1/media/{id_a}"), a.auth())
        .expect(404);
    assert_eq!(downloads(&server, &wait_ready(&server, &b, id_b)), served_b);
    check_shared(&media, &names, &["blobs", "shard-1"]);

    // Deleting the last one frees the bytes everywhere (the 204 comes after the files go).
    server
        .req(&Req::new("DELETE", &format!("/v1/media/{id_b}")).bearer(&b.token))
        .expect(204);
    let left = stored(&media);
    assert!(left.is_empty(), "blobs left: {left:#?}");
}

#[test]
fn sigkill_and_crash_leftovers_are_swept_and_shared_at_start_up() {
    let mut server = Server::start(&[]);
    let scratch = tempfile::tempdir().unwrap();
    let media = server.launch().data_dir().join("media");
    let a = server.member_on_shard(0);
    let b = server.member_on_shard(1);
    let bytes = photo(scratch.path(), 90);

    // Two acknowledged uploads of the same bytes, then SIGKILL at once (processing may be
    // anywhere: renditions placed but not committed are crash leftovers too).
    let id_a = upload(&server, &a, &bytes);
    let id_b = upload(&server, &b, &bytes);
    server.kill9();

    // What a crash at each other step leaves behind, made by hand:
    let original = sha(&bytes);
    let plant = |dir: &str, content: &[u8]| -> PathBuf {
        let id = sha(content);
        let path = media.join(dir).join(&id[..2]).join(&id);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, content).unwrap();
        path
    };
    // - a shared name alone (its temp file's other name was in tmp, emptied at start-up);
    let lone = plant(
        "blobs",
        b"placed in the shared store, never named in a shard",
    );
    // - a shard name and its shared name, the reference never committed;
    let uncommitted = plant("shard-1", b"linked, never committed");
    let uncommitted_shared = media
        .join("blobs")
        .join(uncommitted.strip_prefix(media.join("shard-1")).unwrap());
    std::fs::create_dir_all(uncommitted_shared.parent().unwrap()).unwrap();
    std::fs::hard_link(&uncommitted, &uncommitted_shared).unwrap();
    // - a temp file;
    let temp = media.join("shard-0/tmp/1-0-upload");
    std::fs::write(&temp, &bytes).unwrap();
    // - a rendition in its work directory that already has its shared name;
    let work = media.join("shard-0/tmp/1-1-work");
    std::fs::create_dir_all(&work).unwrap();
    let rendition = b"a rendition being placed";
    std::fs::write(work.join("thumb.jpg"), rendition).unwrap();
    let rendition_shared = media
        .join("blobs")
        .join(&sha(rendition)[..2])
        .join(sha(rendition));
    std::fs::create_dir_all(rendition_shared.parent().unwrap()).unwrap();
    std::fs::hard_link(work.join("thumb.jpg"), &rendition_shared).unwrap();
    // - the committed original as two separate copies and no shared name (a data dir from
    //   before sharing, or a crash that lost the shared name's directory entry).
    for k in 0..2 {
        let path = media
            .join(format!("shard-{k}"))
            .join(&original[..2])
            .join(&original);
        assert!(path.exists(), "acknowledged upload not in shard-{k}");
        let copy = path.with_extension("copy");
        std::fs::write(&copy, &bytes).unwrap();
        std::fs::rename(&copy, &path).unwrap();
    }
    let _ = std::fs::remove_file(media.join("blobs").join(&original[..2]).join(&original));
    let files = stored(&media);
    assert_eq!(
        named(&files, &original)
            .iter()
            .map(|f| f.inode)
            .collect::<BTreeSet<_>>()
            .len(),
        2
    );

    server.restart();
    // Nothing acknowledged is lost: both are processed, served byte-identical.
    let ready_a = wait_ready(&server, &a, id_a);
    let ready_b = wait_ready(&server, &b, id_b);
    let served = downloads(&server, &ready_a);
    assert_eq!(downloads(&server, &ready_b), served);
    let names = blob_names(&bytes, &served);
    // Every blob one file again; the leftovers gone; nothing else under media.
    check_shared(&media, &names, &["blobs", "shard-0", "shard-1"]);
    for gone in [
        &lone,
        &uncommitted,
        &uncommitted_shared,
        &temp,
        &work,
        &rendition_shared,
    ] {
        assert!(!gone.exists(), "{} survived the sweep", gone.display());
    }
    let all: BTreeSet<String> = stored(&media).into_iter().map(|f| f.name).collect();
    assert_eq!(all, names, "orphans left after the start-up sweep");
}

#[test]
fn account_erasure_frees_only_the_bytes_no_one_else_uses() {
    let server = Server::start(&[]);
    let scratch = tempfile::tempdir().unwrap();
    let media = server.launch().data_dir().join("media");
    let a = server.member_on_shard(0);
    let b = server.member_on_shard(1);
    let bytes = photo(scratch.path(), 300);
    let id_a = upload(&server, &a, &bytes);
    let id_b = upload(&server, &b, &bytes);
    wait_ready(&server, &a, id_a);
    let served = downloads(&server, &wait_ready(&server, &b, id_b));
    let names = blob_names(&bytes, &served);
    check_shared(&media, &names, &["blobs", "shard-0", "shard-1"]);

    // Erasing shard 0's user: its names go (the erasure runs after the 204), shard 1's
    // media stays served from the same bytes.
    let gone = |m: &Member, want: &[&str]| {
        server
            .call(
                "DELETE",
                "/v1/me",
                m.auth(),
                Some(simd_json::json!({"password": m.user.password.clone()})),
            )
            .expect(204);
        let want: BTreeSet<String> = want.iter().map(|s| s.to_string()).collect();
        let settled = wait_until(Duration::from_secs(30), || {
            let files = stored(&media);
            names.iter().all(|n| stores_of(&files, &media, n) == want)
        });
        assert!(settled, "after erasure: {:#?}", stored(&media));
    };
    gone(&a, &["blobs", "shard-1"]);
    check_shared(&media, &names, &["blobs", "shard-1"]);
    assert_eq!(downloads(&server, &wait_ready(&server, &b, id_b)), served);
    gone(&b, &[]);
    let left = stored(&media);
    assert!(left.is_empty(), "blobs left: {left:#?}");
}

fn nova(args: &[&str]) -> std::process::Output {
    let out = Command::new(env!("CARGO_BIN_EXE_nova"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "nova {args:?}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn a_backup_holds_shared_content_once_and_restores_shared() {
    let mut server = Server::start(&[]);
    let scratch = tempfile::tempdir().unwrap();
    let a = server.member_on_shard(0);
    let b = server.member_on_shard(1);
    let bytes = photo(scratch.path(), 200);
    let id_a = upload(&server, &a, &bytes);
    let id_b = upload(&server, &b, &bytes);
    let served = downloads(&server, &wait_ready(&server, &a, id_a));
    assert_eq!(downloads(&server, &wait_ready(&server, &b, id_b)), served);
    let names = blob_names(&bytes, &served);
    server.stop();

    // The backup names each blob in both shards, one file; the shared store is not in it.
    let backup = scratch.path().join("backup");
    let data = server.launch().data_dir();
    nova(&[
        "admin",
        "backup",
        backup.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    nova(&["admin", "verify", backup.to_str().unwrap()]);
    let in_backup = stored(&backup.join("media"));
    for name in &names {
        let these = named(&in_backup, name);
        assert_eq!(these.len(), 2, "{name}: {these:#?}");
        assert_eq!(these[0].inode, these[1].inode, "{name} copied twice");
    }
    assert!(!backup.join("media/blobs").exists());

    // Restored into a new data dir and started: served as before, the bytes shared again.
    let launch = Launch::new();
    let restored_media = launch.data_dir().join("media");
    nova(&[
        "admin",
        "restore",
        backup.to_str().unwrap(),
        "--data-dir",
        launch.data_dir().to_str().unwrap(),
    ]);
    let restored = launch.start();
    let a = Member {
        token: restored.login(&a.user.username, &a.user.password).access,
        ..a
    };
    let b = Member {
        token: restored.login(&b.user.username, &b.user.password).access,
        ..b
    };
    assert_eq!(
        downloads(&restored, &wait_ready(&restored, &a, id_a)),
        served
    );
    assert_eq!(
        downloads(&restored, &wait_ready(&restored, &b, id_b)),
        served
    );
    check_shared(&restored_media, &names, &["blobs", "shard-0", "shard-1"]);
    for (m, id) in [(&a, id_a), (&b, id_b)] {
        restored
            .req(&Req::new("DELETE", &format!("/v1/media/{id}")).bearer(&m.token))
            .expect(204);
    }
    let left = stored(&restored_media);
    assert!(left.is_empty(), "blobs left: {left:#?}");
}
