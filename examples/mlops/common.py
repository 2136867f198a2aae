"""Shared helpers for the MLOps demo steps.

Every step script is started by the Sluice orchestrator with the working
directory set to examples/mlops/ and talks to it only through environment
variables and files (see README.md).  This module keeps that contract in one
place, together with the small amount of maths the steps need, so that each
step script reads as a short description of what the step does.

Only the Python standard library is used on purpose: the demo must run on any
machine that has python3, without installing numpy or scikit-learn.
"""

import csv
import hashlib
import json
import math
import os
import sys

TARGET_COLUMN = "target"

# Defaults for the pipeline params.  The orchestrator normally passes every
# param explicitly; these only matter when a script is run with some missing.
PARAM_DEFAULTS = {
    "DATASET": "data/breast_cancer.csv",
    "SEED": "7",
    "DRIFT_SHIFT": "0.0",
}

# Hyperparameters of the logistic regression.  They are fixed (not params) so
# that a run is reproducible from its data alone; they are recorded in every
# model file so a registered model says how it was trained.
TRAINING = {"iterations": 300, "learning_rate": 0.5, "l2": 0.01}


class StepError(Exception):
    """A failure with a message meant for the person reading the step's log.

    Raised for bad input (missing env var, malformed CSV, a model whose
    features do not match the data).  run_step() turns it into one line on stderr and exit
    code 1, instead of a traceback that hides the reason.
    """


def run_step(main):
    """Run a step's main() and map StepError to a clear message + exit 1."""
    try:
        main()
    except StepError as err:
        step = os.environ.get("SLUICE_STEP") or os.path.basename(sys.argv[0])
        print(f"{step}: error: {err}", file=sys.stderr)
        sys.exit(1)


# ---------------------------------------------------------------------------
# Environment: params, SLUICE_* variables, upstream inputs, outputs, metrics
# ---------------------------------------------------------------------------


def require_env(name):
    """Return a SLUICE_* variable, or explain that the orchestrator sets it."""
    value = os.environ.get(name)
    if not value:
        raise StepError(
            f"environment variable {name} is not set; this script is meant to "
            "be run by the Sluice orchestrator (or by run_by_hand.sh)"
        )
    return value


def param(name):
    """Return pipeline param PARAM_<name> as a string (default if unset)."""
    return os.environ.get("PARAM_" + name, PARAM_DEFAULTS[name])


def param_float(name):
    """Return a param parsed as a finite float, with a clear error if not."""
    raw = param(name)
    try:
        value = float(raw)
    except ValueError:
        raise StepError(f"PARAM_{name} must be a number, got {raw!r}") from None
    if not math.isfinite(value):
        raise StepError(f"PARAM_{name} must be a finite number, got {raw!r}")
    return value


def param_int(name):
    """Return a param parsed as an int, with a clear error if not."""
    raw = param(name)
    try:
        return int(raw)
    except ValueError:
        raise StepError(f"PARAM_{name} must be an integer, got {raw!r}") from None


def out_path(filename):
    """Path of a file in this step's output directory ($SLUICE_OUT)."""
    out_dir = require_env("SLUICE_OUT")
    if not os.path.isdir(out_dir):
        raise StepError(f"SLUICE_OUT={out_dir} is not a directory")
    return os.path.join(out_dir, filename)


def upstream_path(step, filename):
    """Path of a file written by an upstream step ($SLUICE_IN/<step>/<file>).

    The error names the missing dependency, which is the usual cause: the
    pipeline definition does not list `step` upstream of this one.
    """
    path = os.path.join(require_env("SLUICE_IN"), step, filename)
    if not os.path.isfile(path):
        raise StepError(
            f"missing upstream file {path} (does this step depend on '{step}'?)"
        )
    return path


def write_outputs(values):
    """Append key=value lines to $SLUICE_OUTPUTS (small values for later steps)."""
    with open(require_env("SLUICE_OUTPUTS"), "a", encoding="utf-8") as f:
        for key, value in values.items():
            if isinstance(value, bool):
                value = "true" if value else "false"
            text = str(value)
            if "\n" in text or "=" in key:
                raise ValueError(f"output {key!r} cannot be written as key=value")
            f.write(f"{key}={text}\n")


def write_metrics(metrics):
    """Write a JSON object of numeric metrics to $SLUICE_METRICS."""
    for key, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"metric {key!r} is not a number: {value!r}")
    with open(require_env("SLUICE_METRICS"), "w", encoding="utf-8") as f:
        json.dump(metrics, f, indent=2, sort_keys=True)
        f.write("\n")


def read_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def write_json(path, data):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")


def content_version(file_digests):
    """Combine {file name: sha256 hex} into one sha256 hex for a data set.

    Names are hashed with the digests, so renaming or swapping files gives a
    different version; sorting makes the order of the dict irrelevant.
    """
    combined = hashlib.sha256()
    for name in sorted(file_digests):
        combined.update(f"{name}\0{file_digests[name]}\n".encode())
    return combined.hexdigest()


# ---------------------------------------------------------------------------
# CSV data sets: feature columns followed by a 0/1 `target` column
# ---------------------------------------------------------------------------


class Dataset:
    """Rows of numeric features plus a 0/1 label per row."""

    def __init__(self, feature_names, features, targets):
        self.feature_names = list(feature_names)
        self.features = features  # list of rows, each a list of floats
        self.targets = targets  # list of 0/1 ints

    def __len__(self):
        return len(self.targets)

    def column(self, index):
        return [row[index] for row in self.features]


def read_dataset(path, min_rows=1):
    """Read and check a CSV with a header row and a final `target` column.

    Every problem is reported with the file and line number, because a bad
    data file is the most likely reason for the first step to fail.
    """
    if not os.path.isfile(path):
        raise StepError(f"data file {path} does not exist")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if not header:
            raise StepError(f"{path} is empty (expected a header row)")
        header = [name.strip() for name in header]
        numeric = [name for name in header if _is_number(name)]
        if numeric:
            raise StepError(
                f"{path}: first line looks like data, not a header ({numeric[0]!r});"
                f" expected feature names and a final '{TARGET_COLUMN}' column"
            )
        if header[-1] != TARGET_COLUMN:
            raise StepError(
                f"{path}: last column must be '{TARGET_COLUMN}', got '{header[-1]}'"
            )
        feature_names = header[:-1]
        if not feature_names:
            raise StepError(f"{path}: no feature columns before '{TARGET_COLUMN}'")
        if len(set(header)) != len(header):
            raise StepError(f"{path}: duplicate column names in header")

        features, targets = [], []
        for row in reader:
            line = reader.line_num
            if not row:
                continue
            if len(row) != len(header):
                raise StepError(
                    f"{path}:{line}: expected {len(header)} columns, got {len(row)}"
                )
            try:
                values = [float(cell) for cell in row[:-1]]
            except ValueError:
                raise StepError(f"{path}:{line}: non-numeric feature value") from None
            if not all(math.isfinite(v) for v in values):
                raise StepError(f"{path}:{line}: feature value is not finite")
            if row[-1].strip() not in ("0", "1"):
                raise StepError(
                    f"{path}:{line}: target must be 0 or 1, got {row[-1]!r}"
                )
            features.append(values)
            targets.append(int(row[-1]))

    if len(targets) < min_rows:
        raise StepError(f"{path}: {len(targets)} data rows, need at least {min_rows}")
    return Dataset(feature_names, features, targets)


def write_dataset(path, dataset):
    """Write a Dataset as CSV with a header row.

    Values are written with 10 significant digits: enough to reproduce the
    source data exactly (it has at most 5) without printing float noise such
    as 26.985000000000003 for shifted values.
    """
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(dataset.feature_names + [TARGET_COLUMN])
        for values, target in zip(dataset.features, dataset.targets):
            writer.writerow([format(v, ".10g") for v in values] + [target])


def _is_number(text):
    try:
        float(text)
        return True
    except ValueError:
        return False


# ---------------------------------------------------------------------------
# Logistic regression (batch gradient descent with L2 regularisation)
# ---------------------------------------------------------------------------


def sigmoid(z):
    """Logistic function, written so that exp() never overflows."""
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


def standardize_params(dataset):
    """Per-feature mean and standard deviation of the training data.

    Gradient descent with one learning rate only works well when features
    are on similar scales; the raw data mixes areas (~1000) with fractal
    dimensions (~0.06).  A constant column gets std 1 to avoid dividing by 0.
    """
    means, stds = [], []
    n = len(dataset)
    for j in range(len(dataset.feature_names)):
        column = dataset.column(j)
        mean = sum(column) / n
        var = sum((v - mean) ** 2 for v in column) / n
        means.append(mean)
        stds.append(math.sqrt(var) if var > 0 else 1.0)
    return means, stds


def _scale(row, means, stds):
    return [(v - m) / s for v, m, s in zip(row, means, stds)]


def train_logistic_regression(dataset, data_version):
    """Fit a model on `dataset`; return the model as a JSON-ready dict.

    The model dict holds everything needed to score new rows (weights, bias
    and the standardisation statistics) plus where it came from.
    """
    means, stds = standardize_params(dataset)
    rows = [_scale(row, means, stds) for row in dataset.features]
    targets = dataset.targets
    n, d = len(rows), len(means)
    lr, l2 = TRAINING["learning_rate"], TRAINING["l2"]

    weights = [0.0] * d
    bias = 0.0
    for _ in range(TRAINING["iterations"]):
        grad_w = [0.0] * d
        grad_b = 0.0
        for x, y in zip(rows, targets):
            error = sigmoid(bias + sum(w * v for w, v in zip(weights, x))) - y
            grad_b += error
            for j in range(d):
                grad_w[j] += error * x[j]
        # Mean log-loss gradient plus the L2 penalty (bias not penalised).
        weights = [w - lr * (g / n + l2 * w) for w, g in zip(weights, grad_w)]
        bias -= lr * grad_b / n

    return {
        "kind": "logistic_regression",
        "feature_names": dataset.feature_names,
        "weights": weights,
        "bias": bias,
        "means": means,
        "stds": stds,
        "training": dict(TRAINING, rows=n),
        "data_version": data_version,
    }


def predict_proba(model, row):
    """Probability that `row` (raw, unscaled features) has target 1."""
    x = _scale(row, model["means"], model["stds"])
    return sigmoid(model["bias"] + sum(w * v for w, v in zip(model["weights"], x)))


def check_model_features(model, dataset, source):
    """Fail clearly if a data set's columns differ from the model's."""
    if dataset.feature_names != model["feature_names"]:
        raise StepError(
            f"{source} has columns {dataset.feature_names[:3]}... which do not "
            f"match the model's features {model['feature_names'][:3]}..."
        )


def evaluate(model, dataset):
    """Accuracy, precision, recall, F1 and mean log-loss on `dataset`.

    The positive class is target 1, following scikit-learn's default for
    binary metrics (in the shipped data 1 means benign, 0 malignant).
    """
    tp = fp = tn = fn = 0
    loss = 0.0
    for row, y in zip(dataset.features, dataset.targets):
        p = predict_proba(model, row)
        p_clipped = min(max(p, 1e-12), 1 - 1e-12)
        loss -= y * math.log(p_clipped) + (1 - y) * math.log(1 - p_clipped)
        predicted = 1 if p >= 0.5 else 0
        if predicted == 1 and y == 1:
            tp += 1
        elif predicted == 1:
            fp += 1
        elif y == 1:
            fn += 1
        else:
            tn += 1
    n = len(dataset)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "accuracy": (tp + tn) / n,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "loss": loss / n,
        "rows": n,
        "true_positives": tp,
        "false_positives": fp,
        "true_negatives": tn,
        "false_negatives": fn,
    }
