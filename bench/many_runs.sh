#!/usr/bin/env bash
# The scheduler with many finished runs in its store: memory and `sluice runs` latency.
#
#   bench/many_runs.sh [N] [BUDGET_S] [CONCURRENCY]     defaults: 100000 600 8
#
# 1. Starts redis-server, `sluice scheduler` and two `sluice worker`s (as bench/distributed.sh),
#    and fills the store with runs of a 1-step `uses: noop` pipeline, triggered through the API
#    (POST /api/v1/pipelines/one/runs) from CONCURRENCY keep-alive connections
#    (bench/sluice_api.py flood). It triggers 5,000 first, waits for them to finish, and from that
#    rate works out how many more fit in BUDGET_S seconds; it stops at N, or at what fits, and
#    says which.
# 2. Restarts the scheduler on the same store and measures: time until it listens, its VmRSS
#    after start, the time of `GET /api/v1/runs?limit=50` (curl's time_total, median of 10), its
#    VmRSS after those, `sluice runs --server URL` (the whole command, median of 10), and the web
#    UI's runs page (`GET /ui/runs`, median of 10).
# 3. Stops the scheduler and times `sluice runs --data-dir DATA` (the store read directly, median
#    of 10, with its peak RSS from /usr/bin/time).
# Also: an idle worker's VmRSS, and the store's size on disk; the first batch's trigger answer
# times (p50/p99) against the same number of `GET /healthz` on the same connections (the HTTP
# floor), and whether any run id came twice or any run did not end. Prints Markdown.
# SLUICE=path uses that binary instead of building; KEEP=DIR keeps the raw outputs and logs.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-100000}
BUDGET_S=${2:-600}
CONC=${3:-8}
FIRST=5000
(( N < FIRST )) && FIRST=$N

# SLUICE=/path/to/sluice uses that binary instead of building target/release/sluice.
if [ -z "${SLUICE:-}" ]; then cargo build --release -q -p sluice; SLUICE=$PWD/target/release/sluice; fi
API="python3 $PWD/bench/sluice_api.py"
WORK=$(mktemp -d)
PIDS=()
# KEEP=DIR keeps the raw results and the daemons' logs there.
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    if [ -n "${KEEP:-}" ]; then
        mkdir -p "$KEEP" && cp "$WORK"/*.jsonl "$WORK"/*.json "$WORK"/*.log "$WORK"/*.err "$WORK"/*.txt "$KEEP"/ 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
rss() { awk '/^VmRSS:/ {printf "%.1f", $2 / 1024}' "/proc/$1/status"; }
hwm() { awk '/^VmHWM:/ {printf "%.1f", $2 / 1024}' "/proc/$1/status"; }
now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
# CPU seconds of a process (utime + stime), and of the whole machine (not idle, all CPUs).
cpu_of() { awk -v t="$(getconf CLK_TCK)" '{sub(/^.*\) /, ""); printf "%.2f", ($12 + $13) / t}' "/proc/$1/stat"; }
machine_cpu() { awk -v t="$(getconf CLK_TCK)" 'NR == 1 {printf "%.2f", ($2 + $3 + $4 + $7 + $8 + $9) / t}' /proc/stat; }
median() { sort -n | awk '{v[NR]=$1} END {print v[int((NR + 1) / 2)]}'; }

mkdir -p "$WORK/pipelines"
printf 'name: one\nsteps:\n  a: {uses: noop}\n' > "$WORK/pipelines/one.yaml"

REDIS_PORT=$(free_port)
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no > "$WORK/redis.log" 2>&1 &
REDIS_PID=$!; PIDS+=("$REDIS_PID")
for _ in $(seq 100); do redis-cli -p "$REDIS_PORT" ping > /dev/null 2>&1 && break; sleep 0.05; done
REDIS_URL=redis://127.0.0.1:$REDIS_PORT/

# start_scheduler: starts it on $WORK/data; sets SCHED_PID, URL and START_MS (ms until it listened).
start_scheduler() {
    : > "$WORK/scheduler.out"
    local t0; t0=$(now_ms)
    RUST_LOG=warn "$SLUICE" scheduler --pipelines "$WORK/pipelines" --data-dir "$WORK/data" \
        --redis "$REDIS_URL" --listen 127.0.0.1:0 > "$WORK/scheduler.out" 2>> "$WORK/scheduler.err" &
    SCHED_PID=$!; PIDS+=("$SCHED_PID")
    for _ in $(seq 12000); do grep -q '^sluice listening on ' "$WORK/scheduler.out" && break; sleep 0.01; done
    START_MS=$(( $(now_ms) - t0 ))
    URL=$(sed -n 's/^sluice listening on //p' "$WORK/scheduler.out" | head -1)
    [ -n "$URL" ] || { cat "$WORK/scheduler.err"; echo "scheduler did not start" >&2; exit 1; }
}
stop_scheduler() { kill "$SCHED_PID"; wait "$SCHED_PID" 2>/dev/null || true; }

start_scheduler
WORKER_PIDS=()
for w in w1 w2; do
    mkdir -p "$WORK/$w"
    (cd "$WORK/$w" && RUST_LOG=warn exec "$SLUICE" worker --redis "$REDIS_URL" --name "$w" \
        > "$WORK/$w.out" 2> "$WORK/$w.err") &
    WORKER_PIDS+=($!); PIDS+=($!)
done
for w in w1 w2; do
    for _ in $(seq 600); do grep -q "^sluice worker $w" "$WORK/$w.out" && break; sleep 0.05; done
done
sleep 5
WORKER_IDLE_RSS="$(rss "${WORKER_PIDS[0]}") / $(rss "${WORKER_PIDS[1]}")"
SCHED_EMPTY_RSS=$(rss "$SCHED_PID")

# Fill the store: FIRST runs, then as many more as the budget allows, up to N.
CPU0="$(cpu_of "$SCHED_PID") $(cpu_of "${WORKER_PIDS[0]}") $(cpu_of "${WORKER_PIDS[1]}") $(cpu_of "$REDIS_PID") $(machine_cpu)"
t0=$(now_ms)
$API flood "$URL" one "$FIRST" --concurrency "$CONC" > "$WORK/flood1.json" 2> "$WORK/flood1.log"
first_s=$(python3 -c "print(($(now_ms) - $t0) / 1000)")
# The HTTP floor on the same connections, for the trigger latency's ratio.
$API flood "$URL" one "$FIRST" --concurrency "$CONC" --healthz > "$WORK/healthz.json" 2> /dev/null
rate=$(python3 -c "print($FIRST / $first_s)")
est_total=$(python3 -c "print(round($N / $rate))")
rest=$(python3 -c "print(max(0, min($N - $FIRST, int($rate * ($BUDGET_S - $first_s)))))")
echo "first $FIRST runs: $first_s s ($rate runs/s); $N runs would take about $est_total s; triggering $rest more" >&2
FLOOD2="{}"
if (( rest > 0 )); then
    $API flood "$URL" one "$rest" --concurrency "$CONC" --progress 5000 --poll 5 > "$WORK/flood2.json" 2> "$WORK/flood2.log"
    FLOOD2=$(cat "$WORK/flood2.json")
fi
fill_s=$(python3 -c "print(($(now_ms) - $t0) / 1000)")
CPU1="$(cpu_of "$SCHED_PID") $(cpu_of "${WORKER_PIDS[0]}") $(cpu_of "${WORKER_PIDS[1]}") $(cpu_of "$REDIS_PID") $(machine_cpu)"
FILL_CPU=$(python3 -c "
a, b = [float(x) for x in '$CPU0'.split()], [float(x) for x in '$CPU1'.split()]
d = [y - x for x, y in zip(a, b)]
print(f'scheduler {d[0]:.1f} s, workers {d[1] + d[2]:.1f} s, redis {d[3]:.1f} s, whole machine {d[4]:.1f} s (the rest: this script\'s client and anything else)')")
TOTAL=$(( FIRST + rest ))
SCHED_LOAD_HWM=$(hwm "$SCHED_PID")
SCHED_LOAD_RSS=$(rss "$SCHED_PID")
WORKER_LOAD_RSS="$(rss "${WORKER_PIDS[0]}") / $(rss "${WORKER_PIDS[1]}") (peak $(hwm "${WORKER_PIDS[0]}") / $(hwm "${WORKER_PIDS[1]}"))"
STORED=$(curl -s "$URL/api/v1/runs?limit=1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["runs"][0]["id"])')

# Restart the scheduler on the full store.
stop_scheduler
STORE_SIZE=$(du -sh "$WORK/data" | cut -f1)
start_scheduler
RESTART_MS=$START_MS
sleep 2
SCHED_START_RSS=$(rss "$SCHED_PID")
for _ in $(seq 10); do
    curl -s -o "$WORK/page.json" -w '%{time_total}\n' "$URL/api/v1/runs?limit=50"
done > "$WORK/curl.txt"
CURL_MS=$(python3 -c "import statistics;print(round(statistics.median(float(l) for l in open('$WORK/curl.txt')) * 1000, 1))")
CURL_MAX_MS=$(python3 -c "print(round(max(float(l) for l in open('$WORK/curl.txt')) * 1000, 1))")
PAGE_N=$(python3 -c "import json;print(len(json.load(open('$WORK/page.json'))['runs']))")
PAGE_ST=$(python3 -c "import json,collections;print(dict(collections.Counter(r['status'] for r in json.load(open('$WORK/page.json'))['runs'])))")
for _ in $(seq 10); do
    t=$(date +%s%N); "$SLUICE" runs --server "$URL" > "$WORK/runs_remote.txt"; echo $(( ($(date +%s%N) - t) / 1000 ))
done > "$WORK/remote.txt"
REMOTE_MS=$(python3 -c "print($(median < "$WORK/remote.txt") / 1000)")
# The web UI's runs page (an open scheduler: no token; the first answer makes the session).
curl -s -c "$WORK/ui.cookies" -o /dev/null "$URL/ui/runs"
for _ in $(seq 10); do
    curl -s -b "$WORK/ui.cookies" -o "$WORK/ui.html" -w '%{time_total}\n' "$URL/ui/runs"
done > "$WORK/ui.txt"
UI_MS=$(python3 -c "import statistics;print(round(statistics.median(float(l) for l in open('$WORK/ui.txt')) * 1000, 1))")
UI_KB=$(python3 -c "import os;print(round(os.path.getsize('$WORK/ui.html') / 1000, 1))")
SCHED_AFTER_RSS=$(rss "$SCHED_PID")
LAST_PAGE=$(curl -s -o /dev/null -w '%{time_total}' "$URL/api/v1/runs?limit=50&before=$(curl -s "$URL/api/v1/runs?limit=1000" | python3 -c 'import json,sys; print(json.load(sys.stdin)["next_before"])')")
stop_scheduler

for _ in $(seq 10); do
    t=$(date +%s%N)
    /usr/bin/time -f %M -o "$WORK/time" "$SLUICE" runs --data-dir "$WORK/data" > "$WORK/runs_local.txt"
    echo "$(( ($(date +%s%N) - t) / 1000 )) $(cat "$WORK/time")"
done > "$WORK/local.txt"
LOCAL_MS=$(python3 -c "print($(cut -d' ' -f1 "$WORK/local.txt" | median) / 1000)")
LOCAL_RSS=$(python3 -c "print(round($(cut -d' ' -f2 "$WORK/local.txt" | sort -n | tail -1) / 1024, 1))")

for f in scheduler.err w1.err w2.err; do
    n=$(grep -c . "$WORK/$f" || true)
    if [ "$n" != 0 ]; then echo "$f: $n lines, first:" >&2; head -5 "$WORK/$f" >&2; fi
done

echo "Runs in the store: $TOTAL of $N asked (1-step \`uses: noop\` runs, triggered through the API, $CONC connections)."
echo "Filling took $fill_s s; the first $FIRST: $first_s s ($(printf %.0f "$rate") runs/s, so $N would take about $est_total s)."
echo "First batch: $(cat "$WORK/flood1.json")"
echo "Second batch: $FLOOD2"
echo "Baseline, $FIRST \`GET /healthz\` on the same $CONC connections: $(cat "$WORK/healthz.json")"
echo "CPU while filling: $FILL_CPU."
echo "Data dir on disk (store and attempt folders): $STORE_SIZE. Newest run id: $STORED."
echo
echo "| figure | value |"
echo "| --- | --- |"
echo "| scheduler VmRSS, empty store, after start | $SCHED_EMPTY_RSS MiB |"
echo "| scheduler VmRSS after the $TOTAL runs (peak while filling) | $SCHED_LOAD_RSS MiB ($SCHED_LOAD_HWM MiB) |"
echo "| scheduler restart on $TOTAL runs, until it listens | $RESTART_MS ms |"
echo "| scheduler VmRSS after restart, idle 2 s | $SCHED_START_RSS MiB |"
echo "| \`GET /api/v1/runs?limit=50\` (curl time_total, median / max of 10) | $CURL_MS / $CURL_MAX_MS ms ($PAGE_N runs: $PAGE_ST) |"
echo "| \`GET /ui/runs\` (the web UI's runs page, curl time_total, median of 10) | $UI_MS ms, $UI_KB KB |"
echo "| \`GET /api/v1/runs?limit=50&before=<1000th newest>\` (once) | $(python3 -c "print(round($LAST_PAGE * 1000, 1))") ms |"
echo "| \`sluice runs --server URL\` (whole command, median of 10) | $REMOTE_MS ms |"
echo "| scheduler VmRSS after those requests | $SCHED_AFTER_RSS MiB |"
echo "| \`sluice runs --data-dir DATA\`, scheduler stopped (median of 10; peak RSS) | $LOCAL_MS ms ($LOCAL_RSS MiB) |"
echo "| worker VmRSS, idle 5 s after start (w1 / w2) | $WORKER_IDLE_RSS MiB |"
echo "| worker VmRSS after the runs (w1 / w2) | $WORKER_LOAD_RSS MiB |"
