//! What users of pipeline files rely on: the typed values a valid file becomes, and for each kind
//! of mistake the exact diagnostic (message, help, line, column, field, step).
//!
//! Diagnostic wording is part of the contract: people grep for it, editors show it, and the JSON
//! output of `sluice validate` carries `field` and `step`.

use std::time::Duration;

use super::condition::{Compare, Comparison, Condition, Operand, Term};
use super::*;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

const FILE: &str = "p.yaml";

/// Removes the leading newline and the common indentation, so a test can write a pipeline as an
/// indented raw string whose first line is line 1 of the file.
fn doc(text: &str) -> String {
    let text = text.strip_prefix('\n').unwrap_or(text);
    let indent = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start().len())
        .min()
        .unwrap_or(0);
    let mut out = String::new();
    for line in text.lines() {
        out.push_str(line.get(indent..).unwrap_or("").trim_end());
        out.push('\n');
    }
    out
}

/// Parses a file that must be valid; on failure shows every diagnostic, rendered.
fn valid(text: &str) -> Pipeline {
    match parse_str(FILE, text) {
        Ok(p) => p,
        Err(diags) => panic!(
            "expected a valid pipeline, got:\n{}\n--- file ---\n{text}",
            render_all(&diags, text)
        ),
    }
}

/// Parses a file that must be invalid and returns its diagnostics.
fn invalid(text: &str) -> Vec<Diagnostic> {
    match parse_str(FILE, text) {
        Ok(p) => panic!("expected diagnostics, the file parsed as {p:#?}\n--- file ---\n{text}"),
        Err(diags) => {
            assert!(!diags.is_empty(), "Err with no diagnostics for:\n{text}");
            diags
        }
    }
}

/// The one diagnostic of a file with exactly one problem.
fn one_error(text: &str) -> Diagnostic {
    let diags = invalid(text);
    assert_eq!(
        diags.len(),
        1,
        "expected exactly one diagnostic, got:\n{}",
        render_all(&diags, text)
    );
    diags.into_iter().next().unwrap()
}

fn render_all(diags: &[Diagnostic], text: &str) -> String {
    diags.iter().map(|d| d.render(text)).collect()
}

/// What a diagnostic says and where, in one comparable value.
#[derive(Debug, PartialEq)]
struct Expect<'a> {
    line: usize,
    column: usize,
    field: &'a str,
    step: Option<&'a str>,
    message: &'a str,
    help: Option<&'a str>,
}

fn seen(d: &Diagnostic) -> Expect<'_> {
    Expect {
        line: d.line,
        column: d.column,
        field: &d.field,
        step: d.step.as_deref(),
        message: &d.message,
        help: d.help.as_deref(),
    }
}

fn assert_diag(d: &Diagnostic, expected: Expect<'_>) {
    assert_eq!(d.file, FILE);
    assert_eq!(seen(d), expected, "diagnostic: {d}");
}

/// `text` dedented, then indented by two spaces: a block to place under a top-level key.
fn block(text: &str) -> String {
    doc(text)
        .lines()
        .map(|l| {
            if l.is_empty() {
                "\n".to_string()
            } else {
                format!("  {l}\n")
            }
        })
        .collect()
}

/// A minimal pipeline around `steps` (a block under `steps:`, starting on line 3).
fn with_steps(steps: &str) -> String {
    format!("name: p\nsteps:\n{}", block(steps))
}

fn step<'p>(p: &'p Pipeline, name: &str) -> &'p Step {
    p.steps
        .get(name)
        .unwrap_or_else(|| panic!("no step `{name}`"))
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn env(pairs: &[(&str, &str)]) -> indexmap::IndexMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// A full valid pipeline
// ---------------------------------------------------------------------------------------------

const FULL: &str = r#"
    name: churn-v2
    description: Train the churn model.
    params:
      dataset: data/churn.csv
      epochs: 10
      lr: 0.01
      dry_run: false
      region:
      min_acc:
        type: number
        default: 0.8
        description: Gate for validate.
      mode:
        type: string
    env:
      LOG_LEVEL: info
      SHARED: pipeline
    defaults:
      timeout: 10m
      retry: {limit: 2, backoff: exponential, delay: 5s, max_delay: 1m, on_exit_codes: [1, 75]}
      workdir: ../work
    parallelism: 4
    concurrency:
      limit: 2
      overlap: skip
    triggers:
      - cron: "0 3 * * *"
        timezone: Europe/Belgrade
        catchup: none
      - webhook: new-data
        secret_env: HOOK_SECRET
        params:
          dataset: body.path
      - watch:
          path: /data/incoming
          pattern: "*.csv"
        param: dataset
    steps:
      ingest:
        description: Fetch the data.
        run: python ingest.py
        outputs: [raw.csv, stats/]
      train:
        depends: ingest
        command: [python, train.py, --epochs, 10]
        env:
          SHARED: step
          EXTRA: 1
        retry: 3
        timeout: 1h30m
        resources:
          cpu: "500m"
          memory: 16Gi
          gpu: 1
        secrets: [WANDB_KEY]
      evaluate:
        depends: [train, ingest]
        run: ./eval.sh
        workdir: /abs
        resources:
          cpu: 2
          gpu: all
        queue: big
      deploy:
        depends: [evaluate]
        when: steps.evaluate.outputs.accuracy >= 0.9
        image: python:3.12
        run: ./deploy.sh
        resources:
          gpu: {ids: ["0", 2]}
      report:
        depends: [deploy]
        when: params.mode != dry-run
        run: echo done
"#;

#[test]
fn a_full_pipeline_reads_its_top_level_fields() {
    let p = valid(&doc(FULL));
    assert_eq!(p.name, "churn-v2");
    assert_eq!(p.description.as_deref(), Some("Train the churn model."));
    assert_eq!(p.env, env(&[("LOG_LEVEL", "info"), ("SHARED", "pipeline")]));
    assert_eq!(p.parallelism, Some(4));
    assert_eq!(
        p.concurrency,
        Some(Concurrency {
            limit: 2,
            overlap: Overlap::Skip
        })
    );
    assert_eq!(
        p.steps.keys().collect::<Vec<_>>(),
        ["ingest", "train", "evaluate", "deploy", "report"],
        "steps keep file order"
    );
}

#[test]
fn params_take_the_short_and_the_long_form() {
    let p = valid(&doc(FULL));
    let param = |kind, default: Option<&str>, description: Option<&str>| ParamSpec {
        kind,
        default: default.map(str::to_string),
        description: description.map(str::to_string),
    };
    let expected: Vec<(&str, ParamSpec)> = vec![
        (
            "dataset",
            param(ParamType::String, Some("data/churn.csv"), None),
        ),
        ("epochs", param(ParamType::Integer, Some("10"), None)),
        ("lr", param(ParamType::Number, Some("0.01"), None)),
        ("dry_run", param(ParamType::Boolean, Some("false"), None)),
        ("region", param(ParamType::String, None, None)),
        (
            "min_acc",
            param(ParamType::Number, Some("0.8"), Some("Gate for validate.")),
        ),
        ("mode", param(ParamType::String, None, None)),
    ];
    let got: Vec<(&str, ParamSpec)> = p
        .params
        .iter()
        .map(|(k, v)| (k.as_str(), v.clone()))
        .collect();
    assert_eq!(got, expected);
}

#[test]
fn triggers_of_every_kind_are_read() {
    let p = valid(&doc(FULL));
    assert_eq!(
        p.triggers,
        vec![
            Trigger::Cron {
                schedule: "0 3 * * *".into(),
                timezone: "Europe/Belgrade".into(),
                catchup: Catchup::None,
                parsed: Box::new(
                    crate::triggers::cron::Schedule::new("0 3 * * *", "Europe/Belgrade").unwrap()
                ),
            },
            Trigger::Webhook {
                name: "new-data".into(),
                secret_env: Some("HOOK_SECRET".into()),
                params: env(&[("dataset", "body.path")]),
            },
            Trigger::Watch {
                path: "/data/incoming".into(),
                pattern: "*.csv".into(),
                param: "dataset".into(),
            },
        ]
    );
}

#[test]
fn a_step_without_settings_of_its_own_gets_the_pipeline_defaults() {
    let p = valid(&doc(FULL));
    let ingest = step(&p, "ingest");
    assert_eq!(
        ingest,
        &Step {
            name: "ingest".into(),
            mark: yaml::Mark {
                line: 39,
                column: 3
            },
            description: Some("Fetch the data.".into()),
            depends: vec![],
            when: None,
            action: Action::Shell("python ingest.py".into()),
            image: None,
            env: env(&[("LOG_LEVEL", "info"), ("SHARED", "pipeline")]),
            secrets: vec![],
            workdir: Some("../work".into()),
            retry: RetryPolicy {
                limit: 2,
                lost: DEFAULT_LOST_RETRIES,
                backoff: Backoff::Exponential,
                delay: Duration::from_secs(5),
                max_delay: Some(Duration::from_secs(60)),
                on_exit_codes: vec![1, 75],
            },
            timeout: Some(Duration::from_secs(600)),
            resources: Resources::default(),
            queue: "default".into(),
            outputs: strings(&["raw.csv", "stats/"]),
            pull: PullPolicy::IfNotPresent,
            user: None,
            cache: None,
            models: Default::default(),
            phase: Phase::Main,
            matrix: None,
        }
    );
}

#[test]
fn a_step_overrides_defaults_and_pipeline_env() {
    let p = valid(&doc(FULL));
    let train = step(&p, "train");
    assert_eq!(
        train.depends,
        strings(&["ingest"]),
        "a single string is a list of one"
    );
    assert_eq!(
        train.action,
        Action::Exec(strings(&["python", "train.py", "--epochs", "10"]))
    );
    assert_eq!(
        train.env,
        env(&[("LOG_LEVEL", "info"), ("SHARED", "step"), ("EXTRA", "1")]),
        "the step's env wins, in place, and adds its own"
    );
    assert_eq!(
        train.retry,
        RetryPolicy {
            limit: 3,
            ..RetryPolicy::default()
        },
        "`retry: 3` is `retry: {{limit: 3}}`"
    );
    assert_eq!(train.timeout, Some(Duration::from_secs(90 * 60)));
    assert_eq!(train.workdir.as_deref(), Some("../work"));
    assert_eq!(
        train.resources,
        Resources {
            cpu: Some(0.5),
            memory: Some(16 << 30),
            gpu: Some(GpuRequest::Count(1)),
        }
    );
    assert_eq!(train.queue, "gpu", "a GPU step goes to the `gpu` queue");
    assert_eq!(train.secrets, strings(&["WANDB_KEY"]));

    let evaluate = step(&p, "evaluate");
    assert_eq!(evaluate.depends, strings(&["train", "ingest"]));
    assert_eq!(evaluate.workdir.as_deref(), Some("/abs"));
    assert_eq!(evaluate.resources.cpu, Some(2.0));
    assert_eq!(evaluate.resources.gpu, Some(GpuRequest::All));
    assert_eq!(
        evaluate.queue, "big",
        "an explicit queue beats the gpu default"
    );
}

#[test]
fn conditions_images_and_gpu_ids_are_read() {
    let p = valid(&doc(FULL));
    let deploy = step(&p, "deploy");
    assert_eq!(
        deploy.when,
        Some(Condition::Compare(Compare {
            left: Term::Read(Operand::StepOutput {
                step: "evaluate".into(),
                key: "accuracy".into()
            }),
            op: Comparison::Ge,
            right: Term::Text("0.9".into()),
        }))
    );
    assert_eq!(deploy.image.as_deref(), Some("python:3.12"));
    assert_eq!(
        deploy.resources.gpu,
        Some(GpuRequest::Ids(strings(&["0", "2"])))
    );
    assert_eq!(deploy.queue, "gpu");

    let report = step(&p, "report");
    assert_eq!(
        report.when,
        Some(Condition::Compare(Compare {
            left: Term::Read(Operand::Param("mode".into())),
            op: Comparison::Ne,
            right: Term::Text("dry-run".into()),
        }))
    );
}

#[test]
fn the_smallest_pipeline_has_no_defaults_to_apply() {
    let p = valid(&with_steps("  only:\n    run: echo hi\n"));
    assert!(p.params.is_empty() && p.env.is_empty() && p.triggers.is_empty());
    assert_eq!(p.parallelism, None);
    assert_eq!(p.concurrency, None);
    let only = step(&p, "only");
    assert_eq!(only.retry, RetryPolicy::default());
    assert_eq!(only.timeout, None);
    assert_eq!(only.workdir, None);
    assert_eq!(only.queue, "default");
}

#[test]
fn the_shipped_pipeline_is_valid() {
    let p = valid(include_str!("../../../pipelines/mlops.yaml"));
    assert_eq!(p.name, "mlops");
    assert_eq!(
        step(&p, "validate").retry.limit,
        0,
        "`retry: 0` overrides the default"
    );
    assert_eq!(step(&p, "train").retry.limit, 1);
}

#[test]
fn a_when_may_read_a_step_that_is_upstream_through_others() {
    let p = valid(&with_steps(
        "
          a: {run: x}
          b: {run: x, depends: a}
          c: {run: x, depends: b, when: steps.a.outputs.ok == 'yes'}
        ",
    ));
    assert_eq!(
        step(&p, "c").when.as_ref().unwrap().to_string(),
        "steps.a.outputs.ok == \"yes\""
    );
}

// ---------------------------------------------------------------------------------------------
// Merge keys
// ---------------------------------------------------------------------------------------------

#[test]
fn merge_keys_make_step_templates() {
    let p = valid(&with_steps(
        "
          train: &gpu_step
            run: python train.py
            timeout: 1h
            resources: {gpu: 1, memory: 8Gi}
            env: {A: from-template}
          finetune:
            <<: *gpu_step
            run: python finetune.py
            env: {A: own}
        ",
    ));
    let train = step(&p, "train");
    let finetune = step(&p, "finetune");
    assert_eq!(finetune.action, Action::Shell("python finetune.py".into()));
    assert_eq!(finetune.timeout, Some(Duration::from_secs(3600)));
    assert_eq!(finetune.resources, train.resources);
    assert_eq!(finetune.queue, "gpu");
    assert_eq!(
        finetune.env,
        env(&[("A", "own")]),
        "written keys beat merged ones"
    );
}

#[test]
fn merge_keys_take_a_list_and_the_earlier_source_wins() {
    let p = valid(&with_steps(
        "
          a: &slow
            run: a
            timeout: 2h
          b: &retried
            run: b
            timeout: 1m
            retry: 5
          c:
            <<: [*slow, *retried]
            run: c
        ",
    ));
    let c = step(&p, "c");
    assert_eq!(c.timeout, Some(Duration::from_secs(7200)));
    assert_eq!(c.retry.limit, 5);
}

// ---------------------------------------------------------------------------------------------
// Unknown keys
// ---------------------------------------------------------------------------------------------

#[test]
fn a_misspelled_step_key_is_reported_with_a_suggestion() {
    let text = with_steps(
        "
          a:
            run: echo
            dependz: [b]
          b:
            run: echo
        ",
    );
    assert_diag(
        &one_error(&text),
        Expect {
            line: 5,
            column: 5,
            field: "steps.a.dependz",
            step: Some("a"),
            message: "unknown key `dependz` in step `a`",
            help: Some("did you mean `depends`?"),
        },
    );
}

#[test]
fn a_key_from_another_orchestrator_is_translated() {
    let text = with_steps(
        "
          a: {run: echo}
          b:
            needs: [a]
            run: echo
        ",
    );
    assert_diag(
        &one_error(&text),
        Expect {
            line: 5,
            column: 5,
            field: "steps.b.needs",
            step: Some("b"),
            message: "unknown key `needs` in step `b`",
            help: Some("`needs` is GitHub Actions' name; Sluice says `depends: [a, b]`"),
        },
    );
}

#[test]
fn an_unknown_key_with_no_likely_meaning_lists_the_keys() {
    let text = doc("
        name: p
        zzz: 1
        steps:
          a: {run: echo}
        ");
    assert_diag(
        &one_error(&text),
        Expect {
            line: 2,
            column: 1,
            field: "zzz",
            step: None,
            message: "unknown key `zzz` in the pipeline",
            help: Some(
                "expected one of: name, description, params, env, defaults, parallelism, concurrency, triggers, notify, timeout, steps, on_failure, finally",
            ),
        },
    );
}

// ---------------------------------------------------------------------------------------------
// Dependencies
// ---------------------------------------------------------------------------------------------

#[test]
fn an_unknown_dependency_suggests_the_closest_step() {
    let text = with_steps(
        "
          ingest: {run: x}
          train:
            run: y
            depends: [ingset]
        ",
    );
    assert_diag(
        &one_error(&text),
        Expect {
            line: 6,
            column: 15,
            field: "steps.train.depends",
            step: Some("train"),
            message: "step `train` depends on `ingset`, which is not a step",
            help: Some("did you mean `ingest`?"),
        },
    );
}

#[test]
fn a_step_that_depends_on_itself_is_reported() {
    let text = with_steps(
        "
          a:
            run: x
            depends: a
        ",
    );
    assert_diag(
        &one_error(&text),
        Expect {
            line: 5,
            column: 14,
            field: "steps.a.depends",
            step: Some("a"),
            message: "step `a` depends on itself",
            help: None,
        },
    );
}

#[test]
fn a_dependency_listed_twice_is_reported_at_the_second() {
    let text = with_steps(
        "
          a: {run: x}
          b:
            run: y
            depends: [a, a]
        ",
    );
    assert_diag(
        &one_error(&text),
        Expect {
            line: 6,
            column: 18,
            field: "steps.b.depends",
            step: Some("b"),
            message: "`a` is listed twice in `depends`",
            help: None,
        },
    );
}

#[test]
fn a_two_step_cycle_is_reported_once_as_the_whole_chain() {
    let text = with_steps(
        "
          train:
            run: x
            depends: [validate]
          validate:
            run: y
            depends: [train]
        ",
    );
    assert_diag(
        &one_error(&text),
        Expect {
            line: 5,
            column: 15,
            field: "steps.train.depends",
            step: Some("train"),
            message: "dependency cycle: train -> validate -> train",
            help: Some("a step cannot depend, directly or through others, on itself"),
        },
    );
}

#[test]
fn each_cycle_is_reported_once_even_with_several_in_a_file() {
    let text = with_steps(
        "
          a: {run: x, depends: [b]}
          b: {run: x, depends: [c]}
          c: {run: x, depends: [a]}
          ok: {run: x, depends: [a]}
          train: {run: x, depends: [validate]}
          validate: {run: x, depends: [train]}
        ",
    );
    let diags = invalid(&text);
    let messages: Vec<(usize, &str)> = diags.iter().map(|d| (d.line, d.message.as_str())).collect();
    assert_eq!(
        messages,
        [
            (3, "dependency cycle: a -> b -> c -> a"),
            (7, "dependency cycle: train -> validate -> train"),
        ]
    );
    assert_eq!(diags[0].column, 25, "at `b` in a's depends");
    assert_eq!(diags[0].step.as_deref(), Some("a"));
}

#[test]
fn graph_problems_are_found_even_when_a_step_is_otherwise_broken() {
    let text = with_steps(
        "
          a:
            run: x
            timeout: soon
            depends: [b]
          b:
            run: x
            depends: [a]
        ",
    );
    let diags = invalid(&text);
    let messages: Vec<&str> = diags.iter().map(|d| d.message.as_str()).collect();
    assert_eq!(
        messages,
        [
            "`soon` is not a duration: use a number with a unit (ms, s, m, h, d) as in `90s` or `1h30m`",
            "dependency cycle: a -> b -> a",
        ]
    );
}

// ---------------------------------------------------------------------------------------------
// Step names and actions
// ---------------------------------------------------------------------------------------------

const DUPLICATE_STEP: &str = "
    name: p
    steps:
      a:
        run: x
      b:
        run: y
      a:
        run: z
";

#[test]
fn a_duplicate_step_name_points_at_both_definitions() {
    let d = one_error(&doc(DUPLICATE_STEP));
    assert_eq!((d.line, d.column), (7, 3));
    assert_eq!(d.message, "duplicate key `a`");
    assert_eq!(d.help.as_deref(), Some("first defined at line 3, column 3"));
}

#[test]
fn a_duplicate_step_name_names_the_step() {
    let d = one_error(&doc(DUPLICATE_STEP));
    assert_eq!(d.field, "steps.a");
    assert_eq!(d.step.as_deref(), Some("a"));
}

#[test]
fn a_step_needs_run_or_command() {
    let text = with_steps(
        "
          a:
            description: does nothing
        ",
    );
    assert_diag(
        &one_error(&text),
        Expect {
            line: 3,
            column: 3,
            field: "steps.a",
            step: Some("a"),
            message: "step `a` has neither `run` nor `command`",
            help: Some("add `run: <shell command>` or `command: [program, arg, ...]`"),
        },
    );
}

#[test]
fn a_step_cannot_have_both_run_and_command() {
    let text = with_steps(
        "
          a:
            run: echo hi
            command: [echo, hi]
        ",
    );
    assert_diag(
        &one_error(&text),
        Expect {
            line: 5,
            column: 14,
            field: "steps.a",
            step: Some("a"),
            message: "step `a` must have only one of `run`, `command` and `uses`",
            help: None,
        },
    );
}

#[test]
fn an_empty_command_is_refused() {
    let d = one_error(&with_steps("  a:\n    command: []\n"));
    assert_eq!((d.line, d.column), (4, 14));
    assert_eq!(d.field, "steps.a.command");
    assert_eq!(d.message, "`command` needs at least the program to run");
}

#[test]
fn an_unknown_uses_kind_lists_the_built_in_ones() {
    let text = with_steps(
        "
          build:
            uses: docker/build
            with: {context: .}
        ",
    );
    assert_diag(
        &one_error(&text),
        Expect {
            line: 4,
            column: 11,
            field: "steps.build.uses",
            step: Some("build"),
            message: "unknown step kind `docker/build`",
            help: Some(
                "built-in kinds: noop, register, gate, drift, deploy; or use `run` or `command`",
            ),
        },
    );
}

#[test]
fn with_without_uses_is_reported() {
    let d = one_error(&with_steps("  a:\n    run: x\n    with: {k: v}\n"));
    assert_eq!((d.line, d.column), (5, 11));
    assert_eq!(d.field, "steps.a.with");
    assert_eq!(d.message, "step `a` has `with` but no `uses`");
}

#[test]
fn bad_names_are_reported() {
    let text = doc("
        name: Bad Name
        steps:
          bad/name:
            run: x
        ");
    let diags = invalid(&text);
    assert_eq!(diags.len(), 2, "{}", render_all(&diags, &text));
    assert_diag(
        &diags[0],
        Expect {
            line: 1,
            column: 7,
            field: "name",
            step: None,
            message: "pipeline name `Bad Name` must be 1-64 characters of a-z, 0-9, `_` and `-`",
            help: None,
        },
    );
    assert_diag(
        &diags[1],
        Expect {
            line: 3,
            column: 3,
            field: "steps.bad/name",
            step: Some("bad/name"),
            message: "step name `bad/name` must be 1-64 characters of letters, digits, `_` and `-`, starting with a letter or digit",
            help: None,
        },
    );
}

// ---------------------------------------------------------------------------------------------
// Durations and quantities
// ---------------------------------------------------------------------------------------------

/// The one diagnostic for step `a` with `key: value` added to `run: x`.
fn step_field_error(key: &str, value: &str) -> Diagnostic {
    one_error(&with_steps(&format!(
        "  a:\n    run: x\n    {key}: {value}\n"
    )))
}

#[test]
fn a_duration_needs_a_unit() {
    assert_diag(
        &step_field_error("timeout", "30"),
        Expect {
            line: 5,
            column: 14,
            field: "steps.a.timeout",
            step: Some("a"),
            message: "`30` has no unit: write for example `30s` or `30m`",
            help: None,
        },
    );
}

#[test]
fn a_duration_needs_a_known_unit() {
    assert_diag(
        &step_field_error("timeout", "5x"),
        Expect {
            line: 5,
            column: 14,
            field: "steps.a.timeout",
            step: Some("a"),
            message: "`5x` is not a duration: use a number with a unit (ms, s, m, h, d) as in `90s` or `1h30m`",
            help: None,
        },
    );
}

#[test]
fn a_timeout_must_be_longer_than_zero() {
    assert_diag(
        &step_field_error("timeout", "0s"),
        Expect {
            line: 5,
            column: 14,
            field: "steps.a.timeout",
            step: Some("a"),
            message: "`steps.a.timeout` must be longer than zero",
            help: None,
        },
    );
}

#[test]
fn a_retry_delay_may_be_zero_but_not_unitless() {
    let p = valid(&with_steps(
        "  a:\n    run: x\n    retry: {limit: 1, delay: 0s}\n",
    ));
    assert_eq!(step(&p, "a").retry.delay, Duration::ZERO);
    let d = step_field_error("retry", "{limit: 1, delay: 10}");
    assert_eq!(d.field, "steps.a.retry.delay");
    assert_eq!(
        d.message,
        "`10` has no unit: write for example `10s` or `10m`"
    );
}

#[test]
fn retries_are_capped() {
    let d = step_field_error("retry", "101");
    assert_eq!(d.field, "steps.a.retry");
    assert_eq!(
        d.message,
        "`steps.a.retry` must be between 0 and 100, found 101"
    );
}

#[test]
fn a_cpu_amount_must_be_cores_or_millicores() {
    assert_diag(
        &step_field_error("resources", "{cpu: lots}"),
        Expect {
            line: 5,
            column: 22,
            field: "steps.a.resources.cpu",
            step: Some("a"),
            message: "`lots` is not a CPU amount: use cores (`2`, `0.5`) or millicores (`500m`)",
            help: None,
        },
    );
}

#[test]
fn a_memory_size_must_use_kubernetes_units() {
    assert_diag(
        &step_field_error("resources", "{memory: 16GB}"),
        Expect {
            line: 5,
            column: 25,
            field: "steps.a.resources.memory",
            step: Some("a"),
            message: "`16GB` is not a memory size: use a number with a unit such as `512Mi`, `16Gi` or `2G`",
            help: None,
        },
    );
}

#[test]
fn a_gpu_count_must_be_at_least_one() {
    assert_diag(
        &step_field_error("resources", "{gpu: 0}"),
        Expect {
            line: 5,
            column: 22,
            field: "steps.a.resources.gpu",
            step: Some("a"),
            message: "`steps.a.resources.gpu` must be between 1 and 1024, found 0",
            help: None,
        },
    );
}

#[test]
fn a_gpu_request_of_another_shape_is_refused() {
    let d = step_field_error("resources", "{gpu: some}");
    assert_eq!(d.field, "steps.a.resources.gpu");
    assert_eq!(
        d.message,
        "`steps.a.resources.gpu` must be a count, `all` or `{ids: [...]}`, found a string"
    );
}

// ---------------------------------------------------------------------------------------------
// Params
// ---------------------------------------------------------------------------------------------

/// A pipeline with `params` written as given (indented under `params:`, starting on line 3).
fn with_params(params: &str) -> String {
    format!(
        "name: p\nparams:\n{}steps:\n  a: {{run: x}}\n",
        block(params)
    )
}

#[test]
fn a_param_type_must_be_known() {
    let d = one_error(&with_params("  x: {type: float, default: 1.5}\n"));
    assert_eq!((d.line, d.column), (3, 13));
    assert_eq!(d.field, "params.x.type");
    assert_eq!(d.step, None);
    assert_eq!(
        d.message,
        "`float` is not a valid `params.x.type`: expected one of string, integer, number, boolean"
    );
}

#[test]
fn a_param_default_must_have_the_param_type() {
    let text = with_params(
        "
          epochs:
            type: integer
            default: ten
        ",
    );
    assert_diag(
        &one_error(&text),
        Expect {
            line: 5,
            column: 14,
            field: "params.epochs.default",
            step: None,
            message: "default of `params.epochs`: expected an integer, got `ten`",
            help: None,
        },
    );
}

#[test]
fn a_boolean_param_takes_only_true_or_false() {
    let d = one_error(&with_params("  flag: {type: boolean, default: yes}\n"));
    assert_eq!(
        d.message,
        "default of `params.flag`: expected a boolean (true or false), got `yes`"
    );
}

#[test]
fn a_list_is_not_a_param_default() {
    assert_diag(
        &one_error(&with_params("  x: [1, 2]\n")),
        Expect {
            line: 3,
            column: 6,
            field: "params.x",
            step: None,
            message: "a param's default must be a single value; for a richer param write `{type: ..., default: ...}`",
            help: None,
        },
    );
    let d = one_error(&with_params("  x: {type: string, default: [a]}\n"));
    assert_eq!(d.field, "params.x.default");
    assert_eq!(
        d.message,
        "`params.x.default` must be a string, found a list"
    );
}

#[test]
fn params_that_reach_steps_as_the_same_variable_clash() {
    let d = one_error(&with_params("  mode: a\n  MODE: b\n"));
    assert_eq!((d.line, d.column), (4, 3));
    assert_eq!(
        d.message,
        "params `mode` and `MODE` both reach steps as PARAM_MODE"
    );
}

// ---------------------------------------------------------------------------------------------
// Conditions
// ---------------------------------------------------------------------------------------------

#[test]
fn a_when_cannot_read_a_step_that_is_not_upstream() {
    let text = with_steps(
        "
          a: {run: x}
          b:
            run: x
            when: steps.c.outputs.ok == true
          c: {run: x, depends: a}
        ",
    );
    assert_diag(
        &one_error(&text),
        Expect {
            line: 6,
            column: 11,
            field: "steps.b.when",
            step: Some("b"),
            message: "`when` of step `b` reads step `c`, which it does not depend on (directly or through others)",
            help: None,
        },
    );
}

#[test]
fn a_when_cannot_read_an_undeclared_param() {
    let text = with_steps(
        "
          a:
            run: x
            when: params.mode == fast
        ",
    );
    assert_diag(
        &one_error(&text),
        Expect {
            line: 5,
            column: 11,
            field: "steps.a.when",
            step: Some("a"),
            message: "`when` reads param `mode`, which is not declared in `params`",
            help: None,
        },
    );
}

#[test]
fn a_malformed_when_is_reported() {
    let d = step_field_error("when", "drift");
    assert_eq!(d.field, "steps.a.when");
    assert_eq!(
        d.message,
        "expected a comparison such as `steps.monitor.outputs.drift == true`"
    );
}

// ---------------------------------------------------------------------------------------------
// Triggers
// ---------------------------------------------------------------------------------------------

/// A pipeline with `triggers` written as given (starting on line 4).
fn with_triggers(triggers: &str) -> String {
    format!(
        "name: p\nparams: {{dataset: x}}\ntriggers:\n{}steps:\n  a: {{run: x}}\n",
        block(triggers)
    )
}

#[test]
fn an_invalid_cron_expression_is_reported() {
    let d = one_error(&with_triggers("  - cron: \"61 * * * *\"\n"));
    assert_eq!((d.line, d.column), (4, 11));
    assert_eq!(d.field, "triggers[0].cron");
    assert_eq!(d.step, None);
    assert!(
        d.message
            .starts_with("`61 * * * *` is not a valid cron expression: "),
        "{d}"
    );
}

#[test]
fn an_unknown_timezone_is_reported() {
    let text = with_triggers(
        "
          - cron: 0 3 * * *
            timezone: Mars/Olympus
        ",
    );
    assert_diag(
        &one_error(&text),
        Expect {
            line: 5,
            column: 15,
            field: "triggers[0].timezone",
            step: None,
            message: "`Mars/Olympus` is not an IANA time zone such as `Europe/Belgrade` or `UTC`",
            help: None,
        },
    );
}

#[test]
fn a_webhook_cannot_set_an_undeclared_param() {
    let text = with_triggers(
        "
          - cron: 0 3 * * *
          - webhook: new-data
            insecure: true
            params:
              dataset: body.path
              epochs: body.epochs
        ",
    );
    let d = one_error(&text);
    assert_eq!(d.field, "triggers[1]");
    assert_eq!(d.step, None);
    assert_eq!(
        d.message,
        "trigger 2 sets param `epochs`, which is not declared in `params`"
    );
}

#[test]
fn a_webhook_param_problem_points_at_the_trigger() {
    let text = with_triggers(
        "
          - cron: 0 3 * * *
          - webhook: new-data
            insecure: true
            params:
              dataset: body.path
              epochs: body.epochs
        ",
    );
    let d = one_error(&text);
    assert!(
        (5..=8).contains(&d.line),
        "within the webhook trigger (lines 5-8), not at the file's start: {d}"
    );
}

#[test]
fn a_watch_trigger_defaults_to_the_path_param() {
    let d = one_error(&with_triggers("  - watch: {path: /in}\n"));
    assert_eq!(
        d.message,
        "trigger 1 sets param `path`, which is not declared in `params`"
    );
}

// ---------------------------------------------------------------------------------------------
// Whole-file problems
// ---------------------------------------------------------------------------------------------

#[test]
fn an_empty_file_is_reported_at_its_start() {
    for text in ["", "\n\n", "# only a comment\n", "---\n"] {
        assert_diag(
            &one_error(text),
            Expect {
                line: 1,
                column: 1,
                field: "",
                step: None,
                message: "the file is empty: a pipeline needs at least `name` and `steps`",
                help: None,
            },
        );
    }
}

#[test]
fn a_file_that_is_a_list_is_reported() {
    assert_diag(
        &one_error("- name: p\n- steps: {}\n"),
        Expect {
            line: 1,
            column: 1,
            field: "",
            step: None,
            message: "the pipeline must be a mapping, found a list",
            help: None,
        },
    );
}

#[test]
fn missing_name_and_steps_are_both_reported() {
    let diags = invalid("description: nothing else\n");
    let messages: Vec<(&str, &str)> = diags
        .iter()
        .map(|d| (d.field.as_str(), d.message.as_str()))
        .collect();
    assert_eq!(
        messages,
        [
            ("name", "the pipeline has no `name`"),
            ("steps", "the pipeline has no `steps`")
        ]
    );
}

#[test]
fn a_yaml_syntax_error_has_a_position() {
    let text = "name: p\nsteps:\n  a: {run: x\n  b: {run: y}\n";
    let d = one_error(text);
    assert!(d.message.starts_with("invalid YAML: "), "{d}");
    assert!(d.line >= 3, "the error is not before the open brace: {d}");
    assert!(d.column >= 1);
    assert_eq!(d.field, "");
}

#[test]
fn a_second_document_is_refused_where_it_starts() {
    let d = one_error("name: p\nsteps: {a: {run: x}}\n---\nname: q\n");
    assert_eq!(
        d.message,
        "invalid YAML: a pipeline file holds one YAML document; found a second one"
    );
    assert_eq!(d.line, 3);
}

#[test]
fn an_alias_to_an_unknown_anchor_is_a_syntax_error() {
    let d = one_error("name: p\nsteps: *nowhere\n");
    assert!(d.message.starts_with("invalid YAML: "), "{d}");
    assert_eq!(d.line, 2);
}

#[test]
fn a_key_without_a_value_is_reported() {
    let d = one_error("name: p\ndefaults:\nsteps:\n  a: {run: x}\n");
    assert_eq!(d.field, "defaults");
    assert_eq!(
        d.message,
        "`defaults` must be a mapping, found nothing (null)"
    );
    let d = one_error("name: p\nsteps:\n  a:\n    run:\n    timeout: 1m\n");
    assert_eq!(d.field, "steps.a.run");
    assert_eq!(
        d.message,
        "`steps.a.run` must be a string, found nothing (null)"
    );
}

#[test]
fn a_key_without_a_value_is_reported_on_its_own_line() {
    let d = one_error("name: p\ndefaults:\nsteps:\n  a: {run: x}\n");
    assert_eq!(d.line, 2, "at `defaults:`, not at `steps:`: {d}");
    let text = "name: p\nsteps:\n  a:\n    run: x\n    timeout:\n\n\n  b: {run: y}\n";
    let d = one_error(text);
    assert_eq!(d.line, 5, "at `timeout:`, not in step `b`: {d}");
}

#[test]
fn a_file_with_cr_line_endings_renders_the_offending_line() {
    let text = "name: p\rsteps:\r  a: {description: x}\r";
    let d = one_error(text);
    assert_eq!(d.line, 3);
    assert!(
        d.render(text).contains("3 |   a: {description: x}"),
        "{}",
        d.render(text)
    );
}

// ---------------------------------------------------------------------------------------------
// load_file
// ---------------------------------------------------------------------------------------------

fn temp_file(bytes: &[u8]) -> tempfile::NamedTempFile {
    use std::io::Write as _;
    let mut file = tempfile::Builder::new()
        .suffix(".yaml")
        .tempfile()
        .expect("temp file");
    file.write_all(bytes).expect("write");
    file.flush().expect("flush");
    file
}

#[test]
fn load_file_returns_the_text_and_its_hash() {
    let text = "name: p\nsteps:\n  a: {run: x}\n";
    let file = temp_file(text.as_bytes());
    let loaded = load_file(file.path(), DEFAULT_MAX_FILE_BYTES).expect("valid");
    assert_eq!(loaded.pipeline.name, "p");
    assert_eq!(loaded.text, text);
    assert_eq!(loaded.path, file.path());
    assert_eq!(
        loaded.hash, "a290c90762ead303c5f63a624d1efe5de737cb11619e6d2c4bca62b0cd53f25f",
        "SHA-256 of the text, as `sha256sum` prints it"
    );
}

#[test]
fn load_file_refuses_a_file_over_the_cap() {
    let text = "name: p\nsteps:\n  a: {run: x}\n";
    let file = temp_file(text.as_bytes());
    let diags = load_file(file.path(), 10).unwrap_err();
    assert_eq!(diags.len(), 1);
    let d = &diags[0];
    assert_eq!(d.file, file.path().display().to_string());
    assert_eq!((d.line, d.column), (1, 1));
    assert_eq!(
        d.message,
        format!(
            "the file is {} bytes, over the limit of 10 bytes for a pipeline file",
            text.len()
        )
    );
    assert!(
        load_file(file.path(), text.len() as u64).is_ok(),
        "the cap is inclusive"
    );
}

#[test]
fn load_file_refuses_a_file_that_is_not_utf8_at_the_line_of_the_bad_byte() {
    let file = temp_file(b"name: p\nsteps:\n  a: {run: \"caf\xe9\"}\n");
    let diags = load_file(file.path(), DEFAULT_MAX_FILE_BYTES).unwrap_err();
    assert_eq!(diags.len(), 1);
    assert_eq!(diags[0].message, "the file is not valid UTF-8");
    assert_eq!((diags[0].line, diags[0].column), (3, 1));
}

#[test]
fn load_file_reports_a_missing_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("nope.yaml");
    let diags = load_file(&path, DEFAULT_MAX_FILE_BYTES).unwrap_err();
    assert_eq!(diags.len(), 1);
    assert!(
        diags[0].message.starts_with("cannot read the file: "),
        "{}",
        diags[0]
    );
}

#[test]
fn load_file_names_the_file_in_parse_diagnostics() {
    let file = temp_file(b"name: p\nsteps:\n  a: {}\n");
    let diags = load_file(file.path(), DEFAULT_MAX_FILE_BYTES).unwrap_err();
    assert_eq!(diags[0].file, file.path().display().to_string());
}

// ---------------------------------------------------------------------------------------------
// Every problem in one pass
// ---------------------------------------------------------------------------------------------

#[test]
fn every_problem_of_a_file_is_reported_in_one_pass_sorted_by_position() {
    let text = doc("
        name: Bad Name
        colour: blue
        params:
          epochs: {type: integer, default: ten}
        defaults:
          timeout: 30
        steps:
          ingest:
            run: x
            command: [x]
          train:
            dependz: [ingest]
            run: y
            resources: {cpu: lots, memory: 16GB, gpu: 0}
          validate:
            run: z
            depends: [trian, validate]
            timeout: 5x
          a: {run: x, depends: [b]}
          b: {run: x, depends: [a]}
        ");
    let diags = invalid(&text);
    let got: Vec<(usize, &str)> = diags.iter().map(|d| (d.line, d.message.as_str())).collect();
    let expected: Vec<(usize, &str)> = vec![
        (1, "pipeline name `Bad Name` must be 1-64 characters of a-z, 0-9, `_` and `-`"),
        (2, "unknown key `colour` in the pipeline"),
        (4, "default of `params.epochs`: expected an integer, got `ten`"),
        (6, "`30` has no unit: write for example `30s` or `30m`"),
        (10, "step `ingest` must have only one of `run`, `command` and `uses`"),
        (12, "unknown key `dependz` in step `train`"),
        (14, "`lots` is not a CPU amount: use cores (`2`, `0.5`) or millicores (`500m`)"),
        (14, "`16GB` is not a memory size: use a number with a unit such as `512Mi`, `16Gi` or `2G`"),
        (14, "`steps.train.resources.gpu` must be between 1 and 1024, found 0"),
        (17, "step `validate` depends on `trian`, which is not a step"),
        (17, "step `validate` depends on itself"),
        (18, "`5x` is not a duration: use a number with a unit (ms, s, m, h, d) as in `90s` or `1h30m`"),
        (19, "dependency cycle: a -> b -> a"),
    ];
    assert_eq!(got, expected, "\n{}", render_all(&diags, &text));
    let positions: Vec<(usize, usize)> = diags.iter().map(|d| (d.line, d.column)).collect();
    let mut sorted = positions.clone();
    sorted.sort();
    assert_eq!(positions, sorted, "sorted by line, then column");
}

// ---------------------------------------------------------------------------------------------
// Rendering
// ---------------------------------------------------------------------------------------------

#[test]
fn a_diagnostic_renders_with_the_source_line_and_a_caret() {
    let text = with_steps(
        "
          ingest: {run: x}
          train:
            run: y
            depends: [ingset]
        ",
    );
    let d = one_error(&text);
    assert_eq!(
        d.render(&text),
        "error: step `train` depends on `ingset`, which is not a step\n\
         \x20 --> p.yaml:6:15\n\
         \x20 |\n\
         6 |     depends: [ingset]\n\
         \x20 |               ^\n\
         \x20 = help: did you mean `ingest`?\n"
    );
    assert_eq!(
        d.to_string(),
        "p.yaml:6:15: step `train` depends on `ingset`, which is not a step (did you mean `ingest`?)"
    );
}

// ---------------------------------------------------------------------------------------------
// Container settings
// ---------------------------------------------------------------------------------------------

#[test]
fn container_settings_on_a_local_step_are_refused_not_dropped() {
    let d = one_error("name: p\nsteps:\n  a:\n    run: x\n    user: nobody\n");
    assert_eq!(d.line, 5);
    assert_eq!(d.field, "steps.a.user");
    assert_eq!(
        d.message,
        "`user` applies to steps with an `image`; step `a` runs as a local process"
    );
    let d = one_error("name: p\nsteps:\n  a: {run: x, pull: always}\n");
    assert_eq!(d.field, "steps.a.pull");
}

#[test]
fn an_image_step_needs_an_absolute_workdir_of_its_own() {
    let d = one_error("name: p\nsteps:\n  a: {image: busybox, run: x, workdir: src}\n");
    assert_eq!(d.field, "steps.a.workdir");
    assert_eq!(
        d.message,
        "step `a` runs in an image, so its workdir `src` must be an absolute path inside the image"
    );
}

#[test]
fn defaults_apply_only_where_they_can() {
    let p = valid(
        "name: p\ndefaults: {workdir: ../src, user: '1000', pull: never}\nsteps:\n  local: {run: x}\n  boxed: {image: busybox, run: x}\n  placed: {image: busybox, run: x, workdir: /app}\n",
    );
    let local = &p.steps["local"];
    assert_eq!(local.workdir.as_deref(), Some("../src"));
    assert_eq!(local.user, None, "a default user is for containers only");
    let boxed = &p.steps["boxed"];
    assert_eq!(
        boxed.workdir, None,
        "a relative default means nothing inside an image"
    );
    assert_eq!(boxed.user.as_deref(), Some("1000"));
    assert_eq!(boxed.pull, PullPolicy::Never);
    assert_eq!(p.steps["placed"].workdir.as_deref(), Some("/app"));
}

#[test]
fn a_gpu_listed_twice_is_refused() {
    let d = one_error("name: p\nsteps:\n  a: {run: x, resources: {gpu: {ids: ['0', '0']}}}\n");
    assert_eq!(d.field, "steps.a.resources.gpu.ids");
    assert_eq!(d.message, "GPU `0` is listed twice");
}

#[test]
fn uses_noop_is_a_builtin_step_that_takes_no_arguments() {
    let p = valid(&with_steps("  join:\n    uses: noop\n"));
    assert_eq!(
        step(&p, "join").action,
        Action::Uses {
            kind: "noop".into(),
            builtin: Box::new(crate::spec::builtins::Builtin::Noop),
        }
    );
    let d = one_error(&with_steps("  join:\n    uses: noop\n    with: {x: 1}\n"));
    assert_eq!(d.field, "steps.join.with");
    assert!(d.message.contains("takes no `with`"), "{d}");
}

#[test]
fn a_builtin_step_refuses_an_image_and_ignores_the_default_one() {
    let d = one_error(&with_steps(
        "  join:\n    uses: noop\n    image: alpine:3\n",
    ));
    assert_eq!((d.field.as_str(), d.line), ("steps.join.image", 5));
    assert!(d.message.contains("does not run in an image"), "{d}");
    let p = valid(
        "name: p\ndefaults: {image: alpine:3, workdir: src}\nsteps:\n  a: {run: x}\n  join: {uses: noop, depends: [a]}\n",
    );
    assert_eq!(step(&p, "a").image.as_deref(), Some("alpine:3"));
    assert_eq!(step(&p, "join").image, None);
    assert_eq!(step(&p, "join").workdir.as_deref(), Some("src"));
}

#[test]
fn a_webhook_without_a_secret_must_say_it_is_insecure() {
    let d = one_error(&with_triggers(
        "
          - webhook: open
        ",
    ));
    assert_eq!(d.field, "triggers[0].webhook");
    assert!(d.message.contains("has no `secret_env`"), "{}", d.message);
    assert!(d.message.contains("insecure: true"), "{}", d.message);
    valid(&with_triggers(
        "
          - webhook: open
            insecure: true
        ",
    ));
}

#[test]
fn sluices_own_variables_cannot_be_a_steps_secrets() {
    let d = one_error(
        "name: p\nsteps:\n  a:\n    run: echo\n    secrets: [TOKEN, SLUICE_SECRET_KEY]\n",
    );
    assert_eq!((d.line, d.field.as_str()), (5, "steps.a.secrets"), "{d}");
    assert!(
        d.message
            .contains("`SLUICE_SECRET_KEY` cannot be a step's secret"),
        "{d}"
    );
}

#[test]
fn cache_is_a_flag_or_the_globs_of_code_a_step_reads() {
    let p = valid(&doc("
        name: p
        defaults: {cache: true}
        steps:
          a: {run: 'true'}
          b: {run: 'true', cache: false}
          c: {run: 'true', cache: {inputs: ['src/*.py', 'conf/**']}}
        "));
    assert_eq!(step(&p, "a").cache, Some(CachePolicy::default()));
    assert_eq!(step(&p, "b").cache, None);
    assert_eq!(
        step(&p, "c").cache.as_ref().unwrap().inputs,
        strings(&["src/*.py", "conf/**"])
    );
    let outside = one_error(&with_steps(
        "  a: {run: 'true', cache: {inputs: ['../secrets/*']}}\n",
    ));
    assert_eq!(outside.field, "steps.a.cache.inputs");
    assert!(
        outside.message.contains("inside the pipeline's folder"),
        "{}",
        outside.message
    );
    let unknown = one_error(&with_steps("  a: {run: 'true', cache: {input: ['x']}}\n"));
    assert!(unknown.message.contains("`input`"), "{}", unknown.message);
    let not_bool = one_error(&with_steps("  a: {run: 'true', cache: sometimes}\n"));
    assert_eq!(not_bool.field, "steps.a.cache");
}

mod after;
mod conditions;
mod foreign;
mod notify;
mod sections;
