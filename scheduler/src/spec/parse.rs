//! From a marked YAML tree to a typed [`Pipeline`], recording every problem on the way.

use std::str::FromStr;

use indexmap::IndexMap;

use super::builtins;
use super::condition::Condition;
use super::model::*;
use super::reader::{join, Reader};
use super::templates::{self, Place};
use super::triggers;
use super::values;
use super::yaml::{Mark, Node, Value};

/// Top-level keys of a pipeline file.
pub const PIPELINE_KEYS: &[&str] = &[
    "name",
    "description",
    "params",
    "env",
    "defaults",
    "parallelism",
    "concurrency",
    "triggers",
    "notify",
    "timeout",
    "steps",
    "on_failure",
    "finally",
];
/// Keys of a step.
pub const STEP_KEYS: &[&str] = &[
    "description",
    "depends",
    "when",
    "run",
    "command",
    "uses",
    "with",
    "image",
    "env",
    "secrets",
    "workdir",
    "retry",
    "timeout",
    "resources",
    "queue",
    "outputs",
    "pull",
    "user",
    "cache",
    "models",
    "matrix",
];
/// Keys of `defaults`: the step settings that can have a pipeline-wide default.
pub const DEFAULTS_KEYS: &[&str] = &[
    "timeout",
    "retry",
    "workdir",
    "image",
    "queue",
    "resources",
    "pull",
    "user",
    "cache",
];
/// Keys of `cache` written as a mapping.
pub const CACHE_KEYS: &[&str] = &["inputs"];
/// Keys of `retry`.
pub const RETRY_KEYS: &[&str] = &[
    "limit",
    "lost",
    "backoff",
    "delay",
    "max_delay",
    "on_exit_codes",
];
/// Keys of `resources`.
pub const RESOURCE_KEYS: &[&str] = &["cpu", "memory", "gpu"];
/// Keys of a parameter written in its long form.
pub const PARAM_KEYS: &[&str] = &["type", "default", "description"];
/// Keys of `concurrency`.
pub const CONCURRENCY_KEYS: &[&str] = &["limit", "overlap"];

/// Most retries a step may ask for: enough for flaky networks, not enough to hide a broken step.
pub const MAX_RETRIES: i64 = 100;

/// A step as read: what the graph checks need, which is there even when other fields of the
/// step are broken, and the typed step when all of it was valid.
pub struct ParsedStep {
    /// The step's name.
    pub name: String,
    /// Where its key stands.
    pub mark: Mark,
    /// Its dependencies.
    pub depends: Vec<String>,
    /// Each `depends` entry's position.
    pub depends_marks: Vec<Mark>,
    /// Its condition, when valid.
    pub when: Option<Condition>,
    /// Where `when:` was written.
    pub when_mark: Option<Mark>,
    /// The typed step, when every field was valid.
    pub step: Option<Step>,
    /// The section it is written in.
    pub phase: Phase,
    /// Whether it has a `matrix:` (it runs as several steps, none of them under its name).
    pub has_matrix: bool,
}

/// What a file yields: the pipeline when everything was valid, and the steps as far as they
/// could be read, for the checks across steps.
pub struct Parsed {
    /// The pipeline without its steps (the caller attaches them after the graph checks).
    pub pipeline: Option<Pipeline>,
    /// Every step, valid or not.
    pub steps: Vec<ParsedStep>,
}

/// The pipeline-wide step defaults.
#[derive(Default)]
struct StepDefaults {
    timeout: Option<std::time::Duration>,
    retry: Option<RetryPolicy>,
    workdir: Option<String>,
    image: Option<String>,
    queue: Option<String>,
    pull: Option<PullPolicy>,
    user: Option<String>,
    resources: Option<Resources>,
    cache: Option<Option<CachePolicy>>,
}

/// Where whole-file problems are reported: a mapping's own mark points inside it, not at its start.
pub use super::builtins::BUILTIN_KINDS;

const FILE_START: Mark = Mark { line: 1, column: 1 };

/// Reads the whole pipeline; the reader collects every problem found.
pub fn pipeline(r: &mut Reader, root: &Node) -> Parsed {
    let nothing = || Parsed {
        pipeline: None,
        steps: Vec::new(),
    };
    if root.value == Value::Null {
        r.error(
            FILE_START,
            "",
            "the file is empty: a pipeline needs at least `name` and `steps`",
        );
        return nothing();
    }
    let step_names = step_names(root);
    let step_key_hint = |key: &str, at: Mark| {
        if !STEP_KEYS.contains(&key) {
            return None;
        }
        Some(match step_names.iter().rev().find(|(_, mark)| *mark < at) {
            Some((step, _)) => {
                format!("`{key}` is a step key; did you mean to indent it under `{step}`?")
            }
            None => format!("`{key}` is a step key: it goes under a step's name in `steps`"),
        })
    };
    let Some(fields) = r.mapping_with_hint(root, "", "the pipeline", PIPELINE_KEYS, step_key_hint)
    else {
        return nothing();
    };
    let name = match fields.get("name") {
        Some((_, node)) => r.string(node, "name").and_then(|name| {
            values::pipeline_name(&name)
                .map_err(|m| r.error(node.mark, "name", m))
                .ok()
                .map(|_| name)
        }),
        None => {
            r.error(FILE_START, "name", "the pipeline has no `name`");
            None
        }
    };
    let description = fields
        .get("description")
        .and_then(|(_, n)| r.text(n, "description"));
    let params = fields
        .get("params")
        .map_or(Some(IndexMap::new()), |(_, n)| params(r, n));
    let env = fields
        .get("env")
        .map_or(Some(IndexMap::new()), |(_, n)| r.env(n, "env"));
    let defaults = fields
        .get("defaults")
        .map_or(Some(StepDefaults::default()), |(_, n)| defaults(r, n));
    let parallelism = fields
        .get("parallelism")
        .map(|(_, n)| r.integer(n, "parallelism", 1, 100_000).map(|p| p as usize));
    let concurrency = fields.get("concurrency").map(|(_, n)| concurrency(r, n));
    let triggers = fields
        .get("triggers")
        .map_or(Some(Vec::new()), |(_, n)| triggers::triggers(r, n));
    let notify = fields
        .get("notify")
        .map_or(Some(Vec::new()), |(_, n)| super::notify::notify(r, n));
    let timeout = fields.get("timeout").map_or(Some(None), |(_, n)| {
        r.positive_duration(n, "timeout").map(Some)
    });
    // With broken `env` or `defaults` the steps are still read, for their own problems.
    let fallback = (IndexMap::new(), StepDefaults::default());
    let env_ref = env.as_ref().unwrap_or(&fallback.0);
    let defaults_ref = defaults.as_ref().unwrap_or(&fallback.1);
    let (mut steps, mut steps_ok) = (Vec::new(), true);
    if !fields.contains_key("steps") {
        r.error(FILE_START, "steps", "the pipeline has no `steps`");
        steps_ok = false;
    }
    for phase in [Phase::Main, Phase::OnFailure, Phase::Finally] {
        if let Some((_, node)) = fields.get(phase.section()) {
            let (section, ok) = steps_in(r, node, env_ref, defaults_ref, phase);
            // Moved, not copied, when it is the first: a step is large, and copying ten
            // thousand of them was a tenth of validating such a file.
            if steps.is_empty() {
                steps = section;
            } else {
                steps.extend(section);
            }
            steps_ok &= ok;
        }
    }
    let pipeline = (|| {
        Some(Pipeline {
            name: name?,
            description,
            params: params?,
            env: env?,
            parallelism: parallelism.unwrap_or(Some(0)).filter(|p| *p > 0),
            concurrency: concurrency.unwrap_or(Some(None))?,
            triggers: triggers?,
            notify: notify?,
            timeout: timeout?,
            steps: IndexMap::new(),
        })
    })()
    .filter(|_| steps_ok && defaults.is_some());
    Parsed { pipeline, steps }
}

/// The names under `steps:` and where each stands, as far as the file has them.
fn step_names(root: &Node) -> Vec<(String, Mark)> {
    let Value::Map(entries) = &root.value else {
        return Vec::new();
    };
    let steps = entries
        .iter()
        .find(|(key, _)| key.value == Value::String("steps".into()));
    match steps {
        Some((
            _,
            Node {
                value: Value::Map(steps),
                ..
            },
        )) => steps
            .iter()
            .filter_map(|(key, value)| {
                let name = key.value.scalar_text()?;
                (!misplaced_step_key(&name, value)).then_some((name, key.mark))
            })
            .collect(),
        _ => Vec::new(),
    }
}

fn params(r: &mut Reader, node: &Node) -> Option<IndexMap<String, ParamSpec>> {
    let Value::Map(entries) = &node.value else {
        r.error(
            node.mark,
            "params",
            format!("`params` must be a mapping, found {}", node.value.kind()),
        );
        return None;
    };
    let mut out = IndexMap::new();
    let mut seen_env = IndexMap::new();
    let mut ok = true;
    for (key, value) in entries {
        let name = key.value.scalar_text().unwrap_or_default();
        let path = join("params", &name);
        if let Err(message) = values::variable_name(&name) {
            r.error(key.mark, &path, message);
            ok = false;
            continue;
        }
        if let Some(other) = seen_env.insert(name.to_uppercase(), name.clone()) {
            r.error(
                key.mark,
                &path,
                format!(
                    "params `{other}` and `{name}` both reach steps as PARAM_{}",
                    name.to_uppercase()
                ),
            );
            ok = false;
        }
        match param(r, value, &path) {
            Some(spec) => {
                out.insert(name, spec);
            }
            None => ok = false,
        }
    }
    ok.then_some(out)
}

fn param(r: &mut Reader, node: &Node, path: &str) -> Option<ParamSpec> {
    let (kind, default, description) = match &node.value {
        Value::Map(_) => {
            let fields = r.mapping(node, path, &format!("param `{path}`"), PARAM_KEYS)?;
            let kind = match fields.get("type") {
                Some((_, n)) => r.choice(
                    n,
                    &join(path, "type"),
                    &[
                        ("string", ParamType::String),
                        ("integer", ParamType::Integer),
                        ("number", ParamType::Number),
                        ("boolean", ParamType::Boolean),
                    ],
                )?,
                None => fields
                    .get("default")
                    .and_then(|(_, n)| inferred_type(&n.value))
                    .unwrap_or(ParamType::String),
            };
            let default = match fields.get("default") {
                Some((_, n)) if n.value != Value::Null => {
                    Some((r.text(n, &join(path, "default"))?, n.mark))
                }
                _ => None,
            };
            let description = fields
                .get("description")
                .and_then(|(_, n)| r.text(n, &join(path, "description")));
            (kind, default, description)
        }
        Value::Null => (ParamType::String, None, None),
        Value::Seq(_) => {
            r.error(
                node.mark,
                path,
                "a param's default must be a single value; for a richer param write `{type: ..., default: ...}`",
            );
            return None;
        }
        scalar => (
            inferred_type(scalar).unwrap_or(ParamType::String),
            Some((scalar.scalar_text()?, node.mark)),
            None,
        ),
    };
    if let Some((value, mark)) = &default {
        if let Err(message) = kind.check(value) {
            r.error(
                *mark,
                &join(path, "default"),
                format!("default of `{path}`: {message}"),
            );
            return None;
        }
    }
    Some(ParamSpec {
        kind,
        default: default.map(|(v, _)| v),
        description,
    })
}

fn inferred_type(value: &Value) -> Option<ParamType> {
    match value {
        Value::Int(_) => Some(ParamType::Integer),
        Value::Float(_) => Some(ParamType::Number),
        Value::Bool(_) => Some(ParamType::Boolean),
        Value::String(_) => Some(ParamType::String),
        _ => None,
    }
}

fn defaults(r: &mut Reader, node: &Node) -> Option<StepDefaults> {
    let fields = r.mapping(node, "defaults", "`defaults`", DEFAULTS_KEYS)?;
    let mut ok = true;
    let mut out = StepDefaults::default();
    for (key, (_, value)) in &fields {
        let path = join("defaults", key);
        let read = match *key {
            "timeout" => r
                .positive_duration(value, &path)
                .map(|d| out.timeout = Some(d)),
            "retry" => retry(r, value, &path).map(|p| out.retry = Some(p)),
            "workdir" => r.string(value, &path).map(|w| out.workdir = Some(w)),
            "image" => r.string(value, &path).map(|i| out.image = Some(i)),
            "queue" => queue_name(r, value, &path).map(|q| out.queue = Some(q)),
            "pull" => pull_policy(r, value, &path).map(|p| out.pull = Some(p)),
            "user" => r.text(value, &path).map(|u| out.user = Some(u)),
            "resources" => resources(r, value, &path).map(|res| out.resources = Some(res)),
            "cache" => cache(r, value, &path).map(|c| out.cache = Some(c)),
            _ => Some(()),
        };
        ok &= read.is_some();
    }
    ok.then_some(out)
}

fn concurrency(r: &mut Reader, node: &Node) -> Option<Option<Concurrency>> {
    let fields = r.mapping(node, "concurrency", "`concurrency`", CONCURRENCY_KEYS)?;
    let limit = match fields.get("limit") {
        Some((_, n)) => r.integer(n, "concurrency.limit", 1, 10_000)? as u32,
        None => 1,
    };
    let overlap = match fields.get("overlap") {
        Some((_, n)) => r.choice(
            n,
            "concurrency.overlap",
            &[
                ("queue", Overlap::Queue),
                ("skip", Overlap::Skip),
                ("cancel_running", Overlap::CancelRunning),
                ("allow", Overlap::Allow),
            ],
        )?,
        None => Overlap::Queue,
    };
    Some(Some(Concurrency { limit, overlap }))
}

fn retry(r: &mut Reader, node: &Node, path: &str) -> Option<RetryPolicy> {
    if let Value::Int(_) = node.value {
        // `retry: 3` is the short form of `retry: {limit: 3}`.
        let limit = r.integer(node, path, 0, MAX_RETRIES)? as u32;
        return Some(RetryPolicy {
            limit,
            ..RetryPolicy::default()
        });
    }
    let fields = r.mapping(node, path, &format!("`{path}`"), RETRY_KEYS)?;
    let mut policy = RetryPolicy::default();
    let mut ok = true;
    for (key, (_, value)) in &fields {
        let field = join(path, key);
        let read = match *key {
            "limit" => r
                .integer(value, &field, 0, MAX_RETRIES)
                .map(|l| policy.limit = l as u32),
            "lost" => r
                .integer(value, &field, 0, MAX_RETRIES)
                .map(|l| policy.lost = l as u32),
            "backoff" => r
                .choice(
                    value,
                    &field,
                    &[
                        ("fixed", Backoff::Fixed),
                        ("exponential", Backoff::Exponential),
                    ],
                )
                .map(|b| policy.backoff = b),
            "delay" => r.duration(value, &field).map(|d| policy.delay = d),
            "max_delay" => r
                .positive_duration(value, &field)
                .map(|d| policy.max_delay = Some(d)),
            "on_exit_codes" => {
                exit_codes(r, value, &field).map(|codes| policy.on_exit_codes = codes)
            }
            _ => Some(()),
        };
        ok &= read.is_some();
    }
    ok.then_some(policy)
}

fn exit_codes(r: &mut Reader, node: &Node, path: &str) -> Option<Vec<i32>> {
    let Value::Seq(items) = &node.value else {
        r.error(
            node.mark,
            path,
            format!("`{path}` must be a list of exit codes"),
        );
        return None;
    };
    let mut codes = Vec::new();
    for (i, item) in items.iter().enumerate() {
        codes.push(r.integer(item, &format!("{path}[{i}]"), 1, 255)? as i32);
    }
    Some(codes)
}

fn resources(r: &mut Reader, node: &Node, path: &str) -> Option<Resources> {
    let fields = r.mapping(node, path, &format!("`{path}`"), RESOURCE_KEYS)?;
    let mut out = Resources::default();
    let mut ok = true;
    for (key, (_, value)) in &fields {
        let field = join(path, key);
        let read = match *key {
            "cpu" => quantity(r, value, &field, values::cpu).map(|c| out.cpu = Some(c)),
            "memory" => quantity(r, value, &field, values::memory).map(|m| out.memory = Some(m)),
            "gpu" => gpu(r, value, &field).map(|g| out.gpu = Some(g)),
            _ => Some(()),
        };
        ok &= read.is_some();
    }
    ok.then_some(out)
}

fn quantity<T>(
    r: &mut Reader,
    node: &Node,
    path: &str,
    parse: fn(&str) -> Result<T, String>,
) -> Option<T> {
    let text = r.text(node, path)?;
    parse(&text).map_err(|m| r.error(node.mark, path, m)).ok()
}

fn gpu(r: &mut Reader, node: &Node, path: &str) -> Option<GpuRequest> {
    match &node.value {
        Value::Int(_) => Some(GpuRequest::Count(r.integer(node, path, 1, 1024)? as u32)),
        Value::String(s) if s == "all" => Some(GpuRequest::All),
        Value::Map(_) => {
            let fields = r.mapping(node, path, &format!("`{path}`"), &["ids"])?;
            let Some((_, ids)) = fields.get("ids") else {
                r.error(
                    node.mark,
                    path,
                    format!("`{path}` as a mapping needs `ids: [\"0\", ...]`"),
                );
                return None;
            };
            let ids = r.text_list(ids, &join(path, "ids"))?;
            let mut seen = std::collections::HashSet::new();
            if let Some((dup, mark)) = ids.iter().find(|(id, _)| !seen.insert(id.clone())) {
                r.error(
                    *mark,
                    &join(path, "ids"),
                    format!("GPU `{dup}` is listed twice"),
                );
                return None;
            }
            if ids.is_empty() {
                r.error(
                    node.mark,
                    path,
                    format!("`{path}.ids` must name at least one device"),
                );
                return None;
            }
            Some(GpuRequest::Ids(ids.into_iter().map(|(id, _)| id).collect()))
        }
        other => {
            r.error(
                node.mark,
                path,
                format!(
                    "`{path}` must be a count, `all` or `{{ids: [...]}}`, found {}",
                    other.kind()
                ),
            );
            None
        }
    }
}

fn queue_name(r: &mut Reader, node: &Node, path: &str) -> Option<String> {
    let name = r.string(node, path)?;
    values::step_name(&name)
        .map_err(|_| {
            r.error(
                node.mark,
                path,
                format!("queue name `{name}` must be letters, digits, `_` and `-`"),
            )
        })
        .ok()?;
    Some(name)
}

/// The steps of one section (`steps`, `on_failure` or `finally`).
fn steps_in(
    r: &mut Reader,
    node: &Node,
    env: &IndexMap<String, String>,
    defaults: &StepDefaults,
    phase: Phase,
) -> (Vec<ParsedStep>, bool) {
    let section = phase.section();
    let Value::Map(entries) = &node.value else {
        let d = r.diags.error(
            node.mark,
            section,
            format!(
                "`{section}` must be a mapping of step name to step, found {}",
                node.value.kind()
            ),
        );
        if let Value::Seq(_) = node.value {
            d.help("GitHub Actions, Argo and Dagu write steps as a list; Sluice names each one: `steps: {train: {run: ...}}`");
        }
        return (Vec::new(), false);
    };
    if entries.is_empty() {
        let message = match phase {
            Phase::Main => "the pipeline has no steps".to_string(),
            _ => format!("`{section}` has no steps"),
        };
        r.error(node.mark, section, message);
        return (Vec::new(), false);
    }
    let mut out = Vec::with_capacity(entries.len());
    let mut ok = true;
    let mut above: Option<String> = None;
    for (key, value) in entries {
        let name = key.value.scalar_text().unwrap_or_default();
        let path = join(section, &name);
        if misplaced_step_key(&name, value) {
            misplaced(r, key.mark, section, &name, above.as_deref());
            ok = false;
            continue;
        }
        above = Some(name.clone());
        if let Err(message) = values::step_name(&name) {
            r.error(key.mark, &path, message);
            ok = false;
        }
        let at = StepAt {
            name: &name,
            mark: key.mark,
            path: &path,
            phase,
        };
        let parsed = step(r, at, value, env, defaults);
        ok &= parsed.step.is_some();
        out.push(parsed);
    }
    (out, ok)
}

/// Whether an entry of `steps` is a step's key written one level too high: a step key whose
/// value is not a step (`depends: [a]`, `run: x`, `env: {A: b}` rather than a mapping of step
/// keys). A step may be called `run`, when it holds step keys.
fn misplaced_step_key(name: &str, value: &Node) -> bool {
    if !STEP_KEYS.contains(&name) {
        return false;
    }
    match &value.value {
        Value::Map(entries) => !entries.iter().any(
            |(key, _)| matches!(&key.value, Value::String(k) if STEP_KEYS.contains(&k.as_str())),
        ),
        _ => true,
    }
}

/// Reports a step key found among step names, pointing at the step above it.
fn misplaced(r: &mut Reader, mark: Mark, section: &str, key: &str, above: Option<&str>) {
    let d = r.diags.error(
        mark,
        &join(section, key),
        format!("`{key}` is a step key, found where a step's name belongs"),
    );
    match above {
        Some(step) => {
            d.step = Some(step.to_string());
            d.help(format!("did you mean to indent it under `{step}`?"))
        }
        None => {
            d.step = None;
            d.help(format!(
                "a step's keys go under its name: `steps: {{train: {{{key}: ...}}}}`"
            ))
        }
    };
}

/// Where a step is written: its name, its key's place, its field path and its section.
#[derive(Clone, Copy)]
struct StepAt<'a> {
    name: &'a str,
    mark: Mark,
    path: &'a str,
    phase: Phase,
}

fn step(
    r: &mut Reader,
    at: StepAt,
    node: &Node,
    pipeline_env: &IndexMap<String, String>,
    defaults: &StepDefaults,
) -> ParsedStep {
    let StepAt {
        name,
        mark,
        path,
        phase,
    } = at;
    let mut parsed = ParsedStep {
        name: name.to_string(),
        mark,
        depends: Vec::new(),
        depends_marks: Vec::new(),
        when: None,
        when_mark: None,
        step: None,
        phase,
        has_matrix: false,
    };
    let Some(fields) = r.mapping(node, path, &format!("step `{name}`"), STEP_KEYS) else {
        return parsed;
    };
    let mut ok = true;
    let mut get = |key: &str| fields.get(key).map(|(_, v)| *v);

    let action = action(r, name, mark, path, &mut get);
    let description = get("description").and_then(|n| r.text(n, &join(path, "description")));
    let (depends, depends_marks): (Vec<String>, Vec<Mark>) = match get("depends") {
        Some(n) => match r.text_list(n, &join(path, "depends")) {
            Some(list) => list.into_iter().unzip(),
            None => {
                ok = false;
                (Vec::new(), Vec::new())
            }
        },
        None => (Vec::new(), Vec::new()),
    };
    let (when, when_mark) = match get("when") {
        Some(n) => {
            let field = join(path, "when");
            let parsed = r.text(n, &field).and_then(|text| {
                // A template would only add a parse error about its braces.
                if !templates::check(r, &text, n.mark, &field, Place::When) {
                    return None;
                }
                Condition::parse(&text)
                    .map_err(|m| r.error(n.mark, &field, m))
                    .ok()
            });
            ok &= parsed.is_some();
            (parsed, Some(n.mark))
        }
        None => (None, None),
    };
    // Built-in steps run in the scheduler or in the worker itself (a deploy's command as a
    // local process): an image would be silently ignored, so one written on the step is an
    // error, and `defaults.image` is for the other steps.
    let builtin = get("uses").is_some();
    let image = match get("image") {
        Some(n) if builtin => {
            r.error(
                n.mark,
                &join(path, "image"),
                format!("step `{name}` is a built-in (`uses:`), which does not run in an image; a deploy's `run:` can start containers itself (`docker run ...`)"),
            );
            None
        }
        Some(n) => r.string(n, &join(path, "image")).map(Some),
        None if builtin => Some(None),
        None => Some(defaults.image.clone()),
    };
    let mut env = pipeline_env.clone();
    if let Some(n) = get("env") {
        match r.env(n, &join(path, "env")) {
            Some(own) => env.extend(own),
            None => ok = false,
        }
    }
    let secrets = match get("secrets") {
        Some(n) => secrets(r, n, &join(path, "secrets")),
        None => Some(Vec::new()),
    };
    let has_image = !builtin && (get("image").is_some() || defaults.image.is_some());
    let workdir = match get("workdir") {
        Some(n) => r.string(n, &join(path, "workdir")).map(Some),
        // A relative default is a folder of the repository: it means nothing inside an image.
        None if has_image => Some(defaults.workdir.clone().filter(|w| w.starts_with('/'))),
        None => Some(defaults.workdir.clone()),
    };
    let retry = match get("retry") {
        Some(n) => retry(r, n, &join(path, "retry")),
        None => Some(defaults.retry.clone().unwrap_or_default()),
    };
    let timeout = match get("timeout") {
        Some(n) => r.positive_duration(n, &join(path, "timeout")).map(Some),
        None => Some(defaults.timeout),
    };
    let resources = match get("resources") {
        Some(n) => resources(r, n, &join(path, "resources")),
        None => Some(defaults.resources.clone().unwrap_or_default()),
    };
    let queue = match get("queue") {
        Some(n) => queue_name(r, n, &join(path, "queue")),
        None => Some(defaults.queue.clone().unwrap_or_else(|| {
            let wants_gpu = resources.as_ref().is_some_and(|res| res.gpu.is_some());
            if wants_gpu { "gpu" } else { "default" }.to_string()
        })),
    };
    let outputs = match get("outputs") {
        Some(n) => outputs(r, n, &join(path, "outputs")),
        None => Some(Vec::new()),
    };
    let pull = match get("pull") {
        Some(n) => pull_policy(r, n, &join(path, "pull")),
        None => Some(defaults.pull.unwrap_or_default()),
    };
    let user = match get("user") {
        Some(n) => r.text(n, &join(path, "user")).map(Some),
        None if has_image => Some(defaults.user.clone()),
        None => Some(None),
    };
    let cache = match get("cache") {
        Some(n) => cache(r, n, &join(path, "cache")),
        None => Some(defaults.cache.clone().unwrap_or_default()),
    };
    let models = match get("models") {
        Some(n) => builtins::model_inputs(r, n, &join(path, "models")),
        None => Some(IndexMap::new()),
    };
    let matrix = match get("matrix") {
        Some(n) if builtin => {
            r.error(
                n.mark,
                &join(path, "matrix"),
                format!("step `{name}` is a built-in (`uses:`), which cannot have a `matrix`"),
            );
            None
        }
        Some(n) => super::matrix::read(r, n, &join(path, "matrix")).map(|a| Some(Matrix::Axes(a))),
        None => Some(None),
    };
    parsed.has_matrix = get("matrix").is_some();
    let is_image_step = matches!(image, Some(Some(_)));
    ok &= container_only(r, path, name, is_image_step, &get, &workdir);
    parsed.depends = depends.clone();
    parsed.depends_marks = depends_marks;
    parsed.when = when.clone();
    parsed.when_mark = when_mark;
    if !ok {
        return parsed;
    }
    let action = action.map(|mut action| {
        if let Action::Uses { builtin, .. } = &mut action {
            if let builtins::Builtin::Drift(args) = builtin.as_mut() {
                args.resolve_steps(&depends);
            }
        }
        action
    });
    parsed.step = (|| {
        Some(Step {
            name: name.to_string(),
            mark,
            description,
            depends,
            when,
            action: action?,
            image: image?,
            env,
            secrets: secrets?,
            workdir: workdir?,
            retry: retry?,
            timeout: timeout?,
            resources: resources?,
            queue: queue?,
            outputs: outputs?,
            pull: pull?,
            user: user?,
            cache: cache?,
            models: models?,
            phase,
            matrix: matrix?,
        })
    })();
    parsed
}

/// Settings that only a container can honour are refused on a local step instead of being
/// dropped, and an image step's workdir must be a path inside its image.
fn container_only<'n>(
    r: &mut Reader,
    path: &str,
    name: &str,
    is_image_step: bool,
    get: &impl Fn(&str) -> Option<&'n Node>,
    workdir: &Option<Option<String>>,
) -> bool {
    let mut ok = true;
    if is_image_step {
        if let (Some(Some(dir)), Some(at)) = (workdir, get("workdir").map(|n| n.mark)) {
            if !dir.starts_with('/') {
                r.error(
                    at,
                    &join(path, "workdir"),
                    format!("step `{name}` runs in an image, so its workdir `{dir}` must be an absolute path inside the image"),
                );
                ok = false;
            }
        }
        return ok;
    }
    // A step's own container setting on a local step is a mistake; defaults only apply where
    // they can.
    for key in ["pull", "user"] {
        if let Some(at) = get(key).map(|n| n.mark) {
            r.error(
                at,
                &join(path, key),
                format!("`{key}` applies to steps with an `image`; step `{name}` runs as a local process"),
            );
            ok = false;
        }
    }
    ok
}

/// `cache: true | false | {inputs: [globs]}`.
fn cache(r: &mut Reader, node: &Node, path: &str) -> Option<Option<CachePolicy>> {
    if let Value::Map(_) = &node.value {
        let fields = r.mapping(node, path, "`cache`", CACHE_KEYS)?;
        let inputs = match fields.get("inputs") {
            Some((_, list)) => {
                let field = join(path, "inputs");
                let mut globs = Vec::new();
                for (glob, mark) in r.text_list(list, &field)? {
                    if let Err(err) = glob::Pattern::new(&glob) {
                        r.error(mark, &field, format!("`{glob}` is not a glob: {err}"));
                        return None;
                    }
                    if glob.starts_with('/') || glob.split('/').any(|part| part == "..") {
                        r.error(
                            mark,
                            &field,
                            format!("`{glob}` must stay inside the pipeline's folder"),
                        );
                        return None;
                    }
                    globs.push(glob);
                }
                globs
            }
            None => Vec::new(),
        };
        return Some(Some(CachePolicy { inputs }));
    }
    let on = r.boolean(node, path)?;
    Some(on.then(CachePolicy::default))
}

fn pull_policy(r: &mut Reader, node: &Node, path: &str) -> Option<PullPolicy> {
    r.choice(
        node,
        path,
        &[
            ("if_not_present", PullPolicy::IfNotPresent),
            ("always", PullPolicy::Always),
            ("never", PullPolicy::Never),
        ],
    )
}

fn action<'n>(
    r: &mut Reader,
    name: &str,
    mark: Mark,
    path: &str,
    get: &mut impl FnMut(&str) -> Option<&'n Node>,
) -> Option<Action> {
    let run = get("run");
    let command = get("command");
    let uses = get("uses");
    let with = get("with");
    if let (Some(with), None) = (with, uses) {
        r.error(
            with.mark,
            &join(path, "with"),
            format!("step `{name}` has `with` but no `uses`"),
        );
    }
    match (run, command, uses) {
        (Some(run), None, None) => {
            let field = join(path, "run");
            let script = r.string(run, &field)?;
            templates::check(r, &script, run.mark, &field, Place::Run);
            Some(Action::Shell(script))
        }
        (None, Some(command), None) => {
            let field = join(path, "command");
            let argv = r.text_list(command, &field)?;
            for (i, (arg, mark)) in argv.iter().enumerate() {
                templates::check(r, arg, *mark, &format!("{field}[{i}]"), Place::Command);
            }
            if argv.is_empty() {
                r.error(
                    command.mark,
                    &join(path, "command"),
                    "`command` needs at least the program to run",
                );
                return None;
            }
            Some(Action::Exec(argv.into_iter().map(|(arg, _)| arg).collect()))
        }
        (None, None, Some(uses)) => {
            let kind = r.string(uses, &join(path, "uses"))?;
            if !BUILTIN_KINDS.contains(&kind.as_str()) {
                r.diags
                    .error(
                        uses.mark,
                        &join(path, "uses"),
                        format!("unknown step kind `{kind}`"),
                    )
                    .help(format!(
                        "built-in kinds: {}; or use `run` or `command`",
                        BUILTIN_KINDS.join(", ")
                    ));
                return None;
            }
            let builtin = builtins::read(r, &kind, with, path, uses.mark)?;
            Some(Action::Uses {
                kind,
                builtin: Box::new(builtin),
            })
        }
        (None, None, None) => {
            r.diags
                .error(
                    mark,
                    path,
                    format!("step `{name}` has neither `run` nor `command`"),
                )
                .help("add `run: <shell command>` or `command: [program, arg, ...]`");
            None
        }
        (run, command, uses) => {
            let second = [run, command, uses]
                .into_iter()
                .flatten()
                .nth(1)
                .map_or(mark, |n| n.mark);
            r.error(
                second,
                path,
                format!("step `{name}` must have only one of `run`, `command` and `uses`"),
            );
            None
        }
    }
}

fn secrets(r: &mut Reader, node: &Node, path: &str) -> Option<Vec<String>> {
    let list = r.text_list(node, path)?;
    let mut out = Vec::with_capacity(list.len());
    for (name, mark) in list {
        values::variable_name(&name)
            .map_err(|m| r.error(mark, path, m))
            .ok()?;
        if name.starts_with("SLUICE_") {
            // `SLUICE_SECRET_KEY` would hand the step the key that opens every stored secret.
            r.error(
                mark,
                path,
                format!(
                    "`{name}` cannot be a step's secret: `SLUICE_*` variables are Sluice's own"
                ),
            );
            return None;
        }
        out.push(name);
    }
    Some(out)
}

fn outputs(r: &mut Reader, node: &Node, path: &str) -> Option<Vec<String>> {
    let list = r.text_list(node, path)?;
    let mut out = Vec::with_capacity(list.len());
    for (output, mark) in list {
        values::output_path(&output)
            .map_err(|m| r.error(mark, path, m))
            .ok()?;
        out.push(output);
    }
    Some(out)
}

/// Checks a cron expression with the same parser the scheduler fires it with.
pub fn cron_expression(expr: &str) -> Result<(), String> {
    croner::Cron::from_str(expr)
        .map(|_| ())
        .map_err(|e| format!("`{expr}` is not a valid cron expression: {e}"))
}
