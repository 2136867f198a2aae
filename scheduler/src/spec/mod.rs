//! Pipeline files: reading, validating and the typed model they become.

pub mod builtins;
mod check;
pub mod condition;
pub mod diagnostic;
pub mod matrix;
pub mod model;
pub mod notify;
pub mod parse;
mod reader;
pub mod schema;
mod templates;
mod triggers;
pub mod values;
pub mod yaml;

#[cfg(test)]
mod fuzz;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

use indexmap::IndexMap;
use sha2::{Digest, Sha256};

pub use diagnostic::Diagnostic;
pub use model::*;

use diagnostic::Diagnostics;
use reader::Reader;

/// Largest pipeline file read by default: real pipelines are a few kilobytes, and a cap keeps a
/// hostile or mistaken file (a data set saved as `.yaml`) from costing memory.
pub const DEFAULT_MAX_FILE_BYTES: u64 = 1 << 20;

/// A pipeline file that passed validation, with the text it was read from.
#[derive(Debug, Clone)]
pub struct LoadedPipeline {
    /// The typed pipeline.
    pub pipeline: Pipeline,
    /// The file as written, stored with every run so a run can be resumed or audited later.
    pub text: String,
    /// SHA-256 of `text`, hex.
    pub hash: String,
    /// The file's path.
    pub path: PathBuf,
}

/// Reads and validates one pipeline file; on failure, every problem found. Its warnings are
/// logged (every command and daemon that loads a file passes here).
pub fn load_file(path: &Path, max_bytes: u64) -> Result<LoadedPipeline, Vec<Diagnostic>> {
    let (loaded, warnings) = load_file_with_warnings(path, max_bytes)?;
    for warning in &warnings {
        tracing::warn!(
            file = %warning.file,
            line = warning.line,
            column = warning.column,
            field = %warning.field,
            help = warning.help.as_deref().unwrap_or(""),
            "Pipeline file warning: {}.",
            warning.message
        );
    }
    Ok(loaded)
}

/// [`load_file`] that hands the warnings of a valid file back instead of logging them (for
/// `sluice validate`, which prints them like its errors).
pub fn load_file_with_warnings(
    path: &Path,
    max_bytes: u64,
) -> Result<(LoadedPipeline, Vec<Diagnostic>), Vec<Diagnostic>> {
    let display = path.display().to_string();
    let whole_file = |message: String| {
        vec![Diagnostic {
            file: display.clone(),
            line: 1,
            column: 1,
            field: String::new(),
            step: None,
            message,
            help: None,
            severity: diagnostic::Severity::Error,
        }]
    };
    let bytes = read_pipeline_text(path, max_bytes).map_err(whole_file)?;
    let text = match String::from_utf8(bytes) {
        Ok(text) => text,
        Err(err) => {
            let valid = &err.as_bytes()[..err.utf8_error().valid_up_to()];
            let line = valid.iter().filter(|b| **b == b'\n').count() + 1;
            let mut diags = whole_file("the file is not valid UTF-8".into());
            diags[0].line = line;
            return Err(diags);
        }
    };
    let (pipeline, warnings) = parse_str_with_warnings(&display, &text)?;
    let loaded = LoadedPipeline {
        pipeline,
        hash: content_hash(&text),
        text,
        path: path.to_path_buf(),
    };
    Ok((loaded, warnings))
}

/// Validates pipeline text; `file` names it in diagnostics.
pub fn parse_str(file: &str, text: &str) -> Result<Pipeline, Vec<Diagnostic>> {
    parse_str_with_warnings(file, text).map(|(pipeline, _)| pipeline)
}

/// Validates pipeline text, and also returns the warnings of a valid file (things that are
/// allowed but probably not meant, such as a quoted `"params.x"` in a `when`).
pub fn parse_str_with_warnings(
    file: &str,
    text: &str,
) -> Result<(Pipeline, Vec<Diagnostic>), Vec<Diagnostic>> {
    // A byte-order mark (editors on Windows write one) is allowed before the stream by YAML.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut r = Reader {
        diags: Diagnostics::new(file),
        source: text.to_string(),
    };
    let tree = match yaml::parse(text) {
        Ok(tree) => tree,
        Err(err) => {
            r.error(err.mark, "", format!("invalid YAML: {}", err.message));
            return Err(r.diags.into_sorted());
        }
    };
    for problem in &tree.problems {
        let d = r
            .diags
            .error(problem.mark, &problem.path, problem.message.clone());
        if let Some(first) = problem.first {
            d.help(format!(
                "first defined at line {}, column {}",
                first.line, first.column
            ));
        }
    }
    let parsed = parse::pipeline(&mut r, &tree.root);
    check::check(&mut r, parsed.pipeline.as_ref(), &parsed.steps, &tree.root);
    match parsed.pipeline {
        Some(mut pipeline) if r.diags.is_empty() => {
            // Sized up front: growing the map moves every (large) step again at each doubling.
            let mut steps = IndexMap::with_capacity(parsed.steps.len());
            steps.extend(
                parsed
                    .steps
                    .into_iter()
                    .filter_map(|p| p.step)
                    .map(|step| (step.name.clone(), step)),
            );
            pipeline.steps = steps;
            matrix::expand(&mut pipeline);
            Ok((pipeline, r.diags.into_parts().1))
        }
        _ => Err(r.diags.into_sorted()),
    }
}

/// Why `sluice validate` and the daemon pass over a YAML file of a folder.
pub const NOT_A_PIPELINE: &str = "not a pipeline (no `steps`)";

/// Whether the file at `path` is YAML of another kind (a Compose file, a CI workflow, a
/// Kubernetes manifest) rather than a pipeline: it reads as YAML and no document in it has a
/// `steps` key at the top level, nor a key one typo away (`step`, `Steps`, `stpes`) or a merge
/// key (`<<`) that could bring one. A file that cannot be read, is not YAML or is empty is taken
/// for a pipeline, so that loading it says what is wrong.
pub fn is_other_yaml(path: &Path, max_bytes: u64) -> bool {
    let Ok(bytes) = read_pipeline_text(path, max_bytes) else {
        return false;
    };
    let Ok(text) = std::str::from_utf8(&bytes) else {
        return false;
    };
    is_other_yaml_text(text.strip_prefix('\u{feff}').unwrap_or(text))
}

/// [`is_other_yaml`] on text.
pub fn is_other_yaml_text(text: &str) -> bool {
    let Some(keys) = yaml::top_level_keys(text) else {
        return false;
    };
    !keys
        .iter()
        .any(|key| key == "<<" || strsim::damerau_levenshtein(&key.to_lowercase(), "steps") <= 1)
}

/// The bytes of a pipeline file, at most `max_bytes`; never blocks on a FIFO or device.
fn read_pipeline_text(path: &Path, max_bytes: u64) -> Result<Vec<u8>, String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| format!("cannot read the file: {e}"))?;
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot read the file: {e}"))?;
    if !meta.is_file() {
        return Err("not a regular file (a FIFO, socket, device or folder)".to_string());
    }
    let size = meta.len();
    if size > max_bytes {
        return Err(format!(
            "the file is {size} bytes, over the limit of {max_bytes} bytes for a pipeline file"
        ));
    }
    let mut bytes = Vec::with_capacity(size as usize);
    file.take(max_bytes + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read the file: {e}"))?;
    if bytes.len() as u64 > max_bytes {
        return Err(format!(
            "the file grew past the limit of {max_bytes} bytes for a pipeline file"
        ));
    }
    Ok(bytes)
}

/// The SHA-256 of a pipeline's text, hex: the identity of a definition in the store.
pub fn content_hash(text: &str) -> String {
    let digest = Sha256::digest(text.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// The commit checked out in the git work tree that holds `dir`, if any (`git` on PATH).
pub fn git_commit(dir: &Path) -> Option<String> {
    let out = std::process::Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(dir)
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    let commit = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && !commit.is_empty()).then_some(commit)
}

/// Every `*.yml`/`*.yaml` file under `paths` (files are taken as given), sorted for stable output.
///
/// A folder is walked without leaving it: a link is followed only when what it points at lies
/// inside the folder (a link to `/etc/shadow` or `/` is skipped and logged), each folder is read
/// once however many links lead to it (a loop loads nothing twice), and only regular files are
/// taken (a FIFO named `x.yaml` would block the reader forever).
pub fn find_pipeline_files(paths: &[PathBuf]) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for path in paths {
        if path.is_dir() {
            let root = path.canonicalize()?;
            let mut visited = std::collections::HashSet::from([root.clone()]);
            walk(path, &root, &mut visited, &mut out)?;
        } else {
            out.push(path.clone());
        }
    }
    Ok(out)
}

fn walk(
    dir: &Path,
    root: &Path,
    visited: &mut std::collections::HashSet<PathBuf>,
    out: &mut Vec<PathBuf>,
) -> std::io::Result<()> {
    let mut entries: Vec<std::fs::DirEntry> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.path());
    for entry in entries {
        let path = entry.path();
        let hidden = entry.file_name().to_string_lossy().starts_with('.');
        if hidden {
            continue;
        }
        let mut kind = entry.file_type()?;
        if kind.is_symlink() {
            // Only where the link points, and only inside the folder.
            let inside = path
                .canonicalize()
                .ok()
                .filter(|target| target.starts_with(root));
            let Some(target) = inside else {
                tracing::warn!(file = %path.display(), "Skipped a link that leads out of the pipelines folder.");
                continue;
            };
            kind = std::fs::metadata(&target)?.file_type();
            if kind.is_dir() && !visited.insert(target) {
                continue;
            }
        } else if kind.is_dir() && !visited.insert(path.canonicalize()?) {
            continue;
        }
        if kind.is_dir() {
            walk(&path, root, visited, out)?;
        } else if kind.is_file() && path.extension().is_some_and(|e| e == "yml" || e == "yaml") {
            out.push(path);
        }
    }
    Ok(())
}
