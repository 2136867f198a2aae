#!/bin/sh
# The demo's deploy command (pipelines/mlops.yaml and retrain.yaml, `uses: deploy`): starts
# serve.py for the version in $SLUICE_MODEL_DIR on 127.0.0.1:$PORT (default 18080) and returns
# once it listens. The deploy step's process group is killed when this returns, so the server
# runs in its own session (setsid -f); serve.py stops the previous server (pidfile), listens,
# then writes its pid, which is what this waits for. State: $SLUICE_DATA_DIR/serving/.
set -eu
PORT=${PORT:-18080}
STATE="$SLUICE_DATA_DIR/serving"
mkdir -p "$STATE"
old=$(cat "$STATE/serve.pid" 2>/dev/null || true)
setsid -f python3 serve.py --model "$SLUICE_MODEL_DIR" --port "$PORT" \
    --pidfile "$STATE/serve.pid" --version "$SLUICE_MODEL_VERSION" \
    >> "$STATE/serve.log" 2>&1 < /dev/null
for _ in $(seq 150); do
    pid=$(cat "$STATE/serve.pid" 2>/dev/null || true)
    if [ -n "$pid" ] && [ "$pid" != "$old" ]; then
        echo "serving mlops:$SLUICE_MODEL_VERSION on 127.0.0.1:$PORT (pid $pid)"
        exit 0
    fi
    sleep 0.1
done
echo "serve.py did not start; the end of $STATE/serve.log:" >&2
tail -n 5 "$STATE/serve.log" >&2
exit 1
