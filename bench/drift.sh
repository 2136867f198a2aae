#!/usr/bin/env bash
# Drift benchmark: `uses: drift` on ROWS rows x 20 numeric columns (reference and current, each
# about 150 MB of CSV at the default size), against Evidently's DataDriftPreset on the same files.
#
#   bench/drift.sh [ROWS]     default 1000000; needs ~1 GiB free in $TMPDIR and, unless
#                             SLUICE_DRIFT_VENV names a venv that has them, PyPI for numpy
#                             (the data) and evidently (the baseline, skipped if it won't install)
#
# Sluice: `drift::compare` (read and parse both files, sort, score; the code `uses: drift` runs)
# in the release build of worker/examples/drift_bench.rs, as one
# process. Evidently: `pandas.read_csv` of both files and `Report([DataDriftPreset()]).run`, as
# one Python process. For each, one run: wall seconds of the process and its peak RSS
# (`/usr/bin/time -v`). With 1,000,000 reference rows both pick normed Wasserstein for every
# column; the script checks that both give the same scores and verdicts. Prints a Markdown table.
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS=${1:-1000000}
VENV=${SLUICE_DRIFT_VENV:-target/drift-bench-venv}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

[ -x /usr/bin/time ] || { echo "needs GNU time at /usr/bin/time (apt-get install time)" >&2; exit 1; }

# The comparison, release build (worker/examples/drift_bench.rs).
cargo build --release -q -p sluice-worker --example drift_bench
BIN=target/release/examples/drift_bench
[ -x "$BIN" ] || { echo "no drift_bench binary" >&2; exit 1; }

# Python for the data, and Evidently if it installs.
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
PY=$VENV/bin/python
"$PY" -c 'import numpy' 2> /dev/null || "$VENV/bin/pip" install -q numpy
EVIDENTLY=yes
if ! "$PY" -c 'import evidently.legacy.report' 2> /dev/null; then
    # Evidently 0.7 imports a pandas helper that pandas 3 removed.
    "$VENV/bin/pip" install -q evidently 'pandas<3' > "$WORK/pip.log" 2>&1 || true
    "$PY" -c 'import evidently.legacy.report' 2> /dev/null || EVIDENTLY=no
fi

# 20 columns; the current file's last 10 are shifted by 0.2 of a standard deviation (drift).
"$PY" - "$WORK" "$ROWS" <<'PY'
import sys
import numpy as np
work, rows = sys.argv[1], int(sys.argv[2])
rng = np.random.default_rng(7)
header = ",".join(f"c{i:02d}" for i in range(20))
for name, shift in [("reference", 0.0), ("current", 0.2)]:
    with open(f"{work}/{name}.csv", "w") as f:
        f.write(header + "\n")
        for start in range(0, rows, 100_000):
            n = min(100_000, rows - start)
            block = rng.normal(10.0, 2.0, size=(n, 20))
            block[:, 10:] += shift * 2.0
            np.savetxt(f, block, fmt="%.6f", delimiter=",")
PY
cat "$WORK/reference.csv" "$WORK/current.csv" > /dev/null # into the page cache for both
size=$(du -m "$WORK/reference.csv" | cut -f1)

# peak_mib FILE: the peak RSS (MiB) that /usr/bin/time -v wrote to FILE.
peak_mib() { awk -F: '/Maximum resident set size/ {printf "%d", $2 / 1024}' "$1"; }
now() { date +%s%N; }

start=$(now)
/usr/bin/time -v -o "$WORK/sluice.time" \
    "$BIN" "$WORK" > "$WORK/sluice.out" 2>&1 \
    || { cat "$WORK/sluice.out" >&2; exit 1; }
end=$(now)
ours=$(echo "scale=3; ($end - $start) / 1000000000" | bc)
ours_rss=$(peak_mib "$WORK/sluice.time")
inner=$(sed -n 's/.*drift-bench seconds=\([0-9.]*\).*/\1/p' "$WORK/sluice.out")
verdict=$(sed -n 's/.*drift-bench .*\(columns=.*\)/\1/p' "$WORK/sluice.out")

echo "Data: $ROWS rows x 20 numeric columns per file, ${size} MB of CSV each; $(nproc) cores."
echo
echo "| measurement | Sluice | Evidently | ratio |"
echo "| --- | --- | --- | --- |"
if [ "$EVIDENTLY" = yes ]; then
    cat > "$WORK/evidently_run.py" <<'PY'
import json, sys, time
import pandas as pd
from evidently.legacy.metric_preset import DataDriftPreset
from evidently.legacy.report import Report
work = sys.argv[1]
started = time.time()
reference = pd.read_csv(f"{work}/reference.csv")
current = pd.read_csv(f"{work}/current.csv")
report = Report(metrics=[DataDriftPreset()])
report.run(reference_data=reference, current_data=current)
result = report.as_dict()
print(f"evidently-bench seconds={time.time() - started:.3f}")
table = next(m["result"] for m in result["metrics"] if "drift_by_columns" in m["result"])
with open(f"{work}/evidently.json", "w") as f:
    json.dump(table["drift_by_columns"], f)
PY
    start=$(now)
    /usr/bin/time -v -o "$WORK/ev.time" "$PY" "$WORK/evidently_run.py" "$WORK" > "$WORK/ev.out" 2>&1 \
        || { cat "$WORK/ev.out" >&2; exit 1; }
    end=$(now)
    theirs=$(echo "scale=3; ($end - $start) / 1000000000" | bc)
    theirs_rss=$(peak_mib "$WORK/ev.time")
    echo "| wall time, whole process | ${ours} s | ${theirs} s | $(echo "scale=1; $theirs / $ours" | bc)x faster |"
    echo "| peak RSS | ${ours_rss} MiB | ${theirs_rss} MiB | $(echo "scale=1; $theirs_rss / $ours_rss" | bc)x less |"
    agreement=$("$PY" - "$WORK" <<'PY'
import json, sys
work = sys.argv[1]
ours = json.load(open(f"{work}/sluice.json"))["columns"]
theirs = json.load(open(f"{work}/evidently.json"))
worst, verdicts = 0.0, 0
for name, col in theirs.items():
    mine = ours[name]
    worst = max(worst, abs(mine["score"] - col["drift_score"]) / abs(col["drift_score"]))
    verdicts += mine["drifted"] == col["drift_detected"]
print(f"{verdicts}/{len(theirs)} verdicts agree, largest relative score difference {worst:.1e}")
PY
)
    echo
    echo "Sluice's comparison alone (in-process): ${inner} s; ${verdict}. Against Evidently: ${agreement}."
else
    echo "| wall time, whole process | ${ours} s | not run | |"
    echo "| peak RSS | ${ours_rss} MiB | not run | |"
    echo
    echo "Sluice's comparison alone (in-process): ${inner} s; ${verdict}."
    echo "Evidently is not installed and \`pip install evidently\` failed (see below); no ratio."
    tail -5 "$WORK/pip.log" 2> /dev/null || true
fi
