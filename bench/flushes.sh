#!/usr/bin/env bash
# Two builds of `sluice` side by side, interleaved so the machine's drift hits both: per round and
# per build, a fresh redis-server, scheduler and two workers (2 slots each), one 5000-step no-op
# fan-out and one 1000-step no-op chain, with the scheduler's flush syscalls (sync_file_range,
# fdatasync, fsync) counted by `strace -c` (which slows every process it traces, so compare the
# builds' wall times with each other only).
#
#   bench/flushes.sh OLD_SLUICE NEW_SLUICE [ROUNDS]      default 3 rounds
#
# Prints one line per run: round, build, workload, wall (scheduler's), CPU seconds of the
# scheduler and of both workers, status, flush calls.
set -u
cd "$(dirname "$0")/.."
OLD=$1; NEW=$2; ROUNDS=${3:-3}
W=$(mktemp -d); mkdir -p $W/pipelines
python3 bench/gen.py fanout 5000 --noop --name fanout-noop --parallelism 10000 > $W/pipelines/fanout-noop.yaml
python3 bench/gen.py chain 1000 --noop --name chain-noop --parallelism 10000 > $W/pipelines/chain-noop.yaml
python3 bench/gen.py chain 10 --noop --name warm --parallelism 10000 > $W/pipelines/warm.yaml
free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
for round in $(seq "$ROUNDS"); do for which in old new; do
  if [ $which = old ]; then BIN=$OLD; else BIN=$NEW; fi
  rm -rf $W/data $W/w1 $W/w2; mkdir -p $W/w1 $W/w2
  RP=$(free_port); redis-server --port $RP --bind 127.0.0.1 --save '' --appendonly no >/dev/null 2>&1 & R=$!
  sleep 0.3
  RUST_LOG=warn $BIN scheduler --pipelines $W/pipelines --data-dir $W/data --redis redis://127.0.0.1:$RP/ --listen 127.0.0.1:0 > $W/s.out 2>$W/s.err & S=$!
  for _ in $(seq 500); do grep -q '^sluice listening on ' $W/s.out && break; sleep 0.01; done
  URL=$(sed -n 's/^sluice listening on //p' $W/s.out | head -1)
  (cd $W/w1 && RUST_LOG=warn exec $BIN worker --redis redis://127.0.0.1:$RP/ --name w1 --slots 2 >/dev/null 2>&1) & A=$!
  (cd $W/w2 && RUST_LOG=warn exec $BIN worker --redis redis://127.0.0.1:$RP/ --name w2 --slots 2 >/dev/null 2>&1) & B=$!
  sleep 2
  python3 bench/sluice_api.py measure $URL warm --pids $S,$A,$B,$R --quiet 1 > /dev/null
  for wl in fanout-noop chain-noop; do
    strace -f -c -e trace=sync_file_range,fdatasync,fsync -o $W/strace.txt -p $S 2>/dev/null & T=$!
    sleep 0.5
    python3 bench/sluice_api.py measure $URL $wl --pids $S,$A,$B,$R --quiet 0.3 --quiet-wait 30 > $W/m.json
    kill -INT $T; wait $T 2>/dev/null
    calls=$(awk '/sync_file_range|fdatasync|fsync/ {s+=$4} END {print s+0}' $W/strace.txt)
    python3 -c "import json;d=json.load(open('$W/m.json'));print('round $round $which $wl wall', d['wall_s'], 'sched_cpu', d['cpu_s'][0], 'workers_cpu', round(d['cpu_s'][1]+d['cpu_s'][2],2), 'status', d['status'], 'flush_calls', $calls)"
  done
  kill $A $B $S; wait $A $B $S 2>/dev/null; kill $R; wait $R 2>/dev/null
done; done
rm -rf $W
