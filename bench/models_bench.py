#!/usr/bin/env python3
"""The model registry's cost to a run, for bench/models.sh (standard library only).

    bench/models_bench.py SLUICE WORK RUNS PROMOTES

Writes five pipelines into WORK/pipelines (each starts with the same `train` step, which writes
a 64 KiB model file as its declared output and two metrics):

    base       train
    noop1      train -> check (uses: noop)                       one more step, no registry work
    noop2      train -> check -> publish (both uses: noop)       two more steps
    gate       train -> gate (uses: gate, compare_to bench@production, max_regression)
    register   train -> gate -> register (uses: register, alias staging)

Each gets a data dir of its own, seeded with one run of `register` and `sluice models promote
bench 1 --alias production`, so every gate compares against a registered version, as it would
in real use; then one unmeasured run of its own. Measured:

1. Embedded: RUNS rounds; each round runs every pipeline once with `sluice run FILE --data-dir
   DIR` (order rotated each round), timing the whole process. The register data dir gains a
   version, a history entry and a step effect per run. Reported: median wall per pipeline and
   the median of the per-round differences (paired: same round, same noise), with p25-p75.
   From each run's record (`sluice show ID --json`): each step's last attempt queued -> finished
   (whole milliseconds), which for gate and register is where the scheduler does their work.
2. Promote, local: PROMOTES rounds of `sluice models promote bench V --alias production`
   (V alternating between two versions, so every call moves the alias and writes its history
   entry, flushed) against `sluice models ls` and `sluice models show bench@production` on the
   same data dir (process start, store open, a read).
3. Promote through the API: `sluice server` on the register data dir; curl's time_total for
   `POST /api/v1/models/bench/aliases/production` against `GET /api/v1/models` and
   `GET /healthz`; and the CLI with `--server` (promote against `models ls --server`).
4. Through the daemon: RUNS rounds of each pipeline triggered through the same `sluice server`
   (`POST /api/v1/pipelines/P/runs`, then polling every 5 ms), with the run's wall as the server
   recorded it (finished_ms - created_ms) and the steps' queued -> finished.
5. With strace installed: the flush syscalls of one embedded run of each pipeline.

Prints Markdown tables; raw numbers go to WORK/raw.json.
"""
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request

SLUICE, WORK, RUNS, PROMOTES = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
PIPES = os.path.join(WORK, "pipelines")
MODEL = "bench"

TRAIN = """  train:
    run: |
      head -c 65536 /dev/urandom > "$SLUICE_OUT/model.bin"
      echo '{"accuracy": 0.93, "loss": 0.21}' > "$SLUICE_METRICS"
    outputs: [model.bin]
"""
GATE = """  gate:
    depends: [train]
    uses: gate
    with:
      metrics_from: [train]
      require: {accuracy: ">= 0.9", loss: "<= 0.5"}
      compare_to: bench@production
      max_regression: {accuracy: 0.01}
"""
REGISTER = """  register:
    depends: [gate, train]
    uses: register
    with: {model: bench, from: train/model.bin, alias: staging}
"""
CHECK = """  check:
    depends: [train]
    uses: noop
"""
PUBLISH = """  publish:
    depends: [check, train]
    uses: noop
"""
PIPELINES = {
    "base": TRAIN,
    "noop1": TRAIN + CHECK,
    "noop2": TRAIN + CHECK + PUBLISH,
    "gate": TRAIN + GATE,
    "register": TRAIN + GATE + REGISTER,
}
ORDER = list(PIPELINES)


def pct(values, p):
    """Linear-interpolated percentile (p in 0..100)."""
    s = sorted(values)
    if not s:
        return float("nan")
    k = (len(s) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def med(values):
    return pct(values, 50)


def sluice(*args, check=True):
    out = subprocess.run([SLUICE, *args], capture_output=True, text=True)
    if check and out.returncode != 0:
        sys.exit(f"sluice {' '.join(args)} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    return out.stdout


def timed(argv):
    """Wall milliseconds of one process, its output discarded; exits on failure."""
    t0 = time.perf_counter_ns()
    rc = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode
    ms = (time.perf_counter_ns() - t0) / 1e6
    if rc != 0:
        subprocess.run(argv)
        sys.exit(f"{' '.join(argv)} exited {rc}")
    return ms


def machine_busy_seconds():
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (sum(v[:8]) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")


class Busy:
    """The share of the machine's CPUs busy between start and stop (this benchmark included)."""

    def __enter__(self):
        self.b0, self.t0 = machine_busy_seconds(), time.time()
        return self

    def __exit__(self, *exc):
        self.share = (machine_busy_seconds() - self.b0) / (time.time() - self.t0) / os.cpu_count()


def step_times(detail):
    """Step name -> its last attempt's queued -> finished, ms, from a run's JSON. Checks that a
    gate compared against a registered version (not the thresholds alone)."""
    out = {}
    for step in detail["steps"]:
        gate = step.get("gate")
        if gate is not None and "not registered" in str(gate.get("compared_to")):
            sys.exit(f"the gate of run {detail['run']['id']} compared against nothing: {gate}")
        attempts = step.get("attempts") or []
        if not attempts:
            continue
        a = attempts[-1]
        if a.get("finished_ms") is not None:
            out[step["name"]] = a["finished_ms"] - a["queued_ms"]
    return out


def fmt(ms):
    return f"{ms:.1f} ms"


def spread(values):
    return f"{pct(values, 25):.1f} to {pct(values, 75):.1f}"


def diff_rows(walls, rows):
    """Rows of (label, a, b): the median of per-round a - b."""
    lines = []
    for label, a, b in rows:
        d = [x - y for x, y in zip(walls[a], walls[b])]
        lines.append(f"| {label} | `{a}` - `{b}` | **{fmt(med(d))}** | {spread(d)} |")
    return lines


DIFFS = [
    ("one more step (`uses: noop`)", "noop1", "base"),
    ("`uses: gate` step, whole", "gate", "base"),
    ("`uses: gate` beyond a noop step", "gate", "noop1"),
    ("`uses: register` step, whole (after a gate)", "register", "gate"),
    ("`uses: register` beyond a second noop step", None, None),
    ("gate + register, whole", "register", "base"),
    ("gate + register beyond two noop steps", "register", "noop2"),
]


def print_runs(title, walls, steps, unit_note):
    print(f"#### {title}")
    print()
    print(f"| pipeline | steps | median wall ({unit_note}) | p25 to p75 |")
    print("| --- | --- | --- | --- |")
    for name in ORDER:
        n = len(re.findall(r"^  [a-z0-9_-]+:$", PIPELINES[name], re.M))
        print(f"| `{name}` | {n} | {fmt(med(walls[name]))} | {spread(walls[name])} |")
    print()
    print("| added to a run by | pipelines (per round) | median difference | p25 to p75 |")
    print("| --- | --- | --- | --- |")
    for label, a, b in DIFFS:
        if a is None:
            # (register - gate) - (noop2 - noop1), per round.
            d = [(r - g) - (n2 - n1) for r, g, n2, n1 in
                 zip(walls["register"], walls["gate"], walls["noop2"], walls["noop1"])]
            print(f"| {label} | (`register` - `gate`) - (`noop2` - `noop1`) | **{fmt(med(d))}** | {spread(d)} |")
        else:
            print(*diff_rows(walls, [(label, a, b)]))
    print()
    print("| step (its last attempt, queued to finished, from the run record) | pipeline | median | p25 to p75 | max |")
    print("| --- | --- | --- | --- | --- |")
    for pipeline, step in [("base", "train"), ("noop1", "check"), ("noop2", "publish"),
                           ("gate", "gate"), ("register", "gate"), ("register", "register")]:
        v = steps[pipeline].get(step, [])
        if v:
            print(f"| `{step}` | `{pipeline}` | {med(v):.0f} ms | {pct(v, 25):.0f} to {pct(v, 75):.0f} | {max(v)} ms |")
    print()


def embedded():
    dirs = {name: os.path.join(WORK, f"data-{name}") for name in ORDER}
    files = {name: os.path.join(PIPES, f"{name}.yaml") for name in ORDER}
    for name in ORDER:
        sluice("run", files["register"], "--data-dir", dirs[name])
        sluice("models", "promote", MODEL, "1", "--alias", "production", "--data-dir", dirs[name])
        sluice("run", files[name], "--data-dir", dirs[name])
    walls = {name: [] for name in ORDER}
    with Busy() as busy:
        for r in range(RUNS):
            for i in range(len(ORDER)):
                name = ORDER[(r + i) % len(ORDER)]
                walls[name].append(timed([SLUICE, "run", files[name], "--data-dir", dirs[name]]))
    steps = {name: {} for name in ORDER}
    for name in ORDER:
        runs = json.loads(sluice("runs", "--json", "--limit", str(RUNS), "--data-dir", dirs[name]))
        assert len(runs) == RUNS and all(r["status"] == "succeeded" for r in runs), runs[:2]
        for run in runs:
            detail = json.loads(sluice("show", run["id"], "--json", "--data-dir", dirs[name]))
            for step, ms in step_times(detail).items():
                steps[name].setdefault(step, []).append(ms)
    versions = json.loads(sluice("models", "ls", "--json", "--data-dir", dirs["register"]))
    return walls, steps, busy.share, versions


def promote_local(data):
    ls = [SLUICE, "models", "ls", "--data-dir", data]
    show = [SLUICE, "models", "show", f"{MODEL}@production", "--data-dir", data]
    times = {"promote": [], "ls": [], "show": []}
    with Busy() as busy:
        for r in range(PROMOTES):
            version = "2" if r % 2 == 0 else "3"
            promote = [SLUICE, "models", "promote", MODEL, version, "--alias", "production",
                       "--reason", "bench", "--data-dir", data]
            jobs = [("promote", promote), ("ls", ls), ("show", show)]
            for i in range(3):
                key, argv = jobs[(r + i) % 3]
                times[key].append(timed(argv))
    history = json.loads(sluice("models", "history", MODEL, "--json", "--data-dir", data))
    return times, busy.share, history


def curl_ms(method, url, body=None):
    argv = ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code} %{time_total}", "-X", method, url]
    if body is not None:
        argv += ["-H", "Content-Type: application/json", "--data", body]
    code, total = subprocess.run(argv, capture_output=True, text=True, check=True).stdout.split()
    if not code.startswith("2"):
        sys.exit(f"{method} {url}: HTTP {code}")
    return float(total) * 1000


def api_json(method, url, body=None):
    req = urllib.request.Request(url, method=method, data=body,
                                 headers={"Content-Type": "application/json"} if body else {})
    with urllib.request.urlopen(req, timeout=60) as resp:
        return json.loads(resp.read())


def through_server(data):
    log = open(os.path.join(WORK, "server.log"), "w")
    server = subprocess.Popen(
        [SLUICE, "server", "--pipelines", PIPES, "--data-dir", data, "--listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE, stderr=log, text=True)
    try:
        line = server.stdout.readline()
        if "listening on" not in line:
            sys.exit(f"sluice server did not start: {line!r} (see {log.name})")
        url = line.split()[-1]
        for _ in range(100):
            try:
                urllib.request.urlopen(url + "/healthz", timeout=1).read()
                break
            except OSError:
                time.sleep(0.05)
        promote_url = f"{url}/api/v1/models/{MODEL}/aliases/production"
        times = {"POST promote": [], "GET models": [], "GET healthz": [],
                 "cli promote": [], "cli ls": []}
        with Busy() as busy_api:
            for r in range(PROMOTES):
                version = 2 if r % 2 == 0 else 3
                body = json.dumps({"version": version, "reason": "bench"})
                jobs = [
                    ("POST promote", lambda: curl_ms("POST", promote_url, body)),
                    ("GET models", lambda: curl_ms("GET", f"{url}/api/v1/models")),
                    ("GET healthz", lambda: curl_ms("GET", f"{url}/healthz")),
                ]
                for i in range(3):
                    key, job = jobs[(r + i) % 3]
                    times[key].append(job())
            for r in range(PROMOTES):
                version = "2" if r % 2 == 0 else "3"
                jobs = [
                    ("cli promote", [SLUICE, "models", "promote", MODEL, version, "--alias",
                                     "production", "--reason", "bench", "--server", url]),
                    ("cli ls", [SLUICE, "models", "ls", "--server", url]),
                ]
                for i in range(2):
                    key, argv = jobs[(r + i) % 2]
                    times[key].append(timed(argv))
        # Runs through the daemon. Version 1 holds production again, as in the embedded part.
        api_json("POST", promote_url, json.dumps({"version": 1}).encode())
        walls = {name: [] for name in ORDER}
        steps = {name: {} for name in ORDER}

        def one_run(name):
            run = api_json("POST", f"{url}/api/v1/pipelines/{name}/runs", b"{}")["run"]
            while True:
                detail = api_json("GET", f"{url}/api/v1/runs/{run['id']}")
                if detail["run"]["status"] in ("succeeded", "failed", "cancelled"):
                    break
                time.sleep(0.005)
            if detail["run"]["status"] != "succeeded":
                sys.exit(f"run {run['id']} of {name}: {detail['run']['status']}")
            return detail

        for name in ORDER:
            one_run(name)  # warm
        with Busy() as busy_runs:
            for r in range(RUNS):
                for i in range(len(ORDER)):
                    name = ORDER[(r + i) % len(ORDER)]
                    detail = one_run(name)
                    walls[name].append(detail["run"]["finished_ms"] - detail["run"]["created_ms"])
                    for step, ms in step_times(detail).items():
                        steps[name].setdefault(step, []).append(ms)
        return times, busy_api.share, walls, steps, busy_runs.share
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


FLUSHES = ("fsync", "fdatasync", "sync_file_range", "msync")


def flush_counts():
    """Flush syscalls of one embedded run of each pipeline (`strace -f -c`), on copies of the
    data dirs as the measured runs left them; None without strace."""
    if shutil.which("strace") is None:
        return None
    out = {}
    for name in ORDER:
        data = os.path.join(WORK, f"strace-{name}")
        shutil.copytree(os.path.join(WORK, f"data-{name}"), data, symlinks=True)
        report = os.path.join(WORK, f"strace-{name}.txt")
        subprocess.run(["strace", "-f", "-qq", "-c", "-o", report, "-e",
                        "trace=" + ",".join(FLUSHES), SLUICE, "run",
                        os.path.join(PIPES, f"{name}.yaml"), "--data-dir", data],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        counts = {}
        for line in open(report):
            cols = line.split()
            if cols and cols[-1] in FLUSHES:
                # % time, seconds, usecs/call, calls, [errors], syscall
                counts[cols[-1]] = int(cols[3])
        out[name] = counts
        shutil.rmtree(data)
    return out


def main():
    os.makedirs(PIPES, exist_ok=True)
    for name, body in PIPELINES.items():
        with open(os.path.join(PIPES, f"{name}.yaml"), "w") as f:
            f.write(f"name: {name}\nsteps:\n{body}")
    walls, steps, busy_runs, models = embedded()
    data = os.path.join(WORK, "data-register")
    local, busy_local, history = promote_local(data)
    api, busy_api, s_walls, s_steps, busy_server = through_server(data)
    flushes = flush_counts()
    with open(os.path.join(WORK, "raw.json"), "w") as f:
        json.dump({"embedded": walls, "embedded_steps": steps, "promote_local": local,
                   "api": api, "server_runs": s_walls, "server_steps": s_steps,
                   "flushes": flushes}, f)

    model = next(m for m in models["models"] if m["name"] == MODEL) if isinstance(models, dict) \
        else next(m for m in models if m["name"] == MODEL)
    print(f"{RUNS} rounds of runs, {PROMOTES} rounds of promotions; {os.cpu_count()} CPUs. "
          f"The register data dir ended the embedded runs with {model.get('versions')} versions "
          f"of `{MODEL}`; its history had {len(history.get('history', history))} alias moves "
          "after the local promotions.")
    print()
    print_runs("1. Embedded: `sluice run FILE --data-dir DIR`, whole process", walls, steps,
               f"{RUNS} runs")
    print(f"Machine busy during these runs: {busy_runs:.0%} of its CPUs (this benchmark included).")
    print()
    print("#### 2. Promote: local CLI, whole process")
    print()
    print("| command | median | p25 to p75 | promote minus it (per round, median) |")
    print("| --- | --- | --- | --- |")
    labels = {
        "promote": f"`sluice models promote {MODEL} V --alias production --data-dir D` (moves it)",
        "ls": "`sluice models ls --data-dir D`",
        "show": f"`sluice models show {MODEL}@production --data-dir D`",
    }
    for key in ("promote", "ls", "show"):
        d = [p - x for p, x in zip(local["promote"], local[key])]
        extra = "" if key == "promote" else f"**{fmt(med(d))}** ({spread(d)})"
        print(f"| {labels[key]} | {fmt(med(local[key]))} | {spread(local[key])} | {extra} |")
    print()
    print(f"Machine busy: {busy_local:.0%}.")
    print()
    print("#### 3. Promote through `sluice server` (same data dir)")
    print()
    print("| request | median | p25 to p75 | promote minus it (per round, median) |")
    print("| --- | --- | --- | --- |")
    api_labels = {
        "POST promote": "curl `POST /api/v1/models/bench/aliases/production` (moves it), time_total",
        "GET models": "curl `GET /api/v1/models`, time_total",
        "GET healthz": "curl `GET /healthz`, time_total",
        "cli promote": "`sluice models promote bench V --alias production --server URL`, whole process",
        "cli ls": "`sluice models ls --server URL`, whole process",
    }
    for key, base in [("POST promote", None), ("GET models", "POST promote"),
                      ("GET healthz", "POST promote"), ("cli promote", None),
                      ("cli ls", "cli promote")]:
        extra = ""
        if base:
            d = [p - x for p, x in zip(api[base], api[key])]
            extra = f"**{fmt(med(d))}** ({spread(d)})"
        print(f"| {api_labels[key]} | {fmt(med(api[key]))} | {spread(api[key])} | {extra} |")
    print()
    print(f"Machine busy: {busy_api:.0%}.")
    print()
    print_runs("4. Through `sluice server`: runs triggered over the API", s_walls, s_steps,
               "finished_ms - created_ms as recorded")
    print(f"Machine busy during these runs: {busy_server:.0%}. Run times are whole milliseconds.")
    if flushes is not None:
        print()
        print("#### 5. Flush syscalls in one embedded run (`strace -f -c`)")
        print()
        print("| pipeline | " + " | ".join(f"`{f}`" for f in FLUSHES) + " | all |")
        print("| --- | " + " | ".join("---" for _ in FLUSHES) + " | --- |")
        for name in ORDER:
            c = flushes[name]
            print(f"| `{name}` | " + " | ".join(str(c.get(f, 0)) for f in FLUSHES)
                  + f" | {sum(c.values())} |")


main()
