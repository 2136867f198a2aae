//! The `sluice` binary: parse flags, set up logging, hand over to the CLI.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use sluice::cli::{Cli, LogFormat};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Quiet by default: the terminal belongs to the run's progress. RUST_LOG=info shows more.
    // Daemons say what they do: their log is how operators follow them.
    let default = if cli.command.is_daemon() {
        "info"
    } else {
        "warn"
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    // Colours only for a person at a terminal: a daemon's log redirected to a file, or
    // anyone who set NO_COLOR (https://no-color.org), gets plain text.
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => subscriber.init(),
        LogFormat::Json => subscriber.json().init(),
    }
    if cli.command.only_prints() {
        // `sluice graph big.yaml | head` ends quietly when `head` has read enough, as other
        // Unix tools do, instead of panicking on the closed pipe. Only for commands that do
        // nothing but print: a runner or a daemon must outlive a reader that went away.
        // SAFETY: at the start of main, before any thread exists; resets one disposition.
        unsafe {
            nix::libc::signal(nix::libc::SIGPIPE, nix::libc::SIG_DFL);
        }
    }
    sluice::cli::main(cli)
}
