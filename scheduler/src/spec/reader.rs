//! Typed access to a marked YAML tree that records a diagnostic for every mismatch it meets.
//!
//! Each accessor returns `None` after recording what was wrong, so a caller can go on reading
//! the rest of the file and every problem is reported in one pass.

use std::time::Duration;

use indexmap::IndexMap;

use super::diagnostic::{did_you_mean, Diagnostics};
use super::templates::{self, Place};
use super::values;
use super::yaml::{Mark, Node, Value};

/// A key people bring from another tool, and how Sluice says it.
struct KeyAlias {
    /// The key as the other tool writes it.
    key: &'static str,
    /// The Sluice key it means; the pointer is given only where that key is allowed, so
    /// `retries` in a step points at `retry`, and in `resources` the closest key is suggested.
    meant: &'static str,
    /// The tools that use the key; none for a Sluice key written one level too high (`gpu` in a
    /// step belongs in `resources`).
    tools: &'static [&'static str],
    /// The Sluice way, written out.
    sluice: &'static str,
}

const fn alias(
    key: &'static str,
    meant: &'static str,
    tools: &'static [&'static str],
    sluice: &'static str,
) -> KeyAlias {
    KeyAlias {
        key,
        meant,
        tools,
        sluice,
    }
}

const ACTIONS: &[&str] = &["GitHub Actions"];
const AIRFLOW: &[&str] = &["Airflow"];
const ARGO: &[&str] = &["Argo"];
const DAGU: &[&str] = &["Dagu"];
const COMPOSE: &[&str] = &["Docker Compose"];
const KUBERNETES: &[&str] = &["Kubernetes", "Argo"];
const DEPENDS: &str = "depends: [a, b]";
const RUN: &str = "run: <shell command>";
const COMMAND: &str = "command: [program, arg, ...]";
const WORKDIR: &str = "workdir: path";
const WHEN: &str = "when: params.x == 'y'";
const TRIGGER: &str = "triggers: [{cron: '0 3 * * *'}]";
const PULL: &str = "pull: always | if_not_present | never";

/// Keys people bring from GitHub Actions, Airflow, Argo, Dagu and others, and the Sluice key
/// they mean.
const KEY_ALIASES: &[KeyAlias] = &[
    // What a step runs.
    alias("script", "run", &["Argo", "Dagu"], RUN),
    alias("bash_command", "run", AIRFLOW, RUN),
    alias("shell", "run", &["GitHub Actions", "Dagu"], RUN),
    alias("cmd", "command", &["Docker"], COMMAND),
    alias("args", "command", KUBERNETES, COMMAND),
    // Order.
    alias("needs", "depends", ACTIONS, DEPENDS),
    alias("dependencies", "depends", ARGO, DEPENDS),
    alias("upstream", "depends", AIRFLOW, DEPENDS),
    alias("depends_on", "depends", COMPOSE, DEPENDS),
    alias("dependsOn", "depends", &["Azure Pipelines"], DEPENDS),
    alias("if", "when", ACTIONS, WHEN),
    alias("condition", "when", &["Azure Pipelines"], WHEN),
    alias("preconditions", "when", DAGU, WHEN),
    // Where and how it runs.
    alias(
        "container",
        "image",
        &["Argo", "GitHub Actions"],
        "image: name:tag",
    ),
    alias("executor", "image", DAGU, "image: name:tag"),
    alias("docker_image", "image", &[], "image: name:tag"),
    alias("image_pull_policy", "pull", AIRFLOW, PULL),
    alias("imagePullPolicy", "pull", KUBERNETES, PULL),
    alias("environment", "env", COMPOSE, "env: {NAME: value}"),
    alias("env_vars", "env", AIRFLOW, "env: {NAME: value}"),
    alias("variables", "env", &["GitLab CI"], "env: {NAME: value}"),
    alias("working_dir", "workdir", COMPOSE, WORKDIR),
    alias("working-directory", "workdir", ACTIONS, WORKDIR),
    alias("workingDir", "workdir", KUBERNETES, WORKDIR),
    alias("dir", "workdir", DAGU, WORKDIR),
    alias("cwd", "workdir", &[], WORKDIR),
    alias("runs-on", "queue", ACTIONS, "queue: gpu"),
    alias("nodeSelector", "queue", KUBERNETES, "queue: gpu"),
    alias("gpus", "resources", &[], "resources: {gpu: 1}"),
    alias("gpu", "resources", &[], "resources: {gpu: 1}"),
    alias("cpu", "resources", &[], "resources: {cpu: 2}"),
    alias("cpus", "resources", COMPOSE, "resources: {cpu: 2}"),
    alias("memory", "resources", &[], "resources: {memory: 16Gi}"),
    alias(
        "mem_limit",
        "resources",
        COMPOSE,
        "resources: {memory: 16Gi}",
    ),
    alias("output", "outputs", DAGU, "outputs: [model/]"),
    // When it gives up.
    alias("retries", "retry", AIRFLOW, "retry: 3"),
    alias(
        "retry_delay",
        "retry",
        AIRFLOW,
        "retry: {limit: 3, delay: 5m}",
    ),
    alias("retryStrategy", "retry", ARGO, "retry: {limit: 3}"),
    alias(
        "retryPolicy",
        "retry",
        DAGU,
        "retry: {limit: 3, delay: 10s}",
    ),
    alias("execution_timeout", "timeout", AIRFLOW, "timeout: 1h"),
    alias("timeout-minutes", "timeout", ACTIONS, "timeout: 30m"),
    alias("timeoutSec", "timeout", DAGU, "timeout: 90s"),
    alias(
        "activeDeadlineSeconds",
        "timeout",
        KUBERNETES,
        "timeout: 1h",
    ),
    // The pipeline as a whole.
    alias("jobs", "steps", ACTIONS, "steps: {train: {run: ...}}"),
    alias("tasks", "steps", ARGO, "steps: {train: {run: ...}}"),
    alias("dag_id", "name", AIRFLOW, "name: my-pipeline"),
    alias("on", "triggers", ACTIONS, TRIGGER),
    alias("schedule", "triggers", &["Airflow", "Dagu"], TRIGGER),
    alias("schedule_interval", "triggers", AIRFLOW, TRIGGER),
    alias("cron", "triggers", &[], TRIGGER),
    alias(
        "default_args",
        "defaults",
        AIRFLOW,
        "defaults: {retry: 2, timeout: 1h}",
    ),
    alias("arguments", "params", ARGO, "params: {lr: 0.01}"),
    alias(
        "max_active_runs",
        "concurrency",
        AIRFLOW,
        "concurrency: {limit: 1}",
    ),
    alias(
        "maxActiveRuns",
        "concurrency",
        DAGU,
        "concurrency: {limit: 1}",
    ),
    alias("max_active_tasks", "parallelism", AIRFLOW, "parallelism: 4"),
    alias("maxActiveSteps", "parallelism", DAGU, "parallelism: 4"),
];

impl KeyAlias {
    /// "`needs` is GitHub Actions' name; Sluice says `depends: [a, b]`".
    fn help(&self) -> String {
        let possessive = |tool: &str| {
            if tool.ends_with('s') {
                format!("{tool}'")
            } else {
                format!("{tool}'s")
            }
        };
        match self.tools {
            [] => format!("did you mean `{}`?", self.sluice),
            tools => {
                let owners: Vec<String> = tools.iter().map(|t| possessive(t)).collect();
                format!(
                    "`{}` is {} name; Sluice says `{}`",
                    self.key,
                    owners.join(" and "),
                    self.sluice
                )
            }
        }
    }
}

/// The known keys of a mapping, each with its key node and its value node.
pub type Fields<'n> = IndexMap<&'n str, (&'n Node, &'n Node)>;

/// Reads nodes, recording problems in `diags`.
pub struct Reader {
    /// Every problem found so far.
    pub diags: Diagnostics,
    /// The file's text, to point at a place inside a value (a template in a `run` script).
    pub source: String,
}

impl Reader {
    /// Reads `node` as a mapping whose keys must be among `known`; unknown keys are reported with
    /// a suggestion, and the known ones are returned by name.
    pub fn mapping<'n>(
        &mut self,
        node: &'n Node,
        path: &str,
        what: &str,
        known: &[&str],
    ) -> Option<Fields<'n>> {
        self.mapping_with_hint(node, path, what, known, |_, _| None)
    }

    /// [`Reader::mapping`], with `hint` giving the help for an unknown key (by its name and
    /// place) where the caller knows better than a list of keys: a step key at the top level.
    pub fn mapping_with_hint<'n>(
        &mut self,
        node: &'n Node,
        path: &str,
        what: &str,
        known: &[&str],
        hint: impl Fn(&str, Mark) -> Option<String>,
    ) -> Option<Fields<'n>> {
        let Value::Map(entries) = &node.value else {
            self.diags.error(
                node.mark,
                path,
                format!("{what} must be a mapping, found {}", node.value.kind()),
            );
            return None;
        };
        let mut fields = IndexMap::with_capacity(entries.len());
        for (key, value) in entries {
            let Value::String(name) = &key.value else {
                self.diags.error(
                    key.mark,
                    path,
                    format!("keys in {what} must be strings, found {}", key.value.kind()),
                );
                continue;
            };
            if known.contains(&name.as_str()) {
                fields.insert(name.as_str(), (key, value));
            } else {
                let help = hint(name, key.mark).unwrap_or_else(|| unknown_key_help(name, known));
                self.diags
                    .error(
                        key.mark,
                        &join(path, name),
                        format!("unknown key `{name}` in {what}"),
                    )
                    .help(help);
            }
        }
        Some(fields)
    }

    /// Reads a scalar as text; numbers and booleans are accepted and keep their written form.
    pub fn text(&mut self, node: &Node, path: &str) -> Option<String> {
        match &node.value {
            Value::Seq(_) | Value::Map(_) | Value::Null => {
                self.diags.error(
                    node.mark,
                    path,
                    format!("`{path}` must be a string, found {}", node.value.kind()),
                );
                None
            }
            other => other.scalar_text(),
        }
    }

    /// Reads a non-empty string that is written as one (not a number or boolean).
    pub fn string(&mut self, node: &Node, path: &str) -> Option<String> {
        match &node.value {
            Value::String(s) if !s.trim().is_empty() => Some(s.clone()),
            Value::String(_) => {
                self.diags
                    .error(node.mark, path, format!("`{path}` must not be empty"));
                None
            }
            other => {
                self.diags.error(
                    node.mark,
                    path,
                    format!("`{path}` must be a string, found {}", other.kind()),
                );
                None
            }
        }
    }

    /// Reads a list of text values; a single scalar counts as a list of one (`depends: ingest`).
    pub fn text_list(&mut self, node: &Node, path: &str) -> Option<Vec<(String, Mark)>> {
        match &node.value {
            Value::Seq(items) => {
                let mut out = Vec::with_capacity(items.len());
                let mut ok = true;
                for (i, item) in items.iter().enumerate() {
                    match self.text(item, &format!("{path}[{i}]")) {
                        Some(text) => out.push((text, item.mark)),
                        None => ok = false,
                    }
                }
                ok.then_some(out)
            }
            Value::String(_) | Value::Int(_) | Value::Float(_) | Value::Bool(_) => {
                Some(vec![(node.value.scalar_text()?, node.mark)])
            }
            other => {
                self.diags.error(
                    node.mark,
                    path,
                    format!("`{path}` must be a list, found {}", other.kind()),
                );
                None
            }
        }
    }

    /// Reads a `KEY: value` mapping of environment variables.
    pub fn env(&mut self, node: &Node, path: &str) -> Option<IndexMap<String, String>> {
        let Value::Map(entries) = &node.value else {
            self.diags.error(
                node.mark,
                path,
                format!(
                    "`{path}` must be a mapping of NAME: value, found {}",
                    node.value.kind()
                ),
            );
            return None;
        };
        let mut out = IndexMap::new();
        let mut ok = true;
        for (key, value) in entries {
            let name = key.value.scalar_text().unwrap_or_default();
            let field = join(path, &name);
            if let Err(message) = values::variable_name(&name) {
                self.diags.error(key.mark, &field, message);
                ok = false;
                continue;
            }
            match self.text(value, &field) {
                Some(text) => {
                    templates::check(self, &text, value.mark, &field, Place::Env);
                    out.insert(name, text);
                }
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    /// Reads a duration such as `30s` or `1h30m`.
    pub fn duration(&mut self, node: &Node, path: &str) -> Option<Duration> {
        let text = self.text(node, path)?;
        match values::duration(&text) {
            Ok(d) => Some(d),
            Err(message) => {
                self.diags.error(node.mark, path, message);
                None
            }
        }
    }

    /// Reads a positive duration (a zero timeout would never let a step run).
    pub fn positive_duration(&mut self, node: &Node, path: &str) -> Option<Duration> {
        let d = self.duration(node, path)?;
        if d.is_zero() {
            self.diags.error(
                node.mark,
                path,
                format!("`{path}` must be longer than zero"),
            );
            return None;
        }
        Some(d)
    }

    /// Reads a whole number in `min..=max`.
    pub fn integer(&mut self, node: &Node, path: &str, min: i64, max: i64) -> Option<i64> {
        match node.value {
            Value::Int(i) if (min..=max).contains(&i) => Some(i),
            Value::Int(i) => {
                self.diags.error(
                    node.mark,
                    path,
                    format!("`{path}` must be between {min} and {max}, found {i}"),
                );
                None
            }
            ref other => {
                self.diags.error(
                    node.mark,
                    path,
                    format!("`{path}` must be a whole number, found {}", other.kind()),
                );
                None
            }
        }
    }

    /// Reads `true` or `false`.
    pub fn boolean(&mut self, node: &Node, path: &str) -> Option<bool> {
        match node.value {
            Value::Bool(b) => Some(b),
            ref other => {
                self.diags.error(
                    node.mark,
                    path,
                    format!("`{path}` must be `true` or `false`, found {}", other.kind()),
                );
                None
            }
        }
    }

    /// Reads one of a fixed set of words, suggesting the closest on a typo.
    pub fn choice<T: Copy>(&mut self, node: &Node, path: &str, choices: &[(&str, T)]) -> Option<T> {
        let text = self.text(node, path)?;
        if let Some((_, value)) = choices.iter().find(|(name, _)| *name == text) {
            return Some(*value);
        }
        let names: Vec<&str> = choices.iter().map(|(name, _)| *name).collect();
        let d = self.diags.error(
            node.mark,
            path,
            format!(
                "`{text}` is not a valid `{path}`: expected one of {}",
                names.join(", ")
            ),
        );
        if let Some(s) = did_you_mean(&text, &names) {
            d.help(format!("did you mean `{s}`?"));
        }
        None
    }

    /// Records a problem that a caller found itself.
    pub fn error(&mut self, mark: Mark, path: &str, message: impl Into<String>) {
        self.diags.error(mark, path, message);
    }

    /// Records something allowed that is probably not what was meant.
    pub fn warning(
        &mut self,
        mark: Mark,
        path: &str,
        message: impl Into<String>,
    ) -> &mut super::diagnostic::Diagnostic {
        self.diags.warning(mark, path, message)
    }
}

/// What to suggest for an unknown key: the Sluice way for a key from another tool, a likely
/// typo, or else every key that is allowed.
fn unknown_key_help(name: &str, known: &[&str]) -> String {
    match KEY_ALIASES
        .iter()
        .find(|a| a.key == name && known.contains(&a.meant))
    {
        Some(alias) => alias.help(),
        None => match did_you_mean(name, known) {
            Some(s) => format!("did you mean `{s}`?"),
            None => format!("expected one of: {}", known.join(", ")),
        },
    }
}

/// `steps.train` + `retry` = `steps.train.retry`.
pub fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        return key.to_string();
    }
    // Not `format!`: this runs for every field of every step, and the formatting machinery
    // cost more than the copying.
    let mut joined = String::with_capacity(path.len() + 1 + key.len());
    joined.push_str(path);
    joined.push('.');
    joined.push_str(key);
    joined
}
