#!/usr/bin/env python3
"""Talks to a running `sluice scheduler` over its HTTP API, for bench/distributed.sh and
bench/many_runs.sh (standard library only).

    bench/sluice_api.py measure URL PIPELINE --pids SCHED,W1,W2,REDIS
        Triggers one run, waits for it (polling the run list every 20 ms, which costs the
        scheduler little), then prints one JSON line: the run's wall time as the scheduler recorded
        it (finished_ms - created_ms), the time the client saw, steps per second, the CPU seconds
        each process in --pids used meanwhile (/proc/PID/stat utime+stime; and cutime+cstime,
        its reaped children: a worker's step processes), the CPU seconds the rest of the machine
        used meanwhile (noise), and, from the steps' attempts: the dependent-step latency of a chain (started_ms of step i - finished_ms of step
        i-1) split into scheduler (worker finished -> next step queued) and queue (queued -> a
        worker started it) parts, queue waits (started - queued), and steps per worker.

    bench/sluice_api.py flood URL PIPELINE N [--concurrency C] [--healthz]
        Triggers N runs with C concurrent keep-alive connections, then waits until all N have
        finished. Prints progress lines and a final JSON line with the trigger and finish rates,
        the p50/p99 of each trigger's answer time, and duplicate run ids. With --healthz it sends
        N `GET /healthz` the same way instead (the HTTP floor, for a ratio) and waits for nothing.

    bench/sluice_api.py quiet MAX_BUSY MAX_WAIT
        Waits until the machine's CPUs were at most MAX_BUSY (0..1) busy over 2 s, at most
        MAX_WAIT seconds; prints the busy share last seen. (`measure --quiet` does the same first.)

    bench/sluice_api.py rss PID
        Prints VmRSS of PID in KiB.
"""
import argparse
import http.client
import json
import os
import sys
import threading
import time
import urllib.parse

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid, children=False):
    """utime + stime of a process (fields 14 and 15 of /proc/PID/stat), in seconds; or, with
    `children`, cutime + cstime (16 and 17: its child processes that it waited for)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    first = 13 if children else 11
    return (int(fields[first]) + int(fields[first + 1])) / TICK


def machine_busy_seconds():
    """CPU seconds all CPUs spent not idle (first line of /proc/stat; idle + iowait excluded)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (sum(v[:8]) - v[3] - v[4]) / TICK


def wait_quiet(max_busy, max_wait):
    """Waits until the machine's CPUs were at most max_busy busy over 2 s (or max_wait s went
    by); returns the busy share last seen, 0..1 of all CPUs."""
    ncpu = os.cpu_count()
    deadline = time.time() + max_wait
    while True:
        b0, t0 = machine_busy_seconds(), time.time()
        time.sleep(2)
        busy = (machine_busy_seconds() - b0) / (time.time() - t0) / ncpu
        if busy <= max_busy or time.time() > deadline:
            return busy


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


class Api:
    def __init__(self, url):
        u = urllib.parse.urlsplit(url)
        self.host, self.port = u.hostname, u.port
        self.conn = None

    def call(self, method, path, body=None, raw=False):
        for attempt in range(3):
            try:
                if self.conn is None:
                    self.conn = http.client.HTTPConnection(self.host, self.port, timeout=120)
                headers = {"Content-Type": "application/json"} if body is not None else {}
                self.conn.request(method, path, body=body, headers=headers)
                resp = self.conn.getresponse()
                data = resp.read()
                if resp.status >= 300:
                    raise RuntimeError(f"{method} {path}: {resp.status} {data[:300]!r}")
                return data if raw else json.loads(data)
            except (http.client.HTTPException, ConnectionError, TimeoutError):
                self.conn = None
                if attempt == 2:
                    raise

    def trigger(self, pipeline):
        return self.call("POST", f"/api/v1/pipelines/{pipeline}/runs", b"")["run"]

    def runs(self, limit, before=None):
        q = f"?limit={limit}" + (f"&before={before}" if before else "")
        return self.call("GET", f"/api/v1/runs{q}")


TERMINAL = {"succeeded", "failed", "cancelled"}


def pct(values, p):
    """Nearest-rank percentile."""
    if not values:
        return None
    s = sorted(values)
    k = max(0, min(len(s) - 1, int(round(p / 100 * len(s) + 0.5)) - 1))
    return s[k]


def measure(args):
    api = Api(args.url)
    pids = [int(p) for p in args.pids.split(",")] if args.pids else []
    busy_before = wait_quiet(args.quiet, args.quiet_wait) if args.quiet < 1 else None
    cpu0 = [cpu_seconds(p) for p in pids]
    kids0 = [cpu_seconds(p, children=True) for p in pids]
    machine0 = machine_busy_seconds()
    t0 = time.perf_counter()
    run = api.trigger(args.pipeline)
    t_posted = time.perf_counter()
    run_id = run["id"]
    while True:
        # The run list, newest first, without steps: cheap for the scheduler to answer.
        found = [r for r in api.runs(5)["runs"] if r["id"] == run_id]
        if found and found[0]["status"] in TERMINAL:
            break
        time.sleep(0.02)
    t1 = time.perf_counter()
    cpu1 = [cpu_seconds(p) for p in pids]
    kids1 = [cpu_seconds(p, children=True) for p in pids]
    machine = machine_busy_seconds() - machine0
    detail = api.call("GET", f"/api/v1/runs/{run_id}")
    r = detail["run"]
    steps = sorted(detail["steps"], key=lambda s: s["index"])
    last = [s["attempts"][-1] for s in steps if s["attempts"]]
    wall = (r["finished_ms"] - r["created_ms"]) / 1000
    out = {
        "run": run_id,
        "pipeline": args.pipeline,
        "status": r["status"],
        "steps": len(steps),
        "succeeded": sum(s["status"] == "succeeded" for s in steps),
        "attempts": sum(len(s["attempts"]) for s in steps),
        "wall_s": wall,
        "client_s": t1 - t0,
        "post_s": t_posted - t0,
        "steps_per_s": len(steps) / wall if wall else None,
        "cpu_s": [round(b - a, 3) for a, b in zip(cpu0, cpu1)],
        # CPU time of the processes they started and reaped (a worker's step processes).
        "children_cpu_s": [round(b - a, 3) for a, b in zip(kids0, kids1)],
        # CPU time of everything else on the machine meanwhile (this client included): noise.
        "other_cpu_s": round(machine - sum(b - a for a, b in zip(cpu0, cpu1))
                             - sum(b - a for a, b in zip(kids0, kids1)), 2),
        "busy_before": None if busy_before is None else round(busy_before, 2),
        "per_worker": {},
    }
    for a in last:
        out["per_worker"][a.get("worker")] = out["per_worker"].get(a.get("worker"), 0) + 1
    waits = [a["started_ms"] - a["queued_ms"] for a in last if a.get("started_ms")]
    out["queue_wait_ms_p50"], out["queue_wait_ms_p99"] = pct(waits, 50), pct(waits, 99)
    if last:
        out["first_queued_after_ms"] = min(a["queued_ms"] for a in last) - r["created_ms"]
        out["last_finish_to_run_finish_ms"] = r["finished_ms"] - max(
            a["finished_ms"] or 0 for a in last)
    if args.chain:
        dep, sched, queue = [], [], []
        for prev, cur in zip(last, last[1:]):
            dep.append(cur["started_ms"] - prev["finished_ms"])
            sched.append(cur["queued_ms"] - prev["finished_ms"])
            queue.append(cur["started_ms"] - cur["queued_ms"])
        out["dep_ms_p50"], out["dep_ms_p99"] = pct(dep, 50), pct(dep, 99)
        out["dep_ms_mean"] = sum(dep) / len(dep) if dep else None
        out["dep_sched_ms_p50"], out["dep_sched_ms_p99"] = pct(sched, 50), pct(sched, 99)
        out["dep_queue_ms_p50"], out["dep_queue_ms_p99"] = pct(queue, 50), pct(queue, 99)
        runs_ms = [a["finished_ms"] - a["started_ms"] for a in last]
        out["step_exec_ms_p50"] = pct(runs_ms, 50)
    print(json.dumps(out))


def flood(args):
    n, conc = args.count, args.concurrency
    ids = []
    lock = threading.Lock()
    errors = []
    next_i = [0]
    t0 = time.perf_counter()

    latencies = []

    def worker():
        api = Api(args.url)
        while True:
            with lock:
                if next_i[0] >= n:
                    return
                next_i[0] += 1
            t_req = time.perf_counter()
            try:
                if args.healthz:
                    api.call("GET", "/healthz", raw=True)
                    rid = next_i[0]
                else:
                    rid = api.trigger(args.pipeline)["id"]
            except Exception as e:  # noqa: BLE001 - reported below
                with lock:
                    errors.append(str(e))
                continue
            with lock:
                latencies.append((time.perf_counter() - t_req) * 1000)
                ids.append(rid)
                done = len(ids)
            if done % args.progress == 0:
                dt = time.perf_counter() - t0
                print(f"triggered {done} in {dt:.1f} s ({done / dt:.0f}/s)", file=sys.stderr,
                      flush=True)

    threads = [threading.Thread(target=worker) for _ in range(conc)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    t_trig = time.perf_counter() - t0
    print(f"triggered {len(ids)} runs in {t_trig:.1f} s, {len(errors)} errors", file=sys.stderr,
          flush=True)
    requests = {
        "requests": len(ids), "errors": len(errors), "first_errors": errors[:3],
        "request_per_s": round(len(ids) / t_trig, 1),
        "request_ms_p50": round(pct(latencies, 50) or 0, 2),
        "request_ms_p99": round(pct(latencies, 99) or 0, 2),
    }
    if args.healthz:
        print(json.dumps(requests))
        return
    # Wait for all to finish: page through the newest runs, counting the unfinished ones.
    api = Api(args.url)
    wanted = set(ids)
    unfinished = None
    statuses = {}
    while True:
        statuses = {}
        before, seen = None, 0
        while seen < len(wanted):
            page = api.runs(1000, before)
            for r in page["runs"]:
                if r["id"] in wanted:
                    statuses[r["status"]] = statuses.get(r["status"], 0) + 1
                    seen += 1
            before = page["next_before"]
            if not before:
                break
        unfinished = sum(v for k, v in statuses.items() if k not in TERMINAL)
        dt = time.perf_counter() - t0
        print(f"{dt:.1f} s: {statuses}", file=sys.stderr, flush=True)
        if unfinished == 0 or seen < len(wanted) and not before:
            break
        time.sleep(args.poll)
    t_all = time.perf_counter() - t0
    print(json.dumps({
        **requests,
        # Nothing lost: every trigger answered with a run id of its own, and every run ended.
        "duplicate_ids": len(ids) - len(set(ids)),
        "triggered": len(ids), "errors": len(errors), "first_errors": errors[:3],
        "trigger_s": round(t_trig, 2), "trigger_per_s": round(len(ids) / t_trig, 1),
        "all_finished_s": round(t_all, 2), "finished_per_s": round(len(ids) / t_all, 1),
        "statuses": statuses, "unfinished": unfinished,
    }))


def main():
    cli = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = cli.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("measure")
    m.add_argument("url")
    m.add_argument("pipeline")
    m.add_argument("--pids", default="")
    m.add_argument("--chain", action="store_true", help="report dependent-step latency")
    m.add_argument("--quiet", type=float, default=1.0,
                   help="first wait until the CPUs are at most this busy (0..1) over 2 s")
    m.add_argument("--quiet-wait", type=float, default=300, help="wait at most this long")
    q = sub.add_parser("quiet", help="wait until the machine is quiet; print its busy share")
    q.add_argument("max_busy", type=float)
    q.add_argument("max_wait", type=float)
    f = sub.add_parser("flood")
    f.add_argument("url")
    f.add_argument("pipeline")
    f.add_argument("count", type=int)
    f.add_argument("--concurrency", type=int, default=8)
    f.add_argument("--progress", type=int, default=1000)
    f.add_argument("--poll", type=float, default=2.0)
    f.add_argument("--healthz", action="store_true",
                   help="GET /healthz COUNT times instead (the HTTP floor, as a baseline)")
    r = sub.add_parser("rss")
    r.add_argument("pid", type=int)
    args = cli.parse_args()
    if args.cmd == "measure":
        measure(args)
    elif args.cmd == "quiet":
        print(round(wait_quiet(args.max_busy, args.max_wait), 2))
    elif args.cmd == "flood":
        flood(args)
    else:
        print(rss_kib(args.pid))


if __name__ == "__main__":
    main()
