//! Problems found in a pipeline file, printed the way a compiler prints them.

use std::fmt::{self, Write as _};

use serde::Serialize;

use super::yaml::Mark;

/// One problem in a pipeline file: where it is, what it concerns, what is wrong, how to fix it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Diagnostic {
    /// The file, as the user named it.
    pub file: String,
    /// Line, from 1.
    pub line: usize,
    /// Column, from 1.
    pub column: usize,
    /// The field as a dotted path (`steps.train.retry.delay`), empty for the file as a whole.
    pub field: String,
    /// The step the problem belongs to, when it belongs to one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    /// What is wrong, lower-case and without a final period, like rustc's messages.
    pub message: String,
    /// A suggestion, such as "did you mean `depends`?".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub help: Option<String>,
    /// An error makes the file invalid; a warning only points at something that looks wrong.
    #[serde(skip_serializing_if = "Severity::is_error")]
    pub severity: Severity,
}

/// How bad a diagnostic is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The file is refused.
    #[default]
    Error,
    /// The file is accepted, but probably does not say what its author meant.
    Warning,
}

impl Severity {
    /// Whether this is an error (the default, so not written out in JSON).
    pub fn is_error(&self) -> bool {
        *self == Severity::Error
    }

    fn label(self) -> &'static str {
        match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        }
    }
}

impl Diagnostic {
    /// Renders the diagnostic with the offending source line and a caret under the column.
    pub fn render(&self, source: &str) -> String {
        let mut out = format!("{}: {}\n", self.severity.label(), self.message);
        let _ = writeln!(out, "  --> {}:{}:{}", self.file, self.line, self.column);
        if let Some(text) = source_lines(source).get(self.line.saturating_sub(1)) {
            let number = self.line.to_string();
            let pad = " ".repeat(number.len());
            let text: String = text.chars().take(200).collect();
            let caret_at = self.column.saturating_sub(1).min(text.chars().count());
            let under: String = text
                .chars()
                .take(caret_at)
                .map(|c| if c == '\t' { '\t' } else { ' ' })
                .collect();
            let _ = writeln!(out, "{pad} |");
            let _ = writeln!(out, "{number} | {text}");
            let _ = writeln!(out, "{pad} | {under}^");
        }
        if let Some(help) = &self.help {
            let _ = writeln!(out, "  = help: {help}");
        }
        out
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.severity == Severity::Warning {
            write!(f, "warning: ")?;
        }
        write!(
            f,
            "{}:{}:{}: {}",
            self.file, self.line, self.column, self.message
        )?;
        if let Some(help) = &self.help {
            write!(f, " ({help})")?;
        }
        Ok(())
    }
}

/// The file's lines as YAML counts them: `\n`, `\r\n` and a lone `\r` each end a line.
pub fn source_lines(source: &str) -> Vec<&str> {
    let mut lines = Vec::new();
    let mut rest = source;
    while !rest.is_empty() {
        match rest.find(['\n', '\r']) {
            Some(at) => {
                lines.push(&rest[..at]);
                let skip = if rest[at..].starts_with("\r\n") { 2 } else { 1 };
                rest = &rest[at + skip..];
            }
            None => {
                lines.push(rest);
                break;
            }
        }
    }
    lines
}

/// Collects diagnostics for one file while it is being read.
#[derive(Debug)]
pub struct Diagnostics {
    file: String,
    list: Vec<Diagnostic>,
    warnings: Vec<Diagnostic>,
}

impl Diagnostics {
    /// Starts an empty list for `file`.
    pub fn new(file: impl Into<String>) -> Self {
        Self {
            file: file.into(),
            list: Vec::new(),
            warnings: Vec::new(),
        }
    }

    /// Records a problem at `mark` concerning `field`.
    pub fn error(
        &mut self,
        mark: Mark,
        field: &str,
        message: impl Into<String>,
    ) -> &mut Diagnostic {
        self.list.push(Diagnostic {
            file: self.file.clone(),
            line: mark.line,
            column: mark.column,
            field: field.to_string(),
            step: step_of(field),
            message: message.into(),
            help: None,
            severity: Severity::Error,
        });
        self.list.last_mut().expect("just pushed")
    }

    /// Records something at `mark` that is allowed but probably not meant; the file stays valid.
    pub fn warning(
        &mut self,
        mark: Mark,
        field: &str,
        message: impl Into<String>,
    ) -> &mut Diagnostic {
        self.warnings.push(Diagnostic {
            file: self.file.clone(),
            line: mark.line,
            column: mark.column,
            field: field.to_string(),
            step: step_of(field),
            message: message.into(),
            help: None,
            severity: Severity::Warning,
        });
        self.warnings.last_mut().expect("just pushed")
    }

    /// Whether no error has been found (warnings do not count).
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// The errors, sorted by position in the file.
    pub fn into_sorted(self) -> Vec<Diagnostic> {
        self.into_parts().0
    }

    /// The errors and the warnings, each sorted by position in the file.
    pub fn into_parts(mut self) -> (Vec<Diagnostic>, Vec<Diagnostic>) {
        self.list.sort_by_key(|d| (d.line, d.column));
        self.warnings.sort_by_key(|d| (d.line, d.column));
        (self.list, self.warnings)
    }
}

impl Diagnostic {
    /// Adds a suggestion to the diagnostic.
    pub fn help(&mut self, help: impl Into<String>) -> &mut Self {
        self.help = Some(help.into());
        self
    }
}

/// `steps.train.retry` belongs to step `train`, `finally.cleanup.run` to step `cleanup`.
fn step_of(field: &str) -> Option<String> {
    let rest = ["steps.", "on_failure.", "finally."]
        .iter()
        .find_map(|section| field.strip_prefix(section))?;
    Some(rest.split('.').next().unwrap_or(rest).to_string())
}

/// The closest of `candidates` to `word`, when it is close enough to be a likely typo.
pub fn did_you_mean<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|c| (strsim::jaro_winkler(word, c), *c))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_like_a_compiler_with_a_caret_under_the_column() {
        let d = Diagnostic {
            file: "p.yaml".into(),
            line: 2,
            column: 3,
            field: "steps.a.dependz".into(),
            step: Some("a".into()),
            message: "unknown key `dependz` in step `a`".into(),
            help: Some("did you mean `depends`?".into()),
            severity: Severity::Error,
        };
        let out = d.render("steps:\n  dependz: [b]\n");
        assert_eq!(
            out,
            "error: unknown key `dependz` in step `a`\n  --> p.yaml:2:3\n  |\n2 |   dependz: [b]\n  |   ^\n  = help: did you mean `depends`?\n"
        );
    }

    #[test]
    fn a_warning_renders_as_one_and_keeps_its_severity_in_json() {
        let d = Diagnostic {
            file: "p.yaml".into(),
            line: 1,
            column: 7,
            field: "steps.a.when".into(),
            step: Some("a".into()),
            message: "compares with the text".into(),
            help: None,
            severity: Severity::Warning,
        };
        assert!(d
            .render("when: x\n")
            .starts_with("warning: compares with the text\n"));
        assert_eq!(d.to_string(), "warning: p.yaml:1:7: compares with the text");
        let json = serde_json::to_value(&d).unwrap();
        assert_eq!(json["severity"], "warning");
        let error = Diagnostic {
            severity: Severity::Error,
            ..d
        };
        let json = serde_json::to_value(&error).unwrap();
        assert!(json.get("severity").is_none(), "errors look as they did");
    }

    #[test]
    fn suggests_only_close_words() {
        let keys = ["depends", "run", "command", "timeout"];
        assert_eq!(did_you_mean("dependz", &keys), Some("depends"));
        assert_eq!(did_you_mean("timout", &keys), Some("timeout"));
        assert_eq!(did_you_mean("zzzz", &keys), None);
    }

    #[test]
    fn the_step_is_taken_from_the_field_path() {
        assert_eq!(step_of("steps.train.retry.delay"), Some("train".into()));
        assert_eq!(step_of("params.x"), None);
    }
}
