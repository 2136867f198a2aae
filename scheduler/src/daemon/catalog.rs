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
}

/// A pipeline file the daemon could not load.
#[derive(Debug, Clone, Serialize)]
pub struct LoadError {
    /// The file.
    pub file: PathBuf,
    /// Every problem, one `file:line:column: message` line each.
    pub problems: Vec<String>,
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
                        });
                        continue;
                    }
                    catalog.pipelines.insert(name, loaded);
                }
                Err(diagnostics) => catalog.errors.push(LoadError {
                    file: file.clone(),
                    problems: diagnostics.iter().map(ToString::to_string).collect(),
                }),
            }
        }
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
}
