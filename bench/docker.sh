#!/usr/bin/env bash
# Per-step overhead of a container step against `docker run --rm IMAGE true` of the same image,
# measured in the same run.
#
#   bench/docker.sh [STEPS] [REPEAT]        defaults: 20 3
#
# Sluice runs a chain of STEPS container steps (`true` in the test image); the baseline runs
# `docker run --rm IMAGE true` STEPS times in a loop. Both are sequential, so the difference per
# step is Sluice's own cost around a container's life. Needs the test image (tests/docker).
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${1:-20}
REPEAT=${2:-3}
IMAGE=sluice-test-busybox
cargo build --release -q -p sluice
SLUICE=$PWD/target/release/sluice
docker image inspect "$IMAGE" > /dev/null 2>&1 || {
    ctx=$(mktemp -d); cp /bin/busybox tests/docker/Dockerfile "$ctx"/; docker build -q -t "$IMAGE" "$ctx" > /dev/null; rm -rf "$ctx"; }
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
{
    echo "name: bench-docker"
    echo "defaults: {image: $IMAGE, pull: never}"
    echo "steps:"
    for i in $(seq 0 $((STEPS - 1))); do
        echo "  s$i:"
        echo "    command: [\"true\"]"
        [ "$i" -gt 0 ] && echo "    depends: [s$((i - 1))]"
    done
} > "$WORK/chain.yaml"
seconds() { python3 -c "import sys; print(f'{(int(sys.argv[2]) - int(sys.argv[1])) / 1e9:.3f}')" "$@"; }
median() { sort -n | sed -n "$(( (REPEAT + 1) / 2 ))p"; }
bare=() run=()
for _ in $(seq "$REPEAT"); do
    start=$(date +%s%N)
    for _ in $(seq "$STEPS"); do docker run --rm "$IMAGE" true; done
    bare+=("$(seconds "$start" "$(date +%s%N)")")
    rm -rf "$WORK/data"
    start=$(date +%s%N)
    "$SLUICE" run "$WORK/chain.yaml" --data-dir "$WORK/data" > /dev/null
    run+=("$(seconds "$start" "$(date +%s%N)")")
done
b=$(printf '%s\n' "${bare[@]}" | median)
r=$(printf '%s\n' "${run[@]}" | median)
python3 - "$STEPS" "$b" "$r" <<'PY'
import sys
steps, bare, run = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
print("| workload | sluice run | baseline | ratio | per step: sluice / docker run |")
print("| --- | --- | --- | --- | --- |")
print(f"| {steps} container steps of `true`, in a chain | {run:.3f} s | {bare:.3f} s ({steps} x `docker run --rm IMAGE true`) | {run / bare:.2f} | {run / steps * 1000:.0f} ms / {bare / steps * 1000:.0f} ms |")
PY
