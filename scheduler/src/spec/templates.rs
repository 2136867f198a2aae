//! Template syntax from other tools (`{{ params.lr }}`, `${{ inputs.x }}`, `{% if %}`) written
//! where Sluice takes text as it is: `run`, `command`, `env` values and `when`.
//!
//! Sluice expands nothing: params reach a step as `$PARAM_<NAME>` environment variables (never
//! spliced into command text), an upstream step's files lie under `$SLUICE_IN/<step>/`, and its
//! small values are read in `when` as `steps.<step>.outputs.<key>`. A template would run as
//! literal braces, so each one is an error whose help names the Sluice way, and the variable to
//! use where the template says which.
//!
//! What counts, chosen to leave shell text alone:
//! - `${{ ... }}` (GitHub Actions) on one line, whatever is inside: `${{` is never valid shell.
//! - `{{ ... }}` on one line whose inside is a Jinja-style expression: it starts with a name
//!   (`params.lr`, `ds`, `ti.xcom_pull(...)`), holds no `$`, `{`, `}`, `;` or backtick, and no
//!   word starting with `.`. So Go templates (`docker ps --format '{{.Names}}'`,
//!   `{{range .items}}...{{end}}`), awk programs (`{{print $1}}`) and `${VAR}`/`$VAR` are not
//!   templates.
//! - `{% ... %}` on one line with a space after `{%` (`{% if x %}`, `{%- for ... -%}`).
//!
//! Single-quoted shell text is checked too: `'{{ ds }}'` is how Airflow commands quote their
//! templates. Literal braces that look like a template can be split in the shell
//! (`'{''{ name }}'`), or kept in a file the step reads.

use super::reader::Reader;
use super::yaml::Mark;

/// Longest template looked at, in bytes: one line of an expression, not a whole script.
const MAX_TEMPLATE: usize = 256;

/// Go template actions that can stand alone in `{{ }}` (`{{end}}`, `{{else}}`).
const GO_KEYWORDS: [&str; 10] = [
    "range", "end", "else", "if", "with", "define", "template", "block", "break", "continue",
];

/// Airflow's (and Argo's) names for the logical date of a run, which Sluice does not have.
const LOGICAL_DATES: [&str; 21] = [
    "ds",
    "ds_nodash",
    "ts",
    "ts_nodash",
    "ts_nodash_with_tz",
    "execution_date",
    "logical_date",
    "next_ds",
    "next_ds_nodash",
    "prev_ds",
    "prev_ds_nodash",
    "next_execution_date",
    "prev_execution_date",
    "data_interval_start",
    "data_interval_end",
    "yesterday_ds",
    "yesterday_ds_nodash",
    "tomorrow_ds",
    "tomorrow_ds_nodash",
    "prev_start_date_success",
    "macros",
];

/// The field a template was found in: the Sluice way differs between them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// A shell command (`run`), where the shell expands `$VAR`.
    Run,
    /// An argv list (`command`), run without a shell: nothing is expanded.
    Command,
    /// An `env` value, taken as written.
    Env,
    /// A `when` condition, which reads `params.x` and `steps.s.outputs.k` itself.
    When,
}

/// Which kind of template it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Syntax {
    /// `{{ expression }}`: Jinja (Airflow), Argo, Ansible, mustache.
    Expression,
    /// `${{ expression }}`: GitHub Actions.
    Actions,
    /// `{% statement %}`: Jinja.
    Statement,
}

/// One template found in a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template<'t> {
    /// Byte offset in the value where it starts.
    pub at: usize,
    /// The template as written: `{{ params.lr }}`.
    pub text: &'t str,
    /// What is inside, trimmed: `params.lr`.
    pub expr: &'t str,
    /// Which kind it is.
    pub syntax: Syntax,
}

/// Every template in `text`, in order, each distinct text once.
pub fn find(text: &str) -> Vec<Template<'_>> {
    let mut out: Vec<Template<'_>> = Vec::new();
    let bytes = text.as_bytes();
    let mut from = 0;
    while let Some(offset) = text[from..].find('{') {
        let start = from + offset;
        let rest = &text[start..];
        let found = if rest.starts_with("{{") {
            enclosed(rest, "}}").and_then(|(inner, len)| {
                let expr = trim_control(inner);
                let actions = start > 0 && bytes[start - 1] == b'$';
                if actions && !expr.is_empty() {
                    Some((start - 1, len + 1, expr, Syntax::Actions))
                } else if !actions && is_expression(expr) {
                    Some((start, len, expr, Syntax::Expression))
                } else {
                    None
                }
            })
        } else if rest.starts_with("{%") {
            enclosed(rest, "%}")
                .filter(|(inner, _)| is_statement(inner))
                .map(|(inner, len)| (start, len, trim_control(inner), Syntax::Statement))
        } else {
            None
        };
        match found {
            Some((at, len, expr, syntax)) => {
                let template = Template {
                    at,
                    text: &text[at..at + len],
                    expr,
                    syntax,
                };
                if !out.iter().any(|t| t.text == template.text) {
                    out.push(template);
                }
                from = at + len;
            }
            None => from = start + 1,
        }
    }
    out
}

/// The inside of `{{ ... }}` (or `{% ... %}`) at the start of `rest`, and the length of the
/// whole, when it closes on the same line within [`MAX_TEMPLATE`] bytes.
fn enclosed<'t>(rest: &'t str, close: &str) -> Option<(&'t str, usize)> {
    let body = &rest[2..];
    let mut window = body.len().min(MAX_TEMPLATE);
    while !body.is_char_boundary(window) {
        window -= 1;
    }
    let window = &body[..window];
    let window = &window[..window.find('\n').unwrap_or(window.len())];
    let end = window.find(close)?;
    Some((&body[..end], 2 + end + close.len()))
}

/// The inside without surrounding space and Jinja's whitespace control (`{{- x -}}`).
fn trim_control(inner: &str) -> &str {
    inner
        .trim()
        .trim_start_matches(['-', '+'])
        .trim_end_matches(['-', '+'])
        .trim()
}

/// A Jinja-style expression: starts with a name, holds nothing that shell, awk or Go templates
/// write between double braces.
fn is_expression(expr: &str) -> bool {
    let starts_with_name = expr
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    let first_word = expr
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .next()
        .unwrap_or("");
    starts_with_name
        && !expr.contains(['$', '{', '}', ';', '`', '\\'])
        && !expr.split_whitespace().any(|word| word.starts_with('.'))
        && !GO_KEYWORDS.contains(&first_word)
}

/// A Jinja statement: `{%` then a space (after optional whitespace control), then a name.
fn is_statement(inner: &str) -> bool {
    let inner = inner.trim_start_matches(['-', '+']);
    inner.starts_with(char::is_whitespace)
        && inner
            .trim_start()
            .starts_with(|c: char| c.is_ascii_alphabetic())
}

/// Records an error for each template in `text`, a value read from a node at `mark`; `source`
/// is the file, to point at the template itself rather than at the start of the value. Returns
/// whether there was none.
pub fn check(r: &mut Reader, text: &str, mark: Mark, field: &str, place: Place) -> bool {
    let found = find(text);
    for template in &found {
        let at = position(&r.source, mark, text, template);
        let message = format!(
            "`{field}` holds template syntax `{}`, which Sluice does not expand",
            template.text
        );
        r.diags
            .error(at, field, message)
            .help(help(template, place));
    }
    found.is_empty()
}

/// Where `template` stands in the file: searched for from the value's start over as many lines
/// as the value has (a block scalar starts a line above its text); the value's start when the
/// text is written differently in the file (escapes in a quoted string).
fn position(source: &str, mark: Mark, value: &str, template: &Template<'_>) -> Mark {
    let lines = value[..template.at].matches('\n').count() + 2;
    let all = super::diagnostic::source_lines(source);
    for (index, line) in all
        .iter()
        .enumerate()
        .skip(mark.line.saturating_sub(1))
        .take(lines)
    {
        let skip = if index + 1 == mark.line {
            mark.column.saturating_sub(1)
        } else {
            0
        };
        let start = line
            .char_indices()
            .nth(skip)
            .map_or(line.len(), |(byte, _)| byte);
        if let Some(found) = line[start..].find(template.text) {
            let column = line[..start + found].chars().count() + 1;
            return Mark {
                line: index + 1,
                column,
            };
        }
    }
    mark
}

/// What a template stands for, as far as its name tells.
#[derive(Debug, PartialEq, Eq)]
enum Meaning {
    /// A run's parameter: `params.lr`, `inputs.parameters.lr`, `dag_run.conf.lr`.
    Param(String),
    /// An upstream step's value or result: `steps.s.outputs.k`, `ti.xcom_pull(...)`.
    Output {
        step: Option<String>,
        key: Option<String>,
    },
    /// An input file from upstream: Argo's `inputs.artifacts.x`.
    Artifact(String),
    /// Airflow's logical date and its macros.
    LogicalDate,
    /// Something Sluice sets in every step's environment: `SLUICE_RUN_ID` and the like.
    Sluice(&'static str),
    /// A secret: `secrets.TOKEN`.
    Secret(String),
    /// An environment variable or a value from the tool's variable store.
    Variable(String),
    /// A bare name that could be a param or a variable.
    Name(String),
    /// Anything else.
    Unknown,
}

/// Reads the name at the start of `expr` as dotted segments (`a.b['c'].d` → `[a, b, c, d]`)
/// and the rest (a call's arguments, filters).
fn segments(expr: &str) -> (Vec<&str>, &str) {
    let mut out = Vec::new();
    let mut rest = expr;
    loop {
        let len = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
            .unwrap_or(rest.len());
        if len > 0 {
            out.push(&rest[..len]);
            rest = &rest[len..];
        }
        if let Some(next) = rest.strip_prefix('.') {
            rest = next;
            continue;
        }
        let index = rest
            .strip_prefix("['")
            .and_then(|r| r.split_once("']"))
            .or_else(|| rest.strip_prefix("[\"").and_then(|r| r.split_once("\"]")));
        match index {
            Some((key, after)) => {
                out.push(key);
                rest = after;
                if let Some(next) = rest.strip_prefix('.') {
                    rest = next;
                }
            }
            None => return (out, rest),
        }
        if len == 0 && rest.is_empty() {
            return (out, rest);
        }
    }
}

/// The quoted argument named `name=` in a call's arguments, or the first positional one.
fn call_argument<'t>(args: &'t str, name: &str) -> Option<&'t str> {
    let quoted = |s: &'t str| {
        let s = s.trim_start();
        let quote = s.chars().next().filter(|c| *c == '\'' || *c == '"')?;
        s[1..].split(quote).next()
    };
    match args.find(&format!("{name}=")) {
        Some(at) => quoted(&args[at + name.len() + 1..]),
        None => quoted(args.trim_start_matches('(')),
    }
}

fn meaning(expr: &str) -> Meaning {
    let (path, rest) = segments(expr);
    let owned = |s: &str| s.to_string();
    match path.as_slice() {
        ["params", name, ..]
        | ["inputs", "parameters", name, ..]
        | ["workflow", "parameters", name, ..]
        | ["github", "event", "inputs", name, ..]
        | ["dag_run", "conf", name, ..] => Meaning::Param(owned(name)),
        ["inputs", "artifacts", name, ..] => Meaning::Artifact(owned(name)),
        ["inputs", name, ..] => Meaning::Param(owned(name)),
        ["steps" | "tasks" | "needs", step, "outputs", "parameters", key, ..]
        | ["steps" | "tasks" | "needs", step, "outputs", key, ..] => Meaning::Output {
            step: Some(owned(step)),
            key: Some(owned(key)),
        },
        ["steps" | "tasks" | "needs", step, ..] => Meaning::Output {
            step: Some(owned(step)),
            key: None,
        },
        ["ti" | "task_instance", "xcom_pull"] => Meaning::Output {
            step: call_argument(rest, "task_ids").map(owned),
            key: call_argument(rest, "key")
                .filter(|_| rest.contains("key="))
                .map(owned),
        },
        ["run_id"]
        | ["dag_run", "run_id"]
        | ["workflow", "name" | "uid"]
        | ["github", "run_id" | "run_number"] => Meaning::Sluice("SLUICE_RUN_ID"),
        ["dag_id"] | ["dag", "dag_id"] | ["github", "workflow"] => {
            Meaning::Sluice("SLUICE_PIPELINE")
        }
        ["task", "task_id"] | ["ti" | "task_instance", "task_id"] | ["github", "job"] => {
            Meaning::Sluice("SLUICE_STEP")
        }
        ["try_number"]
        | ["retries"]
        | ["ti" | "task_instance", "try_number"]
        | ["github", "run_attempt"] => Meaning::Sluice("SLUICE_ATTEMPT"),
        ["secrets" | "conn", name, ..] => Meaning::Secret(owned(name)),
        ["env" | "vars", name, ..] | ["var", "value" | "json", name, ..] => {
            Meaning::Variable(owned(name))
        }
        [first, ..] if LOGICAL_DATES.contains(first) => Meaning::LogicalDate,
        ["dag_run" | "workflow", "logical_date" | "execution_date" | "scheduledTime", ..] => {
            Meaning::LogicalDate
        }
        [name] if rest.trim().is_empty() || rest.trim_start().starts_with('|') => {
            Meaning::Name(owned(name))
        }
        _ => Meaning::Unknown,
    }
}

/// `learning-rate` → `PARAM_LEARNING_RATE`, as a step sees a param.
fn param_variable(name: &str) -> String {
    let name: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("PARAM_{name}")
}

/// `learning-rate` → `learning_rate`, a name Sluice accepts for a param.
fn param_name(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// How to say `template` the Sluice way in `place`.
fn help(template: &Template<'_>, place: Place) -> String {
    if template.syntax == Syntax::Statement {
        return match place {
            Place::When => "write the condition itself: `when: params.mode == 'full'`".into(),
            _ => "Sluice does not expand templates: write the logic in the shell (`if [ \"$PARAM_MODE\" = full ]; then ...; fi`), or skip the step with `when: params.mode == 'full'`".into(),
        };
    }
    let not_expanded = match place {
        Place::Command => "`command` runs without a shell, so nothing in it is expanded",
        Place::Env => "`env` values are taken as written",
        Place::Run | Place::When => "",
    };
    let then = |text: String| {
        if not_expanded.is_empty() {
            text
        } else {
            format!("{not_expanded}; {text}")
        }
    };
    match meaning(template.expr) {
        Meaning::Param(name) => {
            let variable = param_variable(&name);
            match place {
                Place::Run => format!("params reach a step as environment variables, never spliced into its command: write `\"${variable}\"`"),
                Place::Command => then(format!("params reach a step as environment variables: use `run: ... \"${variable}\"`, or `command: [sh, -c, '... \"${variable}\"']`")),
                Place::Env => then(format!("params are in every step's environment already: read `\"${variable}\"` in the step")),
                Place::When => format!("in `when`, a param is written without braces: `params.{}`", param_name(&name)),
            }
        }
        Meaning::Output { step, key } => {
            let step = step.unwrap_or_else(|| "<step>".into());
            let key = key.unwrap_or_else(|| "<key>".into());
            match place {
                Place::When => format!("in `when`, a step's value is written without braces: `steps.{step}.outputs.{key}`"),
                _ => then(format!("an upstream step's declared `outputs` are files under `$SLUICE_IN/{step}/`, and the small values it writes to `$SLUICE_OUTPUTS` are read in `when` as `steps.{step}.outputs.{key}`")),
            }
        }
        Meaning::Artifact(name) => match place {
            Place::When => "`when` reads params and step values (`steps.<step>.outputs.<key>`), not files".into(),
            _ => then(format!("an upstream step's declared `outputs` are files under `$SLUICE_IN/<step>/`: `\"$SLUICE_IN/<step>/{name}\"`")),
        },
        Meaning::LogicalDate => match place {
            Place::When => "there is no logical date in Sluice: declare a param (`params: {date: {type: string}}`) and compare `params.date`".into(),
            _ => then("there is no logical date in Sluice: declare a param (`params: {date: {type: string}}`) and read `\"$PARAM_DATE\"`, or compute it in a `run` step: `\"$(date +%F)\"`".into()),
        },
        Meaning::Sluice(variable) => match place {
            Place::Run => format!("Sluice sets `{variable}` in every step's environment: write `\"${variable}\"`"),
            Place::When => format!("`when` reads params and step values; `{variable}` is in the step's environment"),
            _ => then(format!("Sluice sets `{variable}` in every step's environment: read `\"${variable}\"` in the step")),
        },
        Meaning::Secret(name) => match place {
            Place::Run => format!("list the secret in the step's `secrets: [{name}]`; it arrives as the environment variable `\"${name}\"`"),
            Place::When => "`when` cannot read secrets".into(),
            _ => then(format!("list the secret in the step's `secrets: [{name}]` and read `\"${name}\"` in the step")),
        },
        Meaning::Variable(name) => match place {
            Place::Run => format!("environment variables are read by the shell: set `{name}` in `env` and write `\"${name}\"`"),
            Place::When => format!("`when` reads params and step values: pass `{name}` as a param and compare `params.{}`", param_name(&name)),
            _ => then(format!("set `{name}` in `env` and read `\"${name}\"` in the step")),
        },
        Meaning::Name(name) => {
            let variable = param_variable(&name);
            match place {
                Place::Run => format!("a param `{}` reaches the step as `\"${variable}\"`, and an environment variable is read by the shell: `\"${name}\"`", param_name(&name)),
                Place::When => format!("in `when`, write `params.{}` or `steps.<step>.outputs.{name}` without braces", param_name(&name)),
                _ => then(format!("a param `{}` is in the step's environment as `{variable}`: read `\"${variable}\"` in the step", param_name(&name))),
            }
        }
        Meaning::Unknown => match place {
            Place::When => "in `when`, write `params.<name>` or `steps.<step>.outputs.<key>` without braces".into(),
            _ => then("params reach a step as `$PARAM_<NAME>` environment variables, an upstream step's files lie under `$SLUICE_IN/<step>/`, and its small values are read in `when` as `steps.<step>.outputs.<key>`".into()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(text: &str) -> Vec<&str> {
        find(text).into_iter().map(|t| t.text).collect()
    }

    #[test]
    fn finds_jinja_argo_and_actions_templates() {
        assert_eq!(
            texts("python t.py --lr {{ params.lr }} --d '{{ds}}' ${{ inputs.x }}"),
            ["{{ params.lr }}", "{{ds}}", "${{ inputs.x }}"]
        );
        assert_eq!(
            texts("{{inputs.parameters.learning-rate}} {{- ds -}}"),
            ["{{inputs.parameters.learning-rate}}", "{{- ds -}}"]
        );
        assert_eq!(
            texts("{% if params.full %}x{% endif %}"),
            ["{% if params.full %}", "{% endif %}"]
        );
        assert_eq!(texts("{{ ds }} and {{ ds }}"), ["{{ ds }}"], "once each");
    }

    #[test]
    fn leaves_shell_go_templates_and_awk_alone() {
        for text in [
            "echo ${VAR} $VAR ${VAR:-x}",
            "docker ps --format '{{.Names}}'",
            "kubectl get pods -o go-template='{{range .items}}{{.metadata.name}}{{end}}'",
            "docker inspect -f '{{index .Config.Labels \"x\"}}' c",
            "awk '{{print $1}}' f",
            "echo {a,b}{c,d} {{1..3}}",
            "printf '{%s%}' x",
            "date +'{%Y}'",
            "echo '{\"a\": {\"b\": 1}}'",
            "{{ params.lr\n}}",
            "{{ x ; y }}",
            "{{ $x := .y }}",
        ] {
            assert_eq!(texts(text), Vec::<&str>::new(), "{text}");
        }
    }

    #[test]
    fn a_long_run_of_braces_is_scanned_quickly() {
        let text = "{{".repeat(200_000);
        let started = std::time::Instant::now();
        assert!(find(&text).is_empty());
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }

    #[test]
    fn reads_what_a_template_refers_to() {
        let cases = [
            ("params.lr", Meaning::Param("lr".into())),
            ("params['lr'] | int", Meaning::Param("lr".into())),
            ("dag_run.conf['lr']", Meaning::Param("lr".into())),
            ("inputs.parameters.lr", Meaning::Param("lr".into())),
            ("inputs.lr", Meaning::Param("lr".into())),
            ("inputs.artifacts.data", Meaning::Artifact("data".into())),
            (
                "steps.eval.outputs.score",
                Meaning::Output {
                    step: Some("eval".into()),
                    key: Some("score".into()),
                },
            ),
            (
                "tasks.eval.outputs.parameters.score",
                Meaning::Output {
                    step: Some("eval".into()),
                    key: Some("score".into()),
                },
            ),
            (
                "ti.xcom_pull(task_ids='eval', key='score')",
                Meaning::Output {
                    step: Some("eval".into()),
                    key: Some("score".into()),
                },
            ),
            (
                "ti.xcom_pull('eval')",
                Meaning::Output {
                    step: Some("eval".into()),
                    key: None,
                },
            ),
            ("ds", Meaning::LogicalDate),
            ("macros.ds_add(ds, 7)", Meaning::LogicalDate),
            ("execution_date.strftime('%Y')", Meaning::LogicalDate),
            ("run_id", Meaning::Sluice("SLUICE_RUN_ID")),
            ("workflow.name", Meaning::Sluice("SLUICE_RUN_ID")),
            ("secrets.HF_TOKEN", Meaning::Secret("HF_TOKEN".into())),
            ("env.HOME", Meaning::Variable("HOME".into())),
            ("var.value.bucket", Meaning::Variable("bucket".into())),
            ("lr", Meaning::Name("lr".into())),
            ("matrix.lr", Meaning::Unknown),
        ];
        for (expr, expected) in cases {
            assert_eq!(meaning(expr), expected, "{expr}");
        }
    }
}
