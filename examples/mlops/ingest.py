"""Step 1, ingest: load the raw data set and split it for the rest of the loop.

The rows are shuffled with PARAM_SEED (so every run with the same seed sees
the same split) and cut into:
  train.csv  70%  used to fit the model
  test.csv   15%  held out, used by validate to gate the model
  batch.csv  15%  stands in for fresh production data, watched by monitor

PARAM_DRIFT_SHIFT simulates drift in production: every feature of the
batch is multiplied by (1 + shift), e.g. 0.5 makes the batch 50% larger.
"""

import random

import common

TRAIN_FRACTION = 0.70
TEST_FRACTION = 0.15
MIN_ROWS = 20  # below this the three splits are too small to mean anything


def main():
    path = common.param("DATASET")
    seed = common.param_int("SEED")
    shift = common.param_float("DRIFT_SHIFT")
    if shift <= -1:
        raise common.StepError(f"PARAM_DRIFT_SHIFT must be > -1, got {shift}")

    data = common.read_dataset(path, min_rows=MIN_ROWS)
    if len(set(data.targets)) < 2:
        raise common.StepError(f"{path}: target has only one class")

    order = list(range(len(data)))
    random.Random(seed).shuffle(order)
    n_train = int(len(order) * TRAIN_FRACTION)
    n_test = int(len(order) * TEST_FRACTION)
    parts = {
        "train": order[:n_train],
        "test": order[n_train : n_train + n_test],
        "batch": order[n_train + n_test :],
    }

    for name, indices in parts.items():
        features = [data.features[i] for i in indices]
        if name == "batch":
            features = [[v * (1 + shift) for v in row] for row in features]
        targets = [data.targets[i] for i in indices]
        split = common.Dataset(data.feature_names, features, targets)
        common.write_dataset(common.out_path(f"{name}.csv"), split)

    counts = {name: len(indices) for name, indices in parts.items()}
    print(
        f"read {len(data)} rows x {len(data.feature_names)} features from {path}"
        f" ({sum(data.targets)} with target=1)"
    )
    print(
        f"split with seed {seed}: train {counts['train']}, test {counts['test']},"
        f" batch {counts['batch']}"
    )
    if shift:
        print(f"simulated drift: batch features multiplied by {1 + shift:g}")
    summary = {
        "rows": len(data),
        "features": len(data.feature_names),
        "train_rows": counts["train"],
        "test_rows": counts["test"],
        "batch_rows": counts["batch"],
    }
    common.write_outputs(summary)
    common.write_metrics(summary)


if __name__ == "__main__":
    common.run_step(main)
