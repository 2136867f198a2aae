#!/usr/bin/env bash
# The web UI on large runs: how long the daemon takes to render a run's page, and how big it is.
#
#   bench/ui.sh [STEPS]      default 10000
#
# Runs two pipelines of STEPS `uses: noop` steps with `sluice run` into one data dir: a fan-out
# (`a` -> STEPS steps -> `join`, drawn as one group box) and a chain (STEPS steps one after the
# other: no group, so the drawing is left out past 2,000 boxes and the table is paged). Then
# serves the data dir with `sluice server` and fetches each run's page 10 times with curl
# (time_total: render and transfer on 127.0.0.1), the first fetch apart (it parses the stored
# definition; later ones reuse it). Also `GET /api/v1/runs/RUN` (the same records as JSON) on the
# same connection, as the floor. Prints Markdown. SLUICE=path uses that binary instead of building.
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${1:-10000}
if [ -z "${SLUICE:-}" ]; then cargo build --release -q -p sluice; SLUICE=$PWD/target/release/sluice; fi
WORK=$(mktemp -d)
SERVER_PID=
cleanup() { [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
median() { sort -n | awk '{v[NR]=$1} END {print v[int((NR + 1) / 2)]}'; }

python3 - "$WORK" "$STEPS" <<'PY'
import sys
work, n = sys.argv[1], int(sys.argv[2])
with open(f"{work}/fanout.yaml", "w") as f:
    f.write("name: fanout\nsteps:\n  a: {uses: noop}\n")
    for i in range(n):
        f.write(f"  s{i}: {{uses: noop, depends: [a]}}\n")
    f.write("  join:\n    uses: noop\n    depends: [" + ", ".join(f"s{i}" for i in range(n)) + "]\n")
with open(f"{work}/chain.yaml", "w") as f:
    f.write("name: chain\nsteps:\n  c0: {uses: noop}\n")
    for i in range(1, n):
        f.write(f"  c{i}: {{uses: noop, depends: [c{i-1}]}}\n")
PY
mkdir -p "$WORK/pipelines"
for p in fanout chain; do
    "$SLUICE" run "$WORK/$p.yaml" --data-dir "$WORK/data" > "$WORK/$p.out" 2>&1
done
PORT=$(free_port)
"$SLUICE" server --data-dir "$WORK/data" --pipelines "$WORK/pipelines" --listen "127.0.0.1:$PORT" > "$WORK/server.log" 2>&1 &
SERVER_PID=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PORT/healthz" > /dev/null && break; sleep 0.05; done
run_of() { curl -s "http://127.0.0.1:$PORT/api/v1/runs?pipeline=$1&limit=1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["runs"][0]["id"])'; }
measure() {
    local url=$1 first rest size
    first=$(curl -s -o /dev/null -w '%{time_total}' "$url")
    size=$(curl -s -o /dev/null -w '%{size_download}' "$url")
    rest=$(for _ in $(seq 10); do curl -s -o /dev/null -w '%{time_total}\n' "$url"; done | median)
    echo "$first $rest $size"
}
echo "| run of $STEPS noop steps | page: first fetch | page: median of 10 | page size | JSON of the run (median of 10) |"
echo "| --- | --- | --- | --- | --- |"
for p in fanout chain; do
    RUN=$(run_of "$p")
    read -r first rest size < <(measure "http://127.0.0.1:$PORT/ui/runs/$RUN")
    read -r _ json _ < <(measure "http://127.0.0.1:$PORT/api/v1/runs/$RUN")
    printf '| %s | %.0f ms | %.0f ms | %.2f MB | %.0f ms |\n' "$p" "$(echo "$first * 1000" | bc)" "$(echo "$rest * 1000" | bc)" "$(echo "$size / 1000000" | bc -l)" "$(echo "$json * 1000" | bc)"
done
read -r first rest size < <(measure "http://127.0.0.1:$PORT/ui/runs")
printf '\nThe runs page (2 runs): %.1f ms median, %.1f KB.\n' "$(echo "$rest * 1000" | bc)" "$(echo "$size / 1000" | bc -l)"
