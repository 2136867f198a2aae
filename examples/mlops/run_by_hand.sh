#!/usr/bin/env bash
# Run the MLOps demo steps the way the Sluice orchestrator would, without it.
#
# Each step gets its own empty SLUICE_OUT directory, a SLUICE_IN directory of
# symlinks to the output directories of all its (transitive) upstream steps,
# and the PARAM_* / SLUICE_* environment variables.  The whole loop runs
# twice against one data directory (so one model registry):
#   run 1: PARAM_DRIFT_SHIFT=0    -> expect drift=false, retrain skipped
#   run 2: PARAM_DRIFT_SHIFT=0.5  -> expect drift=true, retrain runs
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
    [register]="ingest version train validate"
    [deploy]="ingest version train validate register"
    [monitor]="ingest"
    [retrain]="ingest version monitor"
)

export SLUICE_PIPELINE=mlops
export SLUICE_DATA_DIR="$BASE/data"
export PARAM_DATASET=data/breast_cancer.csv
export PARAM_SEED=7
export PARAM_MIN_ACCURACY=0.9
export PARAM_DRIFT_THRESHOLD=0.2
export PARAM_REGISTRY=""
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

# output RUN_DIR STEP KEY: value of one key=value output of a finished step.
output() {
    sed -n "s/^$3=//p" "$1/$2/outputs" | tail -n 1
}

# run_pipeline RUN_ID DRIFT_SHIFT: the whole loop, retrain only on drift.
run_pipeline() {
    export SLUICE_RUN_ID=$1 PARAM_DRIFT_SHIFT=$2
    local run_dir="$BASE/runs/$1"
    echo "=== run $1 (PARAM_DRIFT_SHIFT=$2)"
    for step in ingest version train validate register deploy monitor; do
        run_step "$run_dir" "$step"
    done
    if [[ $(output "$run_dir" monitor drift) == true ]]; then
        run_step "$run_dir" retrain
    else
        echo "--- retrain skipped (monitor: drift=false)"
    fi
}

start=$(date +%s.%N)
run_pipeline run-1 0
run_pipeline run-2 0.5
end=$(date +%s.%N)

echo "=== registry $SLUICE_DATA_DIR/registry/mlops"
(cd "$SLUICE_DATA_DIR/registry/mlops" && ls -d v* production.json)
echo "production.json -> version $(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["version"])' \
    "$SLUICE_DATA_DIR/registry/mlops/production.json")"
awk -v s="$start" -v e="$end" 'BEGIN { printf "=== all steps took %.1f s\n", e - s }'
