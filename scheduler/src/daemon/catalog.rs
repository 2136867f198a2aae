//! The pipelines a daemon serves: every valid file of `--pipelines DIR`, and the problems of the
//! files that are not valid (reported, skipped; the valid ones still load).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::spec::{self, LoadedPipeline};

/// The loaded pipelines by name, with the files that could not be loaded.
#[derive(Debug, Default)]
pub struct Catalog {
    /// Valid pipelines by their `name`.
    pub pipelines: BTreeMap<String, LoadedPipeline>,
    /// Files that were skipped, with why.
    pub errors: Vec<LoadError>,
    /// The git commit of the folder, when it is in a git work tree.
    pub commit: Option<String>,
}

/// A pipeline file the daemon could not load.
#[derive(Debug, Clone, Serialize)]
pub struct LoadError {
    /// The file.
    pub file: PathBuf,
    /// Every problem, one `file:line:column: message` line each.
    pub problems: Vec<String>,
    /// Hash of the last good version still served for this file, if there was one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub serving_last_good: Option<String>,
}

impl Catalog {
    /// Loads every `*.yaml`/`*.yml` under `dir`. A folder that cannot be read is an error; a file
    /// that does not validate is recorded in `errors` and logged.
    pub fn load(dir: &Path) -> std::io::Result<Catalog> {
        let mut catalog = Catalog::default();
        for file in spec::find_pipeline_files(&[dir.to_path_buf()])? {
            match spec::load_file(&file, spec::DEFAULT_MAX_FILE_BYTES) {
                Ok(loaded) => {
                    let name = loaded.pipeline.name.clone();
                    if let Some(first) = catalog.pipelines.get(&name) {
                        catalog.errors.push(LoadError {
                            file: file.clone(),
                            problems: vec![format!(
                                "{}: pipeline name `{name}` is already used by {}",
                                file.display(),
                                first.path.display()
                            )],
                            serving_last_good: None,
                        });
                        continue;
                    }
                    catalog.pipelines.insert(name, loaded);
                }
                Err(diagnostics) => catalog.errors.push(LoadError {
                    file: file.clone(),
                    problems: diagnostics.iter().map(ToString::to_string).collect(),
                    serving_last_good: None,
                }),
            }
        }
        catalog.commit = spec::git_commit(dir);
        for error in &catalog.errors {
            tracing::error!(file = %error.file.display(), problems = %error.problems.join("\n"), "Skipped an invalid pipeline file.");
        }
        tracing::info!(
            loaded = catalog.pipelines.len(),
            skipped = catalog.errors.len(),
            dir = %dir.display(),
            "Loaded pipelines."
        );
        Ok(catalog)
    }

    /// Loads `dir` again; a file that no longer validates keeps the version `previous` had of
    /// it, so a bad commit does not stop the schedule of a pipeline that worked.
    pub fn reload(dir: &Path, previous: &Catalog) -> std::io::Result<Catalog> {
        let mut catalog = Catalog::load(dir)?;
        for error in &mut catalog.errors {
            let last_good = previous
                .pipelines
                .values()
                .find(|p| p.path == error.file)
                .filter(|p| !catalog.pipelines.contains_key(&p.pipeline.name));
            if let Some(last_good) = last_good {
                tracing::warn!(file = %error.file.display(), "Keeping the last good version of an invalid pipeline file.");
                error.serving_last_good = Some(last_good.hash.clone());
                catalog
                    .pipelines
                    .insert(last_good.pipeline.name.clone(), last_good.clone());
            }
        }
        Ok(catalog)
    }

    /// A fingerprint of the folder's pipeline files (paths, sizes, modification times), to
    /// notice a change without reading every file.
    pub fn fingerprint(dir: &Path) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        for file in spec::find_pipeline_files(&[dir.to_path_buf()]).unwrap_or_default() {
            file.hash(&mut hasher);
            if let Ok(meta) = std::fs::metadata(&file) {
                meta.len().hash(&mut hasher);
                meta.modified().ok().hash(&mut hasher);
            }
        }
        hasher.finish()
    }
}
