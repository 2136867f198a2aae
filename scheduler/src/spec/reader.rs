//! Typed access to a marked YAML tree that records a diagnostic for every mismatch it meets.
//!
//! Each accessor returns `None` after recording what was wrong, so a caller can go on reading
//! the rest of the file and every problem is reported in one pass.

use std::time::Duration;

use indexmap::IndexMap;

use super::diagnostic::{did_you_mean, Diagnostics};
use super::values;
use super::yaml::{Mark, Node, Value};

/// Keys people bring from other orchestrators, and the Sluice key they mean.
const KEY_ALIASES: [(&str, &str); 17] = [
    ("needs", "depends"),
    ("dependencies", "depends"),
    ("depends_on", "depends"),
    ("dependsOn", "depends"),
    ("script", "run"),
    ("shell", "run"),
    ("cmd", "command"),
    ("args", "command"),
    ("environment", "env"),
    ("container", "image"),
    ("retries", "retry"),
    ("retryStrategy", "retry"),
    ("working_dir", "workdir"),
    ("cwd", "workdir"),
    ("if", "when"),
    ("condition", "when"),
    ("tasks", "steps"),
];

/// The known keys of a mapping, each with its key node and its value node.
pub type Fields<'n> = IndexMap<&'n str, (&'n Node, &'n Node)>;

/// Reads nodes, recording problems in `diags`.
pub struct Reader {
    /// Every problem found so far.
    pub diags: Diagnostics,
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
                self.unknown_key(key.mark, path, what, name, known);
            }
        }
        Some(fields)
    }

    fn unknown_key(&mut self, mark: Mark, path: &str, what: &str, name: &str, known: &[&str]) {
        let suggestion = KEY_ALIASES
            .iter()
            .find(|(alias, meant)| *alias == name && known.contains(meant))
            .map(|(_, meant)| *meant)
            .or_else(|| did_you_mean(name, known));
        let field = join(path, name);
        let d = self
            .diags
            .error(mark, &field, format!("unknown key `{name}` in {what}"));
        match suggestion {
            Some(s) => d.help(format!("did you mean `{s}`?")),
            None => d.help(format!("expected one of: {}", known.join(", "))),
        };
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

/// `steps.train` + `retry` = `steps.train.retry`.
pub fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}
