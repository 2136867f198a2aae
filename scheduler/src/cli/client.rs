//! The client side of the HTTP API: `sluice trigger`, `cancel`, `workers`, and `runs`, `show`,
//! `logs`, `pipelines` with `--server`.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use futures_util::StreamExt;
use serde_json::{json, Value};

use super::inspect::{LogsArgs, PipelinesArgs, RunsArgs, ShowArgs};
use super::printers::{
    listed_triggers, print_pipelines, print_run, print_run_end, print_runs, timestamp,
    ListedPipeline, UnloadedFile,
};
use super::signals::StopSignals;
use super::{EXIT_CANCELLED, EXIT_FAILED, EXIT_INVALID};
use crate::spec;
use crate::store::{RunRecord, RunStatus, StepRecord, StepStatus};

/// How often `trigger --wait` asks how the run stands.
const WAIT_POLL: Duration = Duration::from_millis(300);
/// Lines of a failed step's stderr shown when a followed run ends (as `sluice run` shows).
const TAIL_LINES: usize = 10;
/// Bytes of the end of a stderr log kept to find those lines (as `sluice run` reads).
const TAIL_BYTES: usize = 8192;

/// Arguments of `sluice trigger`.
#[derive(Debug, Args)]
pub struct TriggerArgs {
    /// The pipeline's name (as loaded by the scheduler).
    pub pipeline: String,
    /// Set a parameter: `-p min_accuracy=0.9` (repeatable).
    #[arg(short = 'p', long = "param", value_name = "KEY=VALUE")]
    pub params: Vec<String>,
    /// Follow the run and exit 0 if it succeeded, 1 otherwise.
    #[arg(long)]
    pub wait: bool,
    #[command(flatten)]
    pub remote: ServerArgs,
}

/// `--server` (required) and `--token`, for commands that only talk to a scheduler.
#[derive(Debug, Clone, Args)]
pub struct ServerArgs {
    /// The scheduler's URL, e.g. `http://127.0.0.1:8080`.
    #[arg(long, env = "SLUICE_SERVER", default_value = "http://127.0.0.1:8080")]
    pub server: String,
    /// API token, sent as a bearer token (needed by every call when the scheduler has tokens).
    #[arg(long, env = "SLUICE_API_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

/// Arguments of `sluice cancel`.
#[derive(Debug, Args)]
pub struct CancelArgs {
    /// The run id, or an unambiguous start of it.
    pub run_id: String,
    #[command(flatten)]
    pub remote: super::RemoteArgs,
    #[command(flatten)]
    pub data: super::DataDirArg,
}

/// Where `cancel` goes without `--server` and without a `sluice run` holding the data dir.
const DEFAULT_SERVER: &str = "http://127.0.0.1:8080";

/// Arguments of `sluice workers`.
#[derive(Debug, Args)]
pub struct WorkersArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub remote: ServerArgs,
}

/// An answer of the API that was not a success, or no answer.
#[derive(Debug, thiserror::Error)]
pub(super) enum ApiFailure {
    #[error("{message} (HTTP {status})")]
    Status { status: u16, message: String },
    #[error("cannot reach {url}: {source}")]
    Unreachable {
        url: String,
        #[source]
        source: reqwest::Error,
    },
}

impl ApiFailure {
    /// 4xx answers are the user's input; the rest are failures.
    fn exit_code(&self) -> u8 {
        match self {
            ApiFailure::Status { status, .. } if (400..500).contains(status) => EXIT_INVALID,
            _ => EXIT_FAILED,
        }
    }
}

pub struct Api {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
    /// How a printed command reaches the same place: `--server URL`, or `--data-dir DIR` for
    /// the socket of the process holding a data dir.
    flags: String,
    /// The socket, for the API of the process holding a data dir.
    socket: Option<std::path::PathBuf>,
}

impl Api {
    /// The scheduler's URL, without a trailing `/`.
    pub(super) fn base(&self) -> &str {
        &self.base
    }

    /// The HTTP client, for requests that are not JSON.
    pub(super) fn http(&self) -> &reqwest::Client {
        &self.http
    }

    pub(super) fn new(server: &str, token: Option<&str>) -> Api {
        let base = server.trim_end_matches('/').to_string();
        Api {
            flags: format!(" --server {base}"),
            base,
            token: token.map(str::to_string),
            http: reqwest::Client::new(),
            socket: None,
        }
    }

    /// The API of the `sluice run` holding a data dir, on its socket (see [`crate::host`]);
    /// `data_flag` is how printed commands name that data dir (empty for the default one).
    pub(super) fn unix(socket: &std::path::Path, data_flag: &str) -> anyhow::Result<Api> {
        let http = reqwest::Client::builder()
            .unix_socket(socket)
            .build()
            .context("cannot make an HTTP client for the data dir's socket")?;
        Ok(Api {
            base: "http://sluice".into(),
            token: None,
            http,
            flags: data_flag.to_string(),
            socket: Some(socket.to_path_buf()),
        })
    }

    /// The API to ask for `runs`, `show`, `logs` and `cancel`: the scheduler of `--server`,
    /// else the process holding the data dir when one does, else none (read the store).
    pub fn for_reads(
        remote: &super::RemoteArgs,
        data: &super::DataDirArg,
    ) -> anyhow::Result<Option<Api>> {
        if let Some(server) = &remote.server {
            return Ok(Some(Api::new(server, remote.token.as_deref())));
        }
        match crate::host::live_socket(&data.data_dir) {
            Some(socket) => Api::unix(&socket, &super::data_dir_flag(&data.data_dir)).map(Some),
            None => Ok(None),
        }
    }

    /// Where requests go, for messages.
    fn place(&self) -> String {
        match &self.socket {
            Some(socket) => format!(
                "the `sluice run` holding the data dir ({})",
                socket.display()
            ),
            None => self.base.clone(),
        }
    }

    /// The flags a printed command needs to reach the same place.
    pub(super) fn flags(&self) -> &str {
        &self.flags
    }

    pub(super) async fn send(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, ApiFailure> {
        let request = match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        };
        let response = request
            .send()
            .await
            .map_err(|source| ApiFailure::Unreachable {
                url: self.place(),
                source,
            })?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        let message = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_string))
            .unwrap_or(text);
        Err(ApiFailure::Status { status, message })
    }

    pub(super) async fn get(&self, path: &str) -> Result<Value, ApiFailure> {
        let response = self
            .send(self.http.get(format!("{}{path}", self.base)))
            .await?;
        response
            .json()
            .await
            .map_err(|source| ApiFailure::Unreachable {
                url: self.place(),
                source,
            })
    }

    pub(super) async fn post(&self, path: &str, body: Value) -> Result<Value, ApiFailure> {
        let request = self.http.post(format!("{}{path}", self.base)).json(&body);
        let response = self.send(request).await?;
        response
            .json()
            .await
            .map_err(|source| ApiFailure::Unreachable {
                url: self.place(),
                source,
            })
    }
}

pub(super) fn block_on<F: std::future::Future<Output = anyhow::Result<u8>>>(
    f: F,
) -> anyhow::Result<u8> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(f)
}

/// Prints the failure and gives its exit code.
pub(super) fn failed(err: ApiFailure) -> u8 {
    eprintln!("error: {err}");
    err.exit_code()
}

/// Encodes a path segment (run ids and names are plain, but a user can type anything).
pub(super) fn segment(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}

/// `sluice trigger`.
pub fn trigger(args: TriggerArgs) -> anyhow::Result<u8> {
    let params = match super::param_pairs(&args.params) {
        Ok(params) => params,
        Err(code) => return Ok(code),
    };
    let api = Api::new(&args.remote.server, args.remote.token.as_deref());
    block_on(async move {
        let path = format!("/api/v1/pipelines/{}/runs", segment(&args.pipeline));
        let created = match api.post(&path, json!({ "params": params })).await {
            Ok(created) => created,
            Err(err) => return Ok(failed(err)),
        };
        let run: RunRecord = serde_json::from_value(created["run"].clone())?;
        println!("run {} of `{}` started", run.id, run.pipeline);
        if !args.wait {
            return Ok(0);
        }
        wait_for(&api, &run.id).await
    })
}

/// `sluice retry RUN --server URL`: `POST /api/v1/runs/{id}/retry`.
pub fn retry(args: &super::run::RetryArgs) -> anyhow::Result<u8> {
    let server = args.remote.server.as_deref().unwrap_or_default();
    let api = Api::new(server, args.remote.token.as_deref());
    block_on(async move {
        let path = format!("/api/v1/runs/{}/retry", segment(&args.run_id));
        let body = match &args.from {
            Some(from) => json!({ "from": from }),
            None => json!({}),
        };
        let created = match api.post(&path, body).await {
            Ok(created) => created,
            Err(err) => return Ok(failed(err)),
        };
        let run: RunRecord = serde_json::from_value(created["run"].clone())?;
        println!(
            "run {} of `{}` started (retry of {})",
            run.id,
            run.pipeline,
            run.retry_of.as_deref().unwrap_or("?")
        );
        if !args.wait {
            return Ok(0);
        }
        wait_for(&api, &run.id).await
    })
}

/// Follows a run until it ends (see [`follow`]). Ctrl-C or SIGTERM stops the following, not
/// the run: it says so and how to cancel the run, and exits 130.
async fn wait_for(api: &Api, run_id: &str) -> anyhow::Result<u8> {
    let ended = match StopSignals::listen() {
        None => follow(api, run_id).await?,
        Some(mut signals) => tokio::select! {
            ended = follow(api, run_id) => ended?,
            () = signals.next() => {
                eprintln!(
                    "stopped waiting: run {run_id} goes on on the scheduler; to cancel it: sluice cancel {run_id}{}",
                    api.flags()
                );
                return Ok(EXIT_CANCELLED);
            }
        },
    };
    let (run, steps) = match ended {
        Ok(ended) => ended,
        Err(code) => return Ok(code),
    };
    print_summary(api, &run, &steps).await;
    Ok(if run.status == RunStatus::Succeeded {
        0
    } else {
        EXIT_FAILED
    })
}

/// Polls a run until it ends, printing each step's change; the run and its steps as they
/// ended, or `Err` with the exit code once the scheduler refused or stayed unreachable (after
/// saying so).
async fn follow(
    api: &Api,
    run_id: &str,
) -> anyhow::Result<Result<(RunRecord, Vec<StepRecord>), u8>> {
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    let mut unreachable_since: Option<std::time::Instant> = None;
    loop {
        let shown = match api.get(&format!("/api/v1/runs/{}", segment(run_id))).await {
            Ok(shown) => {
                unreachable_since = None;
                shown
            }
            // A scheduler restarting is not the run failing: keep asking for a while.
            Err(err @ ApiFailure::Unreachable { .. }) => {
                let since = *unreachable_since.get_or_insert_with(std::time::Instant::now);
                if since.elapsed() > Duration::from_secs(120) {
                    return Ok(Err(failed(err)));
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Err(err) => return Ok(Err(failed(err))),
        };
        let run: RunRecord = serde_json::from_value(shown["run"].clone())?;
        let steps: Vec<StepRecord> = serde_json::from_value(shown["steps"].clone())?;
        for step in &steps {
            let status = step.status.as_str().to_string();
            if seen.get(&step.name) != Some(&status) {
                let detail = step
                    .reason
                    .clone()
                    .or_else(|| step.last_attempt().and_then(|a| a.message.clone()))
                    .map(|d| format!(" ({d})"))
                    .unwrap_or_default();
                println!("  {:<24} {status}{detail}", step.name);
                seen.insert(step.name.clone(), status);
            }
        }
        if run.status.is_terminal() {
            return Ok(Ok((run, steps)));
        }
        tokio::time::sleep(WAIT_POLL).await;
    }
}

/// The end of a followed run, as `sluice run` prints it, with the failed steps' stderr tails
/// read through the API.
async fn print_summary(api: &Api, run: &RunRecord, steps: &[StepRecord]) {
    let mut tails = BTreeMap::new();
    for step in steps.iter().filter(|s| s.status == StepStatus::Failed) {
        if let Some(attempt) = step.last_attempt() {
            let tail = stderr_tail(api, &run.id, &step.name, attempt.number, TAIL_LINES).await;
            tails.insert(step.name.clone(), tail);
        }
    }
    print_run_end(run, steps, &tails, api.flags());
}

/// The last `n` lines of an attempt's stderr, through the API; none when it cannot be read
/// (the summary still names the command that prints it). Only the end is kept as it streams:
/// logs can be huge.
async fn stderr_tail(api: &Api, run: &str, step: &str, attempt: u32, n: usize) -> Vec<String> {
    let url = format!(
        "{}/api/v1/runs/{}/steps/{}/logs",
        api.base,
        segment(run),
        segment(step)
    );
    let query = [
        ("stream", "stderr".to_string()),
        ("attempt", attempt.to_string()),
    ];
    let Ok(response) = api.send(api.http.get(&url).query(&query)).await else {
        return Vec::new();
    };
    let mut end: Vec<u8> = Vec::new();
    let mut body = response.bytes_stream();
    while let Some(chunk) = body.next().await {
        let Ok(chunk) = chunk else {
            break;
        };
        end.extend_from_slice(&chunk);
        if end.len() > 2 * TAIL_BYTES {
            end.drain(..end.len() - TAIL_BYTES);
        }
    }
    let end = &end[end.len().saturating_sub(TAIL_BYTES)..];
    let text = String::from_utf8_lossy(end);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| l.to_string())
        .collect()
}

/// `sluice cancel`.
pub fn cancel(args: CancelArgs) -> anyhow::Result<u8> {
    let api = match Api::for_reads(&args.remote, &args.data)? {
        Some(api) => api,
        None => Api::new(DEFAULT_SERVER, args.remote.token.as_deref()),
    };
    block_on(async move {
        let path = format!("/api/v1/runs/{}/cancel", segment(&args.run_id));
        match api.post(&path, json!({})).await {
            Ok(answer) => {
                println!(
                    "run {} is being cancelled",
                    answer["run"].as_str().unwrap_or("")
                );
                Ok(0)
            }
            Err(err) => Ok(failed(err)),
        }
    })
}

/// `sluice workers`.
pub fn workers(args: WorkersArgs) -> anyhow::Result<u8> {
    let api = Api::new(&args.remote.server, args.remote.token.as_deref());
    block_on(async move {
        let answer = match api.get("/api/v1/workers").await {
            Ok(answer) => answer,
            Err(err) => return Ok(failed(err)),
        };
        if args.json {
            println!("{}", serde_json::to_string_pretty(&answer["workers"])?);
            return Ok(0);
        }
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "{:<32}  {:<5}  {:<16}  {:>5}  {:>7}  {:<6}  {:<8}  LAST SEEN",
            "WORKER", "STATE", "QUEUES", "SLOTS", "RUNNING", "DOCKER", "GPUS"
        )?;
        for w in answer["workers"].as_array().into_iter().flatten() {
            let list = |v: &Value| {
                v.as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(Value::as_str)
                            .collect::<Vec<_>>()
                            .join(",")
                    })
                    .unwrap_or_default()
            };
            let gpus = list(&w["gpus"]);
            writeln!(
                out,
                "{:<32}  {:<5}  {:<16}  {:>5}  {:>7}  {:<6}  {:<8}  {}s ago ({})",
                w["name"].as_str().unwrap_or(""),
                w["state"].as_str().unwrap_or(""),
                list(&w["queues"]),
                w["slots"].as_u64().unwrap_or(0),
                w["running"].as_u64().unwrap_or(0),
                if w["docker"].as_bool() == Some(true) {
                    "yes"
                } else {
                    "no"
                },
                if gpus.is_empty() { "-".into() } else { gpus },
                w["seen_ms_ago"].as_u64().unwrap_or(0) / 1000,
                timestamp(w["heartbeat_ms"].as_u64().unwrap_or(0)),
            )?;
        }
        Ok(0)
    })
}

/// `sluice pipelines --server`: `GET /api/v1/pipelines`.
pub fn pipelines(args: &PipelinesArgs) -> anyhow::Result<u8> {
    let server = args.remote.server.clone().unwrap_or_default();
    let api = Api::new(&server, args.remote.token.as_deref());
    block_on(async move {
        let answer = match api.get("/api/v1/pipelines").await {
            Ok(answer) => answer,
            Err(err) => return Ok(failed(err)),
        };
        let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
        let unloaded: Vec<UnloadedFile> = answer["errors"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| UnloadedFile {
                file: text(&e["file"]),
                problems: e["problems"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(text)
                    .collect(),
                serving_last_good: e["serving_last_good"].as_str().map(str::to_string),
            })
            .collect();
        let now = chrono::Utc::now();
        let listed: Vec<ListedPipeline> = answer["pipelines"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| {
                let (file, hash) = (text(&p["file"]), text(&p["hash"]));
                let serving_last_good = unloaded.iter().any(|e| {
                    e.file == file && e.serving_last_good.as_deref() == Some(hash.as_str())
                });
                ListedPipeline {
                    name: text(&p["name"]),
                    description: p["description"].as_str().map(str::to_string),
                    steps: p["steps"].as_array().map_or(0, Vec::len),
                    triggers: api_triggers(&p["triggers"])
                        .or_else(|| served_triggers(&file, &hash, now)),
                    file,
                    hash,
                    serving_last_good,
                }
            })
            .collect();
        print_pipelines(&listed, &unloaded, args.json)
    })
}

/// The triggers the API lists for a pipeline (schedulers before this version list none).
fn api_triggers(value: &Value) -> Option<Vec<super::printers::ListedTrigger>> {
    let list = value.as_array()?;
    Some(
        list.iter()
            .map(|t| {
                let next = t["next"].as_str().map(str::to_string);
                super::printers::ListedTrigger {
                    kind: match t["kind"].as_str() {
                        Some("cron") => "cron",
                        Some("webhook") => "webhook",
                        Some("watch") => "watch",
                        Some("after") => "after",
                        _ => "?",
                    },
                    what: t["what"].as_str().unwrap_or_default().to_string(),
                    next_ms: next
                        .as_deref()
                        .and_then(|n| chrono::DateTime::parse_from_rfc3339(n).ok())
                        .map(|d| d.timestamp_millis().max(0) as u64),
                    next,
                }
            })
            .collect(),
    )
}

/// The triggers of a served pipeline when an older API does not list them: read from its file when
/// that file is readable here (a scheduler on this machine, started from this folder) and is
/// the very version served (same hash); `None` otherwise.
fn served_triggers(
    file: &str,
    hash: &str,
    now: chrono::DateTime<chrono::Utc>,
) -> Option<Vec<super::printers::ListedTrigger>> {
    let path = std::path::Path::new(file);
    if file.is_empty() || !path.is_file() {
        return None;
    }
    let (loaded, _warnings) =
        spec::load_file_with_warnings(path, spec::DEFAULT_MAX_FILE_BYTES).ok()?;
    (loaded.hash == hash).then(|| listed_triggers(&loaded.pipeline, now))
}

/// `sluice runs` through an API (`--server`, or the socket of the process holding the data dir).
pub fn runs(args: &RunsArgs, api: Api) -> anyhow::Result<u8> {
    block_on(async move {
        let mut path = format!("/api/v1/runs?limit={}", args.limit);
        if let Some(before) = &args.before {
            path.push_str(&format!("&before={}", segment(before)));
        }
        if let Some(pipeline) = &args.pipeline {
            path.push_str(&format!("&pipeline={}", segment(pipeline)));
        }
        if let Some(status) = args.status {
            path.push_str(&format!("&status={}", status.status().as_str()));
        }
        let answer = match api.get(&path).await {
            Ok(answer) => answer,
            Err(err) => return Ok(failed(err)),
        };
        let runs: Vec<RunRecord> = serde_json::from_value(answer["runs"].clone())?;
        print_runs(&runs, args.json)
    })
}

/// `sluice show` through an API.
pub fn show(args: &ShowArgs, api: Api) -> anyhow::Result<u8> {
    block_on(async move {
        let id = segment(&args.run_id);
        let answer = match api.get(&format!("/api/v1/runs/{id}")).await {
            Ok(answer) => answer,
            Err(err) => return Ok(failed(err)),
        };
        if args.json {
            let mut answer = answer;
            if let Ok(events) = api.get(&format!("/api/v1/runs/{id}/events")).await {
                answer["events"] = events["events"].clone();
            }
            println!("{}", serde_json::to_string_pretty(&answer)?);
            return Ok(0);
        }
        let run: RunRecord = serde_json::from_value(answer["run"].clone())?;
        let steps: Vec<StepRecord> = serde_json::from_value(answer["steps"].clone())?;
        print_run(&run, &steps, false)
    })
}

/// `sluice logs` through an API: stdout to stdout, stderr to stderr; `--follow` streams stdout.
pub fn logs(args: &LogsArgs, api: Api) -> anyhow::Result<u8> {
    block_on(async move {
        let base = format!(
            "{}/api/v1/runs/{}/steps/{}/logs",
            api.base,
            segment(&args.run_id),
            segment(&args.step)
        );
        let mut streams = Vec::new();
        if !args.stderr {
            streams.push("stdout");
        }
        if !args.stdout {
            streams.push("stderr");
        }
        for (i, stream) in streams.iter().copied().enumerate() {
            let mut query: Vec<(&str, String)> = vec![("stream", stream.to_string())];
            if let Some(attempt) = args.attempt {
                query.push(("attempt", attempt.to_string()));
            }
            if args.follow && stream == "stdout" {
                query.push(("follow", "true".into()));
            }
            let response = match api.send(api.http.get(&base).query(&query)).await {
                Ok(response) => response,
                Err(ApiFailure::Unreachable { .. }) if api.socket.is_some() => {
                    // The `sluice run` holding the data dir ended meanwhile: the rest is read
                    // from the data dir itself.
                    let mut rest = args.clone();
                    rest.stdout = streams[i..] == ["stdout"];
                    rest.stderr = streams[i..] == ["stderr"];
                    return super::inspect::logs(rest);
                }
                Err(err) => return Ok(failed(err)),
            };
            let mut body = response.bytes_stream();
            while let Some(chunk) = body.next().await {
                let chunk = chunk?;
                if stream == "stdout" {
                    let mut out = std::io::stdout().lock();
                    out.write_all(&chunk)?;
                    out.flush()?;
                } else {
                    std::io::stderr().lock().write_all(&chunk)?;
                }
            }
        }
        Ok(0)
    })
}

/// `sluice run FILE` on a data dir another `sluice run` holds: the holder runs the pipeline
/// beside its own, and this process follows it as if it ran it (a line per step, the same
/// summary and exit codes; Ctrl-C cancels the run). `None` when the holder is gone or
/// finishing: then this process runs it itself.
pub(super) fn run_on_holder(
    socket: &std::path::Path,
    data_flag: &str,
    submission: &crate::host::Submission,
) -> anyhow::Result<Option<u8>> {
    let api = Api::unix(socket, data_flag)?;
    let body = serde_json::to_value(submission)?;
    let outcome = block_on(async move {
        let created = match api.post("/api/v1/local/runs", body).await {
            Ok(created) => created,
            Err(ApiFailure::Status { status: 503, .. } | ApiFailure::Unreachable { .. }) => {
                return Ok(u8::MAX);
            }
            Err(ApiFailure::Status {
                status: 422,
                message,
            }) => {
                eprintln!("{message}");
                return Ok(EXIT_INVALID);
            }
            Err(err) => return Ok(failed(err)),
        };
        let run: RunRecord = serde_json::from_value(created["run"].clone())?;
        println!(
            "run {} of `{}`: {} steps, parallelism {}; run by the `sluice run` that holds this data dir",
            run.id, run.pipeline, run.step_count, run.parallelism
        );
        follow_cancelling(&api, &run.id).await
    })?;
    Ok((outcome != u8::MAX).then_some(outcome))
}

/// [`follow`]s a run to its end; Ctrl-C or SIGTERM cancels it (as `sluice run` does) and goes
/// on following until it has stopped. 0 succeeded, 130 cancelled, 1 otherwise.
async fn follow_cancelling(api: &Api, run_id: &str) -> anyhow::Result<u8> {
    let mut signals = StopSignals::listen();
    let following = follow(api, run_id);
    tokio::pin!(following);
    let mut cancelled = false;
    let ended = loop {
        tokio::select! {
            ended = &mut following => break ended?,
            () = async { match signals.as_mut() {
                Some(signals) => signals.next().await,
                None => std::future::pending().await,
            } }, if !cancelled => {
                cancelled = true;
                eprintln!("cancelling the run...");
                let path = format!("/api/v1/runs/{}/cancel", segment(run_id));
                if let Err(err) = api.post(&path, json!({})).await {
                    eprintln!("error: could not cancel run {run_id}: {err}");
                }
            }
        }
    };
    let (run, steps) = match ended {
        Ok(ended) => ended,
        Err(code) => return Ok(code),
    };
    print_summary(api, &run, &steps).await;
    Ok(match run.status {
        RunStatus::Succeeded => 0,
        RunStatus::Cancelled => EXIT_CANCELLED,
        _ => EXIT_FAILED,
    })
}
