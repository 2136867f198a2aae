//! `sluice secrets`: the data dir's encrypted secret store, and the key flag every process that
//! opens secrets (workers, `sluice run`, `sluice server`) or seals them (`secrets set`) takes.

use std::io::Read;
use std::path::PathBuf;

use clap::{Args, Subcommand};
use sluice_worker::secrets::{SecretKey, KEY_ENV, MAX_SECRET_BYTES};
use zeroize::Zeroizing;

use super::{DataDirArg, EXIT_FAILED, EXIT_INVALID};
use crate::store::secrets::SecretStore;

/// The key that seals and opens stored secrets. Deliberately no flag takes the key itself (it
/// would show in `ps`): a file, or the `SLUICE_SECRET_KEY` variable.
#[derive(Debug, Clone, Args)]
pub struct SecretKeyArg {
    /// File holding the secret store's key (64 hex digits, from `sluice secrets keygen`);
    /// without it the key comes from `SLUICE_SECRET_KEY`.
    #[arg(long, env = "SLUICE_SECRET_KEY_FILE", value_name = "FILE")]
    pub secret_key_file: Option<PathBuf>,
}

impl SecretKeyArg {
    /// The key, or `None` when none is configured; `Err` is the exit code after the reason
    /// was printed.
    pub fn load(&self) -> Result<Option<SecretKey>, u8> {
        let env = std::env::var(KEY_ENV).ok().map(Zeroizing::new);
        SecretKey::load(
            self.secret_key_file.as_deref(),
            env.as_deref().map(String::as_str),
        )
        .map_err(|err| {
            eprintln!("error: {err}");
            EXIT_INVALID
        })
    }
}

/// What `sluice secrets` does.
#[derive(Debug, Subcommand)]
pub enum SecretsCommand {
    /// Print a new random key: give it to workers and `secrets set` (as a file or
    /// `SLUICE_SECRET_KEY`); the scheduler does not need it.
    Keygen,
    /// Store a secret, read from standard input (one trailing newline is dropped), sealed with
    /// the key; a step's `secrets: [NAME]` then receives it.
    Set {
        /// The secret's name, as steps name it (an environment variable's name).
        name: String,
        #[command(flatten)]
        key: SecretKeyArg,
        #[command(flatten)]
        data: DataDirArg,
    },
    /// List stored secrets: names, the key each is sealed with, when set. Never values.
    Ls {
        /// One JSON array instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        data: DataDirArg,
    },
    /// Remove a stored secret.
    Rm {
        /// The secret's name.
        name: String,
        #[command(flatten)]
        data: DataDirArg,
    },
}

/// Runs `sluice secrets …`.
pub fn secrets(command: SecretsCommand) -> anyhow::Result<u8> {
    match command {
        SecretsCommand::Keygen => {
            println!("{}", SecretKey::generate().to_hex().as_str());
            Ok(0)
        }
        SecretsCommand::Set { name, key, data } => {
            let key = match key.load() {
                Ok(Some(key)) => key,
                Ok(None) => {
                    eprintln!(
                        "error: `secrets set` needs the key: --secret-key-file FILE or {KEY_ENV}"
                    );
                    return Ok(EXIT_INVALID);
                }
                Err(code) => return Ok(code),
            };
            let Some(value) = read_value()? else {
                eprintln!(
                    "error: a secret's value is at most 64 KiB of text, read from standard input"
                );
                return Ok(EXIT_INVALID);
            };
            if value.is_empty() {
                eprintln!("error: the value on standard input is empty");
                return Ok(EXIT_INVALID);
            }
            match SecretStore::in_data_dir(&data.data_dir).set(&key, &name, &value) {
                Ok(()) => {
                    eprintln!("stored secret `{name}` (key {})", key.id());
                    Ok(0)
                }
                Err(err) => {
                    eprintln!("error: {err}");
                    Ok(EXIT_INVALID)
                }
            }
        }
        SecretsCommand::Ls { json, data } => {
            let listed = match SecretStore::in_data_dir(&data.data_dir).list() {
                Ok(listed) => listed,
                Err(err) => {
                    eprintln!("error: {err}");
                    return Ok(EXIT_FAILED);
                }
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&listed)?);
            } else {
                println!("{:<32} {:<14} UPDATED", "NAME", "KEY");
                for secret in listed {
                    let updated = chrono::DateTime::from_timestamp_millis(secret.updated_ms as i64)
                        .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
                        .unwrap_or_default();
                    println!("{:<32} {:<14} {updated}", secret.name, secret.key_id);
                }
            }
            Ok(0)
        }
        SecretsCommand::Rm { name, data } => {
            match SecretStore::in_data_dir(&data.data_dir).remove(&name) {
                Ok(true) => Ok(0),
                Ok(false) => {
                    eprintln!("error: no secret `{name}` is stored");
                    Ok(EXIT_FAILED)
                }
                Err(err) => {
                    eprintln!("error: {err}");
                    Ok(EXIT_INVALID)
                }
            }
        }
    }
}

/// Standard input, less one trailing newline; `None` when it is over the cap or not UTF-8.
fn read_value() -> std::io::Result<Option<Zeroizing<String>>> {
    let mut bytes = Zeroizing::new(Vec::new());
    // One byte past the largest value with its line ending: reaching it means too long, even
    // when the cut happens to end in a newline.
    let cap = MAX_SECRET_BYTES + 3;
    std::io::stdin().take(cap as u64).read_to_end(&mut bytes)?;
    if bytes.len() == cap {
        return Ok(None);
    }
    if bytes.ends_with(b"\n") {
        bytes.pop();
        if bytes.ends_with(b"\r") {
            bytes.pop();
        }
    }
    if bytes.len() > MAX_SECRET_BYTES {
        return Ok(None);
    }
    Ok(std::str::from_utf8(&bytes)
        .ok()
        .map(|s| Zeroizing::new(s.to_string())))
}
