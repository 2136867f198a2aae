//! Counting what a run's driver commits: the daemon gives each run's driver a [`RunTally`] as
//! its observer, which hears of every step and run record once it is committed, in order.

use std::collections::HashSet;

use super::Metrics;
use crate::engine::RunObserver;
use crate::store::{RunRecord, StepRecord};

/// The observer of one run that counts its steps and the run itself into [`Metrics`] as they
/// reach their final state. A record can be committed again after it is final (a note added),
/// so each step and the run are counted once, the first time they are seen final.
pub struct RunTally {
    metrics: Metrics,
    /// Steps already counted, or final before this driver began (kept from an earlier run by a
    /// retry, or finished before the daemon restarted): never counted here.
    counted: HashSet<String>,
    run_counted: bool,
}

impl RunTally {
    /// A tally of one run; `decided` names its steps that were final before its driver began.
    pub fn new(metrics: Metrics, decided: impl IntoIterator<Item = String>) -> RunTally {
        RunTally {
            metrics,
            counted: decided.into_iter().collect(),
            run_counted: false,
        }
    }
}

impl RunObserver for RunTally {
    fn on_step(&mut self, run: &RunRecord, step: &StepRecord) {
        if !step.status.is_terminal() || !self.counted.insert(step.name.clone()) {
            return;
        }
        let seconds = step.duration_ms().map(|ms| ms as f64 / 1000.0);
        self.metrics
            .step_finished(&run.pipeline, step.status, seconds);
        // A drift report (a `uses: drift` step's metrics, recorded whether it passed or not).
        if step.metrics.contains_key("drift_share") {
            self.metrics.drift_reported(&run.pipeline, &step.metrics);
        }
    }

    fn on_run(&mut self, run: &RunRecord) {
        if run.status.is_terminal() && !self.run_counted {
            self.run_counted = true;
            self.metrics.run_finished(&run.pipeline, run.status);
        }
    }
}
