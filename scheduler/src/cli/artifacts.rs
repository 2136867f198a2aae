//! `sluice artifacts ls | show | get | diff | lineage` and `sluice gc`, against the data dir or
//! a scheduler (`--server`). Local answers are turned into the API's JSON first, so one printer
//! serves both.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::{json, Value};

use super::artifact_args::ArtifactArgs;
use super::client::{block_on, failed, segment, Api};
use super::inspect::open_store;
use super::printers::timestamp;
use super::{DataDirArg, RemoteArgs, EXIT_INVALID};
use crate::artifacts::gc::{self, GcPolicy};
use crate::artifacts::{Catalog, CatalogError};

/// What `sluice artifacts` does.
#[derive(Debug, Subcommand)]
pub enum ArtifactsCommand {
    #[command(flatten)]
    Catalog(CatalogCommand),
    /// The id a file or folder has (or would have) as an artifact, as Sluice hashes it (BLAKE3;
    /// unchanged files are answered from the data dir's hash cache).
    Hash {
        /// A file or folder.
        path: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        artifacts: ArtifactArgs,
        #[command(flatten)]
        data: DataDirArg,
    },
}

/// The questions answered from the records and the store, locally or by a scheduler.
#[derive(Debug, Subcommand)]
pub enum CatalogCommand {
    /// Every artifact made, newest first: id, size, files, the run and step that made it.
    Ls {
        /// Only this pipeline's.
        #[arg(long)]
        pipeline: Option<String>,
        /// Only this step's.
        #[arg(long)]
        step: Option<String>,
        #[command(flatten)]
        common: Common,
    },
    /// One artifact (by id or a unique prefix): its files and who made it, from what.
    Show {
        /// Id or prefix.
        id: String,
        #[command(flatten)]
        common: Common,
    },
    /// Writes an artifact to DEST (a file, or a folder for a folder artifact), verified.
    Get {
        /// Id or prefix.
        id: String,
        /// Where to write it; must not exist.
        dest: PathBuf,
        #[command(flatten)]
        common: Common,
    },
    /// Files added, removed and changed from the first artifact to the second.
    Diff {
        /// The older artifact.
        old: String,
        /// The newer artifact.
        new: String,
        #[command(flatten)]
        common: Common,
    },
    /// The chain of producers and their inputs, back to the first step.
    Lineage {
        /// Id or prefix.
        id: String,
        #[command(flatten)]
        common: Common,
    },
}

/// Flags every artifacts command takes.
#[derive(Debug, Args)]
pub struct Common {
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub remote: RemoteArgs,
    #[command(flatten)]
    pub artifacts: ArtifactArgs,
    #[command(flatten)]
    pub data: DataDirArg,
}

/// Arguments of `sluice gc`.
#[derive(Debug, Args)]
pub struct GcArgs {
    /// Finished runs that ended longer ago than this go, with their logs and folders.
    #[arg(long, default_value = "30d", value_parser = crate::spec::values::duration)]
    pub older_than: Duration,
    /// The newest this many runs of each pipeline stay, however old.
    #[arg(long, default_value_t = 1)]
    pub keep_last: usize,
    /// Say what would be removed; remove nothing.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub common: Common,
}

impl CatalogCommand {
    /// Whether it writes files (`get`), which a closed stdout must not cut short.
    pub fn writes(&self) -> bool {
        matches!(self, CatalogCommand::Get { .. })
    }

    fn common(&self) -> &Common {
        match self {
            CatalogCommand::Ls { common, .. }
            | CatalogCommand::Show { common, .. }
            | CatalogCommand::Get { common, .. }
            | CatalogCommand::Diff { common, .. }
            | CatalogCommand::Lineage { common, .. } => common,
        }
    }
}

/// `sluice artifacts ...`.
pub fn artifacts(command: ArtifactsCommand) -> anyhow::Result<u8> {
    let command = match command {
        ArtifactsCommand::Catalog(command) => command,
        ArtifactsCommand::Hash {
            path,
            json,
            artifacts,
            data,
        } => return hash(&path, json, &artifacts, &data),
    };
    block_on(async move {
        let common = command.common();
        let json = common.json;
        let answer = match &common.remote.server {
            Some(server) => {
                remote(&command, &Api::new(server, common.remote.token.as_deref())).await
            }
            None => local(&command).await,
        };
        let answer = match answer {
            Ok(answer) => answer,
            Err(code) => return Ok(code),
        };
        if json {
            println!("{}", serde_json::to_string_pretty(&answer)?);
        } else {
            print(&command, &answer);
        }
        Ok(0)
    })
}

/// The answer from the data dir, as the API would give it.
async fn local(command: &CatalogCommand) -> Result<Value, u8> {
    let common = command.common();
    let store = open_store(&common.data).map_err(|err| {
        eprintln!("error: {err:#}");
        EXIT_INVALID
    })?;
    let artifacts = common
        .artifacts
        .open(&common.data.data_dir)
        .map_err(|message| {
            eprintln!("error: {message}");
            EXIT_INVALID
        })?;
    let catalog = Catalog {
        store: &store,
        artifacts: &artifacts,
    };
    let answer: Result<Value, CatalogError> = async {
        Ok(match command {
            CatalogCommand::Ls { pipeline, step, .. } => {
                json!({"artifacts": catalog.list(pipeline.as_deref(), step.as_deref())?})
            }
            CatalogCommand::Show { id, .. } => to_value(catalog.show(id).await?),
            CatalogCommand::Get { id, dest, .. } => {
                let (id, bytes) = catalog.get(id, dest).await?;
                json!({"id": id, "dest": dest, "bytes": bytes})
            }
            CatalogCommand::Diff { old, new, .. } => {
                json!({"changes": catalog.diff(old, new).await?})
            }
            CatalogCommand::Lineage { id, .. } => json!({"lineage": catalog.lineage(id)?}),
        })
    }
    .await;
    answer.map_err(|err| {
        eprintln!("error: {err}");
        match err {
            CatalogError::NotFound(_) | CatalogError::Ambiguous(_) => EXIT_INVALID,
            _ => super::EXIT_FAILED,
        }
    })
}

fn to_value(value: impl serde::Serialize) -> Value {
    serde_json::to_value(value).unwrap_or_default()
}

/// The answer from a scheduler's API.
async fn remote(command: &CatalogCommand, api: &Api) -> Result<Value, u8> {
    let answer = match command {
        CatalogCommand::Ls { pipeline, step, .. } => {
            let mut query = Vec::new();
            if let Some(p) = pipeline {
                query.push(format!("pipeline={}", segment(p)));
            }
            if let Some(s) = step {
                query.push(format!("step={}", segment(s)));
            }
            api.get(&format!("/api/v1/artifacts?{}", query.join("&")))
                .await
        }
        CatalogCommand::Show { id, .. } => {
            api.get(&format!("/api/v1/artifacts/{}", segment(id))).await
        }
        CatalogCommand::Diff { old, new, .. } => {
            api.get(&format!(
                "/api/v1/artifacts/{}/diff/{}",
                segment(old),
                segment(new)
            ))
            .await
        }
        CatalogCommand::Lineage { id, .. } => {
            api.get(&format!("/api/v1/artifacts/{}/lineage", segment(id)))
                .await
        }
        CatalogCommand::Get { id, dest, .. } => return download(api, id, dest).await,
    };
    answer.map_err(failed)
}

/// `artifacts get --server`: the artifact's files one by one, each verified against its id.
async fn download(api: &Api, id: &str, dest: &std::path::Path) -> Result<Value, u8> {
    let detail = api
        .get(&format!("/api/v1/artifacts/{}", segment(id)))
        .await
        .map_err(failed)?;
    let id = detail["id"].as_str().unwrap_or_default().to_string();
    if dest.exists() {
        eprintln!("error: {} exists already", dest.display());
        return Err(EXIT_INVALID);
    }
    let files: Vec<(String, String, u64)> = match detail["files"].as_array() {
        Some(files) if detail["kind"] == "dir" => files
            .iter()
            .map(|f| {
                (
                    f["path"].as_str().unwrap_or_default().to_string(),
                    f["id"].as_str().unwrap_or_default().to_string(),
                    f["mode"].as_u64().unwrap_or(0o644),
                )
            })
            .collect(),
        _ => vec![(String::new(), id.clone(), 0o644)],
    };
    let mut total = 0u64;
    for (path, blob, mode) in files {
        if !path.is_empty() && !sluice_worker::artifacts::manifest::is_safe_relative(&path) {
            eprintln!("error: the scheduler named a file `{path}` outside the artifact");
            return Err(super::EXIT_FAILED);
        }
        let url = format!(
            "{}/api/v1/artifacts/{}/content?path={}",
            api.base(),
            segment(&id),
            segment(&path)
        );
        let response = api.send(api.http().get(url)).await.map_err(failed)?;
        let bytes = response.bytes().await.map_err(|err| {
            eprintln!("error: reading {path}: {err}");
            super::EXIT_FAILED
        })?;
        let actual = blake3::hash(&bytes).to_hex().to_string();
        if actual != blob {
            eprintln!("error: `{path}` of artifact {id} arrived corrupt (hash {actual})");
            return Err(super::EXIT_FAILED);
        }
        let target = if path.is_empty() {
            dest.to_path_buf()
        } else {
            dest.join(&path)
        };
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(|err| {
                eprintln!("error: creating {}: {err}", parent.display());
                super::EXIT_FAILED
            })?;
        }
        std::fs::write(&target, &bytes).map_err(|err| {
            eprintln!("error: writing {}: {err}", target.display());
            super::EXIT_FAILED
        })?;
        use std::os::unix::fs::PermissionsExt;
        let mode = 0o644 | (mode as u32 & 0o111);
        let _ = std::fs::set_permissions(&target, std::fs::Permissions::from_mode(mode));
        total += bytes.len() as u64;
    }
    Ok(json!({"id": id, "dest": dest, "bytes": total}))
}

fn short(id: &Value) -> String {
    id.as_str().unwrap_or_default().chars().take(12).collect()
}

fn size(value: &Value) -> String {
    human_bytes(value.as_u64().unwrap_or(0))
}

/// `1.5 MiB`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

fn print(command: &CatalogCommand, answer: &Value) {
    let empty = Vec::new();
    match command {
        CatalogCommand::Ls { .. } => {
            let rows = answer["artifacts"].as_array().unwrap_or(&empty);
            if rows.is_empty() {
                println!("no artifacts");
            }
            println!(
                "{:<12}  {:>10}  {:>6}  {:<20}  {:<26}  OUTPUT",
                "ID", "SIZE", "FILES", "MADE", "RUN / STEP"
            );
            for row in rows {
                println!(
                    "{:<12}  {:>10}  {:>6}  {:<20}  {:<26}  {}",
                    short(&row["id"]),
                    size(&row["size"]),
                    row["files"].as_u64().unwrap_or(0),
                    timestamp(row["created_ms"].as_u64().unwrap_or(0)),
                    format!(
                        "{} {}",
                        short(&row["run_id"]),
                        row["step"].as_str().unwrap_or_default()
                    ),
                    row["name"].as_str().unwrap_or_default(),
                );
            }
        }
        CatalogCommand::Show { .. } => {
            println!(
                "artifact {} ({}, {})",
                answer["id"].as_str().unwrap_or_default(),
                answer["kind"].as_str().unwrap_or_default(),
                size(&answer["size"])
            );
            for producer in answer["producers"].as_array().unwrap_or(&empty) {
                print_producer(producer, "  ");
            }
            let files = answer["files"].as_array().unwrap_or(&empty);
            if !files.is_empty() {
                println!("  files:");
                for file in files {
                    println!(
                        "    {:>10}  {}  {}",
                        size(&file["size"]),
                        short(&file["id"]),
                        file["path"].as_str().unwrap_or_default()
                    );
                }
            }
        }
        CatalogCommand::Get { .. } => {
            println!(
                "artifact {} written to {} ({})",
                answer["id"].as_str().unwrap_or_default(),
                answer["dest"].as_str().unwrap_or_default(),
                size(&answer["bytes"])
            );
        }
        CatalogCommand::Diff { .. } => {
            let changes = answer["changes"].as_array().unwrap_or(&empty);
            if changes.is_empty() {
                println!("no differences");
            }
            for change in changes {
                let path = change["path"]
                    .as_str()
                    .filter(|p| !p.is_empty())
                    .unwrap_or("(the file)");
                let sizes = match change["change"].as_str() {
                    Some("added") => format!("+{}", size(&change["new_size"])),
                    Some("removed") => format!("-{}", size(&change["old_size"])),
                    _ => format!(
                        "{} -> {}",
                        size(&change["old_size"]),
                        size(&change["new_size"])
                    ),
                };
                println!(
                    "{:<8} {path}  ({sizes})",
                    change["change"].as_str().unwrap_or_default()
                );
            }
        }
        CatalogCommand::Lineage { .. } => {
            for node in answer["lineage"].as_array().unwrap_or(&empty) {
                let indent = "  ".repeat(node["depth"].as_u64().unwrap_or(0) as usize);
                let producer = &node["producer"];
                if producer.is_null() {
                    println!("{indent}{} (no record of who made it)", short(&node["id"]));
                } else {
                    println!(
                        "{indent}{} {} ← run {} step {}",
                        short(&node["id"]),
                        producer["name"].as_str().unwrap_or_default(),
                        short(&producer["run_id"]),
                        producer["step"].as_str().unwrap_or_default()
                    );
                }
            }
        }
    }
}

fn print_producer(producer: &Value, indent: &str) {
    println!(
        "{indent}made by run {} ({}) step {} attempt {} as `{}` at {}",
        producer["run_id"].as_str().unwrap_or_default(),
        producer["pipeline"].as_str().unwrap_or_default(),
        producer["step"].as_str().unwrap_or_default(),
        producer["attempt"],
        producer["name"].as_str().unwrap_or_default(),
        timestamp(producer["created_ms"].as_u64().unwrap_or(0))
    );
    if let Some(digest) = producer["image_digest"].as_str() {
        println!(
            "{indent}  image {} ({digest})",
            producer["image"].as_str().unwrap_or_default()
        );
    } else if let Some(command) = producer["command"].as_str() {
        println!(
            "{indent}  command: {}",
            command.lines().next().unwrap_or_default()
        );
    }
    if let Some(commit) = producer["commit"].as_str() {
        println!("{indent}  git commit {commit}");
    }
    if let Some(params) = producer["params"].as_object().filter(|p| !p.is_empty()) {
        let shown: Vec<String> = params
            .iter()
            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
            .collect();
        println!("{indent}  params {}", shown.join(" "));
    }
    for input in producer["inputs"].as_array().into_iter().flatten() {
        println!(
            "{indent}  input {}/{} {}",
            input["step"].as_str().unwrap_or_default(),
            input["name"].as_str().unwrap_or_default(),
            short(&input["id"])
        );
    }
}

/// `sluice artifacts hash`: needs no store of records, only the data dir's hash cache.
fn hash(
    path: &std::path::Path,
    json: bool,
    artifacts: &ArtifactArgs,
    data: &DataDirArg,
) -> anyhow::Result<u8> {
    std::fs::create_dir_all(&data.data_dir)?;
    let artifacts = match artifacts.open(&data.data_dir) {
        Ok(artifacts) => artifacts,
        Err(message) => {
            eprintln!("error: {message}");
            return Ok(EXIT_INVALID);
        }
    };
    match artifacts.identify(path) {
        Ok(found) if json => println!("{}", serde_json::to_string_pretty(&found)?),
        Ok(found) => println!(
            "{}  {} ({}, {} files)",
            found.id,
            path.display(),
            human_bytes(found.size),
            found.files
        ),
        Err(err) => {
            eprintln!("error: {err}");
            return Ok(EXIT_INVALID);
        }
    }
    Ok(0)
}

/// `sluice gc`.
pub fn collect(args: GcArgs) -> anyhow::Result<u8> {
    let common = &args.common;
    block_on(async move {
        let report = match &common.remote.server {
            Some(server) => {
                let api = Api::new(server, common.remote.token.as_deref());
                let body = json!({
                    "older_than": format!("{}s", args.older_than.as_secs()),
                    "keep_last": args.keep_last,
                    "dry_run": args.dry_run,
                });
                match api.post("/api/v1/gc", body).await {
                    Ok(report) => report,
                    Err(err) => return Ok(failed(err)),
                }
            }
            None => {
                let store = open_store(&common.data)?;
                let artifacts = match common.artifacts.open(&common.data.data_dir) {
                    Ok(artifacts) => artifacts,
                    Err(message) => {
                        eprintln!("error: {message}");
                        return Ok(EXIT_INVALID);
                    }
                };
                let policy = GcPolicy {
                    older_than: args.older_than,
                    keep_last: args.keep_last,
                    dry_run: args.dry_run,
                };
                let report =
                    gc::collect(&store, &artifacts, &common.data.data_dir, &policy).await?;
                to_value(report)
            }
        };
        if common.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
            return Ok(0);
        }
        let verb = if report["dry_run"] == true {
            "would remove"
        } else {
            "removed"
        };
        println!(
            "{verb} {} runs and {} blobs ({}); kept {} blobs in use and {} written since the oldest unfinished run started",
            report["runs"].as_array().map_or(0, |r| r.len()),
            report["blobs"],
            size(&report["bytes"]),
            report["kept_blobs"],
            report["recent_blobs"],
        );
        Ok(0)
    })
}
