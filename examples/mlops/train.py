"""Step 3, train: fit a logistic regression on the training split.

Features are standardised with the training means and standard deviations,
then the model is fitted by batch gradient descent with L2 regularisation
(fixed hyperparameters, see common.TRAINING).  The resulting model.json holds
everything needed to score new rows, and the data version it came from.
"""

import common


def main():
    data = common.read_dataset(common.upstream_path("ingest", "train.csv"))
    data_version = common.read_json(common.upstream_path("version", "version.json"))[
        "data_version"
    ]

    model = common.train_logistic_regression(data, data_version)
    fit = common.evaluate(model, data)
    common.write_json(common.out_path("model.json"), model)

    settings = model["training"]
    print(
        f"trained logistic regression on {len(data)} rows x"
        f" {len(data.feature_names)} features"
        f" ({settings['iterations']} iterations, learning rate"
        f" {settings['learning_rate']}, L2 {settings['l2']})"
    )
    print(f"train accuracy {fit['accuracy']:.3f}, train log-loss {fit['loss']:.4f}")
    print(f"data version {data_version}")
    common.write_metrics({"train_accuracy": fit["accuracy"], "train_loss": fit["loss"]})
    common.write_outputs({"train_accuracy": f"{fit['accuracy']:.4f}"})


if __name__ == "__main__":
    common.run_step(main)
