"""Step 5, register: store the validated model as a new registry version.

The registry is a plain directory (PARAM_REGISTRY, or
$SLUICE_DATA_DIR/registry when empty) with one folder per version:
<registry>/mlops/v<N>/ holding model.json, metrics.json and metadata.json.
N is one more than the highest version already there, so versions are never
reused or overwritten (see common.register_model).
"""

import common


def main():
    model = common.read_json(common.upstream_path("train", "model.json"))
    report = common.read_json(common.upstream_path("validate", "report.json"))
    if not report.get("passed"):
        # validate exits non-zero in this case, so this only guards against a
        # pipeline wired without it.
        raise common.StepError("the validation report says the model did not pass")

    metrics = {name: report[name] for name in ["accuracy", "precision", "recall", "f1"]}
    metadata = {
        "source": "train",
        "data_version": model["data_version"],
        "trained_rows": model["training"]["rows"],
    }
    version, path = common.register_and_record(model, metrics, metadata)

    print(f"registered model v{version} in {path}")
    print(
        f"data version {model['data_version']}, test accuracy {metrics['accuracy']:.3f}"
    )


if __name__ == "__main__":
    common.run_step(main)
