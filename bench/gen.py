#!/usr/bin/env python3
"""Generates benchmark pipelines: a chain, a fan-out, or a wide validation DAG.

    bench/gen.py chain 1000 > chain.yaml     # s0 -> s1 -> ... -> s999, each `true`
    bench/gen.py fanout 5000 > fanout.yaml   # 5000 independent `true` steps
    bench/gen.py dag 10000 > dag.yaml        # 10,000 steps, each depending on up to 3 earlier
                                             # ones, with retries, timeouts and resources
"""
import random
import sys


def chain(n):
    yield "name: bench-chain"
    yield "steps:"
    for i in range(n):
        yield f"  s{i}:"
        yield "    run: 'true'"
        if i:
            yield f"    depends: [s{i - 1}]"


def fanout(n):
    yield "name: bench-fanout"
    yield "steps:"
    for i in range(n):
        yield f"  s{i}: {{run: 'true'}}"


def dag(n):
    rng = random.Random(42)
    yield "name: bench-dag"
    yield "params: {threshold: 0.5, dataset: data.csv}"
    yield "defaults: {timeout: 30m, retry: {limit: 2, backoff: exponential, delay: 5s}}"
    yield "steps:"
    for i in range(n):
        yield f"  step_{i}:"
        yield f"    run: python3 step.py --index {i} --data \"$PARAM_DATASET\""
        if i:
            deps = sorted({rng.randrange(max(0, i - 50), i) for _ in range(rng.randint(1, 3))})
            yield "    depends: [" + ", ".join(f"step_{d}" for d in deps) + "]"
        if i % 10 == 0:
            yield "    resources: {cpu: 500m, memory: 1Gi}"
            yield "    timeout: 1h"
        if i % 7 == 0:
            yield "    env: {STAGE: train}"
            yield f"    outputs: [out_{i}.csv]"


if __name__ == "__main__":
    kind, count = sys.argv[1], int(sys.argv[2])
    print("\n".join({"chain": chain, "fanout": fanout, "dag": dag}[kind](count)))
