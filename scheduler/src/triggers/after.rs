//! `after:` triggers decide, run by run, whether a finished run of another pipeline starts
//! this one. The decision is pure: it reads the trigger's state (kept in the store as a mark,
//! committed with the run it starts) and one finished run, and changes the state. So a
//! restarted scheduler that decides the same run again from the same state decides the same.
//!
//! Counting follows alerting practice (Prometheus' `for:`, Evidently's test suites): one noisy
//! batch must not retrain a model, so a run counts as a breach, and only `count` breaches
//! that finished `within` the window start a run; a start clears the breaches (they were
//! measured against the model the start replaces), and no start follows another within
//! `cooldown`. Time is the followed runs' finish time, not the clock of the deciding daemon.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::spec::{AfterStatus, AfterTrigger};
use crate::store::RunStatus;

/// What an `after:` trigger remembers between decisions.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AfterMark {
    /// When the trigger was first seen, ms since the epoch: runs that finished before it do
    /// not count (a new trigger does not act on history).
    pub armed_ms: u64,
    /// Followed runs decided on that are still in the store's feed of finished runs.
    #[serde(default)]
    pub decided: Vec<String>,
    /// Counting runs since the last start, oldest first.
    #[serde(default)]
    pub breaches: Vec<Breach>,
    /// When the run that last started this pipeline finished, ms since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_start_ms: Option<u64>,
}

/// A followed run that counted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Breach {
    /// Its id.
    pub run: String,
    /// When it finished, ms since the epoch.
    pub finished_ms: u64,
}

/// What one finished run led to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// It finished before the trigger existed.
    Before,
    /// It did not end the way the trigger asks.
    NotCounted,
    /// It counted, but fewer than `need` counting runs fell within the window.
    Counted {
        /// Counting runs within the window, this one included.
        have: usize,
        /// How many it takes.
        need: u32,
    },
    /// Enough counted, but the last start was less than `cooldown` before.
    Cooling {
        /// When starts are allowed again, ms since the epoch.
        until_ms: u64,
    },
    /// Start this pipeline.
    Start,
}

/// A finished run as the decision sees it.
#[derive(Debug, Clone)]
pub struct Finished<'a> {
    /// Its id.
    pub id: &'a str,
    /// How it ended.
    pub status: RunStatus,
    /// When, ms since the epoch.
    pub finished_ms: u64,
    /// Whether its outputs and params meet the trigger's `when:` (true when it has none).
    pub when_holds: bool,
}

impl AfterMark {
    /// A trigger first seen at `now_ms`.
    pub fn armed(now_ms: u64) -> AfterMark {
        AfterMark {
            armed_ms: now_ms,
            ..AfterMark::default()
        }
    }

    /// Whether `run` was decided on already.
    pub fn has_decided(&self, run: &str) -> bool {
        self.decided.iter().any(|r| r == run)
    }

    /// Decides on one finished run of the followed pipeline and records the decision.
    pub fn decide(&mut self, trigger: &AfterTrigger, run: &Finished<'_>) -> Decision {
        if !self.has_decided(run.id) {
            self.decided.push(run.id.to_string());
        }
        if run.finished_ms < self.armed_ms {
            return Decision::Before;
        }
        if !status_counts(trigger.status, run.status) || !run.when_holds {
            return Decision::NotCounted;
        }
        if !self.breaches.iter().any(|b| b.run == run.id) {
            self.breaches.push(Breach {
                run: run.id.to_string(),
                finished_ms: run.finished_ms,
            });
        }
        if let Some(within) = trigger.within {
            let from = run.finished_ms.saturating_sub(millis(within));
            self.breaches.retain(|b| b.finished_ms >= from);
        }
        let have = self.breaches.len();
        if have < trigger.count as usize {
            return Decision::Counted {
                have,
                need: trigger.count,
            };
        }
        if let (Some(last), Some(cooldown)) = (self.last_start_ms, trigger.cooldown) {
            let until_ms = last.saturating_add(millis(cooldown));
            if run.finished_ms < until_ms {
                return Decision::Cooling { until_ms };
            }
        }
        self.breaches.clear();
        self.last_start_ms = Some(run.finished_ms);
        Decision::Start
    }

    /// Drops decisions on runs that left the feed: they are never offered again.
    pub fn forget_all_but(&mut self, in_feed: &std::collections::HashSet<&str>) {
        self.decided.retain(|r| in_feed.contains(r.as_str()));
    }
}

fn status_counts(wanted: AfterStatus, ended: RunStatus) -> bool {
    match wanted {
        AfterStatus::Succeeded => ended == RunStatus::Succeeded,
        AfterStatus::Failed => ended == RunStatus::Failed,
        AfterStatus::Cancelled => ended == RunStatus::Cancelled,
        AfterStatus::Finished => ended.is_terminal(),
    }
}

fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The key of a trigger's state: the trigger's settings are part of it, so a changed trigger
/// starts afresh rather than acting on counts kept under other rules.
pub fn mark_key(pipeline: &str, trigger: &AfterTrigger) -> String {
    let text = format!(
        "{}\0{:?}\0{}\0{}\0{:?}\0{:?}",
        trigger.pipeline,
        trigger.status,
        trigger.when.as_ref().map_or("", |(text, _)| text.as_str()),
        trigger.count,
        trigger.within,
        trigger.cooldown
    );
    let digest = Sha256::digest(text.as_bytes());
    format!("after/{pipeline}/{}", hex::encode(&digest[..8]))
}

/// The id of the run a followed run starts: derived from the trigger and the followed run's
/// finish, so that deciding the same finish again (a restart) names the run that exists.
pub fn run_id(mark_key: &str, run: &Finished<'_>) -> String {
    let digest = Sha256::digest(format!("{mark_key}\0{}\0{}", run.id, run.finished_ms).as_bytes());
    let mut random = [0u8; 16];
    random[6..].copy_from_slice(&digest[..10]);
    ulid::Ulid::from_parts(run.finished_ms, u128::from_be_bytes(random)).to_string()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const HOUR: u64 = 3_600_000;

    fn trigger(count: u32, within: Option<u64>, cooldown: Option<u64>) -> AfterTrigger {
        AfterTrigger {
            pipeline: "monitor".into(),
            status: AfterStatus::Succeeded,
            when: None,
            count,
            within: within.map(|h| Duration::from_millis(h * HOUR)),
            cooldown: cooldown.map(|h| Duration::from_millis(h * HOUR)),
            params: Default::default(),
        }
    }

    /// Feeds runs (id, status, finished hour, when holds) and returns the decisions.
    fn feed(
        trigger: &AfterTrigger,
        mark: &mut AfterMark,
        runs: &[(&str, RunStatus, u64, bool)],
    ) -> Vec<Decision> {
        runs.iter()
            .map(|(id, status, hour, when_holds)| {
                let run = Finished {
                    id,
                    status: *status,
                    finished_ms: hour * HOUR,
                    when_holds: *when_holds,
                };
                mark.decide(trigger, &run)
            })
            .collect()
    }

    use Decision::*;
    use RunStatus::{Cancelled as C, Failed as F, Succeeded as S};

    #[test]
    fn each_counting_run_starts_one_run_without_breaches_or_cooldown() {
        let t = trigger(1, None, None);
        let mut mark = AfterMark::armed(0);
        let decisions = feed(
            &t,
            &mut mark,
            &[
                ("a", S, 1, true),
                ("b", S, 2, false),
                ("c", F, 3, true),
                ("d", S, 4, true),
            ],
        );
        assert_eq!(decisions, vec![Start, NotCounted, NotCounted, Start]);
        assert_eq!(mark.last_start_ms, Some(4 * HOUR));
    }

    #[test]
    fn breaches_must_fall_within_the_window() {
        // Two breaches within 72 h: the first alone does not start, the second does; a
        // breach 80 h after the last one does not pair with it.
        let t = trigger(2, Some(72), None);
        let mut mark = AfterMark::armed(0);
        let decisions = feed(
            &t,
            &mut mark,
            &[
                ("a", S, 1, true),
                ("b", S, 10, true),
                ("c", S, 100, true),
                ("d", S, 200, true),
                ("e", S, 210, true),
            ],
        );
        assert_eq!(
            decisions,
            vec![
                Counted { have: 1, need: 2 },
                Start,
                Counted { have: 1, need: 2 },
                Counted { have: 1, need: 2 },
                Start
            ]
        );
    }

    #[test]
    fn a_start_clears_the_breaches_that_led_to_it() {
        let t = trigger(2, None, None);
        let mut mark = AfterMark::armed(0);
        let decisions = feed(
            &t,
            &mut mark,
            &[("a", S, 1, true), ("b", S, 2, true), ("c", S, 3, true)],
        );
        assert_eq!(
            decisions,
            vec![
                Counted { have: 1, need: 2 },
                Start,
                Counted { have: 1, need: 2 }
            ]
        );
    }

    #[test]
    fn cooldown_holds_starts_back_and_keeps_the_breaches() {
        let t = trigger(1, None, Some(24));
        let mut mark = AfterMark::armed(0);
        let decisions = feed(
            &t,
            &mut mark,
            &[("a", S, 1, true), ("b", S, 5, true), ("c", S, 25, true)],
        );
        assert_eq!(
            decisions,
            vec![
                Start,
                Cooling {
                    until_ms: 25 * HOUR
                },
                Start
            ]
        );
    }

    #[test]
    fn runs_before_the_trigger_existed_do_not_count() {
        let t = trigger(1, None, None);
        let mut mark = AfterMark::armed(10 * HOUR);
        let decisions = feed(&t, &mut mark, &[("old", S, 9, true), ("new", S, 11, true)]);
        assert_eq!(decisions, vec![Before, Start]);
    }

    #[test]
    fn status_picks_how_a_run_must_end() {
        for (status, counted) in [
            (AfterStatus::Succeeded, [true, false, false]),
            (AfterStatus::Failed, [false, true, false]),
            (AfterStatus::Cancelled, [false, false, true]),
            (AfterStatus::Finished, [true, true, true]),
        ] {
            for (ended, counts) in [S, F, C].into_iter().zip(counted) {
                assert_eq!(status_counts(status, ended), counts, "{status:?} {ended:?}");
            }
        }
    }

    #[test]
    fn the_same_run_decided_twice_counts_once() {
        let t = trigger(2, None, None);
        let mut mark = AfterMark::armed(0);
        let decisions = feed(&t, &mut mark, &[("a", S, 1, true), ("a", S, 1, true)]);
        assert_eq!(
            decisions,
            vec![Counted { have: 1, need: 2 }, Counted { have: 1, need: 2 }]
        );
        assert_eq!(mark.decided, vec!["a".to_string()]);
    }

    #[test]
    fn run_ids_are_stable_per_finish_and_differ_between_finishes() {
        let run = |finished_ms| Finished {
            id: "01A",
            status: S,
            finished_ms,
            when_holds: true,
        };
        assert_eq!(run_id("after/p/1", &run(5)), run_id("after/p/1", &run(5)));
        assert_ne!(run_id("after/p/1", &run(5)), run_id("after/p/1", &run(6)));
        assert_ne!(run_id("after/p/1", &run(5)), run_id("after/p/2", &run(5)));
    }

    #[test]
    fn a_changed_trigger_gets_a_fresh_state() {
        let a = trigger(2, Some(72), Some(24));
        let mut b = a.clone();
        b.count = 3;
        assert_eq!(mark_key("retrain", &a), mark_key("retrain", &a.clone()));
        assert_ne!(mark_key("retrain", &a), mark_key("retrain", &b));
    }

    #[test]
    fn decisions_on_runs_out_of_the_feed_are_forgotten() {
        let mut mark = AfterMark {
            decided: vec!["a".into(), "b".into()],
            ..AfterMark::default()
        };
        mark.forget_all_but(&["b"].into_iter().collect());
        assert_eq!(mark.decided, vec!["b".to_string()]);
    }
}
