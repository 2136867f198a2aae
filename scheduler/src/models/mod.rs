//! The model registry: versions of named models, each a registered artifact with where it came
//! from, aliases (`production`, `staging`, any name) that point at one version each, and an
//! append-only history of every alias move.
//!
//! Versions count up per model from 1. Registering, promoting and rolling back are serialised
//! by the store ([`crate::store::Store::register_model`] and friends): each is one durable
//! commit that moves the alias and appends its history entry together, so the log never
//! disagrees with the aliases.

pub mod gate;

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use sluice_worker::task::ArtifactRef;

/// One registered version of a model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ModelVersion {
    /// The model's name.
    pub model: String,
    /// From 1, per model.
    pub version: u64,
    /// The registered artifact (a file or a folder), as the producing step stored it.
    pub artifact: ArtifactRef,
    /// The pipeline, run and step that produced it.
    pub pipeline: String,
    /// The producing run.
    pub run_id: String,
    /// The step that wrote the artifact.
    pub step: String,
    /// The `register` step that registered it (in the same run).
    pub registered_by: String,
    /// Metrics of the steps upstream of the `register` step, by step.
    #[schema(value_type = BTreeMap<String, Object>)]
    pub metrics: BTreeMap<String, serde_json::Map<String, serde_json::Value>>,
    /// The run's parameters.
    pub params: BTreeMap<String, String>,
    /// The data it was trained on: the artifacts the producing step took as inputs.
    pub training_data: Vec<TrainingInput>,
    /// The git commit of the pipeline's folder, when it was in a work tree.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    /// The image id the producing step ran in, for image steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_digest: Option<String>,
    /// When it was registered, ms since the epoch.
    pub created_ms: u64,
}

impl ModelVersion {
    /// The value of metric `name` from any of the recorded steps (the first in step order that
    /// has it), as a number.
    pub fn metric(&self, name: &str) -> Option<f64> {
        self.metrics
            .values()
            .find_map(|m| m.get(name))
            .and_then(serde_json::Value::as_f64)
    }
}

/// One input artifact of the step that produced a model version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TrainingInput {
    /// The upstream step it came from.
    pub step: String,
    /// The artifact.
    pub artifact: ArtifactRef,
}

/// Where an alias points, and where it pointed before (for rollback).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AliasRecord {
    /// The version it points at.
    pub version: u64,
    /// The versions it held before, oldest first: `rollback` returns to the last one.
    #[serde(default)]
    pub previous: Vec<u64>,
    /// When it last moved, ms since the epoch.
    pub moved_ms: u64,
}

/// What moved an alias.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AliasAction {
    /// Set at registration (`register` with `alias:`).
    Register,
    /// `models promote`, or the API.
    Promote,
    /// `models rollback`: back to the version held before.
    Rollback,
    /// A `deploy` step, after its health check passed.
    Deploy,
}

impl AliasAction {
    /// The name used in listings.
    pub fn as_str(self) -> &'static str {
        match self {
            AliasAction::Register => "register",
            AliasAction::Promote => "promote",
            AliasAction::Rollback => "rollback",
            AliasAction::Deploy => "deploy",
        }
    }
}

/// One alias move in a model's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HistoryEntry {
    /// Order within the model's history, from 0.
    pub seq: u64,
    /// The alias.
    pub alias: String,
    /// The version it held before, if any.
    pub from: Option<u64>,
    /// The version it holds after.
    pub to: u64,
    /// What moved it.
    pub action: AliasAction,
    /// Who: an API token's name, `cli`, or `run RUN/STEP`.
    pub who: String,
    /// When, ms since the epoch.
    pub at_ms: u64,
    /// Why, when someone said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A model with its versions' count and its aliases, for listings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ModelSummary {
    /// The model's name.
    pub name: String,
    /// How many versions it has.
    pub versions: u64,
    /// The newest version.
    pub latest: Option<u64>,
    /// Alias name to version.
    pub aliases: BTreeMap<String, u64>,
    /// When the newest version was registered.
    pub updated_ms: u64,
}

/// Which version of a model: `NAME` (the newest), `NAME@ALIAS` or `NAME:VERSION`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelRef {
    /// The model's name.
    pub model: String,
    /// Which of its versions.
    pub selector: Selector,
}

/// The part of a [`ModelRef`] after the name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Selector {
    /// The newest version.
    Latest,
    /// The version an alias points at.
    Alias(String),
    /// A version number.
    Version(u64),
}

impl ModelRef {
    /// Parses `NAME`, `NAME@ALIAS` or `NAME:VERSION`.
    pub fn parse(text: &str) -> Result<ModelRef, String> {
        let text = text.trim();
        let (model, selector) = if let Some((model, alias)) = text.split_once('@') {
            check_name("alias", alias)?;
            (model, Selector::Alias(alias.to_string()))
        } else if let Some((model, version)) = text.split_once(':') {
            let number = version
                .parse::<u64>()
                .ok()
                .filter(|v| *v > 0)
                .ok_or_else(|| {
                    format!("`{version}` in `{text}` is not a version number (1, 2, ...)")
                })?;
            (model, Selector::Version(number))
        } else {
            (text, Selector::Latest)
        };
        check_name("model name", model)?;
        Ok(ModelRef {
            model: model.to_string(),
            selector,
        })
    }
}

impl fmt::Display for ModelRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.selector {
            Selector::Latest => write!(f, "{}", self.model),
            Selector::Alias(alias) => write!(f, "{}@{alias}", self.model),
            Selector::Version(v) => write!(f, "{}:{v}", self.model),
        }
    }
}

/// Model names and aliases: 1-64 characters of `a-z`, `0-9`, `_`, `-`, `.` (not first), so they
/// are safe in URLs, store keys and folder names.
pub fn check_name(what: &str, name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.bytes().enumerate().all(|(i, b)| {
            b.is_ascii_lowercase()
                || b.is_ascii_digit()
                || b == b'_'
                || b == b'-'
                || (b == b'.' && i > 0)
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{what} `{name}` must be 1-64 characters of a-z, 0-9, `_`, `-` and `.`"
        ))
    }
}

/// Why the registry could not do what was asked; each message names what exists.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// No model by that name.
    #[error("no model `{name}`; models: {known}")]
    UnknownModel {
        /// The name asked for.
        name: String,
        /// The models that exist, or `none`.
        known: String,
    },
    /// The model has no such version.
    #[error("model `{model}` has no version {version}; versions: 1-{latest}")]
    UnknownVersion {
        /// The model.
        model: String,
        /// The version asked for.
        version: u64,
        /// Its newest version.
        latest: u64,
    },
    /// The model has no such alias.
    #[error("model `{model}` has no alias `{alias}`; aliases: {known}")]
    UnknownAlias {
        /// The model.
        model: String,
        /// The alias asked for.
        alias: String,
        /// The aliases it has, or `none`.
        known: String,
    },
    /// Rollback with nothing to go back to.
    #[error("alias `{alias}` of model `{model}` has never pointed at another version; nothing to roll back to")]
    NothingToRollBack {
        /// The model.
        model: String,
        /// The alias.
        alias: String,
    },
    /// A bad name or reference.
    #[error("{0}")]
    Invalid(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

impl RegistryError {
    /// Whether the error says something asked for does not exist (404 / exit 2).
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            RegistryError::UnknownModel { .. }
                | RegistryError::UnknownVersion { .. }
                | RegistryError::UnknownAlias { .. }
        )
    }
}

/// Lists names for an error message, or `none`.
pub(crate) fn list_or_none<I: IntoIterator<Item = S>, S: fmt::Display>(items: I) -> String {
    let names: Vec<String> = items.into_iter().map(|s| s.to_string()).collect();
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_name_a_model_and_one_of_its_versions() {
        let parsed = |t| ModelRef::parse(t).unwrap().selector;
        assert_eq!(parsed("churn"), Selector::Latest);
        assert_eq!(
            parsed("churn@production"),
            Selector::Alias("production".into())
        );
        assert_eq!(parsed("churn:3"), Selector::Version(3));
        assert_eq!(
            ModelRef::parse("churn@prod").unwrap().to_string(),
            "churn@prod"
        );
        for bad in [
            "",
            "Churn",
            "churn:0",
            "churn:x",
            "churn@",
            "a/b",
            "../x",
            "churn@Prod",
        ] {
            assert!(ModelRef::parse(bad).is_err(), "{bad} was accepted");
        }
    }
}
