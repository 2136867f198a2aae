//! The comparison `bench/drift.sh` times: `uses: drift`'s code on `reference.csv` and
//! `current.csv` in the folder given as the only argument. Prints one line for the script
//! and leaves the report's metrics in `sluice.json` beside the data.

use std::path::PathBuf;

use sluice_worker::drift::{compare, DriftOptions, DriftSpec};
use tokio_util::sync::CancellationToken;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = PathBuf::from(
        std::env::args_os()
            .nth(1)
            .ok_or("usage: drift_bench FOLDER (with reference.csv and current.csv)")?,
    );
    let spec: DriftSpec = serde_json::from_value(serde_json::json!({
        "reference": "reference.csv",
        "current": "current.csv",
    }))?;
    let started = std::time::Instant::now();
    let report = compare(
        &spec,
        &dir,
        &DriftOptions::default(),
        &CancellationToken::new(),
    )?;
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "drift-bench seconds={seconds:.3} columns={} drifted={} drift={}",
        report.columns.len(),
        report.drifted_columns().count(),
        report.drift
    );
    let metrics = serde_json::Value::Object(report.metrics()).to_string();
    std::fs::write(dir.join("sluice.json"), metrics)?;
    Ok(())
}
