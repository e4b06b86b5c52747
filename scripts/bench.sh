#!/usr/bin/env bash
# Nova's benchmark (`make bench`): the highest request rate that keeps p99 latency under a
# target (5 ms) for three scenarios, each server alone on core 0 and the open-loop load
# generator (`nova-bench`) on core 1:
#   1. the baseline: a minimal hyper server on one core, GET /health
#   2. Nova with one shard, GET /health
#   3. Nova with one shard, GET /v1/me with a bearer token
# and the ratios Nova/baseline (/health, target >= 0.65) and /v1/me vs Nova /health
# (target >= 0.70). After each search a saturation run (offered far more than the server
# takes) gives the server's throughput and CPU per request, the steadier numbers on a noisy
# machine. docs/benchmarks.md explains the method and records results.
#
# Environment knobs:
#   BENCH_RUNS=N        repeat every scenario N times and report medians (default 1)
#   BENCH_P99_MS=X      the p99 target in milliseconds (default 5)
#   BENCH_STEP_S=S      measured seconds per rate step (default 3)
#   BENCH_BISECT=N      bisection rounds after the step search (default 2)
#   BENCH_STRICT=1      exit 1 when a ratio misses its target
#   BENCH_RETRIES=N     reruns of a missed step before it counts (default 1)
#   BENCH_SATURATE_RATE=R  the rate offered by the saturation run (default 200000)
#   BENCH_NOISE_CORES=X a step during which other work on the machine (builds, tests) used
#                       more than X cores is rerun once it is quiet (default 0.15; 0 = off)
#   BENCH_QUIET_WAIT_S=S limit on each wait for quiet (default 120)
#   BENCH_NO_BUILD=1    use the binaries already in target/release ($CARGO_TARGET_DIR/release)
#   BENCH_SCENARIOS     a subset of "baseline nova-health nova-me" (default all three)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

runs=${BENCH_RUNS:-1}
p99_ms=${BENCH_P99_MS:-5}
step_s=${BENCH_STEP_S:-3}
bisect=${BENCH_BISECT:-2}
retries=${BENCH_RETRIES:-1}
saturate_rate=${BENCH_SATURATE_RATE:-200000}
noise_cores=${BENCH_NOISE_CORES:-0.15}
quiet_wait_s=${BENCH_QUIET_WAIT_S:-120}
scenarios=${BENCH_SCENARIOS:-baseline nova-health nova-me}
nova_addr=127.0.0.1:18080
baseline_addr=127.0.0.1:18081
nova=${CARGO_TARGET_DIR:-target}/release/nova
bench=${CARGO_TARGET_DIR:-target}/release/nova-bench

if [[ -z ${BENCH_NO_BUILD:-} ]]; then
    cargo build --release -p nova-shards -p nova-bench
fi

# Server on core 0, generator on core 1. With fewer than two cores they must share one; the
# generator then sleeps on tokio's timer instead of spinning for precise send times, and
# the numbers say more about the scheduler than about the servers.
server_pin=()
load_pin=()
spin=()
if [[ $(nproc) -ge 2 ]] && command -v taskset >/dev/null; then
    server_pin=(taskset -c 0)
    load_pin=(taskset -c 1)
else
    spin=(--no-spin)
    echo "bench: fewer than 2 cores (or no taskset): server and generator share; expect noise" >&2
fi

work=$(mktemp -d)
server_pid=""

stop_server() {
    if [[ -n $server_pid ]] && kill -0 "$server_pid" 2>/dev/null; then
        kill -TERM "$server_pid" 2>/dev/null || true
        # Nova drains in-flight requests and flushes on SIGTERM; give it a moment.
        for _ in $(seq 50); do
            kill -0 "$server_pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    server_pid=""
}

# shellcheck disable=SC2317  # called by the trap
cleanup() {
    stop_server
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# start_server NAME READY_TEXT COMMAND...: starts a server in the background and waits for
# READY_TEXT on its stdout.
start_server() {
    local name=$1 ready=$2
    shift 2
    local log="$work/$name.log"
    "${server_pin[@]}" "$@" >"$log" 2>&1 &
    server_pid=$!
    for _ in $(seq 600); do
        if grep -q "$ready" "$log"; then
            return 0
        fi
        if ! kill -0 "$server_pid" 2>/dev/null; then
            echo "bench: $name exited before it was ready:" >&2
            cat "$log" >&2
            exit 1
        fi
        sleep 0.1
    done
    echo "bench: $name did not print '$ready' within 60 s:" >&2
    cat "$log" >&2
    exit 1
}

# max_rate NAME URL [ARGS...]: runs the search and a saturation run; prints "RATE P99_MS
# CPU_US_PER_REQUEST SATURATED_THROUGHPUT SATURATED_CPU_US_PER_REQUEST".
max_rate() {
    local name=$1 url=$2
    shift 2
    echo "== $name: $url (machine $(busy_percent)% busy)" >&2
    "${load_pin[@]}" "$bench" max --url "$url" --p99-ms "$p99_ms" --step-s "$step_s" \
        --bisect "$bisect" --retries "$retries" --server-pid "$server_pid" \
        --noise-cores-max "$noise_cores" --quiet-wait-s "$quiet_wait_s" "${spin[@]}" "$@" |
        tee "$work/max.out" >&2
    local line rate p99 cpu
    line=$(grep -o 'max_rate=.*' "$work/max.out" | tail -1)
    if [[ -z $line ]]; then
        echo "bench: no result from nova-bench max for $name" >&2
        exit 1
    fi
    rate=$(sed -n 's/.*max_rate=\([0-9.]*\).*/\1/p' <<<"$line")
    p99=$(sed -n 's/.*p99_ms=\([0-9.a-z]*\).*/\1/p' <<<"$line")
    cpu=$(sed -n 's/.*server_us_per_req=\([0-9.]*\).*/\1/p' <<<"$line")
    # Saturation: offer far more than the server can take. Its throughput then, and above
    # all its CPU per request (1e6 / that = what it would serve with a core to itself), hardly
    # move when other work shares the machine, unlike the p99-bounded rate.
    "${load_pin[@]}" "$bench" load --url "$url" --rate "$saturate_rate" --duration 3 \
        --drain 0.5 --server-pid "$server_pid" "${spin[@]}" "$@" | tee "$work/sat.out" >&2
    local sat sat_cpu
    sat=$(sed -n 's/^throughput \([0-9]*\) .*/\1/p' "$work/sat.out")
    sat_cpu=$(sed -n 's/^server cpu .*, \([0-9.]*\) us per request.*/\1/p' "$work/sat.out")
    echo "$rate $p99 ${cpu:--} ${sat:--} ${sat_cpu:--}"
}

# Share of the machine's CPU busy over one second, to judge the noise.
busy_percent() {
    local a b
    read -ra a < <(head -1 /proc/stat)
    sleep 1
    read -ra b < <(head -1 /proc/stat)
    local total=0 i
    for i in 1 2 3 4 5 6 7 8; do total=$((total + b[i] - a[i])); done
    if ((total == 0)); then echo 0; else echo $((100 * (total - (b[4] - a[4])) / total)); fi
}

# median SCENARIO COLUMN: the median of one column of the results (2 rate, 3 p99, 4 CPU per
# request at that rate, 5 saturated throughput, 6 saturated CPU per request).
median() {
    awk -v s="$1" -v c="$2" '$1 == s { print $c }' "$results" | sort -g | awk '
        { v[NR] = $1 }
        END { if (NR == 0) print ""; else if (NR % 2) print v[(NR + 1) / 2];
              else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# all_runs SCENARIO: every run's rate, for the table.
all_runs() {
    awk -v s="$1" '$1 == s { printf "%s%s", sep, $2; sep = " " }' "$results"
}

has() { [[ " $scenarios " == *" $1 "* ]]; }

# measure SCENARIO URL [ARGS...]: runs the search, appends its result to the results.
measure() {
    local scenario=$1 result
    shift
    result=$(max_rate "$scenario" "$@")
    echo "$scenario $result" >>"$results"
}

results="$work/results"
: >"$results"
echo "bench: $(nproc) cores, $(busy_percent)% busy before start, $runs run(s)," \
    "p99 target $p99_ms ms" >&2

for run in $(seq "$runs"); do
    echo "== run $run of $runs" >&2
    if has baseline; then
        start_server baseline "baseline listening on" "$bench" baseline --listen "$baseline_addr"
        measure baseline "http://$baseline_addr/health"
        stop_server
    fi
    if has nova-health || has nova-me; then
        data=$(mktemp -d "$work/nova-data.XXXXXX")
        start_server nova "nova listening on" "$nova" serve --data "$data" \
            --listen "$nova_addr" --shards 1 --access-token-ttl-s 86400 \
            --registrations-per-ip-per-hour 100000
        if has nova-health; then
            measure nova-health "http://$nova_addr/health"
        fi
        if has nova-me; then
            token=$("${load_pin[@]}" "$bench" login --url "http://$nova_addr")
            measure nova-me "http://$nova_addr/v1/me" --header "Authorization: Bearer $token"
        fi
        stop_server
    fi
done

row() {
    local scenario=$1 label=$2
    if ! grep -q "^$scenario " "$results"; then
        printf '%-18s %9s %7s %9s %9s %9s  %s\n' "$label" - - - - - "(not run)"
        return
    fi
    local sat_us capacity
    sat_us=$(median "$scenario" 6)
    capacity=$(awk -v u="$sat_us" 'BEGIN { if (u > 0) printf "%.0f", 1e6 / u; else print "-" }')
    printf '%-18s %9.0f %7s %9s %9s %9s  %s\n' "$label" "$(median "$scenario" 2)" \
        "$(median "$scenario" 3)" "$(median "$scenario" 5)" "$sat_us" "$capacity" \
        "$(all_runs "$scenario")"
}

ratio() {
    if [[ -z $1 || -z $2 ]]; then echo "-"; return; fi
    awk -v a="$1" -v b="$2" 'BEGIN { if (a > 0 && b > 0) printf "%.2f", a / b; else print "-" }'
}

verdict() {
    if [[ $1 == - ]]; then echo "n/a"; return; fi
    awk -v r="$1" -v t="$2" 'BEGIN { print (r >= t) ? "PASS" : "MISS" }'
}

health_ratio=$(ratio "$(median nova-health 2)" "$(median baseline 2)")
me_ratio=$(ratio "$(median nova-me 2)" "$(median nova-health 2)")
# The same ratios from CPU per request at saturation (inverted: cheaper is better).
health_cost_ratio=$(ratio "$(median baseline 6)" "$(median nova-health 6)")
me_cost_ratio=$(ratio "$(median nova-health 6)" "$(median nova-me 6)")

echo
echo "Server on one core, median of $runs run(s). max = highest rate with p99 <= $p99_ms ms;"
echo "sat = responses/s when offered $saturate_rate req/s; us/req = server CPU per request then;"
echo "per-core = 1e6 / us/req, what the server would serve with a core of its own."
printf '%-18s %9s %7s %9s %9s %9s  %s\n' scenario "max req/s" "p99 ms" "sat req/s" "us/req" \
    "per-core" "max, all runs"
row baseline "baseline /health"
row nova-health "nova /health"
row nova-me "nova /v1/me"
echo
printf '%-32s %6s %9s  %-8s %s\n' ratio "max" "per-core" target verdict
printf '%-32s %6s %9s  %-8s %s\n' "nova /health / baseline /health" "$health_ratio" \
    "$health_cost_ratio" ">= 0.65" "$(verdict "$health_ratio" 0.65)"
printf '%-32s %6s %9s  %-8s %s\n' "nova /v1/me / nova /health" "$me_ratio" "$me_cost_ratio" \
    ">= 0.70" "$(verdict "$me_ratio" 0.70)"

if [[ -n ${BENCH_STRICT:-} ]]; then
    for v in "$(verdict "$health_ratio" 0.65)" "$(verdict "$me_ratio" 0.70)"; do
        if [[ $v == MISS ]]; then
            exit 1
        fi
    done
fi
exit 0
