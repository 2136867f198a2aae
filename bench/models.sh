#!/usr/bin/env bash
# Model registry benchmark: what `uses: gate`, `uses: register` and promoting add, each against
# a baseline measured in the same command (issue 12: "under 20 ms each to a run").
#
#   bench/models.sh [RUNS] [PROMOTES]     defaults: 30 30; needs python3 and curl
#
# Five pipelines share a `train` step (a 64 KiB model file as its output, two metrics):
# `base` (train alone), `noop1` and `noop2` (one and two `uses: noop` steps after it: the cost of
# a step as such), `gate` (train, then a gate comparing against bench@production) and `register`
# (train, gate, then register with alias staging). Each has its own data dir, seeded with a
# registered version promoted to production so every gate has something to compare against.
#   1. `sluice run` of each pipeline, RUNS rounds, interleaved (the order rotates each round):
#      the whole process's wall time; differences are taken per round (paired) and the median
#      reported. The steps' queued -> finished times come from each run's record.
#   2. `sluice models promote` on the register data dir, moving production between two versions
#      every call, against `sluice models ls` and `sluice models show` on it (PROMOTES rounds).
#   3. The same promotion through a `sluice server` on that data dir: curl's time_total for the
#      POST against `GET /api/v1/models` and `GET /healthz`; and `sluice models promote
#      --server` against `sluice models ls --server`.
#   4. RUNS rounds of the five pipelines triggered through that server, with the wall time the
#      server recorded (finished_ms - created_ms).
#   5. With strace: the flush syscalls (fsync, fdatasync, sync_file_range, msync) of one
#      embedded run of each pipeline, on copies of the data dirs as the runs left them.
# The work is done by bench/models_bench.py. SLUICE=path uses that binary (no build); KEEP=DIR
# keeps the data dirs, the pipelines and the raw numbers (raw.json). Prints Markdown tables.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-30}
PROMOTES=${2:-30}
if [ -z "${SLUICE:-}" ]; then cargo build --release -q -p sluice; SLUICE=$PWD/target/release/sluice; fi
command -v curl > /dev/null || { echo "needs curl" >&2; exit 1; }
WORK=$(mktemp -d)
cleanup() {
    if [ -n "${KEEP:-}" ]; then mkdir -p "$KEEP" && cp -r "$WORK"/. "$KEEP"/; fi
    rm -rf "$WORK"
}
trap cleanup EXIT

echo "sluice: $SLUICE ($("$SLUICE" --version 2> /dev/null || echo 'no --version')), commit $(git rev-parse --short HEAD 2> /dev/null || echo '?')$(git diff --quiet HEAD -- scheduler worker 2> /dev/null || echo ' with uncommitted changes to scheduler/ or worker/')"
echo "machine: $(nproc) CPUs ($(lscpu | sed -n 's/^Model name: *//p')), $(free -g | awk '/^Mem:/ {print $2}') GiB, $(uname -sr)"
echo
python3 bench/models_bench.py "$SLUICE" "$WORK" "$RUNS" "$PROMOTES"
