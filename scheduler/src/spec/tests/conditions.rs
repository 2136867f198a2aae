//! `when:` conditions in a file: both sides may read values, `and`/`or`/`not` combine them,
//! every reference must resolve, and quoted text that reads like a reference is a warning.

use super::*;

/// A pipeline with params `mode` and `min` around `steps` (a block under `steps:`, from line 4).
fn with_params_and_steps(steps: &str) -> String {
    format!(
        "name: p\nparams: {{mode: fast, min: '0.5'}}\nsteps:\n{}",
        block(steps)
    )
}

/// Parses a file that must be valid and returns its warnings.
fn warnings(text: &str) -> Vec<Diagnostic> {
    match parse_str_with_warnings(FILE, text) {
        Ok((_, warnings)) => warnings,
        Err(diags) => panic!(
            "expected a valid pipeline, got:\n{}\n--- file ---\n{text}",
            render_all(&diags, text)
        ),
    }
}

#[test]
fn a_when_compares_with_a_param_or_an_output_on_its_right() {
    let p = valid(&with_params_and_steps(
        "
          a: {run: x}
          b: {run: x, depends: a, when: steps.a.outputs.score >= params.min}
          c: {run: x, depends: b, when: params.mode == steps.a.outputs.mode}
        ",
    ));
    assert_eq!(
        step(&p, "b").when,
        Some(Condition::Compare(Compare {
            left: Term::Read(Operand::StepOutput {
                step: "a".into(),
                key: "score".into()
            }),
            op: Comparison::Ge,
            right: Term::Read(Operand::Param("min".into())),
        }))
    );
    assert_eq!(
        step(&p, "c").when.as_ref().unwrap().to_string(),
        "params.mode == steps.a.outputs.mode"
    );
}

#[test]
fn a_when_combines_comparisons_with_and_or_not_and_parentheses() {
    let p = valid(&with_params_and_steps(
        "
          check: {run: x}
          deploy:
            run: x
            depends: check
            when: (steps.check.outputs.ok == yes || params.mode == force) && !params.min > 0.9
        ",
    ));
    let when = step(&p, "deploy").when.as_ref().unwrap();
    assert!(matches!(when, Condition::And(items) if items.len() == 2));
    assert_eq!(
        when.to_string(),
        "(steps.check.outputs.ok == \"yes\" or params.mode == \"force\") and not params.min > \"0.9\""
    );
    assert!(warnings(&with_params_and_steps(
        "
          check: {run: x}
          deploy: {run: x, depends: check, when: steps.check.outputs.ok == yes and not params.mode == dry-run}
        "
    ))
    .is_empty());
}

#[test]
fn a_right_hand_side_reading_a_step_that_is_not_upstream_is_an_error() {
    let text = with_params_and_steps(
        "
          a: {run: x}
          b:
            run: x
            when: params.mode == steps.c.outputs.mode
          c: {run: x, depends: a}
        ",
    );
    assert_diag(
        &one_error(&text),
        Expect {
            line: 7,
            column: 11,
            field: "steps.b.when",
            step: Some("b"),
            message: "`when` of step `b` reads step `c`, which it does not depend on (directly or through others)",
            help: None,
        },
    );
}

#[test]
fn a_right_hand_side_reading_an_undeclared_param_is_an_error() {
    let text = with_params_and_steps(
        "
          a:
            run: x
            when: params.mode == params.wanted
        ",
    );
    assert_diag(
        &one_error(&text),
        Expect {
            line: 6,
            column: 11,
            field: "steps.a.when",
            step: Some("a"),
            message: "`when` reads param `wanted`, which is not declared in `params`",
            help: None,
        },
    );
}

#[test]
fn every_reference_that_cannot_resolve_is_reported_once() {
    let diags = invalid(&with_params_and_steps(
        "
          a: {run: x}
          b: {run: x, when: steps.a.outputs.k == 1 or params.nope == 1 or params.nope == 2}
        ",
    ));
    let messages: Vec<&str> = diags.iter().map(|d| d.message.as_str()).collect();
    assert_eq!(
        messages,
        [
            "`when` of step `b` reads step `a`, which it does not depend on (directly or through others)",
            "`when` reads param `nope`, which is not declared in `params`",
        ]
    );
    assert!(diags
        .iter()
        .all(|d| d.field == "steps.b.when" && d.line == 5));
}

#[test]
fn quoted_text_that_reads_like_a_reference_is_a_warning() {
    let text = with_params_and_steps(
        "
          a:
            run: x
            when: params.mode == \"params.min\"
        ",
    );
    let found = warnings(&text);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].severity, diagnostic::Severity::Warning);
    assert_diag(
        &found[0],
        Expect {
            line: 6,
            column: 11,
            field: "steps.a.when",
            step: Some("a"),
            message:
                "`when` compares with the text \"params.min\", not with the value of `params.min`",
            help: Some("write `params.min` without quotes to compare with its value"),
        },
    );
    assert!(found[0]
        .render(&text)
        .starts_with("warning: `when` compares with the text"));
    assert!(
        warnings(&with_params_and_steps(
            "  a: {run: x, when: params.mode == 'params'}\n"
        ))
        .is_empty(),
        "text that is no reference is no warning"
    );
}

#[test]
fn an_after_trigger_warns_about_a_quoted_reference_too() {
    let text = with_triggers(
        "  - after: {pipeline: monitor, when: 'steps.drift.outputs.drift == \"steps.a.outputs.b\"'}\n",
    );
    let found = warnings(&text);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].field, "triggers[0].after.when");
}

#[test]
fn an_unquoted_and_is_an_operator_and_there_is_no_hint_to_quote_it() {
    let d = step_field_error("when", "'params.x == a && b'");
    assert_eq!(d.field, "steps.a.when");
    assert_eq!(
        d.message,
        "expected a comparison such as `steps.monitor.outputs.drift == true`"
    );
    assert_eq!(d.help, None);
    let d = step_field_error("when", "'params.x == a b'");
    assert!(
        d.message.contains("join comparisons with `and` or `or`"),
        "{}",
        d.message
    );
}

#[test]
fn malformed_conditions_name_the_field() {
    for (when, says) in [
        ("'(params.mode == fast'", "`(` without a matching `)`"),
        (
            "'params.mode = fast'",
            "`=` alone is not an operator: write `==`",
        ),
        (
            "'fast == slow'",
            "reads no value: one side must be `steps.<step>.outputs.<key>` or `params.<name>`",
        ),
        (
            "'params.mode == steps.a.output.x'",
            "`steps.a.output.x` is not something a condition can read",
        ),
    ] {
        let d = one_error(&with_params_and_steps(&format!(
            "  a:\n    run: x\n    when: {when}\n"
        )));
        assert_eq!(d.field, "steps.a.when", "{when}");
        assert_eq!((d.line, d.column), (6, 11), "{when}");
        assert!(d.message.contains(says), "{when}: {}", d.message);
    }
}
