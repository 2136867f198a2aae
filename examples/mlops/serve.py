"""Serve a registered model over HTTP (started by the pipeline's `deploy` step).

    python3 serve.py --model DIR --port PORT --pidfile FILE [--version N] [--host ADDR]

ADDR is the address listened on, 127.0.0.1 unless given (a server in a
container listens on 0.0.0.0, or a published port cannot reach it).

DIR holds the model.json written by train.py.  Endpoints:
  GET  /health           200 {"status": "ok", "version": N, ...}
  GET  /predict?f1=..    one row as query parameters named like the features
  POST /predict          {"features": [...]} or {"rows": [[...], ...]} or
                         {"feature_name": value, ...}
Answers are JSON: {"version": N, "predictions": [{"target": 0|1, "probability": p}]}.

Replacing a running server: the pid in --pidfile (if it is a serve.py) is
stopped first, the port is bound (retrying while the old process lets go of
it), and only then is this process's pid written to --pidfile, so whoever
waits for the pidfile knows the server is listening.  Only the standard
library is used.
"""

import argparse
import json
import os
import signal
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import common


def stop_previous(pidfile):
    """SIGTERM the server whose pid is in `pidfile`, if it is one of ours."""
    try:
        with open(pidfile, encoding="utf-8") as f:
            pid = int(f.read().strip())
    except (OSError, ValueError):
        return
    if pid == os.getpid():
        return
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            if b"serve.py" not in f.read():
                return  # the pid was reused by something else: leave it alone
    except OSError:
        pass  # no /proc (or the process is gone): kill() below decides
    try:
        os.kill(pid, signal.SIGTERM)
    except OSError:
        pass


def bind(host, port, tries=100):
    """Bind the server, retrying for ~10 s while a stopped server frees the port."""
    for attempt in range(tries):
        try:
            return ThreadingHTTPServer((host, port), Handler)
        except OSError as err:
            if attempt == tries - 1:
                raise common.StepError(f"cannot listen on {host}:{port}: {err}")
            time.sleep(0.1)
    raise AssertionError("unreachable")


class Handler(BaseHTTPRequestHandler):
    model = None
    version = None

    def log_message(self, fmt, *args):
        sys.stderr.write("serve: " + (fmt % args) + "\n")

    def answer(self, status, body):
        data = (json.dumps(body) + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def predict(self, rows):
        names = self.model["feature_names"]
        out = []
        for row in rows:
            if isinstance(row, dict):
                missing = [n for n in names if n not in row]
                if missing:
                    raise ValueError(f"missing features: {', '.join(missing[:3])}...")
                row = [row[n] for n in names]
            if not isinstance(row, list) or len(row) != len(names):
                raise ValueError(f"a row needs {len(names)} feature values")
            p = common.predict_proba(self.model, [float(v) for v in row])
            out.append({"target": 1 if p >= 0.5 else 0, "probability": round(p, 6)})
        self.answer(200, {"version": self.version, "predictions": out})

    def do_GET(self):
        url = urlparse(self.path)
        if url.path == "/health":
            self.answer(
                200,
                {
                    "status": "ok",
                    "version": self.version,
                    "data_version": self.model.get("data_version"),
                    "features": len(self.model["feature_names"]),
                },
            )
        elif url.path == "/predict":
            query = {k: v[-1] for k, v in parse_qs(url.query).items()}
            try:
                self.predict([query])
            except ValueError as err:
                self.answer(400, {"error": str(err)})
        else:
            self.answer(404, {"error": f"no route {url.path}"})

    def do_POST(self):
        if urlparse(self.path).path != "/predict":
            self.answer(404, {"error": f"no route {self.path}"})
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length) or b"{}")
            if isinstance(body, dict) and "rows" in body:
                rows = body["rows"]
            elif isinstance(body, dict) and "features" in body:
                rows = [body["features"]]
            else:
                rows = [body]
            self.predict(rows)
        except (ValueError, TypeError) as err:
            self.answer(400, {"error": str(err)})


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="folder holding model.json")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--pidfile", required=True)
    parser.add_argument("--version", default=None)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    args = parser.parse_args()

    path = os.path.join(args.model, "model.json")
    if not os.path.isfile(path):
        raise common.StepError(f"no model.json in {args.model}")
    Handler.model = common.read_json(path)
    Handler.version = args.version

    stop_previous(args.pidfile)
    server = bind(args.host, args.port)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    tmp = f"{args.pidfile}.{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(f"{os.getpid()}\n")
    os.replace(tmp, args.pidfile)
    print(f"serving model version {args.version} from {path} on {args.host}:{args.port}")
    sys.stdout.flush()
    try:
        server.serve_forever()
    finally:
        server.server_close()


if __name__ == "__main__":
    common.run_step(main)
