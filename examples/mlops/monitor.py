"""Step 7, monitor: check the fresh production batch for data drift.

For each feature the Population Stability Index (PSI) compares the batch's
distribution with the training data's, over quantile bins of the training
data (see common.psi).  If the largest PSI exceeds PARAM_DRIFT_THRESHOLD the
step outputs drift=true, which is what makes the orchestrator run retrain.
"""

import common

TOP = 3


def main():
    threshold = common.param_float("DRIFT_THRESHOLD")
    train_path = common.upstream_path("ingest", "train.csv")
    batch_path = common.upstream_path("ingest", "batch.csv")
    train = common.read_dataset(train_path)
    batch = common.read_dataset(batch_path)
    if batch.feature_names != train.feature_names:
        raise common.StepError(f"{batch_path} columns differ from {train_path}")

    bins = common.psi_bin_count(len(batch))
    scores = {
        name: common.psi(train.column(j), batch.column(j), bins)
        for j, name in enumerate(train.feature_names)
    }
    max_psi = max(scores.values())
    drift = max_psi > threshold
    ranked = sorted(scores.items(), key=lambda item: item[1], reverse=True)

    common.write_json(
        common.out_path("drift.json"),
        {
            "drift": drift,
            "max_psi": max_psi,
            "threshold": threshold,
            "bins": bins,
            "train_rows": len(train),
            "batch_rows": len(batch),
            "psi": scores,
        },
    )
    metrics = {f"psi_{name}": value for name, value in scores.items()}
    metrics["max_psi"] = max_psi
    common.write_metrics(metrics)
    common.write_outputs({"drift": drift, "max_psi": f"{max_psi:.4f}"})

    print(
        f"PSI of {len(batch)} batch rows vs {len(train)} training rows,"
        f" {len(scores)} features, {bins} quantile bins"
    )
    top = ", ".join(f"{name} {value:.3f}" for name, value in ranked[:TOP])
    print(f"top {TOP}: {top}")
    verdict = "drift" if drift else "no drift"
    sign = ">" if drift else "<="
    print(f"max PSI {max_psi:.3f} {sign} threshold {threshold:g}: {verdict}")


if __name__ == "__main__":
    common.run_step(main)
