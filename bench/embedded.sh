#!/usr/bin/env bash
# Embedded-mode benchmarks, each against a baseline measured in the same run (machines are noisy).
#
#   bench/embedded.sh [CHAIN_N] [FANOUT_N] [DAG_N] [REPEAT]     defaults: 1000 5000 10000 3
#
# 1. Parse + validate a generated DAG_N-step pipeline (`sluice validate`): wall time and peak RSS,
#    against `sluice validate` of a 1-step pipeline (the process's fixed cost).
# 2. `sluice run` of a CHAIN_N-step chain and a FANOUT_N-step fan-out of `true` steps, against
#    spawning the same number of `/bin/sh -c true` processes from a shell loop.
# 3. When ../shared/peers/celery/run.sh is there (and redis-server), Celery with a Redis broker on
#    the same chain and fan-out of no-op tasks, for a side-by-side ratio. Celery's tasks are Python
#    function calls in a warm worker; Sluice's steps are processes, so this ratio favours Celery.
# Each figure is the median of REPEAT runs (wall clock, ns resolution; peak RSS from /usr/bin/time). Prints a Markdown table for BENCHMARKS.md.
# Then fails loudly (stderr, exit 1) on a regression: the chain or the fan-out slower than
# MAX_CHAIN_RATIO / MAX_FANOUT_RATIO times the bare spawns (defaults 2.5 and 1.6: above the
# figures recorded on 2026-12-07, 2.14 and 1.16, by a margin for this noisy machine), or the
# validation slower than MAX_VALIDATE_MS_PER_1000 ms per 1,000 steps beyond the 1-step file's
# time (default 25: 12 ms per 1,000 recorded at 10,000 steps). Issue 10 found a 4.43x chain and a 307 ms validation this way too late.
# Run it at least five minutes after anything deleted many files on the same file system (this
# script's own exit deletes every run's folders): ext4 passes over inodes freed in the last
# 60-300 s when it allocates new ones, and the chain's 6,000 new folders then took up to 1.7x
# as long (two runs of this script back to back, 2026-12-07).
set -euo pipefail
cd "$(dirname "$0")/.."
CHAIN_N=${1:-1000}
FANOUT_N=${2:-5000}
DAG_N=${3:-10000}
REPEAT=${4:-3}

# SLUICE=/path/to/sluice measures that binary (another commit's build) instead of building.
if [ -z "${SLUICE:-}" ]; then cargo build --release -q -p sluice; SLUICE=$PWD/target/release/sluice; fi
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

python3 bench/gen.py chain "$CHAIN_N" > "$WORK/chain.yaml"
python3 bench/gen.py fanout "$FANOUT_N" > "$WORK/fanout.yaml"
python3 bench/gen.py dag "$DAG_N" > "$WORK/dag.yaml"
printf 'name: one\nsteps:\n  a: {run: "true"}\n' > "$WORK/one.yaml"

# measure NAME CMD...: runs CMD REPEAT times; records median wall seconds and max peak RSS (KiB).
declare -A WALL RSS
measure() {
    local name=$1; shift
    local walls=() rss=0
    for i in $(seq "$REPEAT"); do
        # Set the last run's data dir aside instead of deleting it: ext4 allocates the next
        # run's folders slowly next to thousands it freed a moment ago (perf: its inode
        # allocator's `recently_deleted` scan, half of a chain's samples). That measured this
        # script's `rm -rf`, not Sluice. Everything is deleted on exit.
        [ -e "$WORK/data" ] && mv "$WORK/data" "$WORK/old-$name-$i"
        local start end
        start=$(date +%s%N)
        /usr/bin/time -f "%M" -o "$WORK/time" "$@" > /dev/null 2>&1
        end=$(date +%s%N)
        read -r kib < "$WORK/time"
        walls+=("$(python3 -c "print(f'{($end - $start) / 1e9:.3f}')")")
        (( kib > rss )) && rss=$kib
    done
    WALL[$name]=$(printf '%s\n' "${walls[@]}" | sort -n | sed -n "$(( (REPEAT + 1) / 2 ))p")
    RSS[$name]=$rss
}

spawn_loop() { for _ in $(seq "$1"); do /bin/sh -c true; done; }
export -f spawn_loop

measure validate_one "$SLUICE" validate "$WORK/one.yaml"
measure validate_dag "$SLUICE" validate --max-file-bytes 100000000 "$WORK/dag.yaml"
measure bare_chain bash -c "spawn_loop $CHAIN_N"
measure run_chain "$SLUICE" run "$WORK/chain.yaml" --data-dir "$WORK/data"
measure bare_fanout bash -c "spawn_loop $FANOUT_N"
measure run_fanout "$SLUICE" run "$WORK/fanout.yaml" --data-dir "$WORK/data"

CELERY=../shared/peers/celery/run.sh
CELERY_CHAIN="" CELERY_FANOUT=""
if [ -f "$CELERY" ] && command -v redis-server >/dev/null; then
    bash "$CELERY" "$CHAIN_N" "$FANOUT_N" > "$WORK/celery.txt" 2>&1 || true
    CELERY_CHAIN=$(awk '/^celery chain/ {print $4}' "$WORK/celery.txt")
    CELERY_FANOUT=$(awk '/^celery fanout/ {print $4}' "$WORK/celery.txt")
fi

ratio() { python3 -c "print(f'{$1 / $2:.2f}')"; }
per_step_ms() { python3 -c "print(f'{($1 - $2) * 1000 / $3:.2f}')"; }
mib() { python3 -c "print(f'{$1 / 1024:.1f}')"; }

echo "| workload | sluice | baseline | ratio | sluice overhead per step | sluice peak RSS |"
echo "| --- | --- | --- | --- | --- | --- |"
echo "| validate $DAG_N-step DAG ($(du -k "$WORK/dag.yaml" | cut -f1) KiB) | ${WALL[validate_dag]} s | ${WALL[validate_one]} s (1-step file) | $(ratio "${WALL[validate_dag]}" "${WALL[validate_one]}") | - | $(mib "${RSS[validate_dag]}") MiB |"
echo "| run $CHAIN_N-step chain of \`true\` | ${WALL[run_chain]} s | ${WALL[bare_chain]} s ($CHAIN_N \`sh -c true\` in a loop) | $(ratio "${WALL[run_chain]}" "${WALL[bare_chain]}") | $(per_step_ms "${WALL[run_chain]}" "${WALL[bare_chain]}" "$CHAIN_N") ms | $(mib "${RSS[run_chain]}") MiB |"
echo "| run $FANOUT_N-step fan-out of \`true\` | ${WALL[run_fanout]} s | ${WALL[bare_fanout]} s ($FANOUT_N \`sh -c true\` in a loop) | $(ratio "${WALL[run_fanout]}" "${WALL[bare_fanout]}") | $(per_step_ms "${WALL[run_fanout]}" "${WALL[bare_fanout]}" "$FANOUT_N") ms | $(mib "${RSS[run_fanout]}") MiB |"
if [ -n "$CELERY_CHAIN" ] && [ -n "$CELERY_FANOUT" ]; then
    echo
    echo "| workload | sluice run | celery (redis broker, 2 prefork workers) | sluice / celery |"
    echo "| --- | --- | --- | --- |"
    echo "| $CHAIN_N-step chain | ${WALL[run_chain]} s | $CELERY_CHAIN s | $(ratio "${WALL[run_chain]}" "$CELERY_CHAIN") |"
    echo "| $FANOUT_N-step fan-out | ${WALL[run_fanout]} s | $CELERY_FANOUT s | $(ratio "${WALL[run_fanout]}" "$CELERY_FANOUT") |"
fi

# The regression guard (see the header).
MAX_CHAIN_RATIO=${MAX_CHAIN_RATIO:-2.5}
MAX_FANOUT_RATIO=${MAX_FANOUT_RATIO:-1.6}
MAX_VALIDATE_MS_PER_1000=${MAX_VALIDATE_MS_PER_1000:-25}
regressions=$(python3 - "${WALL[run_chain]}" "${WALL[bare_chain]}" "${WALL[run_fanout]}" "${WALL[bare_fanout]}" "${WALL[validate_dag]}" "${WALL[validate_one]}" "$DAG_N" "$MAX_CHAIN_RATIO" "$MAX_FANOUT_RATIO" "$MAX_VALIDATE_MS_PER_1000" <<'PY'
import sys
chain, bare_chain, fanout, bare_fanout, validate, validate_one, dag_n, max_chain, max_fanout, max_validate = map(float, sys.argv[1:])
problems = []
if chain / bare_chain > max_chain:
    problems.append(f"the chain ran at {chain / bare_chain:.2f}x the bare spawns (limit {max_chain})")
if fanout / bare_fanout > max_fanout:
    problems.append(f"the fan-out ran at {fanout / bare_fanout:.2f}x the bare spawns (limit {max_fanout})")
# The process's own start (a 1-step file) is not the validation's cost.
per_1000 = (validate - validate_one) * 1000 / (dag_n / 1000)
if per_1000 > max_validate:
    problems.append(f"validation took {per_1000:.1f} ms per 1,000 steps (limit {max_validate})")
print("; ".join(problems))
PY
)
if [ -n "$regressions" ]; then
    echo "REGRESSION: $regressions (rerun on a quiet machine before believing it; limits in the header)" >&2
    exit 1
fi
