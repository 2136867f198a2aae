//! `sluice models ls | show | promote | rollback | history`: the model registry, against the
//! data dir or a scheduler (`--server`). Locally the answers are built by the same functions the
//! API uses ([`crate::api::models`]), so one printer serves both and `--json` prints the same.
//!
//! Exit codes: 0 done (a promotion to the version the alias already holds included), 2 for
//! a model, version or alias that does not exist (the message lists those that do), a bad name,
//! or a rollback with nothing to go back to; 1 when the store or the scheduler failed.

use clap::{Args, Subcommand};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::json;
use sluice_worker::artifacts::ArtifactKind;

use super::artifacts::human_bytes;
use super::client::{block_on, failed, segment, Api};
use super::inspect::open_store;
use super::printers::timestamp;
use super::{DataDirArg, RemoteArgs, EXIT_FAILED, EXIT_INVALID};
use crate::api::models::{
    self as answers, AliasChange, AliasMoved, ModelHistory, ModelList, VersionDetail,
};
use crate::models::{ModelRef, RegistryError, Selector};
use crate::store::StoreError;

/// Who moves an alias from this command line, on a data dir (a scheduler records its token's
/// name instead).
const LOCAL_WHO: &str = "cli";

/// What `sluice models` does.
#[derive(Debug, Subcommand)]
pub enum ModelsCommand {
    /// Every model: how many versions, the newest, its aliases.
    Ls {
        #[command(flatten)]
        common: Common,
    },
    /// One version: its artifact, the run and step that made it, commit, image, params,
    /// metrics, training data, the aliases pointing at it.
    Show {
        /// `NAME` (the newest version), `NAME@ALIAS` or `NAME:VERSION`.
        reference: String,
        #[command(flatten)]
        common: Common,
    },
    /// Points an alias at a version (the alias is made if it is new).
    Promote {
        /// The model.
        name: String,
        /// The version the alias is to point at.
        #[arg(value_name = "VERSION", value_parser = clap::value_parser!(u64).range(1..))]
        to: u64,
        /// The alias: `production`, `staging`, any name.
        #[arg(long)]
        alias: String,
        /// Why, kept in the history.
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        common: Common,
    },
    /// Points an alias back at the version it held before its last move.
    Rollback {
        /// The model.
        name: String,
        /// The alias.
        #[arg(long)]
        alias: String,
        /// Why, kept in the history.
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        common: Common,
    },
    /// Every alias move of a model, oldest first: when, which alias, from and to, what moved
    /// it, who, why.
    History {
        /// The model.
        name: String,
        #[command(flatten)]
        common: Common,
    },
}

/// Flags every models command takes.
#[derive(Debug, Args)]
pub struct Common {
    /// Print JSON (the API's answer).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub remote: RemoteArgs,
    #[command(flatten)]
    pub data: DataDirArg,
}

impl ModelsCommand {
    /// Whether it only reads (so a closed stdout may simply end it).
    pub fn only_prints(&self) -> bool {
        matches!(
            self,
            ModelsCommand::Ls { .. } | ModelsCommand::Show { .. } | ModelsCommand::History { .. }
        )
    }

    fn common(&self) -> &Common {
        match self {
            ModelsCommand::Ls { common }
            | ModelsCommand::Show { common, .. }
            | ModelsCommand::Promote { common, .. }
            | ModelsCommand::Rollback { common, .. }
            | ModelsCommand::History { common, .. } => common,
        }
    }
}

/// An answer of the registry, as the API gives it.
#[derive(Debug, Serialize)]
#[serde(untagged)]
enum Answer {
    List(ModelList),
    Version(Box<VersionDetail>),
    History(ModelHistory),
    Moved(AliasMoved),
}

/// `sluice models ...`.
pub fn models(command: ModelsCommand) -> anyhow::Result<u8> {
    block_on(async move {
        let common = command.common();
        let answer = match &common.remote.server {
            Some(server) => {
                remote(&command, &Api::new(server, common.remote.token.as_deref())).await
            }
            None => local(&command),
        };
        let answer = match answer {
            Ok(answer) => answer,
            Err(code) => return Ok(code),
        };
        if common.json {
            println!("{}", serde_json::to_string_pretty(&answer)?);
        } else {
            print(&command, &answer);
        }
        Ok(0)
    })
}

/// `NAME@ALIAS` or `NAME:VERSION` parsed; `Err` is the exit code, after the problem was printed.
fn reference(text: &str) -> Result<ModelRef, u8> {
    ModelRef::parse(text).map_err(|message| {
        eprintln!("error: {message}");
        EXIT_INVALID
    })
}

/// The answer from the data dir.
fn local(command: &ModelsCommand) -> Result<Answer, u8> {
    let common = command.common();
    let store = open_store(&common.data).map_err(|err| {
        let hint = match err.downcast_ref::<StoreError>() {
            Some(StoreError::Locked { .. }) => {
                " (while a scheduler has the data dir, ask it: --server URL)"
            }
            _ => "",
        };
        eprintln!("error: {err:#}{hint}");
        EXIT_FAILED
    })?;
    let answer = match command {
        ModelsCommand::Ls { .. } => answers::list(&store).map(Answer::List),
        ModelsCommand::Show {
            reference: text, ..
        } => answers::version(&store, &reference(text)?).map(|v| Answer::Version(Box::new(v))),
        ModelsCommand::Promote {
            name,
            to,
            alias,
            reason,
            ..
        } => answers::promote(&store, &change(name, alias, reason), *to).map(Answer::Moved),
        ModelsCommand::Rollback {
            name,
            alias,
            reason,
            ..
        } => answers::rollback(&store, &change(name, alias, reason)).map(Answer::Moved),
        ModelsCommand::History { name, .. } => answers::history(&store, name).map(Answer::History),
    };
    answer.map_err(|err| {
        eprintln!("error: {err}");
        match err {
            RegistryError::Store(_) => EXIT_FAILED,
            _ => EXIT_INVALID,
        }
    })
}

/// An alias move asked for on this command line.
fn change<'a>(name: &'a str, alias: &'a str, reason: &'a Option<String>) -> AliasChange<'a> {
    AliasChange {
        model: name,
        alias,
        who: LOCAL_WHO,
        reason: reason.as_deref(),
    }
}

/// The answer from a scheduler's API.
async fn remote(command: &ModelsCommand, api: &Api) -> Result<Answer, u8> {
    let base = |name: &str| format!("/api/v1/models/{}", segment(name));
    let reason = |reason: &Option<String>| json!({ "reason": reason });
    Ok(match command {
        ModelsCommand::Ls { .. } => Answer::List(read(api.get("/api/v1/models").await)?),
        ModelsCommand::Show {
            reference: text, ..
        } => {
            let reference = reference(text)?;
            let path = match &reference.selector {
                Selector::Latest => format!("{}/versions/latest", base(&reference.model)),
                Selector::Version(v) => format!("{}/versions/{v}", base(&reference.model)),
                Selector::Alias(a) => format!("{}/aliases/{}", base(&reference.model), segment(a)),
            };
            Answer::Version(Box::new(read(api.get(&path).await)?))
        }
        ModelsCommand::Promote {
            name,
            to,
            alias,
            reason: why,
            ..
        } => {
            let mut body = reason(why);
            body["version"] = json!(to);
            let path = format!("{}/aliases/{}", base(name), segment(alias));
            Answer::Moved(read(api.post(&path, body).await)?)
        }
        ModelsCommand::Rollback {
            name,
            alias,
            reason: why,
            ..
        } => {
            let path = format!("{}/aliases/{}/rollback", base(name), segment(alias));
            Answer::Moved(read(api.post(&path, reason(why)).await)?)
        }
        ModelsCommand::History { name, .. } => {
            Answer::History(read(api.get(&format!("{}/history", base(name))).await)?)
        }
    })
}

/// A scheduler's answer as `T`; `Err` is the exit code, after the problem was printed.
fn read<T: DeserializeOwned>(
    answer: Result<serde_json::Value, super::client::ApiFailure>,
) -> Result<T, u8> {
    serde_json::from_value(answer.map_err(failed)?).map_err(|err| {
        eprintln!("error: the scheduler's answer cannot be read: {err}");
        EXIT_FAILED
    })
}

fn print(command: &ModelsCommand, answer: &Answer) {
    match answer {
        Answer::List(list) => print_list(list),
        Answer::Version(detail) => print_version(detail),
        Answer::History(history) => print_history(history),
        Answer::Moved(moved) => print_moved(command, moved),
    }
}

fn print_list(list: &ModelList) {
    if list.models.is_empty() {
        println!("no models (a pipeline's `uses: register` step registers them)");
        return;
    }
    println!(
        "{:<24}  {:>8}  {:>6}  {:<20}  ALIASES",
        "MODEL", "VERSIONS", "LATEST", "UPDATED"
    );
    for model in &list.models {
        let aliases: Vec<String> = model
            .aliases
            .iter()
            .map(|(alias, version)| format!("{alias}={version}"))
            .collect();
        println!(
            "{:<24}  {:>8}  {:>6}  {:<20}  {}",
            model.name,
            model.versions,
            model.latest.map_or("-".into(), |v| v.to_string()),
            timestamp(model.updated_ms),
            if aliases.is_empty() {
                "-".into()
            } else {
                aliases.join(" ")
            }
        );
    }
}

fn print_version(detail: &VersionDetail) {
    let v = &detail.version;
    let aliases = if detail.aliases.is_empty() {
        String::new()
    } else {
        format!(" ({})", detail.aliases.join(", "))
    };
    println!("model {} version {}{aliases}", v.model, v.version);
    let what = match v.artifact.kind {
        ArtifactKind::File => format!("file, {}", human_bytes(v.artifact.size)),
        ArtifactKind::Dir => format!(
            "folder, {}, {} files",
            human_bytes(v.artifact.size),
            v.artifact.files
        ),
    };
    println!(
        "  artifact   {} {} ({what})",
        v.artifact.name, v.artifact.id
    );
    println!(
        "  made by    run {} of `{}`, step {} (registered by step {})",
        v.run_id, v.pipeline, v.step, v.registered_by
    );
    println!("  created    {}", timestamp(v.created_ms));
    if let Some(commit) = &v.commit {
        println!("  commit     {commit}");
    }
    if let Some(digest) = &v.image_digest {
        println!("  image      {digest}");
    }
    if !v.params.is_empty() {
        let params: Vec<String> = v.params.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!("  params     {}", params.join(" "));
    }
    for (step, metrics) in &v.metrics {
        let shown: Vec<String> = metrics
            .iter()
            .map(|(k, v)| match v.as_str() {
                Some(text) => format!("{k}={text}"),
                None => format!("{k}={v}"),
            })
            .collect();
        println!("  metrics    {step}: {}", shown.join(" "));
    }
    for input in &v.training_data {
        println!(
            "  trained on {}/{} {} ({})",
            input.step,
            input.artifact.name,
            input.artifact.id,
            human_bytes(input.artifact.size)
        );
    }
}

fn print_history(history: &ModelHistory) {
    if history.history.is_empty() {
        println!("model {} has no alias moves", history.model);
        return;
    }
    println!(
        "{:<20}  {:<16}  {:>10}  {:<8}  WHO: REASON",
        "WHEN", "ALIAS", "FROM → TO", "ACTION"
    );
    for entry in &history.history {
        let from = entry.from.map_or("-".into(), |v| v.to_string());
        let reason = entry
            .reason
            .as_deref()
            .map(|r| format!(": {r}"))
            .unwrap_or_default();
        println!(
            "{:<20}  {:<16}  {:>10}  {:<8}  {}{reason}",
            timestamp(entry.at_ms),
            entry.alias,
            format!("{from} → {}", entry.to),
            entry.action.as_str(),
            entry.who,
        );
    }
}

fn print_moved(command: &ModelsCommand, moved: &AliasMoved) {
    let alias = format!("{}@{}", moved.model, moved.alias);
    if !moved.moved {
        println!(
            "{alias} already points at version {}; nothing changed",
            moved.to
        );
        return;
    }
    let verb = match command {
        ModelsCommand::Rollback { .. } => "rolled back",
        _ => "promoted",
    };
    match moved.from {
        Some(from) => println!("{alias} {verb}: version {from} → {}", moved.to),
        None => println!("{alias} {verb}: now version {}", moved.to),
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::ModelsCommand;
    use crate::cli::{Cli, Command};

    fn parse(args: &[&str]) -> Result<ModelsCommand, clap::Error> {
        let cli = Cli::try_parse_from(["sluice", "models"].iter().chain(args))?;
        match cli.command {
            Command::Models(command) => Ok(command),
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn the_commands_parse_and_a_version_is_a_positive_number() {
        match parse(&["promote", "churn", "3", "--alias", "production"]).unwrap() {
            ModelsCommand::Promote {
                name, to, alias, ..
            } => assert_eq!(
                (name.as_str(), to, alias.as_str()),
                ("churn", 3, "production")
            ),
            other => panic!("{other:?}"),
        }
        assert!(parse(&["promote", "churn", "0", "--alias", "production"]).is_err());
        assert!(
            parse(&["promote", "churn", "3"]).is_err(),
            "--alias is required"
        );
        let show = parse(&["show", "churn@production", "--json"]).unwrap();
        assert!(show.only_prints());
        let rollback = parse(&["rollback", "churn", "--alias", "production"]).unwrap();
        assert!(!rollback.only_prints());
        assert!(parse(&["history", "churn", "--server", "http://x"]).is_ok());
        assert!(parse(&["ls"]).is_ok());
    }
}
