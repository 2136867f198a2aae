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
    /// YAML files of the folder that are not pipelines (no `steps` key: Compose files, CI
    /// workflows, manifests), passed over without an error.
    pub not_pipelines: Vec<PathBuf>,
    /// The git commit of the folder, when it is in a git work tree.
    pub commit: Option<String>,
}

/// A pipeline file the daemon could not load.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct LoadError {
    /// The file.
    #[schema(value_type = String)]
    pub file: PathBuf,
    /// Every problem, one `file:line:column: message` line each.
    pub problems: Vec<String>,
    /// Hash of the last good version still served for this file, if there was one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub serving_last_good: Option<String>,
}

impl Catalog {
    /// Loads every `*.yaml`/`*.yml` under `dir`. A folder that cannot be read is an error; a file
    /// that does not validate is recorded in `errors` and logged. A `watch:` folder must lie
    /// inside `dir` or inside one of `watch_allowed` (a pipeline file must not make the daemon
    /// read any folder of the host).
    pub fn load(dir: &Path, watch_allowed: &[PathBuf]) -> std::io::Result<Catalog> {
        let mut catalog = Catalog::default();
        let mut roots = vec![dir.canonicalize()?];
        roots.extend(watch_allowed.iter().map(|p| resolved(p)));
        for file in spec::find_pipeline_files(&[dir.to_path_buf()])? {
            if spec::is_other_yaml(&file, spec::DEFAULT_MAX_FILE_BYTES) {
                tracing::info!(file = %file.display(), "Skipped a YAML file that is {}.", spec::NOT_A_PIPELINE);
                catalog.not_pipelines.push(file);
                continue;
            }
            match spec::load_file(&file, spec::DEFAULT_MAX_FILE_BYTES) {
                Ok(loaded) => {
                    let problems = watch_problems(&loaded, &roots, &file);
                    if !problems.is_empty() {
                        catalog.errors.push(LoadError {
                            file: file.clone(),
                            problems,
                            serving_last_good: None,
                        });
                        continue;
                    }
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
            not_pipelines = catalog.not_pipelines.len(),
            dir = %dir.display(),
            "Loaded pipelines."
        );
        Ok(catalog)
    }

    /// Loads `dir` again; a file that no longer validates keeps the version `previous` had of
    /// it, so a bad commit does not stop the schedule of a pipeline that worked.
    pub fn reload(
        dir: &Path,
        watch_allowed: &[PathBuf],
        previous: &Catalog,
    ) -> std::io::Result<Catalog> {
        let mut catalog = Catalog::load(dir, watch_allowed)?;
        // A pipeline that lost its `steps` is a broken pipeline, not some other YAML: it keeps
        // its last good version like any invalid file.
        for file in &catalog.not_pipelines {
            if previous.pipelines.values().any(|p| &p.path == file) {
                catalog.errors.push(LoadError {
                    file: file.clone(),
                    problems: vec![format!(
                        "{}: the pipeline has no `steps` any more",
                        file.display()
                    )],
                    serving_last_good: None,
                });
            }
        }
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

/// A problem for each `watch:` folder of `loaded` (read from `file`) inside none of `roots`.
fn watch_problems(loaded: &LoadedPipeline, roots: &[PathBuf], file: &Path) -> Vec<String> {
    let base = loaded
        .path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    loaded
        .pipeline
        .triggers
        .iter()
        .filter_map(|trigger| match trigger {
            spec::Trigger::Watch { path, .. } => Some(resolved(&base.join(path))),
            _ => None,
        })
        .filter(|folder| !roots.iter().any(|root| folder.starts_with(root)))
        .map(|folder| {
            format!(
                "{}: `watch` folder {} is outside the pipelines folder; let the daemon read it with `--allow-watch {}`",
                file.display(),
                folder.display(),
                folder.display()
            )
        })
        .collect()
}

/// `path` with links resolved where it exists, and `..` taken away by hand where it does not
/// (a watched folder may be made after the pipeline is loaded).
fn resolved(path: &Path) -> PathBuf {
    if let Ok(real) = path.canonicalize() {
        return real;
    }
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut out = PathBuf::new();
    for component in absolute.components() {
        match component {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    // The part that exists may itself be a link: resolve the longest existing prefix.
    let mut existing = out.clone();
    let mut rest = Vec::new();
    while !existing.exists() {
        match (
            existing.file_name().map(|n| n.to_os_string()),
            existing.parent(),
        ) {
            (Some(name), Some(parent)) => {
                rest.push(name);
                existing = parent.to_path_buf();
            }
            _ => return out,
        }
    }
    let mut real = existing.canonicalize().unwrap_or(existing);
    real.extend(rest.iter().rev());
    real
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::write(dir.join(name), text).unwrap();
    }

    #[test]
    fn links_out_of_the_folder_and_loops_are_not_followed_and_fifos_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let pipelines = dir.path().join("pipelines");
        std::fs::create_dir(&pipelines).unwrap();
        write(
            &pipelines,
            "good.yaml",
            "name: good\nsteps:\n  a: {run: 'true'}\n",
        );
        let outside = dir.path().join("secret.yaml");
        write(dir.path(), "secret.yaml", "hunter2: the host's secret\n");
        std::os::unix::fs::symlink(&outside, pipelines.join("shadow.yaml")).unwrap();
        std::os::unix::fs::symlink("/", pipelines.join("root")).unwrap();
        std::os::unix::fs::symlink(".", pipelines.join("loop")).unwrap();
        std::os::unix::fs::symlink("good.yaml", pipelines.join("alias.yaml")).unwrap();
        nix::unistd::mkfifo(&pipelines.join("fifo.yaml"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        let catalog = Catalog::load(&pipelines, &[]).unwrap();
        assert_eq!(catalog.pipelines.keys().collect::<Vec<_>>(), ["good"]);
        let problems = format!("{:?}", catalog.errors);
        assert!(!problems.contains("hunter2"), "{problems}");
        // The link inside the folder is read (once) and is a second file naming `good`.
        assert_eq!(catalog.errors.len(), 1, "{problems}");
        assert!(problems.contains("alias.yaml"), "{problems}");
    }

    #[test]
    fn yaml_that_is_not_a_pipeline_is_passed_over_unless_it_was_one() {
        let dir = tempfile::tempdir().unwrap();
        let pipelines = dir.path();
        write(
            pipelines,
            "good.yaml",
            "name: good\nsteps:\n  a: {run: 'true'}\n",
        );
        write(
            pipelines,
            "docker-compose.yml",
            "services:\n  redis: {image: redis:7}\n",
        );
        let catalog = Catalog::load(pipelines, &[]).unwrap();
        assert_eq!(catalog.pipelines.keys().collect::<Vec<_>>(), ["good"]);
        assert!(catalog.errors.is_empty(), "{:?}", catalog.errors);
        assert_eq!(
            catalog.not_pipelines,
            [pipelines.join("docker-compose.yml")]
        );
        // A pipeline whose `steps` went away is broken, and keeps being served as it was.
        write(pipelines, "good.yaml", "name: good\nstpes: {}\n");
        let next = Catalog::reload(pipelines, &[], &catalog).unwrap();
        assert_eq!(next.errors.len(), 1, "{:?}", next.errors);
        write(pipelines, "good.yaml", "name: good\n");
        let next = Catalog::reload(pipelines, &[], &catalog).unwrap();
        assert!(next.pipelines.contains_key("good"), "{:?}", next.errors);
        assert_eq!(next.errors.len(), 1, "{:?}", next.errors);
        assert!(next.errors[0].serving_last_good.is_some());
        assert!(
            next.errors[0].problems[0].contains("no `steps` any more"),
            "{:?}",
            next.errors
        );
    }

    #[test]
    fn a_watch_folder_outside_the_pipelines_folder_needs_to_be_allowed() {
        let dir = tempfile::tempdir().unwrap();
        let pipelines = dir.path().join("pipelines");
        std::fs::create_dir_all(pipelines.join("inbox")).unwrap();
        let watch = |path: &str| {
            format!("name: w\nparams:\n  path: {{type: string}}\ntriggers:\n  - watch: {{path: {path}, pattern: '*'}}\nsteps:\n  a: {{run: 'true'}}\n")
        };
        for (path, allowed) in [
            ("inbox", true),
            ("../landing", false),
            ("/etc", false),
            ("inbox/../../x", false),
        ] {
            write(&pipelines, "w.yaml", &watch(path));
            let catalog = Catalog::load(&pipelines, &[]).unwrap();
            assert_eq!(
                catalog.pipelines.contains_key("w"),
                allowed,
                "{path}: {:?}",
                catalog.errors
            );
            if !allowed {
                assert!(
                    catalog.errors[0].problems[0].contains("--allow-watch"),
                    "{path}"
                );
            }
        }
        write(&pipelines, "w.yaml", &watch("../landing"));
        let catalog = Catalog::load(&pipelines, &[dir.path().join("landing")]).unwrap();
        assert!(catalog.pipelines.contains_key("w"), "{:?}", catalog.errors);
    }
}
