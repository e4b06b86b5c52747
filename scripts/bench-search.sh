#!/usr/bin/env bash
# Nova's search benchmark (issue 6): a corpus of synthetic posts written straight into a
# data directory (`nova admin import-posts`, 1,000,000 posts by default), the index built
# offline and timed (`nova admin reindex`: posts/s), then a 2-shard server answering
# two-word post queries open-loop at a fixed rate (`nova-search`: p50/p99, achieved rate).
# Server and generator share this machine's cores. docs/benchmarks.md records results.
#
# Environment knobs:
#   SEARCH_POSTS=N      posts in the corpus (default 1000000)
#   SEARCH_USERS=N      accounts (default 1000)
#   SEARCH_RATE=R       queries per second (default 1000)
#   SEARCH_DURATION_S=S measured seconds per run (default 20)
#   SEARCH_RUNS=N       query runs (and index builds) to take medians of (default 3)
#   SEARCH_DATA=DIR     where the corpus lives (default target/bench-search-data); it is
#                       made once and reused
#   BENCH_NO_BUILD=1    use the binaries already in target/release
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

posts=${SEARCH_POSTS:-1000000}
users=${SEARCH_USERS:-1000}
rate=${SEARCH_RATE:-1000}
duration=${SEARCH_DURATION_S:-20}
runs=${SEARCH_RUNS:-3}
data=${SEARCH_DATA:-${CARGO_TARGET_DIR:-target}/bench-search-data}
addr=127.0.0.1:18090
nova=${CARGO_TARGET_DIR:-target}/release/nova
bench=${CARGO_TARGET_DIR:-target}/release/nova-search

if [[ -z ${BENCH_NO_BUILD:-} ]]; then
    cargo build --release -p nova-shards -p nova-bench
fi

if [[ ! -e $data/nova.manifest ]]; then
    echo "== import: $users users, $posts posts into $data"
    "$nova" admin import-posts --data-dir "$data" --shards 2 --users "$users" --posts "$posts"
fi

median() { sort -n | awk '{a[NR]=$1} END {if (NR) print a[int((NR+1)/2)]}'; }

builds=()
p99s=()
p50s=()
for run in $(seq "$runs"); do
    echo "== run $run: index build"
    out=$("$nova" admin reindex --data-dir "$data")
    echo "$out"
    builds+=("$(sed -n 's/.*(\([0-9]*\) posts\/s).*/\1/p' <<<"$out")")

    echo "== run $run: $rate two-word queries/s for $duration s"
    ready=$(mktemp)
    "$nova" serve --data "$data" --shards 2 --listen "$addr" --log warn >"$ready" &
    pid=$!
    for _ in $(seq 600); do
        grep -q listening "$ready" && break
        sleep 0.1
    done
    rm -f "$ready"
    out=$("$bench" --url "http://$addr" --rate "$rate" --duration "$duration" --server-pid "$pid")
    echo "$out"
    kill -TERM "$pid"
    wait "$pid" || true
    p99s+=("$(sed -n 's/^result p99_ms=\([0-9.]*\).*/\1/p' <<<"$out")")
    p50s+=("$(sed -n 's/^result .*p50_ms=\([0-9.]*\).*/\1/p' <<<"$out")")
done

echo "== medians over $runs runs"
echo "index build posts/s: $(printf '%s\n' "${builds[@]}" | median)"
echo "two-word queries at $rate/s: p50 $(printf '%s\n' "${p50s[@]}" | median) ms, p99 $(printf '%s\n' "${p99s[@]}" | median) ms"
