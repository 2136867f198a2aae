#!/usr/bin/env python3
"""Generates benchmark pipelines: a chain, a fan-out, or a wide validation DAG.

    bench/gen.py chain 1000 > chain.yaml     # s0 -> s1 -> ... -> s999, each `true`
    bench/gen.py fanout 5000 > fanout.yaml   # 5000 independent `true` steps
    bench/gen.py dag 10000 > dag.yaml        # 10,000 steps, each depending on up to 3 earlier
                                             # ones, with retries, timeouts and resources

Options (after the count), for the chain and the fan-out:

    --noop            steps are `uses: noop` (built into workers, no process) instead of `true`
    --name NAME       the pipeline's name (default bench-chain / bench-fanout)
    --parallelism N   the pipeline's `parallelism:` (most steps of one run at once)
"""
import argparse
import random


def step_body(noop):
    return "uses: noop" if noop else "run: 'true'"


def header(name, default, parallelism):
    yield f"name: {name or default}"
    if parallelism:
        yield f"parallelism: {parallelism}"
    yield "steps:"


def chain(n, noop=False, name=None, parallelism=None):
    yield from header(name, "bench-chain", parallelism)
    for i in range(n):
        yield f"  s{i}:"
        yield f"    {step_body(noop)}"
        if i:
            yield f"    depends: [s{i - 1}]"


def fanout(n, noop=False, name=None, parallelism=None):
    yield from header(name, "bench-fanout", parallelism)
    for i in range(n):
        yield f"  s{i}: {{{step_body(noop)}}}"


def dag(n, **_):
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
    cli = argparse.ArgumentParser(description="Generates benchmark pipelines.")
    cli.add_argument("kind", choices=["chain", "fanout", "dag"])
    cli.add_argument("count", type=int)
    cli.add_argument("--noop", action="store_true")
    cli.add_argument("--name")
    cli.add_argument("--parallelism", type=int)
    a = cli.parse_args()
    gen = {"chain": chain, "fanout": fanout, "dag": dag}[a.kind]
    print("\n".join(gen(a.count, noop=a.noop, name=a.name, parallelism=a.parallelism)))
