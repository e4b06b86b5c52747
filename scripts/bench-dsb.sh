#!/usr/bin/env bash
# The DeathStarBench socialNetwork workload against Nova (`nova-dsb`, see
# bench/src/bin/nova-dsb.rs): start Nova with --dsb-compat, load the socfb-Reed98 graph
# (962 users, 18,812 edges followed both ways), then find the highest rate that keeps p99
# under a target (10 ms) for compose, home-timeline reads, user-timeline reads and the mix
# (60% home / 30% user / 10% compose), and print a table. docs/benchmarks.md records results.
#
# Server and load generator share the machine, unpinned (the setting of the issue: a 2-core
# box); the generator sleeps on tokio's millisecond timer rather than spinning, so it does
# not steal a core from the server, and its up-to-1 ms send lateness counts in the latency.
# Registration hashes passwords with argon2id, so the server runs with a cheap setting
# (1 MiB, 1 pass) to keep loading quick; nothing measured here registers.
#
# Environment knobs:
#   DSB_P99_MS=X        the p99 target in milliseconds (default 10)
#   DSB_STEP_S=S        measured seconds per rate step (default 5)
#   DSB_BISECT=N        bisection rounds after the step search (default 2)
#   DSB_START=R         first rate of the search (default 100 req/s)
#   DSB_FACTOR=F        each step offers F times the previous rate (default 1.5)
#   DSB_CONNECTIONS=N   keep-alive connections of the generator (default 64)
#   DSB_SHARDS=N        server shards (default 2)
#   DSB_MIXES           a subset of "compose home user mix" (default all four, in that
#                       order: compose first so the timelines have posts to read)
#   DSB_FIXED_RATES     e.g. "compose=3000 mix=15000": one fixed-rate run per mix instead
#                       of the search
#   DSB_EDGES=FILE      another edge list; DSB_GENERATE=1 loads a random graph of the same size
#   DSB_PERF=1          record a perf profile of the server during the mix (perf.data in
#                       the work directory, report printed at the end)
#   BENCH_NO_BUILD=1    use the binaries already in target/release
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

p99_ms=${DSB_P99_MS:-10}
step_s=${DSB_STEP_S:-5}
bisect=${DSB_BISECT:-2}
start=${DSB_START:-100}
factor=${DSB_FACTOR:-1.5}
connections=${DSB_CONNECTIONS:-64}
shards=${DSB_SHARDS:-2}
mixes=${DSB_MIXES:-compose home user mix}
edges=${DSB_EDGES:-/work/shared/datasets/socfb-Reed98/socfb-Reed98.edges}
addr=127.0.0.1:18090
url=http://$addr
nova=${CARGO_TARGET_DIR:-target}/release/nova
dsb=${CARGO_TARGET_DIR:-target}/release/nova-dsb

if [[ -z ${BENCH_NO_BUILD:-} ]]; then
    cargo build --release -p nova-shards -p nova-bench
fi

work=$(mktemp -d)
data=$(mktemp -d)
server_pid=""
perf_pid=""

# shellcheck disable=SC2317  # called by the trap
cleanup() {
    if [[ -n $perf_pid ]] && kill -0 "$perf_pid" 2>/dev/null; then
        kill -INT "$perf_pid" 2>/dev/null || true
        wait "$perf_pid" 2>/dev/null || true
    fi
    if [[ -n $server_pid ]] && kill -0 "$server_pid" 2>/dev/null; then
        kill -TERM "$server_pid" 2>/dev/null || true
        for _ in $(seq 50); do
            kill -0 "$server_pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    rm -rf "$data"
    if [[ -z ${DSB_PERF:-} ]]; then
        rm -rf "$work"
    fi
}
trap cleanup EXIT

"$nova" serve --data "$data" --listen "$addr" --shards "$shards" --dsb-compat \
    --argon2-memory-kib 1024 --argon2-iterations 1 >"$work/server.out" 2>"$work/server.err" &
server_pid=$!
for _ in $(seq 300); do
    grep -q "nova listening on" "$work/server.out" && break
    if ! kill -0 "$server_pid" 2>/dev/null; then
        echo "bench-dsb: the server exited:" >&2
        cat "$work/server.err" >&2
        exit 1
    fi
    sleep 0.1
done
if ! grep -q "nova listening on" "$work/server.out"; then
    echo "bench-dsb: the server did not start listening in 30 s" >&2
    exit 1
fi
echo "bench-dsb: $(head -1 "$work/server.out") (pid $server_pid), $(nproc) cores shared with the generator"

graph_args=(--edges "$edges")
if [[ -n ${DSB_GENERATE:-} ]]; then
    graph_args=(--generate)
fi
"$dsb" load-graph --url "$url" "${graph_args[@]}" --connections 16

declare -A fixed=()
for pair in ${DSB_FIXED_RATES:-}; do
    fixed[${pair%%=*}]=${pair#*=}
done

results=()
for mix in $mixes; do
    perf_this=""
    if [[ -n ${DSB_PERF:-} && $mix == mix ]] && command -v perf >/dev/null; then
        perf record -g -o "$work/perf.data" -p "$server_pid" >"$work/perf.log" 2>&1 &
        perf_pid=$!
        perf_this=1
    fi
    echo "== $mix"
    if [[ -n ${fixed[$mix]:-} ]]; then
        "$dsb" run --url "$url" --mix "$mix" --rate "${fixed[$mix]}" --duration "$step_s" \
            --connections "$connections" --server-pid "$server_pid" | tee "$work/$mix.out"
        line=$(grep '^result mix=' "$work/$mix.out")
    else
        "$dsb" max --url "$url" --mix "$mix" --p99-ms "$p99_ms" --step-s "$step_s" \
            --start "$start" --factor "$factor" --bisect "$bisect" \
            --connections "$connections" --server-pid "$server_pid" | tee "$work/$mix.out"
        # A search where even the first rate missed reports that rate as a `miss` line.
        line=$(grep -E '^(max|miss) mix=' "$work/$mix.out" || echo "miss mix=$mix")
    fi
    if [[ -n $perf_this ]]; then
        kill -INT "$perf_pid" 2>/dev/null || true
        wait "$perf_pid" 2>/dev/null || true
        perf_pid=""
    fi
    results+=("$line")
done

field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<"$2"; }
echo
if [[ -n ${DSB_FIXED_RATES:-} ]]; then
    echo "fixed rates; p99 target $p99_ms ms; $(nproc) cores shared by server ($shards shards) and generator"
else
    echo "max rate with p99 <= $p99_ms ms; $(nproc) cores shared by server ($shards shards) and generator"
fi
printf '%-8s %-7s %10s %10s %7s %8s %8s %8s %8s %10s\n' mix result offered achieved errors \
    p50_ms p90_ms p99_ms p999_ms server_us
for line in "${results[@]}"; do
    printf '%-8s %-7s %10s %10s %7s %8s %8s %8s %8s %10s\n' "$(field mix "$line")" "${line%% *}" \
        "$(field offered "$line")" "$(field achieved "$line")" "$(field errors "$line")" \
        "$(field p50_ms "$line")" "$(field p90_ms "$line")" "$(field p99_ms "$line")" \
        "$(field p999_ms "$line")" "$(field server_us_per_req "$line")"
done
if [[ -n ${DSB_PERF:-} && -f $work/perf.data ]]; then
    echo
    echo "perf profile of the server during the mix: $work/perf.data"
    perf report -i "$work/perf.data" --stdio --no-children -g none --sort comm 2>/dev/null \
        | grep -E '^ +[0-9]' || true
    perf report -i "$work/perf.data" --stdio --no-children -g none --sort dso,sym 2>/dev/null \
        | grep -E '^ +[0-9]' | head -40 || true
fi
