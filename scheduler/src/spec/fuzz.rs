//! Property tests: whatever a pipeline file holds, validation answers with a pipeline or with
//! diagnostics that point into the file; it never panics, hangs or overflows the stack.
//!
//! Inputs come from four sources: arbitrary text, token soup built from YAML's special
//! characters, mutations of real valid pipelines, and pipelines generated from the parser's own
//! key lists (so unknown keys, bad values, missing targets and cycles all occur).

use std::collections::BTreeSet;
use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;

use proptest::prelude::*;
use proptest::sample::Index;

use super::parse::{
    CONCURRENCY_KEYS, DEFAULTS_KEYS, PARAM_KEYS, PIPELINE_KEYS, RESOURCE_KEYS, RETRY_KEYS,
    STEP_KEYS,
};
use super::*;

/// Cases per property: enough to stay fast in debug builds. Set `PROPTEST_CASES` for a longer
/// soak.
const CASES: u32 = 384;

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(CASES);
    ProptestConfig {
        cases,
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------------------------
// The property every input must satisfy
// ---------------------------------------------------------------------------------------------

/// Ok with a sane pipeline, or a non-empty, sorted list of diagnostics that point into the file
/// and can be rendered.
fn check_outcome(text: &str) -> Result<(), TestCaseError> {
    match parse_str("f.yaml", text) {
        Ok(p) => check_valid_pipeline(&p),
        Err(diags) => check_diagnostics(text, &diags),
    }
}

fn check_diagnostics(text: &str, diags: &[Diagnostic]) -> Result<(), TestCaseError> {
    prop_assert!(!diags.is_empty(), "Err without diagnostics");
    // YAML counts a lone `\r` as a line break too, and places errors at the end of input on the
    // line after the last one.
    let breaks =
        text.matches('\n').count() + text.matches('\r').count() - text.matches("\r\n").count();
    let last_line = breaks + 2;
    for d in diags {
        prop_assert!(
            d.line >= 1 && d.column >= 1,
            "position before the file: {d}"
        );
        prop_assert!(d.line <= last_line, "line after the end of the file: {d}");
        prop_assert!(!d.message.is_empty(), "empty message: {d:?}");
        let rendered = d.render(text);
        prop_assert!(rendered.starts_with("error: "), "{rendered}");
    }
    let positions: Vec<(usize, usize)> = diags.iter().map(|d| (d.line, d.column)).collect();
    let mut sorted = positions.clone();
    sorted.sort();
    prop_assert_eq!(positions, sorted, "diagnostics are not sorted by position");
    Ok(())
}

/// What every accepted pipeline guarantees to the engine.
fn check_valid_pipeline(p: &Pipeline) -> Result<(), TestCaseError> {
    prop_assert!(values::pipeline_name(&p.name).is_ok());
    prop_assert!(!p.steps.is_empty());
    for (name, step) in &p.steps {
        prop_assert_eq!(name, &step.name);
        prop_assert!(values::step_name(name).is_ok());
        prop_assert!(!step.queue.is_empty());
        let unique: BTreeSet<&String> = step.depends.iter().collect();
        prop_assert_eq!(
            unique.len(),
            step.depends.len(),
            "duplicate depends in {}",
            name
        );
        for dep in &step.depends {
            prop_assert!(dep != name, "{name} depends on itself");
            prop_assert!(p.steps.contains_key(dep), "{name} depends on missing {dep}");
        }
        if let Some(timeout) = step.timeout {
            prop_assert!(!timeout.is_zero());
        }
        if let Some(when) = &step.when {
            for operand in when.operands() {
                match operand {
                    condition::Operand::StepOutput { step: read, .. } => {
                        prop_assert!(upstream(p, name).contains(read.as_str()))
                    }
                    condition::Operand::Param(param) => {
                        prop_assert!(p.params.contains_key(param))
                    }
                }
            }
            let printed = when.to_string();
            let read_back = condition::Condition::parse(&printed);
            prop_assert_eq!(
                read_back.as_ref(),
                Ok(when),
                "{} does not read back",
                printed
            );
        }
    }
    prop_assert!(
        topological_order_exists(p),
        "an accepted pipeline has a cycle"
    );
    Ok(())
}

fn upstream<'p>(p: &'p Pipeline, step: &str) -> BTreeSet<&'p str> {
    let mut seen = BTreeSet::new();
    let mut stack: Vec<&str> = p.steps[step].depends.iter().map(String::as_str).collect();
    while let Some(s) = stack.pop() {
        if seen.insert(s) {
            stack.extend(p.steps[s].depends.iter().map(String::as_str));
        }
    }
    seen
}

fn topological_order_exists(p: &Pipeline) -> bool {
    let mut done: BTreeSet<&str> = BTreeSet::new();
    while done.len() < p.steps.len() {
        let ready = p.steps.values().find(|s| {
            !done.contains(s.name.as_str()) && s.depends.iter().all(|d| done.contains(d.as_str()))
        });
        match ready {
            Some(s) => done.insert(s.name.as_str()),
            None => return false,
        };
    }
    true
}

// ---------------------------------------------------------------------------------------------
// (a) Arbitrary text
// ---------------------------------------------------------------------------------------------

/// Pieces of YAML syntax; concatenated at random they reach the parser's odd corners (anchors,
/// merge keys, tags, directives, block scalars, flow collections, tabs).
const TOKENS: &[&str] = &[
    "name: p\n",
    "steps:\n",
    "  a:\n",
    "    run: x\n",
    "    depends: [a]\n",
    "params:\n",
    "- ",
    "[",
    "]",
    "{",
    "}",
    ": ",
    ", ",
    ":",
    "&a ",
    "*a",
    "<<: ",
    "<<: *a\n",
    "---\n",
    "...\n",
    "? ",
    "|\n",
    ">-\n",
    "'",
    "\"",
    "# c\n",
    "\t",
    "!!str ",
    "!!map ",
    "!x ",
    "%YAML 1.2\n",
    "%TAG ! tag:x:\n",
    "\n",
    "  ",
    "    ",
    "a",
    "1",
    "-1",
    "0x1F",
    "1e999",
    ".nan",
    "~",
    "null",
    "true",
    "\\",
    "\u{feff}",
    "é",
    "\r\n",
    "@",
    "`",
];

fn token_soup() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(TOKENS), 0..80).prop_map(|t| t.concat())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_strings_never_panic(text in any::<String>()) {
        check_outcome(&text)?;
    }

    #[test]
    fn arbitrary_printable_text_never_panics(text in "[ -~\n\t]{0,300}") {
        check_outcome(&text)?;
    }

    #[test]
    fn yaml_token_soup_never_panics(text in token_soup()) {
        check_outcome(&text)?;
    }
}

// ---------------------------------------------------------------------------------------------
// (b) Mutations of valid pipelines
// ---------------------------------------------------------------------------------------------

const SEEDS: &[&str] = &[
    include_str!("../../../pipelines/mlops.yaml"),
    // Every top-level section, long forms and triggers.
    r#"name: full
description: All sections.
params:
  n: 3
  mode: {type: string, default: fast, description: How.}
  ratio: {type: number}
env: {A: "1", B: two}
defaults:
  timeout: 10m
  retry: {limit: 2, backoff: exponential, delay: 1s, max_delay: 30s, on_exit_codes: [1, 2]}
  workdir: work
  image: python:3.12
  queue: cpu
  resources: {cpu: 500m, memory: 1Gi}
parallelism: 4
concurrency: {limit: 2, overlap: cancel_running}
triggers:
  - cron: "*/5 * * * *"
    timezone: UTC
    catchup: all
  - webhook: hook
    secret_env: SECRET
    params: {mode: body.mode}
  - watch: {path: /in, pattern: "*.csv"}
    param: mode
steps:
  a:
    command: [echo, "1"]
    outputs: [out/, x.txt]
    secrets: [TOKEN]
  b:
    depends: a
    when: steps.a.outputs.ok == "yes"
    run: |
      echo b
      echo more
    resources: {gpu: {ids: ["0", "1"]}}
  c:
    depends: [a, b]
    when: params.n >= 2
    run: echo c
    retry: 0
    timeout: 1h30m
"#,
    // Anchors, aliases and merge keys.
    "name: anchors\nsteps:\n  base: &b\n    run: echo base\n    timeout: 5m\n    env: &e {X: \"1\"}\n  copy:\n    <<: *b\n    env: *e\n    depends: [base]\n  more:\n    <<: [*b]\n    run: echo more\n    depends: [copy, base]\n",
    // Flow style throughout, comments, quoting.
    "# comment\nname: 'flow'   # trailing\nsteps: {x: {run: \"echo 'hi'\"}, y: {command: ['a b', c], depends: x}, 'z': {run: >-\n    folded text, depends: [x, y]}}\n",
];

#[derive(Debug, Clone)]
enum Mutation {
    /// Cut the file at this point.
    Truncate(Index),
    /// Delete this many bytes from this point.
    Delete(Index, usize),
    /// Insert bytes (YAML-significant ones, or any byte) at this point.
    Insert(Index, Vec<u8>),
    /// Replace one byte.
    Replace(Index, u8),
    /// Repeat a line.
    DuplicateLine(Index),
    /// Remove a line.
    DeleteLine(Index),
    /// Change a line's indentation.
    Indent(Index, i8),
    /// Swap two lines.
    SwapLines(Index, Index),
}

const SIGNIFICANT: &[u8] = b" \n\t:-[]{},&*!|>'\"%@`#?<=.0123456789abcxyz\\\r";

fn significant_byte() -> impl Strategy<Value = u8> {
    prop_oneof![
        3 => prop::sample::select(SIGNIFICANT),
        1 => any::<u8>(),
    ]
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        any::<Index>().prop_map(Mutation::Truncate),
        (any::<Index>(), 1usize..40).prop_map(|(i, n)| Mutation::Delete(i, n)),
        (
            any::<Index>(),
            prop::collection::vec(significant_byte(), 1..6)
        )
            .prop_map(|(i, b)| Mutation::Insert(i, b)),
        (any::<Index>(), significant_byte()).prop_map(|(i, b)| Mutation::Replace(i, b)),
        any::<Index>().prop_map(Mutation::DuplicateLine),
        any::<Index>().prop_map(Mutation::DeleteLine),
        (any::<Index>(), -4i8..=4).prop_map(|(i, d)| Mutation::Indent(i, d)),
        (any::<Index>(), any::<Index>()).prop_map(|(i, j)| Mutation::SwapLines(i, j)),
    ]
}

fn apply(text: &[u8], mutation: &Mutation) -> Vec<u8> {
    let mut bytes = text.to_vec();
    let at = |i: &Index, len: usize| i.index(len + 1);
    let mut lines: Vec<Vec<u8>> = bytes.split(|b| *b == b'\n').map(<[u8]>::to_vec).collect();
    let join = |lines: Vec<Vec<u8>>| lines.join(&b'\n');
    match mutation {
        Mutation::Truncate(i) => bytes.truncate(at(i, bytes.len())),
        Mutation::Delete(i, n) => {
            let start = at(i, bytes.len());
            let end = (start + n).min(bytes.len());
            bytes.drain(start..end);
        }
        Mutation::Insert(i, new) => {
            let start = at(i, bytes.len());
            bytes.splice(start..start, new.iter().copied());
        }
        Mutation::Replace(i, b) => {
            if !bytes.is_empty() {
                let k = i.index(bytes.len());
                bytes[k] = *b;
            }
        }
        Mutation::DuplicateLine(i) => {
            let k = i.index(lines.len());
            let line = lines[k].clone();
            lines.insert(k, line);
            bytes = join(lines);
        }
        Mutation::DeleteLine(i) => {
            lines.remove(i.index(lines.len()));
            bytes = join(lines);
        }
        Mutation::Indent(i, delta) => {
            let k = i.index(lines.len());
            let line = &mut lines[k];
            if *delta >= 0 {
                line.splice(0..0, std::iter::repeat_n(b' ', *delta as usize));
            } else {
                let strip = line
                    .iter()
                    .take(delta.unsigned_abs() as usize)
                    .take_while(|b| **b == b' ')
                    .count();
                line.drain(..strip);
            }
            bytes = join(lines);
        }
        Mutation::SwapLines(i, j) => {
            let (a, b) = (i.index(lines.len()), j.index(lines.len()));
            lines.swap(a, b);
            bytes = join(lines);
        }
    }
    bytes
}

#[test]
fn the_seeds_are_valid() {
    for seed in SEEDS {
        if let Err(diags) = parse_str("seed.yaml", seed) {
            let rendered: String = diags.iter().map(|d| d.render(seed)).collect();
            panic!("a seed is invalid:\n{rendered}\n{seed}");
        }
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn mutated_valid_pipelines_never_panic(
        seed in prop::sample::select(SEEDS),
        mutations in prop::collection::vec(mutation(), 1..6),
    ) {
        let mut bytes = seed.as_bytes().to_vec();
        for m in &mutations {
            bytes = apply(&bytes, m);
        }
        check_outcome(&String::from_utf8_lossy(&bytes))?;
    }

    #[test]
    fn every_prefix_of_a_valid_pipeline_is_handled(
        seed in prop::sample::select(SEEDS),
        cut in any::<Index>(),
    ) {
        let end = cut.index(seed.len() + 1);
        let end = (0..=end).rev().find(|e| seed.is_char_boundary(*e)).unwrap_or(0);
        check_outcome(&seed[..end])?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..config() })]

    /// Through `load_file` too, where bytes that are not UTF-8 get their own diagnostic.
    #[test]
    fn mutated_files_load_without_panicking(
        seed in prop::sample::select(SEEDS),
        mutations in prop::collection::vec(mutation(), 1..4),
    ) {
        let mut bytes = seed.as_bytes().to_vec();
        for m in &mutations {
            bytes = apply(&bytes, m);
        }
        let mut file = tempfile::NamedTempFile::new().expect("temp file");
        std::io::Write::write_all(&mut file, &bytes).expect("write");
        match load_file(file.path(), DEFAULT_MAX_FILE_BYTES) {
            Ok(loaded) => {
                prop_assert_eq!(loaded.text.as_bytes(), &bytes[..]);
                check_valid_pipeline(&loaded.pipeline)?;
            }
            Err(diags) => {
                let text = String::from_utf8_lossy(&bytes);
                check_diagnostics(&text, &diags)?;
                if std::str::from_utf8(&bytes).is_err() {
                    prop_assert_eq!(diags.len(), 1);
                    prop_assert_eq!(&diags[0].message, "the file is not valid UTF-8");
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// (c) Generated pipelines
// ---------------------------------------------------------------------------------------------

/// Draws choices from a byte string; when the bytes run out every choice is 0, the simplest, so
/// proptest shrinks a failing case towards a short, valid document.
struct Gen<'a> {
    bytes: &'a [u8],
    at: usize,
    /// Percent of values drawn from the invalid half of a pool.
    error_rate: usize,
}

/// Values for one kind of field: ones the parser must accept, and ones it must refuse (or that
/// are refused in some places, such as a list where a string belongs).
struct Pool {
    good: &'static [&'static str],
    bad: &'static [&'static str],
}

impl<'a> Gen<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        let mut g = Gen {
            bytes,
            at: 0,
            error_rate: 0,
        };
        g.error_rate = [0, 0, 3, 10, 30, 100][g.below(6)];
        g
    }

    fn below(&mut self, n: usize) -> usize {
        let b = self.bytes.get(self.at).copied().unwrap_or(0);
        self.at += 1;
        b as usize % n.max(1)
    }

    /// True `percent` times in a hundred (never once the bytes run out).
    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) >= 100 - percent
    }

    fn pick<'s>(&mut self, items: &[&'s str]) -> &'s str {
        items[self.below(items.len())]
    }

    /// Whether this draw should be a mistake.
    fn wrong(&mut self) -> bool {
        self.chance(self.error_rate)
    }

    fn draw(&mut self, pool: &Pool) -> String {
        let items = if self.wrong() { pool.bad } else { pool.good };
        self.pick(items).to_string()
    }

    /// A flow list of up to `max` draws.
    fn list(&mut self, pool: &Pool, max: usize) -> String {
        let items: Vec<String> = (0..self.below(max + 1)).map(|_| self.draw(pool)).collect();
        format!("[{}]", items.join(", "))
    }

    /// A flow mapping of the optional `keys`, each present half the time, plus sometimes a key
    /// that does not belong.
    fn map(&mut self, keys: &[&str], mut value: impl FnMut(&mut Self, &str) -> String) -> String {
        let mut parts = Vec::new();
        for key in keys {
            if self.chance(50) {
                let v = value(self, key);
                parts.push(format!("{key}: {v}"));
            }
        }
        if self.wrong() {
            let key = self.pick(EXTRA_KEYS);
            parts.push(format!("{key}: 1"));
        }
        format!("{{{}}}", parts.join(", "))
    }
}

const TEXT: Pool = Pool {
    good: &[
        "x",
        "echo hi",
        "'quoted: yes'",
        "\"\\u00e9\\t\"",
        "1",
        "true",
        "1.5",
        "0x10",
    ],
    bad: &["[]", "{}", "~", "''", "[a, b]", "{k: v}", "1e999", ".inf"],
};
const NAMES: Pool = Pool {
    good: &["p", "churn-v2", "x_1", "'0'"],
    bad: &[
        "Bad Name",
        "''",
        "ÄÖ",
        "[p]",
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    ],
};
/// Step names; the bad ones are invalid, the generator also reuses good ones for duplicates.
const STEP_NAMES: Pool = Pool {
    good: &["a", "b", "c", "d", "train", "ingest", "E-1", "f_2"],
    bad: &["bad/name", "-x", "''", "[k]", "~"],
};
const DURATIONS: Pool = Pool {
    good: &["30s", "1h30m", "500ms", "1d", "'2m'"],
    bad: &[
        "0s",
        "30",
        "5x",
        "-1s",
        "''",
        "99999999999999999999d",
        "[1s]",
    ],
};
const CPUS: Pool = Pool {
    good: &["500m", "2", "0.5", "'1'"],
    bad: &[
        "lots", "0", "-1", "1e400", "0m", ".nan", "''", "[1]", "16Gi",
    ],
};
const MEMORY: Pool = Pool {
    good: &["16Gi", "512Mi", "1G", "1024", "'2k'"],
    bad: &[
        "16GB", "lots", "0", "-1Gi", "1e400", ".nan", "''", "[1]", "0.5",
    ],
};
const GPUS: Pool = Pool {
    good: &["1", "all", "{ids: ['0', 1]}", "8"],
    bad: &[
        "0",
        "1025",
        "{ids: []}",
        "{}",
        "some",
        "[1]",
        "{ids: 0}",
        "-1",
    ],
};
const CRONS: Pool = Pool {
    good: &[
        "'0 3 * * *'",
        "'*/5 * * * *'",
        "'0 0 * * 1-5'",
        "'0 0 1 1 *'",
    ],
    bad: &[
        "'61 * * * *'",
        "'* * *'",
        "'*/0 * * * *'",
        "'0 0 31 2 *'",
        "'@daily'",
        "'L W # ?'",
        "'59-0 * * * *'",
        "'0 0 L * *'",
        "'0 0 * * 5#3'",
        "''",
        "5",
        "'0 0 0 * * * *'",
        "'0 0 ? * MON'",
        "'0 0 29 2 *'",
        "'0 0 * * 7'",
        "'1-60/0 * * * *'",
    ],
};
const ZONES: Pool = Pool {
    good: &["UTC", "Europe/Belgrade", "America/New_York"],
    bad: &["Mars/Olympus", "''", "utc", "1", "+01:00"],
};
/// Declared params; conditions and triggers may also name ones that are not.
const PARAMS: Pool = Pool {
    good: &["mode", "n", "dataset", "path"],
    bad: &["MODE", "1x", "undeclared", "''"],
};
const VARIABLES: Pool = Pool {
    good: &["A", "PATH_X", "_ok", "TOKEN"],
    bad: &["1BAD", "a-b", "''", "[X]"],
};
const OUTPUTS: Pool = Pool {
    good: &["model/", "x.txt", "a/b.json"],
    bad: &["../up", "/abs", "''", "a/../b", "[x]"],
};
const COMMAND: Pool = Pool {
    good: &["echo", "'a b'", "1", "true", "--flag"],
    bad: &["[x]", "{k: v}", "~"],
};
const EXTRA_KEYS: &[&str] = &["dependz", "needs", "script", "zzz", "1", "''", "<<", "[k]"];

fn condition(g: &mut Gen, upstream: &[String]) -> String {
    let text = compound(g, upstream, 3);
    serde_json::to_string(&text).expect("a JSON string is YAML")
}

/// A comparison, or up to `depth` levels of `and`, `or`, `not` and parentheses around some.
fn compound(g: &mut Gen, upstream: &[String], depth: usize) -> String {
    if depth == 0 || !g.chance(30) {
        return comparison(g, upstream);
    }
    let first = compound(g, upstream, depth - 1);
    match g.below(6) {
        0 => format!("{first} and {}", compound(g, upstream, depth - 1)),
        1 => format!("{first} || {}", compound(g, upstream, depth - 1)),
        2 => format!("not {first}"),
        3 => format!("({first}) or {}", compound(g, upstream, depth - 1)),
        4 => format!("!({first}) && {}", compound(g, upstream, depth - 1)),
        _ if g.wrong() => {
            let broken = [
                format!("({first}"),
                format!("{first} and"),
                format!("{first} & x"),
            ];
            broken[g.below(broken.len())].clone()
        }
        _ => format!("({first})"),
    }
}

/// A value a comparison reads: an upstream step's output or a declared param.
fn reference(g: &mut Gen, upstream: &[String]) -> String {
    if g.wrong() {
        g.pick(&[
            "drift",
            "steps..outputs.",
            "params.",
            "x.y",
            "steps.ghost.outputs.k",
            "params.undeclared",
        ])
        .to_string()
    } else if !upstream.is_empty() && g.chance(50) {
        format!("steps.{}.outputs.k", upstream[g.below(upstream.len())])
    } else {
        format!("params.{}", g.draw(&PARAMS))
    }
}

fn comparison(g: &mut Gen, upstream: &[String]) -> String {
    let left = reference(g, upstream);
    let op = g.pick(&["==", "!=", "<", "<=", ">", ">="]);
    let right = if g.wrong() {
        g.pick(&["'open", "a b", "", "\"x", "= 1", ")"]).to_string()
    } else if g.chance(20) {
        reference(g, upstream)
    } else {
        g.pick(&["1", "yes", "'a b'", "\"q\"", "0.5", "'params.mode'"])
            .to_string()
    };
    format!("{left} {op} {right}")
}

fn retry(g: &mut Gen) -> String {
    if g.chance(40) {
        return if g.wrong() {
            g.pick(&["101", "-1", "x", "1.5"]).to_string()
        } else {
            g.pick(&["3", "0", "100"]).to_string()
        };
    }
    g.map(RETRY_KEYS, |g, key| match key {
        "limit" if g.wrong() => g.pick(&["-1", "101", "x"]).to_string(),
        "limit" => g.pick(&["2", "0"]).to_string(),
        "lost" if g.wrong() => g.pick(&["-1", "101", "x"]).to_string(),
        "lost" => g.pick(&["3", "0"]).to_string(),
        "backoff" if g.wrong() => g.pick(&["exponentail", "1"]).to_string(),
        "backoff" => g.pick(&["fixed", "exponential"]).to_string(),
        "on_exit_codes" if g.wrong() => g.pick(&["[0]", "[256]", "[x]", "1"]).to_string(),
        "on_exit_codes" => g.pick(&["[1]", "[1, 255]", "[]"]).to_string(),
        _ => g.draw(&DURATIONS),
    })
}

fn resources(g: &mut Gen) -> String {
    g.map(RESOURCE_KEYS, |g, key| match key {
        "gpu" => g.draw(&GPUS),
        "cpu" => g.draw(&CPUS),
        _ => g.draw(&MEMORY),
    })
}

fn env_map(g: &mut Gen) -> String {
    let mut names: Vec<String> = Vec::new();
    for _ in 0..g.below(3) {
        let name = g.draw(&VARIABLES);
        if !names.contains(&name) || g.wrong() {
            names.push(name);
        }
    }
    let parts: Vec<String> = names
        .iter()
        .map(|name| format!("{name}: {}", g.draw(&TEXT)))
        .collect();
    format!("{{{}}}", parts.join(", "))
}

/// A step's dependencies: valid targets come before the step, so valid files are acyclic; a
/// mistake is any step (cycles, itself, twice) or one that does not exist.
fn depends(g: &mut Gen, steps: &[String], index: usize) -> Vec<String> {
    let mut targets: Vec<String> = Vec::new();
    for _ in 0..g.below(4) {
        let target = if g.wrong() {
            match g.below(6) {
                0..=3 => steps[g.below(steps.len())].clone(),
                4 => "ghost".to_string(),
                _ => g.draw(&STEP_NAMES),
            }
        } else if index > 0 {
            steps[g.below(index)].clone()
        } else {
            continue;
        };
        if !targets.contains(&target) || g.wrong() {
            targets.push(target);
        }
    }
    targets
}

/// A value for a step (or `defaults`) key; `upstream` are the steps a condition may read.
fn step_value(g: &mut Gen, key: &str, upstream: &[String]) -> String {
    match key {
        "run" => g.draw(&Pool {
            good: &[
                "echo hi",
                "'python x.py'",
                "|\n      multi\n      line",
                "'a: b'",
            ],
            bad: &["''", "[a]", "1"],
        }),
        "command" => g.list(&COMMAND, 3).replace("[]", "[echo]"),
        "uses" | "with" => g.draw(&TEXT),
        "when" => condition(g, upstream),
        "timeout" => g.draw(&DURATIONS),
        "retry" => retry(g),
        "resources" => resources(g),
        "env" => env_map(g),
        "secrets" => g.list(&VARIABLES, 2),
        "outputs" => g.list(&OUTPUTS, 2),
        "queue" => g.draw(&Pool {
            good: &["gpu", "big", "cpu-1"],
            bad: &["bad queue", "''", "1"],
        }),
        "pull" => g.draw(&Pool {
            good: &["if_not_present", "always", "never"],
            bad: &["sometimes", "1", "[x]"],
        }),
        "cache" => g.draw(&Pool {
            good: &["true", "false", "{inputs: ['src/*.py']}", "{}"],
            bad: &["sometimes", "{inputs: ['../x']}", "{input: [x]}"],
        }),
        "matrix" => g
            .pick(&[
                "{LR: [1]}",
                "{lr: []}",
                "{lr: [a/b]}",
                "[1, 2]",
                "{lr: [1, 1]}",
            ])
            .to_string(),
        "models" => g.draw(&Pool {
            good: &[
                "{current: churn@production}",
                "{m: churn:3, latest: fraud}",
                "{}",
            ],
            bad: &["x", "{Current: churn}", "{m: churn:0}"],
        }),
        "user" => g.draw(&Pool {
            good: &["nobody", "'1000:1000'", "1000"],
            bad: &["[x]", "{a: 1}", "''"],
        }),
        "image" => g.draw(&Pool {
            good: &["python:3.12", "work"],
            bad: &["''", "1", "[x]"],
        }),
        // Absolute, so it is valid for local and image steps alike.
        "workdir" => g.draw(&Pool {
            good: &["/abs/dir", "/work"],
            bad: &["''", "1", "[x]"],
        }),
        _ => g.draw(&TEXT),
    }
}

fn step(g: &mut Gen, out: &mut String, steps: &[String], index: usize) {
    // One action, or by mistake none, two, or `uses`.
    const MISTAKES: [&[&str]; 4] = [&[], &["run", "command"], &["uses"], &["run", "with"]];
    let action: &[&str] = if g.wrong() {
        MISTAKES[g.below(MISTAKES.len())]
    } else if g.chance(30) {
        &["command"]
    } else {
        &["run"]
    };
    let mut keys: Vec<&str> = action.to_vec();
    for key in STEP_KEYS {
        let percent = if *key == "depends" { 60 } else { 20 };
        if !["run", "command", "uses", "with", "matrix"].contains(key) && g.chance(percent) {
            keys.push(key);
        }
    }
    // A good matrix is left to the unit tests: a `when` may read the step, which a matrix
    // forbids, so only broken ones are drawn here.
    if g.wrong() && g.chance(20) {
        keys.push("matrix");
    }
    // Container settings belong to image steps; on a local step they are a mistake.
    if !keys.contains(&"image") && !g.wrong() {
        keys.retain(|k| !["pull", "user"].contains(k));
    }
    if g.wrong() {
        keys.push(g.pick(EXTRA_KEYS));
    }
    if keys.is_empty() {
        out.push_str(" {}\n");
        return;
    }
    out.push('\n');
    let deps = if keys.contains(&"depends") {
        depends(g, steps, index)
    } else {
        Vec::new()
    };
    for key in keys {
        let value = match key {
            "depends" => match deps.as_slice() {
                [one] if g.chance(30) => one.clone(),
                _ => format!("[{}]", deps.join(", ")),
            },
            _ => step_value(g, key, &deps),
        };
        out.push_str(&format!("    {key}: {value}\n"));
    }
}

/// The params that conditions and triggers may read, in short or long form, and by mistake
/// some more (duplicates, invalid names, bad types).
fn params(g: &mut Gen, out: &mut String) {
    out.push_str("params:\n");
    let mut names: Vec<String> = PARAMS.good.iter().map(|p| p.to_string()).collect();
    if g.wrong() {
        names.push(g.draw(&PARAMS));
    }
    for name in names {
        let value = match g.below(4) {
            0 => g.draw(&TEXT),
            1 => String::new(),
            _ => g.map(PARAM_KEYS, |g, key| match key {
                "type" if g.wrong() => g.pick(&["float", "int", "[string]"]).to_string(),
                "type" => "string".to_string(),
                _ => g.draw(&TEXT),
            }),
        };
        out.push_str(&format!("  {name}: {value}\n"));
    }
}

fn trigger(g: &mut Gen) -> String {
    let kinds = if g.wrong() { 4 } else { 3 };
    match g.below(kinds) {
        0 => g
            .map(&["timezone", "catchup"], |g, key| match key {
                "timezone" => g.draw(&ZONES),
                _ if g.wrong() => "some".to_string(),
                _ => g.pick(&["latest", "none", "all"]).to_string(),
            })
            .replacen('{', &format!("{{cron: {}, ", g.draw(&CRONS)), 1),
        1 => format!(
            "{{webhook: {}, secret_env: {}, params: {{{}: body.x}}}}",
            g.draw(&Pool {
                good: &["hook", "new-data"],
                bad: &["bad hook", "''"],
            }),
            g.draw(&VARIABLES),
            g.draw(&PARAMS)
        ),
        2 => format!(
            "{{watch: {{path: {}, pattern: '*.csv'}}, param: {}}}",
            g.draw(&Pool {
                good: &["/in", "data/in"],
                bad: &["''", "[x]"],
            }),
            g.draw(&PARAMS)
        ),
        _ => g.draw(&TEXT),
    }
}

/// A pipeline file drawn from `bytes`: valid when the draws make no mistakes, with the
/// mistakes of every kind that the pools hold otherwise.
fn generated_pipeline(bytes: &[u8]) -> String {
    let mut g = Gen::new(bytes);
    let mut out = format!("name: {}\n", g.draw(&NAMES));
    for key in PIPELINE_KEYS {
        if matches!(*key, "name" | "steps") || (*key != "params" && !g.chance(30)) {
            continue;
        }
        match *key {
            "description" => out.push_str(&format!("description: {}\n", g.draw(&TEXT))),
            "params" => params(&mut g, &mut out),
            "env" => out.push_str(&format!("env: {}\n", env_map(&mut g))),
            "defaults" => {
                let d = g.map(DEFAULTS_KEYS, |g, key| step_value(g, key, &[]));
                out.push_str(&format!("defaults: {d}\n"));
            }
            "parallelism" => {
                let p = g.draw(&Pool {
                    good: &["4", "1"],
                    bad: &["0", "x", "100001"],
                });
                out.push_str(&format!("parallelism: {p}\n"));
            }
            "concurrency" => {
                let c = g.map(CONCURRENCY_KEYS, |g, key| match key {
                    "limit" if g.wrong() => g.pick(&["0", "10001", "x"]).to_string(),
                    "limit" => "2".to_string(),
                    _ if g.wrong() => "cancel".to_string(),
                    _ => g
                        .pick(&["queue", "skip", "cancel_running", "allow"])
                        .to_string(),
                });
                out.push_str(&format!("concurrency: {c}\n"));
            }
            "triggers" => {
                out.push_str("triggers:\n");
                for _ in 0..1 + g.below(3) {
                    let t = trigger(&mut g);
                    out.push_str(&format!("  - {t}\n"));
                }
            }
            "timeout" => {
                let t = g.draw(&Pool {
                    good: &["2h", "90s"],
                    bad: &["0s", "soon", "5"],
                });
                out.push_str(&format!("timeout: {t}\n"));
            }
            "notify" => {
                let webhook = g.draw(&Pool {
                    good: &["http://127.0.0.1:9/hook", "https://hooks.example/x"],
                    bad: &["ftp://h/x", "not a url", "''"],
                });
                let on = g.draw(&Pool {
                    good: &["[failed]", "[succeeded, cancelled]"],
                    bad: &["[fail]", "{}"],
                });
                out.push_str(&format!("notify: [{{webhook: \"{webhook}\", on: {on}}}]\n"));
            }
            "on_failure" | "finally" => {
                let section = match g.wrong() {
                    true => g
                        .pick(&["[x]", "{}", "{zz_handler: {}}", "{a: {run: echo}}"])
                        .to_string(),
                    false => format!("{{zz_{key}: {{run: echo $SLUICE_RUN_STATUS}}}}"),
                };
                out.push_str(&format!("{key}: {section}\n"));
            }
            _ => unreachable!("every pipeline key is generated: {key}"),
        }
    }
    if g.wrong() {
        out.push_str(&format!("{}: 1\n", g.pick(EXTRA_KEYS)));
    }
    if g.wrong() && g.chance(20) {
        return out; // no steps at all
    }
    out.push_str("steps:\n");
    // Distinct names, except that a mistake reuses one or takes an invalid one.
    let mut names: Vec<String> = Vec::new();
    for _ in 0..1 + g.below(6) {
        let name = if g.wrong() {
            match names.first() {
                Some(first) if g.chance(50) => first.clone(),
                _ => g.draw(&STEP_NAMES),
            }
        } else {
            match STEP_NAMES
                .good
                .iter()
                .find(|n| !names.iter().any(|m| m == *n))
            {
                Some(n) => n.to_string(),
                None => break,
            }
        };
        names.push(name);
    }
    for (i, name) in names.iter().enumerate() {
        out.push_str(&format!("  {name}:"));
        step(&mut g, &mut out, &names, i);
    }
    out
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn generated_pipelines_are_accepted_or_explained(
        bytes in prop::collection::vec(any::<u8>(), 0..300),
    ) {
        let text = generated_pipeline(&bytes);
        check_outcome(&text)?;
    }

    /// Documents drawn without mistakes must be accepted: the generator and the parser agree on
    /// what a valid file is.
    #[test]
    fn generated_pipelines_without_mistakes_are_valid(
        bytes in prop::collection::vec(any::<u8>(), 0..300),
    ) {
        let mut bytes = bytes;
        if let Some(first) = bytes.first_mut() {
            *first = 0; // error rate 0
        }
        let text = generated_pipeline(&bytes);
        match parse_str("g.yaml", &text) {
            Ok(p) => check_valid_pipeline(&p)?,
            Err(diags) => {
                let rendered: String = diags.iter().map(|d| d.render(&text)).collect();
                prop_assert!(false, "a mistake-free document was refused:\n{}\n{}", rendered, text);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// (c') Generated dependency graphs, checked against an independent oracle
// ---------------------------------------------------------------------------------------------

/// Steps `s0..sN`, each with `run` and the given dependency list (indices; `None` is a step that
/// does not exist).
fn graph_pipeline(deps: &[Vec<Option<usize>>]) -> String {
    let mut out = String::from("name: g\nsteps:\n");
    for (i, list) in deps.iter().enumerate() {
        let names: Vec<String> = list
            .iter()
            .map(|d| d.map_or("ghost".to_string(), |j| format!("s{j}")))
            .collect();
        out.push_str(&format!(
            "  s{i}:\n    run: x\n    depends: [{}]\n",
            names.join(", ")
        ));
    }
    out
}

/// Groups of steps that reach each other (strongly connected, more than one step), by brute
/// force over the reachability matrix.
fn cyclic_groups(deps: &[Vec<Option<usize>>]) -> Vec<BTreeSet<usize>> {
    let n = deps.len();
    let mut reach = vec![vec![false; n]; n];
    for (i, list) in deps.iter().enumerate() {
        for j in list.iter().flatten() {
            if *j != i {
                reach[i][*j] = true;
            }
        }
    }
    for k in 0..n {
        for i in 0..n {
            for j in 0..n {
                if reach[i][k] && reach[k][j] {
                    reach[i][j] = true;
                }
            }
        }
    }
    let mut groups: Vec<BTreeSet<usize>> = Vec::new();
    for (i, row) in reach.iter().enumerate() {
        let group: BTreeSet<usize> = (0..n)
            .filter(|j| *j == i || (row[*j] && reach[*j][i]))
            .collect();
        if group.len() > 1 && !groups.contains(&group) {
            groups.push(group);
        }
    }
    groups
}

fn dependency_lists() -> impl Strategy<Value = Vec<Vec<Option<usize>>>> {
    (1usize..7).prop_flat_map(|n| {
        let target = prop_oneof![9 => (0..n).prop_map(Some), 1 => Just(None)];
        prop::collection::vec(prop::collection::vec(target, 0..3), n)
    })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn dependency_problems_match_an_independent_oracle(deps in dependency_lists()) {
        let text = graph_pipeline(&deps);
        let result = parse_str("g.yaml", &text);

        let mut expected: Vec<String> = Vec::new();
        for (i, list) in deps.iter().enumerate() {
            let mut seen = BTreeSet::new();
            for d in list {
                match d {
                    None => expected.push(format!("step `s{i}` depends on `ghost`, which is not a step")),
                    Some(j) if *j == i => expected.push(format!("step `s{i}` depends on itself")),
                    Some(j) if !seen.insert(*j) => expected.push(format!("`s{j}` is listed twice in `depends`")),
                    Some(_) => {}
                }
            }
        }
        let groups = cyclic_groups(&deps);

        let diags = match result {
            Ok(p) => {
                prop_assert!(expected.is_empty() && groups.is_empty(), "accepted:\n{}", text);
                check_valid_pipeline(&p)?;
                return Ok(());
            }
            Err(diags) => diags,
        };
        check_diagnostics(&text, &diags)?;
        let (cycles, others): (Vec<&Diagnostic>, Vec<&Diagnostic>) =
            diags.iter().partition(|d| d.message.starts_with("dependency cycle: "));
        let mut got: Vec<String> = others.iter().map(|d| d.message.clone()).collect();
        got.sort();
        expected.sort();
        prop_assert_eq!(got, expected, "\n{}", text);

        // One diagnostic per group, each a real cycle through that group.
        prop_assert_eq!(cycles.len(), groups.len(), "\n{}", text);
        for d in cycles {
            let chain: Vec<usize> = d.message["dependency cycle: ".len()..]
                .split(" -> ")
                .map(|s| s.trim_start_matches('s').parse().unwrap())
                .collect();
            prop_assert!(chain.len() >= 3 && chain.first() == chain.last(), "{}", d.message);
            for pair in chain.windows(2) {
                prop_assert!(deps[pair[0]].contains(&Some(pair[1])), "no edge in {}", d.message);
            }
            let inner: BTreeSet<usize> = chain[1..].iter().copied().collect();
            prop_assert_eq!(inner.len(), chain.len() - 1, "a step repeats in {}", d.message);
            prop_assert!(groups.iter().any(|g| inner.is_subset(g)), "{}", d.message);
            prop_assert_eq!(d.step.clone(), Some(format!("s{}", chain[0])));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Deep nesting and alias bombs
// ---------------------------------------------------------------------------------------------

/// Runs `body` in a fresh copy of this test binary, so a stack overflow (which aborts the whole
/// process) fails this one test instead of killing the suite. `name` is the test's own name.
fn in_child_process(name: &str, body: impl FnOnce()) {
    const CHILD: &str = "SLUICE_SPEC_FUZZ_CHILD";
    if std::env::var_os(CHILD).is_some() {
        body();
        return;
    }
    let path = format!("{}::{name}", module_path!().trim_start_matches("sluice::"));
    let output = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            path.as_str(),
            "--exact",
            "--include-ignored",
            "--test-threads=1",
        ])
        .env(CHILD, "1")
        .output()
        .expect("run the test binary");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("1 passed"),
        "child {path} failed ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Parses `text`, which must be refused, and returns the diagnostics.
fn refused(text: &str) -> Vec<Diagnostic> {
    let diags = parse_str("deep.yaml", text).expect_err("must be refused");
    let bounded: Result<(), TestCaseError> = check_diagnostics(text, &diags);
    bounded.expect("well-formed diagnostics");
    diags
}

#[test]
fn deeply_nested_flow_sequences_are_refused() {
    in_child_process("deeply_nested_flow_sequences_are_refused", || {
        let text = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        let diags = refused(&text);
        assert_eq!(diags.len(), 1);
        assert_eq!(diags[0].line, 1);
        assert!(
            diags[0].message.starts_with("invalid YAML: "),
            "{}",
            diags[0]
        );
    });
}

#[test]
fn deeply_nested_flow_mappings_are_refused() {
    in_child_process("deeply_nested_flow_mappings_are_refused", || {
        let text = format!("{}x{}", "{a: ".repeat(10_000), "}".repeat(10_000));
        let diags = refused(&text);
        assert_eq!(diags.len(), 1);
        assert!(
            diags[0].message.starts_with("invalid YAML: "),
            "{}",
            diags[0]
        );
    });
}

#[test]
fn nesting_inside_a_step_is_refused_where_it_is() {
    in_child_process("nesting_inside_a_step_is_refused_where_it_is", || {
        let text = format!(
            "name: p\nsteps:\n  a:\n    run: x\n    env: {}{}\n",
            "{A: ".repeat(5_000),
            "}".repeat(5_000)
        );
        let diags = refused(&text);
        assert_eq!(diags[0].line, 5);
    });
}

#[test]
fn deeply_nested_block_collections_do_not_overflow_the_stack() {
    in_child_process(
        "deeply_nested_block_collections_do_not_overflow_the_stack",
        || {
            // 20 KB: `- - - - ... x`, a list 10,000 levels deep.
            let text = format!("{}x\n", "- ".repeat(10_000));
            refused(&text);
            // Under 1 MiB: `a:` mappings, each indented one more space than the last.
            let text: String = (0..1_400)
                .map(|i| format!("{}a:\n", " ".repeat(i)))
                .collect();
            assert!(text.len() < DEFAULT_MAX_FILE_BYTES as usize);
            refused(&text);
        },
    );
}

/// Runs `parse_str` on another thread and fails if it takes longer than `limit`.
fn parse_within(text: String, limit: Duration) -> Result<Pipeline, Vec<Diagnostic>> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(parse_str("bomb.yaml", &text));
    });
    rx.recv_timeout(limit)
        .unwrap_or_else(|_| panic!("parsing took longer than {limit:?}"))
}

#[test]
fn a_billion_laughs_is_refused_quickly() {
    let mut text =
        String::from("name: p\nlol0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
    for i in 1..10 {
        let refs = vec![format!("*l{}", i - 1); 9].join(", ");
        text.push_str(&format!("lol{i}: &l{i} [{refs}]\n"));
    }
    text.push_str("steps:\n  a:\n    run: x\n    outputs: *l9\n");
    let diags = parse_within(text.clone(), Duration::from_secs(20)).expect_err("refused");
    assert_eq!(diags.len(), 1, "{diags:?}");
    assert_eq!(
        diags[0].message,
        "invalid YAML: the document expands to more than a million nodes (nested aliases?)"
    );
    assert!((2..=11).contains(&diags[0].line), "{}", diags[0]);
}

#[test]
fn a_merge_key_bomb_is_refused_quickly() {
    let mut text = String::from(
        "name: p\nsteps:\n  s0: &s0 {run: x, env: {A0: '0', A1: '1', A2: '2', A3: '3'}}\n",
    );
    for i in 1..12 {
        let refs = vec![format!("*s{}", i - 1); 8].join(", ");
        text.push_str(&format!(
            "  s{i}: &s{i} {{<<: [{refs}], outputs: [{refs}]}}\n"
        ));
    }
    let diags = parse_within(text, Duration::from_secs(20)).expect_err("refused");
    assert!(
        diags
            .iter()
            .any(|d| d.message.contains("more than a million nodes")),
        "{diags:?}"
    );
}

/// Files under the size cap that are slow to check only if some check is quadratic.
fn wide_files() -> Vec<(&'static str, String)> {
    let mut merge = String::from("name: p\nsteps: {a: {run: x}}\nenv: &big {");
    for i in 0..60_000 {
        merge.push_str(&format!("K{i}: '', "));
    }
    merge.push_str("}\ndefaults:\n  <<: *big\n");

    let mut depends = String::from("name: p\nsteps:\n");
    for i in 0..15_000 {
        depends.push_str(&format!("  s{i}: {{run: x}}\n"));
    }
    depends.push_str("  z:\n    run: x\n    depends: [");
    for i in 0..60_000 {
        depends.push_str(&format!("q{i}, "));
    }
    depends.push_str("]\n");

    let mut chain = String::from("name: p\nsteps:\n  s0: {run: x}\n");
    for i in 1..15_000 {
        chain.push_str(&format!(
            "  s{i}: {{run: x, depends: s{}, when: steps.s0.outputs.k == 1}}\n",
            i - 1
        ));
    }
    vec![
        ("merge", merge),
        ("unknown depends", depends),
        ("when chain", chain),
    ]
}

#[test]
fn wide_files_under_the_size_cap_are_checked_in_bounded_time() {
    for (what, text) in wide_files() {
        assert!(
            text.len() < DEFAULT_MAX_FILE_BYTES as usize,
            "{what}: {}",
            text.len()
        );
        let started = std::time::Instant::now();
        let _ = parse_within(text, Duration::from_secs(20));
        eprintln!("{what}: {:?}", started.elapsed());
    }
}
