#!/usr/bin/env bash
# Run the script steps of the MLOps demo the way the Sluice orchestrator would,
# without it.
#
# Each step gets its own empty SLUICE_OUT directory, a SLUICE_IN directory of
# symlinks to the output directories of all its (transitive) upstream steps,
# and the PARAM_* / SLUICE_* environment variables.  gate, register, deploy
# and drift are Sluice built-ins (`uses:`), so they are not run here:
# ingest, version, train and validate run, then refit.py, retrain.yaml's train step (which
# Sluice runs after repeated drift) on a batch shifted with PARAM_DRIFT_SHIFT=0.5, and finally
# serve.py serves the trained model for a moment and answers /health.
# Set KEEP=1 to keep the temporary directory for inspection.
set -euo pipefail

cd "$(dirname "$0")"
BASE=$(mktemp -d "${TMPDIR:-/tmp}/sluice-mlops.XXXXXX")
if [[ "${KEEP:-0}" == 1 ]]; then
    echo "keeping $BASE"
else
    trap 'rm -rf "$BASE"' EXIT
fi

# Transitive upstream steps of each step (what the orchestrator puts in SLUICE_IN).
declare -A UPSTREAM=(
    [ingest]=""
    [version]="ingest"
    [train]="ingest version"
    [validate]="ingest version train"
    [refit]="ingest version"
)

export SLUICE_PIPELINE=mlops
export SLUICE_DATA_DIR="$BASE/data"
export PARAM_DATASET=data/breast_cancer.csv
export PARAM_SEED=7
export PARAM_DRIFT_SHIFT=0.5
mkdir -p "$SLUICE_DATA_DIR"

# run_step RUN_DIR STEP: run STEP.py with a fresh OUT and an IN of symlinks.
run_step() {
    local run_dir=$1 step=$2 dir="$1/$2"
    mkdir -p "$dir/out" "$dir/in"
    for up in ${UPSTREAM[$step]}; do
        ln -s "$run_dir/$up/out" "$dir/in/$up"
    done
    : >"$dir/outputs"
    echo "--- $step"
    SLUICE_STEP=$step SLUICE_ATTEMPT=1 \
    SLUICE_OUT="$dir/out" SLUICE_IN="$dir/in" \
    SLUICE_OUTPUTS="$dir/outputs" SLUICE_METRICS="$dir/metrics.json" \
        python3 -B "$step.py" | sed 's/^/    /'
    echo "    outputs: $(paste -sd ' ' "$dir/outputs")"
}

export SLUICE_RUN_ID=by-hand
RUN_DIR="$BASE/runs/by-hand"
start=$(date +%s.%N)
for step in ingest version train validate refit; do
    run_step "$RUN_DIR" "$step"
done

PORT=${PORT:-18080}
PIDFILE="$SLUICE_DATA_DIR/serve.pid"
echo "--- serve.py on 127.0.0.1:$PORT"
python3 -B serve.py --model "$RUN_DIR/train/out" --port "$PORT" --pidfile "$PIDFILE" \
    --version by-hand >"$SLUICE_DATA_DIR/serve.log" 2>&1 &
for _ in $(seq 100); do [[ -s $PIDFILE ]] && break; sleep 0.1; done
python3 -c 'import sys, urllib.request; print("    /health:", urllib.request.urlopen(sys.argv[1]).read().decode().strip())' \
    "http://127.0.0.1:$PORT/health"
kill "$(cat "$PIDFILE")"
end=$(date +%s.%N)
awk -v s="$start" -v e="$end" 'BEGIN { printf "=== all steps took %.1f s\n", e - s }'
