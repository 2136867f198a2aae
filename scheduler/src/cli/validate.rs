//! `sluice validate`: every problem in every file, printed like a compiler's errors.

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use serde::Serialize;

use super::{EXIT_FAILED, EXIT_INVALID};
use crate::spec::{self, Diagnostic};

/// Arguments of `sluice validate`.
#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// Pipeline files, or folders searched recursively for `*.yml` and `*.yaml` (YAML files
    /// there without a top-level `steps` key are passed over with a note).
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// `human` for people, `json` for machines.
    #[arg(long, value_enum, default_value_t = Format::Human)]
    pub format: Format,
    /// Largest file accepted, in bytes.
    #[arg(long, default_value_t = spec::DEFAULT_MAX_FILE_BYTES, env = "SLUICE_MAX_PIPELINE_BYTES")]
    pub max_file_bytes: u64,
}

/// Output format.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Format {
    /// Compiler-style text.
    Human,
    /// A JSON report.
    Json,
}

#[derive(Serialize)]
struct FileReport {
    file: String,
    valid: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pipeline: Option<String>,
    errors: Vec<Diagnostic>,
    /// Things that are valid but probably not meant (a quoted reference in a `when`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    warnings: Vec<Diagnostic>,
}

/// A YAML file found in a folder that is not a pipeline, passed over.
#[derive(Serialize)]
struct Skipped {
    file: String,
    reason: &'static str,
}

/// The files to check: those named, and the pipelines found in the folders named. A YAML file
/// of another kind in a folder (a Compose file, a CI workflow) is passed over with a note; one
/// named on the command line is checked, and fails, whatever it holds.
fn pipeline_files(args: &ValidateArgs) -> std::io::Result<(Vec<PathBuf>, Vec<Skipped>)> {
    let mut files = Vec::new();
    let mut skipped = Vec::new();
    for path in &args.paths {
        if !path.is_dir() {
            files.push(path.clone());
            continue;
        }
        for file in spec::find_pipeline_files(std::slice::from_ref(path))? {
            if spec::is_other_yaml(&file, args.max_file_bytes) {
                skipped.push(Skipped {
                    file: file.display().to_string(),
                    reason: spec::NOT_A_PIPELINE,
                });
            } else {
                files.push(file);
            }
        }
    }
    Ok((files, skipped))
}

/// Exit 0 when every file is valid, 1 when any is not, 2 when a path cannot be read at all.
pub fn validate(args: ValidateArgs) -> anyhow::Result<u8> {
    let (files, skipped) = match pipeline_files(&args) {
        Ok(found) => found,
        Err(err) => {
            eprintln!("error: cannot list pipeline files: {err}");
            return Ok(EXIT_INVALID);
        }
    };
    for skip in &skipped {
        eprintln!("note: skipped {}: {}", skip.file, skip.reason);
    }
    if files.is_empty() {
        if skipped.is_empty() {
            eprintln!("error: no *.yml or *.yaml files under the given paths");
        } else {
            eprintln!("error: no pipeline files under the given paths, only other YAML");
        }
        return Ok(EXIT_INVALID);
    }
    let mut reports = Vec::new();
    for (i, file) in files.iter().enumerate() {
        let report = match spec::load_file_with_warnings(file, args.max_file_bytes) {
            Ok((loaded, warnings)) => {
                let pipeline = Some(loaded.pipeline.name.clone());
                if i + 1 == files.len() {
                    // The last file's pipeline is left to the process's exit: freeing a large
                    // one step by step took an eighth of validating it. The others are freed
                    // as they go, so a folder of files costs the largest, not their sum.
                    std::mem::forget(loaded);
                }
                FileReport {
                    file: file.display().to_string(),
                    valid: true,
                    pipeline,
                    errors: Vec::new(),
                    warnings,
                }
            }
            Err(errors) => FileReport {
                file: file.display().to_string(),
                valid: false,
                pipeline: None,
                errors,
                warnings: Vec::new(),
            },
        };
        reports.push(report);
    }
    let invalid = reports.iter().filter(|r| !r.valid).count();
    match args.format {
        Format::Json => {
            let out = serde_json::json!({
                "valid": invalid == 0,
                "files": reports,
                "skipped": skipped,
            });
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
        Format::Human => print_human(&reports),
    }
    Ok(if invalid == 0 { 0 } else { EXIT_FAILED })
}

fn print_human(reports: &[FileReport]) {
    let mut error_count = 0;
    for report in reports {
        if report.valid {
            if !report.warnings.is_empty() {
                let source = std::fs::read_to_string(&report.file).unwrap_or_default();
                for warning in &report.warnings {
                    eprintln!("{}", warning.render(&source));
                }
            }
            println!(
                "ok: {} (pipeline `{}`)",
                report.file,
                report.pipeline.as_deref().unwrap_or("")
            );
            continue;
        }
        let source = std::fs::read_to_string(&report.file).unwrap_or_default();
        for error in &report.errors {
            eprintln!("{}", error.render(&source));
            error_count += 1;
        }
    }
    let bad = reports.iter().filter(|r| !r.valid).count();
    if bad > 0 {
        eprintln!(
            "{error_count} error{} in {bad} of {} file{}",
            if error_count == 1 { "" } else { "s" },
            reports.len(),
            if reports.len() == 1 { "" } else { "s" }
        );
    }
}
