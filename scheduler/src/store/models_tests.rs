//! The model registry's records against a real store in a temp dir: numbering, aliases and
//! their history, idempotent registration, the messages of what does not exist, concurrent
//! moves, and reopening.

use std::collections::BTreeMap;

use sluice_worker::task::ArtifactRef;

use super::models::{AliasMove, MoveRequest};
use super::{Store, StoreError};
use crate::models::{AliasAction, ModelRef, ModelVersion, RegistryError};

/// A version of `model` made by `run`'s `train` step and registered by its `register` step.
fn version(model: &str, run: &str) -> ModelVersion {
    ModelVersion {
        model: model.into(),
        version: 0,
        artifact: ArtifactRef::file("model.json", format!("{run:0>64}"), 10),
        pipeline: "churn".into(),
        run_id: run.into(),
        step: "train".into(),
        registered_by: "register".into(),
        metrics: BTreeMap::from([(
            "evaluate".to_string(),
            serde_json::json!({"auc": 0.9}).as_object().unwrap().clone(),
        )]),
        params: BTreeMap::from([("lr".to_string(), "0.1".to_string())]),
        training_data: Vec::new(),
        commit: None,
        image_digest: None,
        created_ms: 1,
    }
}

/// Registers one version per run, without an alias; returns their numbers.
fn register_runs(store: &Store, model: &str, runs: &[&str]) -> Vec<u64> {
    runs.iter()
        .map(|run| {
            store
                .register_model(version(model, run), None, "run")
                .unwrap()
                .version
        })
        .collect()
}

fn promote(store: &Store, model: &str, alias: &str, to: u64) -> AliasMove {
    let request = MoveRequest {
        model,
        alias,
        action: AliasAction::Promote,
        who: "alice",
        reason: Some("better"),
    };
    store.move_alias(&request, to, None).unwrap()
}

fn rollback(store: &Store, model: &str, alias: &str) -> Result<AliasMove, RegistryError> {
    store.rollback_alias(model, alias, "bob", None)
}

/// sled lets go of its file lock a moment after the last handle is dropped.
fn reopen(dir: &std::path::Path) -> Store {
    for _ in 0..100 {
        match Store::open(dir) {
            Err(StoreError::Locked { .. }) => {
                std::thread::sleep(std::time::Duration::from_millis(20))
            }
            other => return other.unwrap(),
        }
    }
    panic!("the store stayed locked after it was closed");
}

#[test]
fn versions_count_up_per_model() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(
        register_runs(&store, "churn", &["r1", "r2", "r3"]),
        [1, 2, 3]
    );
    assert_eq!(register_runs(&store, "fraud", &["r4"]), [1]);
    assert_eq!(register_runs(&store, "churn", &["r5"]), [4]);
    let numbers: Vec<u64> = store
        .model_versions("churn")
        .unwrap()
        .iter()
        .map(|v| v.version)
        .collect();
    assert_eq!(numbers, [1, 2, 3, 4]);
    let summaries = store.models().unwrap();
    let churn = summaries.iter().find(|m| m.name == "churn").unwrap();
    assert_eq!((churn.versions, churn.latest), (4, Some(4)));
    let latest = store.resolve_model(&ModelRef::parse("churn").unwrap());
    assert_eq!(latest.unwrap().run_id, "r5");
}

#[test]
fn registering_with_an_alias_points_it_and_writes_a_history_entry() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let registered = store
        .register_model(version("churn", "r1"), Some("staging"), "run r1/register")
        .unwrap();
    assert_eq!(registered.version, 1);
    assert_eq!(store.alias("churn", "staging").unwrap().version, 1);
    let history = store.model_history("churn").unwrap();
    assert_eq!(history.len(), 1, "{history:?}");
    let entry = &history[0];
    assert_eq!(
        (entry.seq, entry.alias.as_str(), entry.from, entry.to),
        (0, "staging", None, 1)
    );
    assert_eq!(entry.action, AliasAction::Register);
    assert_eq!(entry.who, "run r1/register");
}

#[test]
fn promotions_stack_and_rollbacks_unwind_them_one_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    register_runs(&store, "churn", &["r1", "r2", "r3"]);
    for to in [1, 2, 3] {
        assert!(promote(&store, "churn", "production", to).moved);
    }
    let back = rollback(&store, "churn", "production").unwrap();
    assert_eq!((back.from, back.to, back.moved), (Some(3), 2, true));
    let back = rollback(&store, "churn", "production").unwrap();
    assert_eq!((back.from, back.to), (Some(2), 1));
    assert_eq!(store.alias("churn", "production").unwrap().version, 1);
    let err = rollback(&store, "churn", "production").unwrap_err();
    assert!(
        matches!(err, RegistryError::NothingToRollBack { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("nothing to roll back to"), "{err}");

    let history = store.model_history("churn").unwrap();
    let moves: Vec<(Option<u64>, u64, AliasAction, &str)> = history
        .iter()
        .map(|e| (e.from, e.to, e.action, e.who.as_str()))
        .collect();
    assert_eq!(
        moves,
        [
            (None, 1, AliasAction::Promote, "alice"),
            (Some(1), 2, AliasAction::Promote, "alice"),
            (Some(2), 3, AliasAction::Promote, "alice"),
            (Some(3), 2, AliasAction::Rollback, "bob"),
            (Some(2), 1, AliasAction::Rollback, "bob"),
        ]
    );
    assert_eq!(history[0].reason.as_deref(), Some("better"));
    assert!(history.iter().enumerate().all(|(i, e)| e.seq == i as u64));
}

#[test]
fn promoting_to_the_held_version_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    register_runs(&store, "churn", &["r1", "r2"]);
    promote(&store, "churn", "production", 2);
    let before = store.alias("churn", "production").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(5));
    let again = promote(&store, "churn", "production", 2);
    assert_eq!((again.from, again.to, again.moved), (Some(2), 2, false));
    assert_eq!(store.alias("churn", "production").unwrap(), before);
    assert_eq!(store.model_history("churn").unwrap().len(), 1);
    // Nor does it add the held version to what a rollback goes back to.
    assert!(matches!(
        rollback(&store, "churn", "production"),
        Err(RegistryError::NothingToRollBack { .. })
    ));
}

#[test]
fn registering_twice_for_the_same_run_and_step_returns_the_same_version() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let first = store
        .register_model(version("churn", "r1"), Some("staging"), "run")
        .unwrap();
    // A `register` step run again after a crash: same run, same step.
    let again = store
        .register_model(version("churn", "r1"), Some("staging"), "run")
        .unwrap();
    assert_eq!(first, again);
    assert_eq!(store.model_versions("churn").unwrap().len(), 1);
    assert_eq!(store.model_history("churn").unwrap().len(), 1);
    let effect = store.step_effect("r1", "register").unwrap().unwrap();
    assert_eq!((effect.model.as_str(), effect.version), ("churn", 1));
    // Another run registers a new version.
    assert_eq!(register_runs(&store, "churn", &["r2"]), [2]);
}

#[test]
fn unknown_models_versions_and_aliases_are_errors_naming_what_exists() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let none = store.model_versions("churn").unwrap_err();
    assert_eq!(none.to_string(), "no model `churn`; models: none");
    register_runs(&store, "churn", &["r1", "r2"]);
    register_runs(&store, "fraud", &["r3"]);
    promote(&store, "churn", "production", 1);
    promote(&store, "churn", "staging", 2);
    let resolve = |text: &str| {
        store
            .resolve_model(&ModelRef::parse(text).unwrap())
            .unwrap_err()
    };
    let cases = [
        (resolve("nope"), "no model `nope`; models: churn, fraud"),
        (
            resolve("nope@production"),
            "no model `nope`; models: churn, fraud",
        ),
        (
            resolve("churn:7"),
            "model `churn` has no version 7; versions: 1-2",
        ),
        (
            resolve("churn@canary"),
            "model `churn` has no alias `canary`; aliases: production, staging",
        ),
        (
            rollback(&store, "fraud", "production").unwrap_err(),
            "model `fraud` has no alias `production`; aliases: none",
        ),
        (
            store.model_history("nope").unwrap_err(),
            "no model `nope`; models: churn, fraud",
        ),
    ];
    for (err, message) in cases {
        assert!(err.is_not_found(), "{err}");
        assert_eq!(err.to_string(), message);
    }
    let request = MoveRequest {
        model: "churn",
        alias: "production",
        action: AliasAction::Promote,
        who: "alice",
        reason: None,
    };
    let err = store.move_alias(&request, 9, None).unwrap_err();
    assert_eq!(
        err.to_string(),
        "model `churn` has no version 9; versions: 1-2"
    );
    assert_eq!(store.alias("churn", "production").unwrap().version, 1);
}

#[test]
fn concurrent_promotions_leave_history_and_aliases_agreeing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    register_runs(&store, "churn", &["r1", "r2", "r3", "r4"]);
    const ALIASES: [&str; 2] = ["production", "staging"];
    std::thread::scope(|scope| {
        for thread in 0..8u64 {
            let store = &store;
            scope.spawn(move || {
                for i in 0..20u64 {
                    let alias = ALIASES[((thread + i) % 2) as usize];
                    if i % 5 == 4 {
                        // Nothing to go back to is a fine answer here.
                        let _ = rollback(store, "churn", alias);
                    } else {
                        promote(store, "churn", alias, (thread * 7 + i) % 4 + 1);
                    }
                }
            });
        }
    });
    let history = store.model_history("churn").unwrap();
    assert!(!history.is_empty());
    let mut replayed: BTreeMap<&str, u64> = BTreeMap::new();
    for (i, entry) in history.iter().enumerate() {
        assert_eq!(entry.seq, i as u64, "seqs are gapless: {history:?}");
        assert_ne!(entry.from, Some(entry.to), "a move that moved nothing");
        assert_eq!(
            entry.from,
            replayed.get(entry.alias.as_str()).copied(),
            "entry {i} starts where the alias was: {history:?}"
        );
        replayed.insert(&entry.alias, entry.to);
    }
    let aliases: BTreeMap<String, u64> = store
        .aliases("churn")
        .unwrap()
        .into_iter()
        .map(|(alias, record)| (alias, record.version))
        .collect();
    let replayed: BTreeMap<String, u64> = replayed
        .into_iter()
        .map(|(alias, to)| (alias.to_string(), to))
        .collect();
    assert_eq!(aliases, replayed);
}

#[test]
fn everything_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path()).unwrap();
        store
            .register_model(version("churn", "r1"), Some("production"), "run")
            .unwrap();
        register_runs(&store, "churn", &["r2"]);
        promote(&store, "churn", "production", 2);
        rollback(&store, "churn", "production").unwrap();
        promote(&store, "churn", "staging", 2);
    }
    let store = reopen(dir.path());
    assert_eq!(store.model_versions("churn").unwrap().len(), 2);
    let v2 = store.model_version("churn", 2).unwrap();
    assert_eq!(v2, {
        let mut expected = version("churn", "r2");
        expected.version = 2;
        expected
    });
    assert_eq!(store.alias("churn", "production").unwrap().version, 1);
    assert_eq!(store.alias("churn", "staging").unwrap().version, 2);
    assert_eq!(store.model_history("churn").unwrap().len(), 4);
    assert_eq!(store.all_model_versions().unwrap().len(), 2);
    // Numbering and the history go on from where they were.
    assert_eq!(register_runs(&store, "churn", &["r3"]), [3]);
    assert_eq!(promote(&store, "churn", "production", 3).from, Some(1));
    assert_eq!(store.model_history("churn").unwrap()[4].seq, 4);
}

#[test]
fn every_alias_of_every_model_is_listed_for_metrics_and_the_store_has_a_size() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.every_alias().unwrap(), vec![]);
    register_runs(&store, "churn", &["r1", "r2"]);
    register_runs(&store, "churn-eu", &["r3"]);
    promote(&store, "churn", "production", 1);
    promote(&store, "churn", "staging", 2);
    promote(&store, "churn-eu", "production", 1);
    promote(&store, "churn", "production", 2);
    let mut aliases = store.every_alias().unwrap();
    aliases.sort();
    let expected = [
        ("churn", "production", 2),
        ("churn", "staging", 2),
        ("churn-eu", "production", 1),
    ]
    .map(|(m, a, v)| (m.to_string(), a.to_string(), v));
    assert_eq!(aliases, expected);
    assert!(store.size_on_disk().unwrap() > 0);
}
