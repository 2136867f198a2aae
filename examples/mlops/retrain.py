"""Step 8, retrain: react to drift by training on the data seen so far.

The orchestrator runs this step only when monitor output drift=true.  It fits
a new model on train + batch (so the model learns the shifted production
data), reports its accuracy on the test split, and registers it as a new
version in the same way as register does.  It does not deploy: promoting a
retrained model stays a deliberate, separate decision.
"""

import common


def main():
    train = common.read_dataset(common.upstream_path("ingest", "train.csv"))
    batch = common.read_dataset(common.upstream_path("ingest", "batch.csv"))
    test = common.read_dataset(common.upstream_path("ingest", "test.csv"))
    versions = common.read_json(common.upstream_path("version", "version.json"))
    drift = common.read_json(common.upstream_path("monitor", "drift.json"))
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
    result = common.evaluate(model, test)
    common.write_json(common.out_path("model.json"), model)

    metrics = {name: result[name] for name in ["accuracy", "precision", "recall", "f1"]}
    metadata = {
        "source": "retrain",
        "reason": f"drift: max PSI {drift['max_psi']:.3f} > {drift['threshold']:g}",
        "data_version": data_version,
        "parent_data_version": versions["data_version"],
        "trained_rows": len(combined),
    }
    version, path = common.register_and_record(model, metrics, metadata)
    common.write_metrics(
        {
            "train_accuracy": fit["accuracy"],
            "train_loss": fit["loss"],
            "test_accuracy": result["accuracy"],
            "test_f1": result["f1"],
        }
    )

    print(
        f"drift detected (max PSI {drift['max_psi']:.3f}): retrained on"
        f" {len(train)} train + {len(batch)} batch = {len(combined)} rows"
    )
    print(
        f"train accuracy {fit['accuracy']:.3f}, test accuracy {result['accuracy']:.3f}"
    )
    print(f"registered model v{version} in {path} (not deployed)")


if __name__ == "__main__":
    common.run_step(main)
