//! The `with:` arguments of built-in step kinds (`uses:`), read and checked like every other
//! field: unknown keys with a did-you-mean, wrong types and bad values with file and line.
//!
//! `noop` takes none. `register` and `gate` run in the scheduler (they read and write the model
//! registry); `drift` and `deploy` run on a worker, with what they need resolved into the task.

use std::time::Duration;

use indexmap::IndexMap;
use sluice_worker::drift::{DataFormat, DriftMethod};

use super::reader::{join, Reader};
use super::yaml::{Mark, Node, Value};
use crate::models::gate::{GateSpec, Threshold};
use crate::models::{check_name, ModelRef};

/// Step kinds built into Sluice (`uses:`).
pub const BUILTIN_KINDS: &[&str] = &["noop", "register", "gate", "drift", "deploy"];

/// A built-in step kind with its arguments.
#[derive(Debug, Clone, PartialEq)]
pub enum Builtin {
    /// Succeeds at once without a process.
    Noop,
    /// Registers an upstream step's output as a new version of a model.
    Register(RegisterArgs),
    /// Judges upstream metrics against thresholds and a registered version.
    Gate(GateSpec),
    /// Per-column drift of a batch against a reference.
    Drift(DriftArgs),
    /// Runs a deploy command for a model version, checks its health, moves an alias.
    Deploy(DeployArgs),
}

impl Builtin {
    /// The kind's name.
    pub fn kind(&self) -> &'static str {
        match self {
            Builtin::Noop => "noop",
            Builtin::Register(_) => "register",
            Builtin::Gate(_) => "gate",
            Builtin::Drift(_) => "drift",
            Builtin::Deploy(_) => "deploy",
        }
    }

    /// Whether the scheduler runs it itself (it needs the registry) instead of a worker.
    pub fn runs_in_scheduler(&self) -> bool {
        matches!(self, Builtin::Register(_) | Builtin::Gate(_))
    }

    /// Whether the scheduler prepares its task (`engine::builtins`): all but `noop` read the
    /// registry or the run's records.
    pub fn needs_preparing(&self) -> bool {
        !matches!(self, Builtin::Noop)
    }

    /// Steps the arguments name, which must be among the step's `depends`.
    pub fn named_steps(&self) -> Vec<&str> {
        match self {
            Builtin::Noop => Vec::new(),
            Builtin::Register(args) => vec![args.from.step.as_str()],
            Builtin::Gate(spec) => spec.metrics_from.iter().map(String::as_str).collect(),
            Builtin::Drift(args) => [&args.reference, &args.current]
                .into_iter()
                .filter_map(|d| match d {
                    DataRef::Output(o) => Some(o.step.as_str()),
                    _ => None,
                })
                .collect(),
            Builtin::Deploy(args) => match &args.version {
                VersionFrom::Step(step) => vec![step.as_str()],
                VersionFrom::Number(_) => Vec::new(),
            },
        }
    }
}

/// `STEP/PATH`: a declared output of an upstream step, or a file inside a folder output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputRef {
    /// The step.
    pub step: String,
    /// The path under its `out/` (`model/`, `model.json`, `model/weights.bin`).
    pub path: String,
}

impl OutputRef {
    fn parse(text: &str) -> Result<OutputRef, String> {
        let (step, path) = text.split_once('/').ok_or_else(|| {
            format!("`{text}` must be STEP/PATH: a step and one of its declared outputs")
        })?;
        let path = path.trim_end_matches('/');
        let clean = !step.is_empty()
            && !path.is_empty()
            && path
                .split('/')
                .all(|part| !part.is_empty() && part != "." && part != "..");
        if !clean {
            return Err(format!(
                "`{text}` must be STEP/PATH, with a path inside the step's outputs"
            ));
        }
        Ok(OutputRef {
            step: step.to_string(),
            path: path.to_string(),
        })
    }
}

/// `register`'s arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisterArgs {
    /// The model.
    pub model: String,
    /// The output registered.
    pub from: OutputRef,
    /// An alias pointed at the new version.
    pub alias: Option<String>,
}

/// Where `drift` reads a batch from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataRef {
    /// An upstream step's output.
    Output(OutputRef),
    /// The data a registered version was trained on (`churn@production:training-data`), or one
    /// file of it (`...:training-data/reference.csv`).
    TrainingData {
        /// The version.
        model: ModelRef,
        /// The file, when the version's training data has several.
        file: Option<String>,
    },
    /// A file on the worker: absolute, or relative to the pipeline's folder.
    Path(String),
}

/// `drift`'s arguments.
#[derive(Debug, Clone, PartialEq)]
pub struct DriftArgs {
    /// The reference batch.
    pub reference: DataRef,
    /// The current batch.
    pub current: DataRef,
    /// How both are written.
    pub format: DataFormat,
    /// Columns compared; empty compares all.
    pub columns: Vec<String>,
    /// Columns compared as categories.
    pub categorical: Vec<String>,
    /// The statistic.
    pub method: DriftMethod,
    /// Overrides the method's threshold.
    pub threshold: Option<f64>,
    /// Dataset drift when at least this share of the columns drift.
    pub drift_share: f64,
}

/// Which version a `deploy` step deploys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VersionFrom {
    /// The one an upstream `register` step registered.
    Step(String),
    /// A version number.
    Number(u64),
}

/// The health check of a `deploy` step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    /// Polled with GET until it answers `expect_status`.
    pub url: String,
    /// The status that means healthy.
    pub expect_status: u16,
    /// Longest to wait for it.
    pub timeout: Duration,
    /// Between polls.
    pub interval: Duration,
}

/// `deploy`'s arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeployArgs {
    /// The model.
    pub model: String,
    /// The version to deploy.
    pub version: VersionFrom,
    /// The alias moved once the deployment is healthy.
    pub alias: String,
    /// The deploy command (`sh -c`), run with the model under `$SLUICE_IN/models/model/`.
    pub run: String,
    /// How to tell that it is healthy.
    pub health: HealthCheck,
}

const REGISTER_KEYS: &[&str] = &["model", "from", "alias"];
const GATE_KEYS: &[&str] = &["metrics_from", "require", "compare_to", "max_regression"];
const DRIFT_KEYS: &[&str] = &[
    "reference",
    "current",
    "format",
    "columns",
    "categorical",
    "method",
    "threshold",
    "drift_share",
];
const DEPLOY_KEYS: &[&str] = &["model", "version", "alias", "run", "health"];
const HEALTH_KEYS: &[&str] = &["url", "expect_status", "timeout", "interval"];

/// Reads a step's `models:`: input name to model reference (`current: churn@production`). The
/// name becomes a folder under `$SLUICE_IN/models/` and part of an environment variable, so it
/// follows the rules of model names.
pub fn model_inputs(r: &mut Reader, node: &Node, path: &str) -> Option<IndexMap<String, ModelRef>> {
    let Value::Map(entries) = &node.value else {
        r.error(
            node.mark,
            path,
            format!(
                "`{path}` must be a mapping of NAME: MODEL[@ALIAS|:VERSION], found {}",
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
        if let Err(message) = check_name("model input name", &name) {
            r.error(key.mark, &field, message);
            ok = false;
            continue;
        }
        let Some(text) = r.text(value, &field) else {
            ok = false;
            continue;
        };
        match ModelRef::parse(&text) {
            Ok(reference) => {
                out.insert(name, reference);
            }
            Err(message) => {
                r.error(value.mark, &field, message);
                ok = false;
            }
        }
    }
    ok.then_some(out)
}

/// Reads `with` (the node of `with:`, if present) for `kind`; `uses` is where `uses:` is, for
/// a `with:` that is missing.
pub fn read(
    r: &mut Reader,
    kind: &str,
    with: Option<&Node>,
    path: &str,
    uses: Mark,
) -> Option<Builtin> {
    let field = join(path, "with");
    if kind == "noop" {
        if let Some(with) = with {
            r.error(
                with.mark,
                &field,
                "step kind `noop` takes no `with` arguments",
            );
            return None;
        }
        return Some(Builtin::Noop);
    }
    let Some(with) = with else {
        let step = path.rsplit('.').next().unwrap_or(path);
        let keys = match kind {
            "register" => "model, from",
            "gate" => "metrics_from, require",
            "drift" => "reference, current",
            _ => "model, version, alias, run, health",
        };
        r.diags
            .error(
                uses,
                &field,
                format!("step `{step}` uses `{kind}`, which needs `with:` arguments"),
            )
            .help(format!("give at least: {keys}"));
        return None;
    };
    match kind {
        "register" => register(r, with, &field).map(Builtin::Register),
        "gate" => gate(r, with, &field).map(Builtin::Gate),
        "drift" => drift(r, with, &field).map(Builtin::Drift),
        _ => deploy(r, with, &field).map(Builtin::Deploy),
    }
}

fn required<'n>(
    r: &mut Reader,
    fields: &super::reader::Fields<'n>,
    with: &Node,
    path: &str,
    key: &str,
) -> Option<&'n Node> {
    match fields.get(key) {
        Some((_, value)) => Some(*value),
        None => {
            r.error(with.mark, path, format!("`{path}` needs `{key}`"));
            None
        }
    }
}

fn name(r: &mut Reader, node: &Node, path: &str, what: &str) -> Option<String> {
    let text = r.string(node, path)?;
    check_name(what, &text)
        .map_err(|m| r.error(node.mark, path, m))
        .ok()?;
    Some(text)
}

fn number(r: &mut Reader, node: &Node, path: &str) -> Option<f64> {
    match node.value {
        Value::Int(i) => Some(i as f64),
        Value::Float(f) if f.is_finite() => Some(f),
        ref other => {
            r.error(
                node.mark,
                path,
                format!("`{path}` must be a number, found {}", other.kind()),
            );
            None
        }
    }
}

fn register(r: &mut Reader, with: &Node, path: &str) -> Option<RegisterArgs> {
    let fields = r.mapping(with, path, "`register` arguments", REGISTER_KEYS)?;
    let model = required(r, &fields, with, path, "model")
        .and_then(|n| name(r, n, &join(path, "model"), "model name"));
    let from = required(r, &fields, with, path, "from").and_then(|n| {
        let field = join(path, "from");
        let text = r.string(n, &field)?;
        OutputRef::parse(&text)
            .map_err(|m| r.error(n.mark, &field, m))
            .ok()
    });
    let alias = match fields.get("alias") {
        Some((_, n)) => name(r, n, &join(path, "alias"), "alias").map(Some),
        None => Some(None),
    };
    Some(RegisterArgs {
        model: model?,
        from: from?,
        alias: alias?,
    })
}

fn model_ref(r: &mut Reader, node: &Node, path: &str) -> Option<ModelRef> {
    let text = r.string(node, path)?;
    ModelRef::parse(&text)
        .map_err(|m| r.error(node.mark, path, m))
        .ok()
}

fn gate(r: &mut Reader, with: &Node, path: &str) -> Option<GateSpec> {
    let fields = r.mapping(with, path, "`gate` arguments", GATE_KEYS)?;
    let metrics_from = required(r, &fields, with, path, "metrics_from").and_then(|n| {
        let list = r.text_list(n, &join(path, "metrics_from"))?;
        Some(list.into_iter().map(|(s, _)| s).collect::<Vec<_>>())
    });
    let mut ok = true;
    let mut require = IndexMap::new();
    if let Some((_, node)) = fields.get("require") {
        ok &= metric_map(r, node, &join(path, "require"), |r, value, field| {
            let text = r.text(value, field)?;
            Threshold::parse(&text)
                .map_err(|m| r.error(value.mark, field, m))
                .ok()
        })
        .map(|m| require = m)
        .is_some();
    }
    let mut max_regression = IndexMap::new();
    if let Some((_, node)) = fields.get("max_regression") {
        ok &= metric_map(r, node, &join(path, "max_regression"), |r, value, field| {
            let n = number(r, value, field)?;
            if n < 0.0 {
                r.error(value.mark, field, format!("`{field}` must not be negative"));
                return None;
            }
            Some(n)
        })
        .map(|m| max_regression = m)
        .is_some();
    }
    let compare_to = match fields.get("compare_to") {
        Some((_, n)) => model_ref(r, n, &join(path, "compare_to")).map(Some),
        None => Some(None),
    };
    if ok && require.is_empty() && max_regression.is_empty() {
        r.error(
            with.mark,
            path,
            "a gate needs something to judge: `require` thresholds or `max_regression`",
        );
        return None;
    }
    if let (Some((key, _)), Some(None)) = (fields.get("max_regression"), &compare_to) {
        r.error(
            key.mark,
            &join(path, "max_regression"),
            "`max_regression` needs `compare_to`: the version a regression is measured against",
        );
        return None;
    }
    if !ok {
        return None;
    }
    Some(GateSpec {
        metrics_from: metrics_from?,
        require,
        compare_to: compare_to?,
        max_regression,
    })
}

/// A `metric: value` mapping, each value read by `value`.
fn metric_map<T>(
    r: &mut Reader,
    node: &Node,
    path: &str,
    mut value: impl FnMut(&mut Reader, &Node, &str) -> Option<T>,
) -> Option<IndexMap<String, T>> {
    let Value::Map(entries) = &node.value else {
        r.error(
            node.mark,
            path,
            format!(
                "`{path}` must be a mapping of metric: value, found {}",
                node.value.kind()
            ),
        );
        return None;
    };
    let mut out = IndexMap::new();
    let mut ok = true;
    for (key, node) in entries {
        let Some(metric) = key.value.scalar_text().filter(|m| !m.is_empty()) else {
            r.error(
                key.mark,
                path,
                format!("keys of `{path}` must be metric names"),
            );
            ok = false;
            continue;
        };
        match value(r, node, &join(path, &metric)) {
            Some(v) => {
                out.insert(metric, v);
            }
            None => ok = false,
        }
    }
    ok.then_some(out)
}

fn data_ref(r: &mut Reader, node: &Node, path: &str) -> Option<DataRef> {
    let text = r.string(node, path)?;
    if let Some((model, rest)) = text.split_once(":training-data") {
        let reference = ModelRef::parse(model)
            .map_err(|m| r.error(node.mark, path, m))
            .ok()?;
        let file = match rest.strip_prefix('/') {
            Some(file) if !file.is_empty() && !file.split('/').any(|p| p == "..") => {
                Some(file.to_string())
            }
            None if rest.is_empty() => None,
            _ => {
                r.error(
                    node.mark,
                    path,
                    format!("`{text}` must be MODEL@ALIAS:training-data or MODEL@ALIAS:training-data/FILE"),
                );
                return None;
            }
        };
        return Some(DataRef::TrainingData {
            model: reference,
            file,
        });
    }
    if text.starts_with('/') {
        return Some(DataRef::Path(text));
    }
    // STEP/PATH or a path relative to the pipeline's folder: which one is known once the
    // step's `depends` are (see `DriftArgs::resolve_steps`).
    Some(DataRef::Path(text))
}

fn drift(r: &mut Reader, with: &Node, path: &str) -> Option<DriftArgs> {
    let fields = r.mapping(with, path, "`drift` arguments", DRIFT_KEYS)?;
    let reference = required(r, &fields, with, path, "reference")
        .and_then(|n| data_ref(r, n, &join(path, "reference")));
    let current = required(r, &fields, with, path, "current")
        .and_then(|n| data_ref(r, n, &join(path, "current")));
    if let Some(DataRef::TrainingData { .. }) = &current {
        if let Some((_, n)) = fields.get("current") {
            r.error(
                n.mark,
                &join(path, "current"),
                "`current` is the new batch: a step's output or a path, not a model's training data",
            );
        }
        return None;
    }
    let format = match fields.get("format") {
        Some((_, n)) => r.choice(
            n,
            &join(path, "format"),
            &[
                ("csv", DataFormat::Csv),
                ("jsonl", DataFormat::Jsonl),
                ("parquet", DataFormat::Parquet),
            ],
        ),
        None => Some(DataFormat::Csv),
    };
    let list = |r: &mut Reader, key: &str| match fields.get(key) {
        Some((_, n)) => r
            .text_list(n, &join(path, key))
            .map(|l| l.into_iter().map(|(s, _)| s).collect()),
        None => Some(Vec::new()),
    };
    let columns: Option<Vec<String>> = list(r, "columns");
    let categorical: Option<Vec<String>> = list(r, "categorical");
    let method = match fields.get("method") {
        Some((_, n)) => r.choice(
            n,
            &join(path, "method"),
            &[
                ("auto", DriftMethod::Auto),
                ("psi", DriftMethod::Psi),
                ("ks", DriftMethod::Ks),
                ("wasserstein", DriftMethod::Wasserstein),
                ("jensen_shannon", DriftMethod::JensenShannon),
                ("chi_square", DriftMethod::ChiSquare),
            ],
        ),
        None => Some(DriftMethod::Auto),
    };
    let threshold = match fields.get("threshold") {
        Some((_, n)) => {
            let field = join(path, "threshold");
            match number(r, n, &field) {
                Some(t) if t > 0.0 => Some(Some(t)),
                Some(_) => {
                    r.error(n.mark, &field, format!("`{field}` must be more than zero"));
                    None
                }
                None => None,
            }
        }
        None => Some(None),
    };
    let drift_share = match fields.get("drift_share") {
        Some((_, n)) => {
            let field = join(path, "drift_share");
            match number(r, n, &field) {
                Some(s) if s > 0.0 && s <= 1.0 => Some(s),
                Some(_) => {
                    r.error(
                        n.mark,
                        &field,
                        format!("`{field}` must be more than 0 and at most 1"),
                    );
                    None
                }
                None => None,
            }
        }
        None => Some(sluice_worker::drift::default_drift_share()),
    };
    if let (Some(columns), Some(categorical)) = (&columns, &categorical) {
        if !columns.is_empty() {
            if let Some(extra) = categorical.iter().find(|c| !columns.contains(c)) {
                if let Some((_, n)) = fields.get("categorical") {
                    r.error(
                        n.mark,
                        &join(path, "categorical"),
                        format!("categorical column `{extra}` is not among `columns`"),
                    );
                }
                return None;
            }
        }
    }
    Some(DriftArgs {
        reference: reference?,
        current: current?,
        format: format?,
        columns: columns?,
        categorical: categorical?,
        method: method?,
        threshold: threshold?,
        drift_share: drift_share?,
    })
}

impl DriftArgs {
    /// Turns relative paths whose first part is one of `depends` into step outputs.
    pub fn resolve_steps(&mut self, depends: &[String]) {
        for data in [&mut self.reference, &mut self.current] {
            if let DataRef::Path(text) = data {
                if let Some((first, _)) = text.split_once('/') {
                    if depends.iter().any(|d| d == first) {
                        if let Ok(output) = OutputRef::parse(text) {
                            *data = DataRef::Output(output);
                        }
                    }
                }
            }
        }
    }
}

fn deploy(r: &mut Reader, with: &Node, path: &str) -> Option<DeployArgs> {
    let fields = r.mapping(with, path, "`deploy` arguments", DEPLOY_KEYS)?;
    let model = required(r, &fields, with, path, "model")
        .and_then(|n| name(r, n, &join(path, "model"), "model name"));
    let version = required(r, &fields, with, path, "version").and_then(|n| {
        let field = join(path, "version");
        match &n.value {
            Value::Int(v) if *v > 0 => Some(VersionFrom::Number(*v as u64)),
            Value::String(step) if !step.is_empty() => Some(VersionFrom::Step(step.clone())),
            other => {
                r.error(
                    n.mark,
                    &field,
                    format!(
                        "`{field}` must be a version number or the name of the `register` step, found {}",
                        other.kind()
                    ),
                );
                None
            }
        }
    });
    let alias = required(r, &fields, with, path, "alias")
        .and_then(|n| name(r, n, &join(path, "alias"), "alias"));
    let run = required(r, &fields, with, path, "run").and_then(|n| {
        let field = join(path, "run");
        let run = r.string(n, &field)?;
        super::templates::check(r, &run, n.mark, &field, super::templates::Place::Run);
        Some(run)
    });
    let health = required(r, &fields, with, path, "health")
        .and_then(|n| health(r, n, &join(path, "health")));
    Some(DeployArgs {
        model: model?,
        version: version?,
        alias: alias?,
        run: run?,
        health: health?,
    })
}

fn health(r: &mut Reader, node: &Node, path: &str) -> Option<HealthCheck> {
    let fields = r.mapping(node, path, "`health`", HEALTH_KEYS)?;
    let url = required(r, &fields, node, path, "url").and_then(|n| {
        let field = join(path, "url");
        let text = r.string(n, &field)?;
        match reqwest::Url::parse(&text) {
            Ok(url) if matches!(url.scheme(), "http" | "https") => Some(text),
            _ => {
                r.error(n.mark, &field, format!("`{text}` is not an http(s) URL"));
                None
            }
        }
    });
    let expect_status = match fields.get("expect_status") {
        Some((_, n)) => r
            .integer(n, &join(path, "expect_status"), 100, 599)
            .map(|s| s as u16),
        None => Some(200),
    };
    let timeout = match fields.get("timeout") {
        Some((_, n)) => r.positive_duration(n, &join(path, "timeout")),
        None => Some(Duration::from_secs(60)),
    };
    let interval = match fields.get("interval") {
        Some((_, n)) => r.positive_duration(n, &join(path, "interval")),
        None => Some(Duration::from_secs(2)),
    };
    Some(HealthCheck {
        url: url?,
        expect_status: expect_status?,
        timeout: timeout?,
        interval: interval?,
    })
}
