//! `nova serve`: open the data directory, start one pinned executor per shard, wait for a
//! signal, then shut down in order (stop accepting, drain connections, stop the mesh, flush
//! commits).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use glommio::{LocalExecutorBuilder, Placement};
use nova_core::password::HashCost;
use nova_core::IdGen;
use nova_storage::{DataDir, Partition};

use crate::config::Config;
use crate::hasher::{dummy_hash, Hasher};
use crate::limits::Limits;
use crate::mesh::{Offer, ShardMsg};
use crate::metrics::Metrics;
use crate::shard::{Notify, Shard};

/// Users kept in each shard's cache.
const USERS_CACHED_MAX: usize = 100_000;

/// Everything a shard thread is handed when it starts.
struct ShardStart {
    id: usize,
    boot_ms: u64,
    cfg: Arc<Config>,
    addr: SocketAddr,
    partition: Arc<Partition>,
    mesh: Vec<flume::Sender<ShardMsg>>,
    inbox: flume::Receiver<ShardMsg>,
    offer_to: Vec<flume::Sender<Offer>>,
    offers: flume::Receiver<Offer>,
    hasher: Hasher,
    token_key: Arc<[u8]>,
    dummy_hash: Arc<str>,
    tls: Option<futures_rustls::TlsAcceptor>,
    ready: flume::Sender<Result<(), String>>,
    media: crate::media_jobs::Media,
    push: crate::push::Push,
}

pub fn run(cfg: Config) -> anyhow::Result<()> {
    let boot_ms = crate::shard::now_ms();
    let cfg = Arc::new(cfg);
    let n = cfg.shards;
    let data = DataDir::open(&cfg.data, n)?;
    let token_key: Arc<[u8]> = data
        .secret("token.key", || nova_core::tokens::random_bytes().to_vec())?
        .into();
    let mut partitions = Vec::with_capacity(n);
    for k in 0..n {
        let path = data.shard_path(k);
        let partition = match cfg.checkpoint_ms {
            0 => Partition::open(&path, cfg.commit_batch_ops_max, cfg.commit_queue_max)?,
            ms => Partition::open_logged(
                &path,
                cfg.commit_batch_ops_max,
                cfg.commit_queue_max,
                std::time::Duration::from_millis(ms),
                &crate::replay::replay,
            )?,
        };
        partition.set_commit_linger(std::time::Duration::from_micros(cfg.commit_linger_us));
        partitions.push(Arc::new(partition));
    }
    // The VAPID key pair is made at first start and kept with the other secrets.
    let vapid = data.secret("vapid.key", nova_core::push::Vapid::generate_secret)?;
    let vapid = nova_core::push::Vapid::from_secret(&vapid).map_err(|e| {
        anyhow::anyhow!(
            "{}: {}",
            cfg.data.join("secrets/vapid.key").display(),
            e.message
        )
    })?;
    let (push, push_threads) = crate::push::start(&cfg, vapid, partitions.clone())
        .context("cannot start the push threads")?;
    // A missing or older search index is rebuilt before any shard serves.
    nova_core::search::set_segment_postings(cfg.search_segment_postings);
    crate::search_admin::ensure_indexes(&partitions, false)?;
    let tls = match (&cfg.tls_cert, &cfg.tls_key) {
        (Some(cert), Some(key)) => Some(crate::http::tls_acceptor(cert, key)?),
        _ => None,
    };
    let cost = HashCost {
        memory_kib: cfg.argon2_memory_kib,
        iterations: cfg.argon2_iterations,
    };
    let (hasher, hash_threads) = Hasher::start(cfg.hash_threads, cfg.hash_queue_max, cost)?;
    let dummy: Arc<str> = dummy_hash(cost).into();

    // Resolve the address once (port 0 becomes a real port) with a socket that is bound but
    // never listens, so that every shard then binds the same port with SO_REUSEPORT.
    let (probe, addr) = reserve_port(cfg.listen)?;

    let (senders, receivers): (Vec<_>, Vec<_>) =
        (0..n).map(|_| flume::bounded(cfg.mesh_queue_max)).unzip();
    let (offer_to, offer_inboxes): (Vec<_>, Vec<_>) =
        (0..n).map(|_| flume::bounded(cfg.mesh_queue_max)).unzip();
    let media_url_key: Arc<[u8]> = data
        .secret("media-url.key", || {
            nova_core::tokens::random_bytes().to_vec()
        })?
        .into();
    let (media, media_threads) = crate::media_jobs::Media::start(
        &cfg.data,
        media_url_key,
        &partitions,
        senders.clone(),
        crate::media_jobs::MediaSettings {
            limits: nova_media::Limits {
                pixels_max: cfg.media_pixels_max,
                side_pixels_max: nova_media::Limits::default().side_pixels_max,
                duration_ms_max: cfg.media_duration_s_max * 1000,
                frame_rate_max: f64::from(cfg.media_frame_rate_max),
                time_budget_ms: cfg.media_time_budget_s * 1000,
                codec_threads: cfg.media_codec_threads,
            },
            image_bytes_max: cfg.media_image_bytes_max,
            video_bytes_max: cfg.media_video_bytes_max,
            threads: cfg.media_threads,
            nice: cfg.media_nice,
            sched_idle: cfg.media_sched_idle,
            queue_max: cfg.media_queue_max,
        },
    )?;
    let (ready_tx, ready_rx) = flume::unbounded();
    exit_when_a_shard_panics();
    let cpus = allowed_cpus();
    let mut handles = Vec::with_capacity(n);
    for (k, (inbox, offers)) in receivers.into_iter().zip(offer_inboxes).enumerate() {
        let start = ShardStart {
            id: k,
            boot_ms,
            cfg: Arc::clone(&cfg),
            addr,
            partition: Arc::clone(&partitions[k]),
            mesh: senders.clone(),
            inbox,
            offer_to: offer_to.clone(),
            offers,
            hasher: hasher.clone(),
            token_key: Arc::clone(&token_key),
            dummy_hash: Arc::clone(&dummy),
            tls: tls.clone(),
            ready: ready_tx.clone(),
            media: media.clone(),
            push: push.clone(),
        };
        let placement = match cpus.get(k % cpus.len().max(1)) {
            Some(cpu) if cfg.pin_shards => Placement::Fixed(*cpu),
            _ => Placement::Unbound,
        };
        let mut builder = LocalExecutorBuilder::new(placement).name(&format!("nova-shard-{k}"));
        if cfg.spin_before_park_us > 0 {
            builder = builder.spin_before_park(Duration::from_micros(cfg.spin_before_park_us));
        }
        let handle = builder
            .spawn(move || shard_main(start))
            .map_err(|e| anyhow::anyhow!("cannot start shard {k}: {e}"))?;
        handles.push(handle);
    }
    drop(ready_tx);
    drop(hasher);
    drop(push);
    for _ in 0..n {
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => anyhow::bail!("a shard failed to start: {e}"),
            Err(_) => anyhow::bail!("a shard stopped during start-up"),
        }
    }
    drop(probe);
    // Before anyone can learn we are ready: a supervisor (or a test) that sends SIGTERM the
    // moment it reads "listening" must get a clean stop, not the default disposition's kill.
    let signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
    ])
    .context("cannot install signal handlers")?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!(%addr, shards = n, data = %cfg.data.display(), "ready");
    println!("nova listening on {scheme}://{addr} ({n} shards)");
    if let (Some(listen), Some(token)) = (cfg.admin_listen, cfg.admin_token.clone()) {
        let (listener, admin_addr) = crate::backup::bind_admin(listen)?;
        crate::backup::spawn_admin(
            listener,
            crate::backup::Admin {
                data_root: cfg.data.clone(),
                partitions: partitions.clone(),
                token,
                mesh: senders.clone(),
                pace: crate::backup::Pace {
                    low_priority: cfg.backup_low_priority,
                    bytes_per_s_max: cfg.backup_bytes_per_s_max,
                },
            },
        )?;
        tracing::info!(%admin_addr, "admin listener ready");
        println!("nova admin listening on http://{admin_addr}");
    }
    let _ = std::io::stdout().flush();

    wait_for_signal(signals);
    tracing::info!("shutting down: no new connections, finishing requests in flight");
    let (done_tx, done_rx) = flume::unbounded();
    for s in &senders {
        let _ = s.send(ShardMsg::Drain {
            done: done_tx.clone(),
        });
    }
    let patience = Duration::from_millis(cfg.shutdown_grace_ms) + Duration::from_secs(2);
    for _ in 0..n {
        if done_rx.recv_timeout(patience).is_err() {
            tracing::warn!("a shard did not drain in time");
            break;
        }
    }
    for s in &senders {
        let _ = s.send(ShardMsg::Exit);
    }
    for h in handles {
        if let Err(e) = h.join() {
            tracing::error!(error = %e, "a shard ended with an error");
        }
    }
    drop(senders);
    // Before the partitions close: a push thread may be deleting a gone subscription.
    push_threads.stop();
    for p in &partitions {
        p.close();
    }
    hash_threads.join();
    drop(media);
    media_threads.join();
    tracing::info!("stopped cleanly");
    Ok(())
}

/// A shard that panicked is gone with its users, its mesh inbox and its listener, which the
/// kernel still hands connections to (they would hang): the process exits instead (status
/// 70), for its supervisor to start it again. What was answered is durable; a start after
/// this is a start after a crash.
fn exit_when_a_shard_panics() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        let thread = std::thread::current();
        if thread.name().is_some_and(|n| n.starts_with("nova-shard-")) {
            tracing::error!(
                thread = thread.name().unwrap_or_default(),
                "a shard panicked; exiting for a restart"
            );
            eprintln!("nova: a shard panicked ({info}); exiting for a restart");
            std::process::exit(70);
        }
    }));
}

fn reserve_port(listen: SocketAddr) -> anyhow::Result<(socket2::Socket, SocketAddr)> {
    use socket2::{Domain, Socket, Type};
    // SO_REUSEPORT would let this process share a port another server listens on (the
    // kernel would then split the connections between the two): a bind without it first
    // finds the port taken.
    // That bind also fails while connections of a process that died (kill -9) linger on the
    // port (FIN-WAIT-2, up to a minute); then only a listening socket counts as taken.
    if listen.port() != 0 {
        let alone = Socket::new(Domain::for_address(listen), Type::STREAM, None)?;
        alone.set_reuse_address(true)?;
        if let Err(e) = alone.bind(&listen.into()) {
            if e.kind() != std::io::ErrorKind::AddrInUse || listening_on(listen.port()) {
                return Err(e)
                    .with_context(|| format!("cannot bind {listen} (is another server on it?)"));
            }
            tracing::info!(%listen, "port held by lingering connections only; binding");
        }
    }
    let socket = Socket::new(Domain::for_address(listen), Type::STREAM, None)?;
    socket.set_reuse_port(true)?;
    socket.set_reuse_address(true)?;
    socket
        .bind(&listen.into())
        .with_context(|| format!("cannot bind {listen}"))?;
    let addr = socket
        .local_addr()?
        .as_socket()
        .context("not an IP socket")?;
    Ok((socket, addr))
}

/// Does any TCP socket on this machine listen on `port` (any address, IPv4 or IPv6)? Read
/// from `/proc/net/tcp{,6}`; when neither can be read, yes (the bind is refused as before).
fn listening_on(port: u16) -> bool {
    let tables: Vec<String> = ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|path| std::fs::read_to_string(path).ok())
        .collect();
    tables.is_empty() || tables.iter().any(|t| listens_in(t, port))
}

/// Is there a `LISTEN` row (state `0A`) for `port` in a `/proc/net/tcp`-style table?
fn listens_in(table: &str, port: u16) -> bool {
    let port = format!("{port:04X}");
    table.lines().skip(1).any(|line| {
        let mut fields = line.split_whitespace();
        let local = fields.nth(1).unwrap_or("");
        let state = fields.nth(1).unwrap_or("");
        state == "0A" && local.rsplit_once(':').is_some_and(|(_, p)| p == port)
    })
}

/// The CPUs this process may run on (respecting taskset/cgroups), in order.
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity fills it for this process.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|c| libc::CPU_ISSET(*c, &set))
            .collect()
    }
}

fn wait_for_signal(mut signals: signal_hook::iterator::Signals) {
    if let Some(sig) = signals.forever().next() {
        tracing::info!(signal = sig, "signal received");
    }
}

async fn shard_main(start: ShardStart) {
    let ShardStart {
        id,
        boot_ms,
        cfg,
        addr,
        partition,
        mesh,
        inbox,
        offer_to,
        offers,
        hasher,
        token_key,
        dummy_hash,
        tls,
        ready,
        media,
        push,
    } = start;
    let listener = match glommio::net::TcpListener::bind(addr) {
        Ok(l) => l,
        Err(e) => {
            let _ = ready.send(Err(format!("shard {id} cannot listen on {addr}: {e}")));
            return;
        }
    };
    let mail = match crate::mail::Mail::start(&cfg, id) {
        Ok(m) => m,
        Err(e) => {
            let _ = ready.send(Err(format!("shard {id} cannot start its mailer: {e:#}")));
            return;
        }
    };
    let inbox_len = {
        let inbox = inbox.clone();
        Box::new(move || inbox.len())
    };
    let shard = Rc::new(Shard {
        id,
        boot_ms,
        shards: cfg.shards,
        limits: Limits::new(&cfg),
        cfg: Arc::clone(&cfg),
        partition,
        ids: RefCell::new(IdGen::new(id)),
        mesh,
        inbox_len,
        offer_to,
        offers,
        hasher,
        token_key,
        dummy_hash,
        metrics: Metrics::default(),
        open_connections: Cell::new(0),
        revoked: RefCell::new(HashMap::new()),
        users: RefCell::new(quick_cache::unsync::Cache::new(USERS_CACHED_MAX)),
        names: RefCell::new(quick_cache::unsync::Cache::new(USERS_CACHED_MAX)),
        ext_ids: RefCell::new(quick_cache::unsync::Cache::new(USERS_CACHED_MAX)),
        request_seq: Cell::new(0),
        relay: crate::social::Relay::default(),
        feeds: crate::feeds::Feeds::new(cfg.post_cache_mib << 20),
        streams: crate::stream::Streams::default(),
        typing: crate::messaging::Typing::default(),
        sending: crate::messaging::Sending::default(),
        draining: Notify::default(),
        mail,
        media,
        fresh: crate::notify::Fresh::default(),
        push,
        moderation: crate::moderation::Moderation::default(),
        account: crate::account::Accounts::default(),
    });
    shard.fresh.listen(Box::new(crate::push::on_fresh));
    shard
        .fresh
        .listen(Box::new(crate::stream::on_fresh_notifications));
    // The mesh must be served before recovery broadcasts, or two shards could wait on each
    // other's full inboxes.
    let accept_slot: AcceptSlot = Rc::new(RefCell::new(None));
    if let Err(e) = shard.index_muters().await {
        let _ = ready.send(Err(format!("shard {id} could not index its mutes: {e}")));
        return;
    }
    glommio::spawn_local(serve_offers(Rc::clone(&shard))).detach();
    let mesh_loop = glommio::spawn_local(serve_mesh(
        Rc::clone(&shard),
        inbox,
        Rc::clone(&accept_slot),
    ));
    if let Err(e) = shard.recover().await {
        let _ = ready.send(Err(format!("shard {id} recovery failed: {e}")));
        return;
    }
    let accept = glommio::spawn_local(crate::http::accept_loop(Rc::clone(&shard), listener, tls));
    *accept_slot.borrow_mut() = Some(accept);
    glommio::spawn_local(Rc::clone(&shard).housekeeping()).detach();
    glommio::spawn_local(Rc::clone(&shard).digest_loop()).detach();
    glommio::spawn_local(Rc::clone(&shard).relay_loop()).detach();
    glommio::spawn_local(crate::mail::run(Rc::clone(&shard))).detach();
    glommio::spawn_local(crate::media_jobs::requeue_loop(Rc::clone(&shard))).detach();
    glommio::spawn_local(Rc::clone(&shard).sweep_loop()).detach();
    glommio::spawn_local(Rc::clone(&shard).warm_heads()).detach();
    glommio::spawn_local(Rc::clone(&shard).indexer_loop()).detach();
    glommio::spawn_local(Rc::clone(&shard).erasure_loop()).detach();
    let _ = ready.send(Ok(()));
    mesh_loop.await;
}

/// Takes offers as they arrive. A home feed served here, or a message from the inbox, takes
/// the ones waiting first, wherever this task is.
async fn serve_offers(shard: Rc<Shard>) {
    while let Ok(Offer { from, events }) = shard.offers.recv_async().await {
        shard.offer(from, events);
        shard.take_offers();
    }
}

/// The shard's accept task, awaited when the shard drains.
type AcceptSlot = Rc<RefCell<Option<glommio::Task<()>>>>;

/// Serves operations other shards send, each in its own task (an argon2 verify must not hold
/// up the next message); at most `mesh_queue_max` run at once.
async fn serve_mesh(shard: Rc<Shard>, inbox: flume::Receiver<ShardMsg>, accept_slot: AcceptSlot) {
    let in_flight = Rc::new(glommio::sync::Semaphore::new(
        shard.cfg.mesh_queue_max as u64,
    ));
    while let Ok(msg) = inbox.recv_async().await {
        // Offers sent before this message are taken first (see `mesh::Offer`).
        shard.take_offers();
        match msg {
            ShardMsg::Call { op, deadline } => {
                let Ok(permit) = in_flight.acquire_static_permit(1).await else {
                    break;
                };
                let shard = Rc::clone(&shard);
                glommio::spawn_local(async move {
                    shard.serve(op, deadline).await;
                    drop(permit);
                })
                .detach();
            }
            ShardMsg::Revoked { sessions } => shard.note_revoked(&sessions),
            ShardMsg::Drain { done } => {
                shard.draining.fire();
                shard.mail.wake();
                let accept = accept_slot.borrow_mut().take();
                let id = shard.id;
                let mail_shard = Rc::clone(&shard);
                glommio::spawn_local(async move {
                    if let Some(accept) = accept {
                        accept.await;
                    }
                    // Outcomes of emails being sent are recorded before the shard stops.
                    mail_shard.mail.stopped.wait().await;
                    let _ = done.send(id);
                })
                .detach();
            }
            ShardMsg::Exit => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::listens_in;

    #[test]
    fn a_listening_row_is_told_from_lingering_connections() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 0100007F:A2C4 05 00000000:00000000 00:00000000 00000000     0        0 0 1 0000000000000000 20 4 0 10 -1
   1: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0000000000000000 100 0 0 10 0
";
        // 0x1F90 = 8080 is only in FIN-WAIT-2 (05); 0x16 = 22 listens.
        assert!(!listens_in(table, 8080));
        assert!(listens_in(table, 22));
        assert!(!listens_in(table, 0x16 * 16));
        let v6 = "  sl  local_address                         remote_address                        st
   0: 00000000000000000000000000000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000
";
        assert!(listens_in(v6, 8080));
        assert!(!listens_in("", 8080));
    }
}
