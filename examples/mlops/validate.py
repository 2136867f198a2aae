"""Step 4, validate: score the trained model on the held-out test split.

It only measures: accuracy, precision, recall, f1 and loss go to
$SLUICE_METRICS, and the pipeline's `gate` step (a Sluice built-in) decides
whether they are good enough to register the model.
"""

import common

METRICS = ["accuracy", "precision", "recall", "f1"]


def main():
    model = common.read_json(common.upstream_path("train", "model.json"))
    test_path = common.upstream_path("ingest", "test.csv")
    test = common.read_dataset(test_path)
    common.check_model_features(model, test, test_path)

    result = common.evaluate(model, test)
    report = dict(result, data_version=model.get("data_version"))
    common.write_json(common.out_path("report.json"), report)
    common.write_metrics({name: result[name] for name in METRICS + ["loss"]})

    print(
        f"test set: {result['rows']} rows, accuracy {result['accuracy']:.3f},"
        f" precision {result['precision']:.3f}, recall {result['recall']:.3f},"
        f" f1 {result['f1']:.3f}"
    )
    print(
        f"confusion: {result['true_positives']} TP, {result['false_positives']} FP,"
        f" {result['true_negatives']} TN, {result['false_negatives']} FN"
    )
    common.write_outputs({"accuracy": f"{result['accuracy']:.4f}"})


if __name__ == "__main__":
    common.run_step(main)
