"""retrain.yaml's train step (refit.py): react to drift by training on the data seen so far.

Sluice starts the retrain pipeline after monitor runs saw drift (an `after:`
trigger).  This fits a new model on train + batch (so the model learns the
shifted production data), scores it on the test split and on the batch, and
scores the production model it would replace (given to the step as
`models: {current: mlops@production}`) on the batch too.  It writes
model.json; the pipeline's gate, register and deploy steps decide the rest.
"""

import os

import common


def current_model():
    """The production model ($SLUICE_IN/models/current/model.json), if any."""
    path = os.path.join(os.environ.get("SLUICE_IN", ""), "models", "current", "model.json")
    return common.read_json(path) if os.path.isfile(path) else None


def main():
    train = common.read_dataset(common.upstream_path("ingest", "train.csv"))
    batch = common.read_dataset(common.upstream_path("ingest", "batch.csv"))
    test = common.read_dataset(common.upstream_path("ingest", "test.csv"))
    versions = common.read_json(common.upstream_path("version", "version.json"))
    if batch.feature_names != train.feature_names:
        raise common.StepError("batch.csv and train.csv have different columns")

    combined = common.Dataset(
        train.feature_names,
        train.features + batch.features,
        train.targets + batch.targets,
    )
    # The combined set is new data, so it gets its own content version.
    digests = {
        name: versions["files"][name]["sha256"] for name in ["train.csv", "batch.csv"]
    }
    data_version = common.content_version(digests)[:12]

    model = common.train_logistic_regression(combined, data_version)
    fit = common.evaluate(model, combined)
    on_test = common.evaluate(model, test)
    on_batch = common.evaluate(model, batch)
    common.write_json(common.out_path("model.json"), model)

    metrics = {
        "train_accuracy": fit["accuracy"],
        "train_loss": fit["loss"],
        "test_accuracy": on_test["accuracy"],
        "test_f1": on_test["f1"],
        "batch_accuracy": on_batch["accuracy"],
    }
    outputs = {"test_accuracy": f"{on_test['accuracy']:.4f}"}
    current = current_model()
    version = os.environ.get("SLUICE_MODEL_CURRENT_VERSION", "?")
    if current is not None:
        before = common.evaluate(current, batch)["accuracy"]
        metrics["current_batch_accuracy"] = before
        outputs["replaces_version"] = version

    common.write_metrics(metrics)
    common.write_outputs(outputs)
    print(
        f"drift detected: retrained on {len(train)} train + {len(batch)} batch ="
        f" {len(combined)} rows (data version {data_version})"
    )
    print(
        f"train accuracy {fit['accuracy']:.3f}, test accuracy {on_test['accuracy']:.3f},"
        f" batch accuracy {on_batch['accuracy']:.3f}"
    )
    if current is not None:
        print(f"production model v{version} scores {before:.3f} on the drifted batch")
    print("wrote model.json (the gate decides whether it is registered and deployed)")


if __name__ == "__main__":
    common.run_step(main)
