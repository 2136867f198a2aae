#!/usr/bin/env bash
# Artifact benchmarks, each against a baseline measured in the same run (machines are noisy).
#
#   bench/artifacts.sh [REPEAT]        default 3; needs ~4 GiB free in $TMPDIR
#
# 1. Hashing a 1 GiB file: `sluice artifacts hash` (BLAKE3, fresh hash cache) against `b3sum`
#    (which maps the file into memory) and `b3sum --no-mmap` (which reads it, as Sluice does), with
#    `md5sum` (DVC's hash) and `sha256sum` beside them.
# 2. Re-hashing an unchanged 10,000-file folder (the hash cache answers) against its first hash.
# 3. A cached step: `sluice run` of a 200-step chain of `cache: true` steps whose keys all hit,
#    against the same chain of `uses: noop` steps (per step: the difference over 200).
# 4. Materialising a 1 GiB input already in the store (hard links; run as an unprivileged user,
#    for whom links are safe) against `cp` of the same file on the same disk.
# 5. Moving 1 GiB through the S3 backend (moto's server, when installed): peak RSS of a
#    `sluice run` that uploads a 1 GiB output and fetches it as the next step's input.
# Each figure is the median of REPEAT runs. Prints a Markdown table for BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
REPEAT=${1:-3}
cargo build --release -q -p sluice
SLUICE=$PWD/target/release/sluice
WORK=$(mktemp -d)
chmod 755 "$WORK"
trap 'rm -rf "$WORK"; [ -n "${MOTO_PID:-}" ] && kill "$MOTO_PID" 2>/dev/null || true' EXIT

median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
# seconds CMD...: wall seconds of one run of CMD (output discarded).
seconds() {
    local start end
    start=$(date +%s%N)
    "$@" > /dev/null 2>&1
    end=$(date +%s%N)
    echo "scale=6; ($end - $start) / 1000000000" | bc
}
# med CMD...: median of REPEAT runs.
med() { for _ in $(seq "$REPEAT"); do seconds "$@"; done | median; }
ratio() { echo "scale=3; $1 / $2" | bc; }

echo "| measurement | Sluice | baseline | ratio |"
echo "| --- | --- | --- | --- |"

# 1. One 1 GiB file, in the page cache for everyone (read once first).
head -c 1073741824 /dev/urandom > "$WORK/big"
cat "$WORK/big" > /dev/null
fresh_hash() { rm -rf "$WORK/hd"; "$SLUICE" artifacts hash "$WORK/big" --data-dir "$WORK/hd"; }
ours=$(med fresh_hash)
b3=$(med b3sum "$WORK/big")
b3read=$(med b3sum --no-mmap "$WORK/big")
md5=$(med md5sum "$WORK/big")
sha=$(med sha256sum "$WORK/big")
echo "| hash 1 GiB (BLAKE3) vs b3sum | ${ours} s | ${b3} s | $(ratio "$ours" "$b3")x |"
echo "| hash 1 GiB vs b3sum --no-mmap (reads, as Sluice does) | ${ours} s | ${b3read} s | $(ratio "$ours" "$b3read")x |"
echo "| md5sum (DVC's hash), sha256sum of the same file | | ${md5} s, ${sha} s | $(ratio "$ours" "$md5")x, $(ratio "$ours" "$sha")x |"

# 2. 10,000 small files; the hash cache does not trust files changed in the last 2 s.
mkdir -p "$WORK/many"
python3 - "$WORK/many" <<'PY'
import os, sys
root = sys.argv[1]
for i in range(10000):
    d = os.path.join(root, f"d{i % 100:02d}")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"f{i}.txt"), "w") as f:
        f.write(f"row {i}\n" * 50)
PY
sleep 3
first_hash() { rm -rf "$WORK/md"; "$SLUICE" artifacts hash "$WORK/many" --data-dir "$WORK/md"; }
first=$(med first_hash)
"$SLUICE" artifacts hash "$WORK/many" --data-dir "$WORK/md2" > /dev/null
again=$(med "$SLUICE" artifacts hash "$WORK/many" --data-dir "$WORK/md2")
echo "| re-hash unchanged 10,000-file folder vs first hash | ${again} s | ${first} s | $(ratio "$again" "$first")x |"

# 3. 200 cached steps against 200 noop steps.
python3 - "$WORK" <<'PY'
import sys
work = sys.argv[1]
for name, body in [("cached", "    cache: true\n    run: 'true'\n"), ("noop", "    uses: noop\n")]:
    with open(f"{work}/{name}.yaml", "w") as f:
        f.write(f"name: {name}\nsteps:\n")
        for i in range(200):
            f.write(f"  s{i}:\n")
            if i:
                f.write(f"    depends: [s{i-1}]\n")
            f.write(body)
PY
"$SLUICE" run "$WORK/cached.yaml" --data-dir "$WORK/cd" > /dev/null
hits=$(med "$SLUICE" run "$WORK/cached.yaml" --data-dir "$WORK/cd")
"$SLUICE" run "$WORK/cached.yaml" --data-dir "$WORK/cd" | grep cached > /dev/null || { echo "the cached chain did not hit" >&2; exit 1; }
noops=$(med "$SLUICE" run "$WORK/noop.yaml" --data-dir "$WORK/nd")
per_step=$(echo "scale=3; ($hits - $noops) * 1000 / 200" | bc)
echo "| 200 cached steps vs 200 noop steps | ${hits} s | ${noops} s | $(ratio "$hits" "$noops")x; ${per_step} ms per cached step over a noop |"

# 4. Materialise 1 GiB from a local store, as an unprivileged user.
cat > "$WORK/mat.yaml" <<'YAML'
name: mat
steps:
  make:
    run: cp "$BIG" "$SLUICE_OUT/big"
    env: {BIG: BIGFILE}
    outputs: [big]
  use:
    depends: [make]
    run: test -f "$SLUICE_IN/make/big"
YAML
sed -i "s|BIGFILE|$WORK/big|" "$WORK/mat.yaml"
chmod 644 "$WORK/big"
mkdir -p "$WORK/matdata" && chown -R 65534:65534 "$WORK/matdata"
as_nobody() { setpriv --reuid=65534 --regid=65534 --clear-groups "$@"; }
as_nobody "$SLUICE" run "$WORK/mat.yaml" --data-dir "$WORK/matdata" > /dev/null
use_ms() {
    as_nobody "$SLUICE" run "$WORK/mat.yaml" --data-dir "$WORK/matdata" --no-cache > /dev/null
    local run
    run=$(as_nobody "$SLUICE" runs --json --limit 1 --data-dir "$WORK/matdata" | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["id"])')
    # The step's attempt from queued to finished: materialising is part of it.
    as_nobody "$SLUICE" show "$run" --json --data-dir "$WORK/matdata" | python3 -c '
import json, sys
s = [x for x in json.load(sys.stdin)["steps"] if x["name"] == "use"][0]["attempts"][0]
print((s["finished_ms"] - s["queued_ms"]) / 1000)'
}
mats=$(for _ in $(seq "$REPEAT"); do use_ms; done | median)
copy() { rm -f "$WORK/copy"; cp "$WORK/big" "$WORK/copy"; }
cps=$(med copy)
echo "| materialise a 1 GiB input in the store (step queued to done) vs cp | ${mats} s | ${cps} s | $(ratio "$mats" "$cps")x |"

# 5. 1 GiB through S3 (moto), peak RSS of the whole embedded run.
MOTO=${SLUICE_MOTO_SERVER:-target/moto-venv/bin/moto_server}
if [ -x "$MOTO" ]; then
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    "$MOTO" -H 127.0.0.1 -p "$port" > /dev/null 2>&1 & MOTO_PID=$!
    for _ in $(seq 50); do curl -s "http://127.0.0.1:$port" > /dev/null && break; sleep 0.2; done
    curl -s -X PUT "http://127.0.0.1:$port/bench" > /dev/null
    sed "s|run: test -f|run: cmp \"\$BIG\"|; s|\"\$SLUICE_IN/make/big\"|\"\$SLUICE_IN/make/big\"|" "$WORK/mat.yaml" > "$WORK/s3.yaml"
    python3 - "$WORK/s3.yaml" "$WORK/big" <<'PY'
import sys
p, big = sys.argv[1], sys.argv[2]
t = open(p).read().replace("  use:\n    depends: [make]\n", f"  use:\n    depends: [make]\n    env: {{BIG: {big}}}\n")
open(p, "w").write(t)
PY
    export AWS_ENDPOINT_URL=http://127.0.0.1:$port AWS_ACCESS_KEY_ID=x AWS_SECRET_ACCESS_KEY=x AWS_REGION=us-east-1
    /usr/bin/time -f "%M" -o "$WORK/rss" "$SLUICE" run "$WORK/s3.yaml" --data-dir "$WORK/s3data" --artifacts s3://bench/p > "$WORK/s3.out" 2>&1 || { cat "$WORK/s3.out" >&2; exit 1; }
    rss=$(( $(cat "$WORK/rss") / 1024 ))
    /usr/bin/time -f "%M" -o "$WORK/rss0" "$SLUICE" run "$WORK/noop.yaml" --data-dir "$WORK/nd2" > /dev/null 2>&1
    rss0=$(( $(cat "$WORK/rss0") / 1024 ))
    echo "| peak RSS: upload + fetch 1 GiB through S3 (moto) vs a 200-noop-step run | ${rss} MiB | ${rss0} MiB | $(ratio "$rss" "$rss0")x |"
else
    echo "| 1 GiB through S3 | moto_server not installed | | |"
fi
