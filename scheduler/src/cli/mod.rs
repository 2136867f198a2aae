//! The `sluice` command line: flags, subcommands, and what each exit code means.

mod artifact_args;
mod artifacts;
pub use artifacts::human_bytes;
mod client;
mod daemon;
mod graph;
mod inspect;
mod models;
mod plan;
pub(crate) mod printers;
mod progress;
mod run;
mod secrets;
mod signals;
mod sweeps;
mod validate;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

/// Exit code for a run that failed or a command that could not do its job.
pub const EXIT_FAILED: u8 = 1;
/// Exit code for invalid input: a bad pipeline file, bad params, a bad flag.
pub const EXIT_INVALID: u8 = 2;
/// Exit code for a run cancelled by Ctrl-C or SIGTERM (128 + SIGINT, as shells report it).
pub const EXIT_CANCELLED: u8 = 130;

/// Sluice: declarative MLOps pipelines, run on one machine or many.
#[derive(Debug, Parser)]
#[command(name = "sluice", version, about, propagate_version = true)]
pub struct Cli {
    /// How Sluice's own diagnostics are printed on stderr (`RUST_LOG` sets the level).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "SLUICE_LOG_FORMAT")]
    pub log_format: LogFormat,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The format of Sluice's own log lines.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Where the store and step files live.
#[derive(Debug, Clone, clap::Args)]
pub struct DataDirArg {
    /// Folder for the store, step outputs and logs.
    #[arg(long, env = "SLUICE_DATA_DIR", default_value = ".sluice")]
    pub data_dir: PathBuf,
}

/// Where the scheduler's API is.
#[derive(Debug, Clone, clap::Args)]
pub struct RemoteArgs {
    /// The scheduler's URL, e.g. `http://127.0.0.1:8080` (without it `runs`, `show` and `logs`
    /// read the local data dir).
    #[arg(long, env = "SLUICE_SERVER")]
    pub server: Option<String>,
    /// API token, sent as a bearer token (needed by every call when the scheduler has tokens).
    #[arg(long, env = "SLUICE_API_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

/// ` --data-dir DIR` for printed commands that must reach `data_dir`, or nothing when it is the
/// default one here (the hint must work when pasted).
pub(crate) fn data_dir_flag(data_dir: &std::path::Path) -> String {
    let default_dir = std::path::Path::new(".sluice").canonicalize().ok();
    let given = data_dir.canonicalize().ok();
    if given.is_some() && default_dir == given {
        String::new()
    } else {
        format!(" --data-dir {}", data_dir.display())
    }
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a pipeline on this machine and follow it in the terminal.
    #[command(after_help = r#"Examples:
  sluice run pipelines/mlops.yaml -p seed=11
  sluice run pipelines/mlops.yaml --from train   # train and what follows; the rest from earlier runs
  sluice run pipelines/mlops.yaml --dry-run      # the plan; nothing runs
  sluice run --resume 01J8Z                      # finish a run whose runner died

Exit codes: 0 succeeded, 1 failed, 2 invalid input (nothing ran), 130 cancelled."#)]
    Run(run::RunArgs),
    /// Check pipeline files (or folders of them) and print every problem.
    #[command(after_help = r#"Examples:
  sluice validate pipelines/                     # every *.yml/*.yaml below; other YAML is passed over
  sluice validate --format json pipelines/train.yaml

Exit codes: 0 every file valid (warnings allowed), 1 a file has errors, 2 nothing to check."#)]
    Validate(validate::ValidateArgs),
    /// Print the JSON Schema of pipeline files, for editors.
    Schema,
    /// Print a pipeline's DAG as Graphviz dot or Mermaid.
    Graph(graph::GraphArgs),
    /// List recent runs, newest first.
    #[command(after_help = r#"Examples:
  sluice runs --pipeline mlops --status failed --limit 5
  sluice runs --server http://127.0.0.1:8080 --json

Exit codes: 0 listed; 2 invalid input, or refused by the scheduler; 1 no data dir here, or the
scheduler cannot be reached."#)]
    Runs(inspect::RunsArgs),
    /// Show one run: steps, attempts, exit codes, durations, outputs, metrics.
    #[command(after_help = r#"Examples:
  sluice show 01J8Z                              # a unique start of the id is enough
  sluice show 01J8Z --json

Exit codes: 0 shown; 2 no such run (or several start that way); 1 no data dir here, or the
scheduler cannot be reached."#)]
    Show(inspect::ShowArgs),
    /// Print the log of a step's attempt (stdout to stdout, stderr to stderr).
    #[command(after_help = r#"Examples:
  sluice logs 01J8Z train
  sluice logs 01J8Z train --follow --server http://127.0.0.1:8080

Exit codes: 0 printed; 2 no such run, step or attempt; 1 no data dir here, or the scheduler
cannot be reached."#)]
    Logs(inspect::LogsArgs),
    /// The scheduler daemon: serves the API, queues ready steps in Redis for `sluice worker`s.
    Scheduler(daemon::SchedulerArgs),
    /// Takes steps from Redis and runs them (locally or in containers).
    Worker(daemon::WorkerArgs),
    /// The scheduler with in-process workers and no Redis, for one machine.
    Server(daemon::ServerArgs),
    /// Start a run of a pipeline the scheduler has loaded.
    #[command(after_help = r#"Examples:
  sluice trigger mlops -p seed=11 --wait --server http://127.0.0.1:8080

Exit codes: 0 started (with --wait: succeeded); 1 the run failed (--wait), or the scheduler
cannot be reached; 2 refused (unknown pipeline, bad params, no permission); 130 interrupted
while waiting (the run goes on)."#)]
    Trigger(client::TriggerArgs),
    /// Run again what did not succeed in an ended run (`--from STEP`: that step and what
    /// follows it too), keeping the steps that succeeded; here, or on `--server`.
    #[command(after_help = r#"Examples:
  sluice retry 01J8Z                             # the failed steps and what follows them
  sluice retry 01J8Z --from train --server http://127.0.0.1:8080 --wait

Exit codes: 0 the new run succeeded (with --server: started, or succeeded with --wait); 1 it
failed, or the scheduler cannot be reached; 2 no such run, nothing to retry, the run is still
going, or --from names no step; 130 cancelled here, or interrupted while waiting (--server)."#)]
    Retry(run::RetryArgs),
    /// Cancel a run on the scheduler.
    #[command(after_help = r#"Examples:
  sluice cancel 01J8Z --server http://127.0.0.1:8080

Exit codes: 0 cancelling; 2 no such run, or it already ended; 1 the scheduler cannot be reached."#)]
    Cancel(client::CancelArgs),
    /// Print a shell completion script: `sluice completions bash > /etc/bash_completion.d/sluice`,
    /// `sluice completions zsh > "${fpath[1]}/_sluice"`, `sluice completions fish >
    /// ~/.config/fish/completions/sluice.fish`.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// List the scheduler's workers with their capacity and last heartbeat.
    Workers(client::WorkersArgs),
    /// List the pipelines a scheduler serves (`--server`) or a folder holds (`--pipelines`),
    /// with their triggers, the version served and the files that did not load.
    Pipelines(inspect::PipelinesArgs),
    /// API tokens: `sluice token new NAME --role read|trigger|admin`.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Artifacts (declared outputs, by content id): `ls`, `show ID`, `get ID DEST`,
    /// `diff ID1 ID2`, `lineage ID`.
    #[command(subcommand)]
    Artifacts(artifacts::ArtifactsCommand),
    /// Remove old finished runs, then the artifact blobs nothing kept refers to.
    Gc(artifacts::GcArgs),
    /// The model registry: `ls`, `show NAME[@ALIAS|:VERSION]`, `promote NAME VERSION --alias A`,
    /// `rollback NAME --alias A`, `history NAME`.
    #[command(subcommand)]
    Models(models::ModelsCommand),
    /// Secrets stored encrypted in the data dir: `keygen`, `set NAME`, `ls`, `rm NAME`.
    #[command(subcommand)]
    Secrets(secrets::SecretsCommand),
}

/// What `sluice token` does.
#[derive(Debug, clap::Subcommand)]
pub enum TokenCommand {
    /// Print a new random token (give it to the caller) and its line for `--tokens FILE`
    /// (append it there; the file holds only the hash).
    New {
        /// Who holds it: recorded where it acts (`api by NAME`).
        name: String,
        /// `read` (every read), `trigger` (also start and cancel runs), `admin` (also reload).
        #[arg(long, default_value = "read")]
        role: String,
    },
}

impl Command {
    /// Whether the command only prints what it read (so a closed stdout may simply end it).
    pub fn only_prints(&self) -> bool {
        matches!(
            self,
            Command::Validate(_)
                | Command::Schema
                | Command::Completions { .. }
                | Command::Graph(_)
                | Command::Runs(_)
                | Command::Show(_)
                | Command::Logs(_)
                | Command::Workers(_)
                | Command::Pipelines(_)
        ) || matches!(self, Command::Artifacts(artifacts::ArtifactsCommand::Catalog(c)) if !c.writes())
            || matches!(self, Command::Models(m) if m.only_prints())
    }

    /// Whether this is a long-running daemon (which logs at `info` unless told otherwise).
    pub fn is_daemon(&self) -> bool {
        matches!(
            self,
            Command::Scheduler(_) | Command::Worker(_) | Command::Server(_)
        )
    }
}

/// Runs the parsed command line and returns the process's exit code.
pub fn main(cli: Cli) -> ExitCode {
    let result = match cli.command {
        Command::Run(args) => run::run(args),
        Command::Validate(args) => validate::validate(args),
        Command::Schema => {
            let schema = crate::spec::schema::pipeline_schema();
            println!(
                "{}",
                serde_json::to_string_pretty(&schema).unwrap_or_default()
            );
            Ok(0)
        }
        Command::Graph(args) => graph::graph(args),
        // The same printers either way: the data dir here, or a scheduler's API.
        // With `--server`, or while another process holds the data dir, through its API.
        Command::Runs(args) => match client::Api::for_reads(&args.remote, &args.data) {
            Ok(Some(api)) => client::runs(&args, api),
            Ok(None) => inspect::runs(args),
            Err(err) => Err(err),
        },
        Command::Show(args) => match client::Api::for_reads(&args.remote, &args.data) {
            Ok(Some(api)) => client::show(&args, api),
            Ok(None) => inspect::show(args),
            Err(err) => Err(err),
        },
        Command::Logs(args) => match client::Api::for_reads(&args.remote, &args.data) {
            Ok(Some(api)) => client::logs(&args, api),
            Ok(None) => inspect::logs(args),
            Err(err) => Err(err),
        },
        Command::Scheduler(args) => daemon::scheduler(args),
        Command::Worker(args) => daemon::worker(args),
        Command::Server(args) => daemon::server(args),
        Command::Trigger(args) => client::trigger(args),
        Command::Retry(args) if args.remote.server.is_some() => client::retry(&args),
        Command::Retry(args) => run::retry(args),
        Command::Cancel(args) => client::cancel(args),
        Command::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut command, "sluice", &mut std::io::stdout());
            Ok(0)
        }
        Command::Workers(args) => client::workers(args),
        Command::Pipelines(args) if args.remote.server.is_some() => client::pipelines(&args),
        Command::Pipelines(args) => inspect::pipelines(args),
        Command::Secrets(command) => secrets::secrets(command),
        Command::Artifacts(command) => artifacts::artifacts(command),
        Command::Gc(args) => artifacts::collect(args),
        Command::Models(command) => models::models(command),
        Command::Token(TokenCommand::New { name, role }) => {
            match crate::api::auth::new_token(&name, &role) {
                Ok((token, line)) => {
                    println!("token: {token}");
                    println!("tokens file line: {line}");
                    Ok(0)
                }
                Err(message) => {
                    eprintln!("error: {message}");
                    Ok(EXIT_INVALID)
                }
            }
        }
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(EXIT_FAILED)
        }
    }
}

/// `-p KEY=VALUE` flags as a map; `Err` is the exit code, after the bad flag was printed.
pub fn param_pairs(pairs: &[String]) -> Result<std::collections::BTreeMap<String, String>, u8> {
    let mut params = std::collections::BTreeMap::new();
    for pair in pairs {
        match pair.split_once('=') {
            Some((key, value)) if !key.is_empty() => {
                params.insert(key.to_string(), value.to_string());
            }
            _ => {
                eprintln!("error: `-p {pair}` must be KEY=VALUE");
                return Err(EXIT_INVALID);
            }
        }
    }
    Ok(params)
}

/// Formats milliseconds the way people read durations: `850ms`, `3.2s`, `4m05s`.
pub fn human_ms(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{:.1}s", ms as f64 / 1000.0)
    } else {
        let secs = ms / 1000;
        if secs < 3600 {
            format!("{}m{:02}s", secs / 60, secs % 60)
        } else {
            format!("{}h{:02}m", secs / 3600, (secs % 3600) / 60)
        }
    }
}
