#!/usr/bin/env bash
# Online backup speed, and what a backup costs the requests served meanwhile (issue 7):
# builds a data dir with a database of imported posts (`nova admin import-posts`) and media
# uploaded through the API (random-noise JPEGs, so no two share a blob), starts Nova with its
# admin listener, measures a database-reading route's latency at a fixed rate, then measures
# it again while `nova admin backup --server` copies everything, and prints the backup's
# MB/s next to both p99s. docs/benchmarks.md records results.
#
# Environment knobs:
#   BACKUP_POSTS=N      imported posts (default 1,000,000)
#   BACKUP_USERS=N      imported accounts (default 1,000)
#   BACKUP_IMAGES=N     uploaded images of ~6 MB each (default 40)
#   BACKUP_RATE=R       requests/s of the measured load (default 1,000)
#   BACKUP_SECONDS=S    measured seconds of load before the backup (default 10)
#   BACKUP_ROUNDS=N     backups taken, each with its own load run (default 3)
#   BACKUP_DIR=D        where the data dir and the backups go (default a new dir under
#                       target/, on the same disk as a real deployment's data dir would be)
#   BACKUP_COMPARE=BIN  another `nova` binary (an older build, say) to measure in the same
#                       run on the same data dir: the server is restarted with each binary in
#                       turn, BIN first, and every row names its binary
#   BACKUP_PASSES=N     with BACKUP_COMPARE: how many times each binary takes its turn
#                       (default 2, alternating, so a change in the machine's load hits both)
#   BACKUP_FLAGS=...    extra `nova serve` flags for this build's server (not the compared
#                       one), e.g. "--backup-low-priority false"
#   BENCH_NO_BUILD=1    use the binaries already in target/release
#
# Every row carries the machine's 1-minute load average at its end (other work on a shared
# machine slows the backup and the requests alike).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

posts=${BACKUP_POSTS:-1000000}
users=${BACKUP_USERS:-1000}
images=${BACKUP_IMAGES:-40}
rate=${BACKUP_RATE:-1000}
seconds=${BACKUP_SECONDS:-10}
rounds=${BACKUP_ROUNDS:-3}
target=${CARGO_TARGET_DIR:-target}
nova=$target/release/nova
bench=$target/release/nova-bench
addr=127.0.0.1:18095
admin=127.0.0.1:18096
url=http://$addr
token=bench-backup-admin-token

if [[ -z ${BENCH_NO_BUILD:-} ]]; then
    cargo build --release -p nova-shards -p nova-bench
fi
command -v ffmpeg >/dev/null || { echo "bench-backup: needs the ffmpeg command (make deps)" >&2; exit 1; }

if [[ -n ${BACKUP_DIR:-} ]]; then
    work=$BACKUP_DIR/nova-bench-backup
    rm -rf "$work"
else
    work=$(mktemp -d -p "$target" bench-backup.XXXXXX)
fi
mkdir -p "$work"
data=$work/data
server_pid=""

# shellcheck disable=SC2317  # called by the trap
cleanup() {
    if [[ -n $server_pid ]] && kill -0 "$server_pid" 2>/dev/null; then
        kill -TERM "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT
calc() { awk "BEGIN { print $1 }"; }

echo "bench-backup: importing $posts posts by $users accounts into $data"
start_s=$(date +%s.%N)
"$nova" admin import-posts --data-dir "$data" --shards 2 --users "$users" --posts "$posts" \
    --password password >/dev/null
echo "bench-backup: imported in $(calc "$(date +%s.%N) - $start_s") s"

serve() {
    local extra=()
    if [[ $1 == "$nova" && -n ${BACKUP_FLAGS:-} ]]; then
        read -r -a extra <<<"$BACKUP_FLAGS"
    fi
    "$1" serve --data "$data" --listen "$addr" --shards 2 --admin-listen "$admin" \
        --admin-token "$token" --log warn "${extra[@]}" >"$work/server.out" 2>"$work/server.err" &
    server_pid=$!
    for _ in $(seq 1200); do
        grep -q "nova listening on" "$work/server.out" && break
        if ! kill -0 "$server_pid" 2>/dev/null; then
            echo "bench-backup: the server exited:" >&2
            cat "$work/server.err" >&2
            exit 1
        fi
        sleep 0.1
    done
    grep -q "nova listening on" "$work/server.out" || { echo "bench-backup: no server" >&2; exit 1; }
}
stop_server() {
    kill -TERM "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
    server_pid=""
}
serve "$nova"

bearer=$("$bench" login --url "$url")
auth="Authorization: Bearer $bearer"

echo "bench-backup: uploading $images images"
ids=()
for i in $(seq "$images"); do
    head -c $((2400 * 1600 * 3)) /dev/urandom |
        ffmpeg -hide_banner -loglevel error -f rawvideo -pix_fmt rgb24 -s 2400x1600 -i - \
            -q:v 1 -y "$work/noise.jpg"
    id=$(curl -sf -H "$auth" -H 'Content-Type: image/jpeg' --data-binary @"$work/noise.jpg" \
        "$url/v1/media" | sed -n 's/.*"id":"\([0-9]*\)".*/\1/p')
    [[ -n $id ]] || { echo "bench-backup: upload $i refused" >&2; exit 1; }
    ids+=("$id")
done
# Processing would compete with the measured requests: wait until every upload is done.
for id in "${ids[@]}"; do
    for _ in $(seq 600); do
        state=$(curl -sf -H "$auth" "$url/v1/media/$id" | sed -n 's/.*"state":"\([a-z]*\)".*/\1/p')
        [[ $state == ready || $state == failed ]] && break
        sleep 0.2
    done
done
rm -f "$work/noise.jpg"
db_bytes=$(du -cb "$data"/shard-*.redb | tail -1 | cut -f1)
media_bytes=$(du -sb "$data/media" 2>/dev/null | cut -f1 || echo 0)
echo "bench-backup: data dir: database $((db_bytes / 1000000)) MB, media $((media_bytes / 1000000)) MB"

# The measured route reads the database: the first imported account's posts.
author=$(curl -sf -H "$auth" "$url/v1/users/@user0" | sed -n 's/.*"id":"\([0-9]*\)".*/\1/p')
route="$url/v1/users/$author/posts?limit=20"

load() {
    "$bench" load --url "$route" --header "$auth" --rate "$rate" --duration "$1" \
        --connections 16 --no-spin --server-pid "$server_pid"
}
p99() { sed -n 's/.* p99 \([0-9.]*\) .*/\1/p' <<<"$1" | head -1; }

backup() {
    local dest=$work/backup-$1 t0 t1 out
    t0=$(date +%s.%N)
    out=$("$nova" admin backup "$dest" --server "http://$admin" --admin-token "$token")
    t1=$(date +%s.%N)
    echo "  nova admin backup: $out" >&2
    bytes=$(du -sb "$dest" | cut -f1)
    files=$(find "$dest" -type f | wc -l)
    secs=$(calc "$t1 - $t0")
    rm -rf "$dest"
}

loadavg() { cut -d' ' -f1 /proc/loadavg; }

# One binary's turn: round 0 is the backup alone, which also sizes the load window of the
# measured rounds.
turn() {
    local label=$1 window round before during
    backup 0
    printf '%-8s %-6s %10.2f %10d %10.0f %10d %14s %14s %8s\n' "$label" 0 "$secs" \
        $((bytes / 1000000)) "$(calc "$bytes / 1000000 / $secs")" "$files" - - "$(loadavg)"
    window=$(calc "int($secs + 0.999)")
    for round in $(seq "$rounds"); do
        before=$(load "$seconds")
        # The load's measured window starts after its 1 s warmup; so does the backup.
        load "$window" >"$work/during.out" 2>&1 &
        load_pid=$!
        sleep 1
        backup "$round"
        wait "$load_pid"
        during=$(cat "$work/during.out")
        printf '%-8s %-6s %10.2f %10d %10.0f %10d %14s %14s %8s\n' "$label" "$round" "$secs" \
            $((bytes / 1000000)) "$(calc "$bytes / 1000000 / $secs")" "$files" \
            "$(p99 "$before")" "$(p99 "$during")" "$(loadavg)"
    done
}

printf '%-8s %-6s %10s %10s %10s %10s %14s %14s %8s\n' binary round seconds MB MB_per_s files \
    p99_before_ms p99_during_ms loadavg
if [[ -z ${BACKUP_COMPARE:-} ]]; then
    turn this
else
    for _ in $(seq "${BACKUP_PASSES:-2}"); do
        for which in compare this; do
            stop_server
            if [[ $which == compare ]]; then serve "$BACKUP_COMPARE"; else serve "$nova"; fi
            turn "$which"
        done
    done
fi
