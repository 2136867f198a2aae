//! `on_failure:` and `finally:` sections, and `matrix:` sweeps.

use super::*;

// ---------------------------------------------------------------------------------------------
// Handler sections
// ---------------------------------------------------------------------------------------------

#[test]
fn handler_sections_hold_steps_of_their_own_that_may_read_the_run_steps_outputs() {
    let p = valid(&doc("
        name: p
        steps:
          train: {run: ./train.sh, outputs: [model/]}
        on_failure:
          alert: {run: ./page-someone.sh}
        finally:
          report: {run: ./report.sh, depends: [train]}
          cleanup: {run: ./cleanup.sh, depends: [report]}
        "));
    let phases: Vec<(&str, Phase)> = p
        .steps
        .values()
        .map(|s| (s.name.as_str(), s.phase))
        .collect();
    assert_eq!(
        phases,
        [
            ("train", Phase::Main),
            ("alert", Phase::OnFailure),
            ("report", Phase::Finally),
            ("cleanup", Phase::Finally),
        ]
    );
    assert_eq!(step(&p, "report").depends, ["train"]);
}

#[test]
fn a_step_cannot_depend_on_a_section_that_runs_after_it() {
    let text = doc("
        name: p
        steps:
          train: {run: x, depends: [cleanup]}
        finally:
          cleanup: {run: y}
        ");
    assert_diag(
        &one_error(&text),
        Expect {
            line: 3,
            column: 29,
            field: "steps.train.depends",
            step: Some("train"),
            message: "step `train` depends on `cleanup`, a step of `finally`, which runs after it",
            help: Some("`on_failure` steps run after `steps`, and `finally` steps after both"),
        },
    );
}

#[test]
fn a_name_is_used_once_across_sections_and_handler_errors_name_their_section() {
    let text = doc("
        name: p
        steps:
          train: {run: x}
        on_failure:
          train: {run: y}
          alert: {run: z, timeout: soon}
        ");
    let diags = invalid(&text);
    let seen: Vec<(usize, &str, Option<&str>)> = diags
        .iter()
        .map(|d| (d.line, d.field.as_str(), d.step.as_deref()))
        .collect();
    assert_eq!(
        seen,
        [
            (5, "on_failure.train", Some("train")),
            (6, "on_failure.alert.timeout", Some("alert")),
        ],
        "{}",
        render_all(&diags, &text)
    );
    assert_eq!(
        diags[0].message,
        "step name `train` is used in `steps` and in `on_failure`"
    );
}

// ---------------------------------------------------------------------------------------------
// Matrix
// ---------------------------------------------------------------------------------------------

#[test]
fn a_matrix_expands_into_one_step_per_combination_and_depends_waits_for_all() {
    let p = valid(&doc("
        name: p
        steps:
          prep: {run: x}
          train:
            run: python train.py --lr \"$MATRIX_LR\"
            depends: [prep]
            matrix: {lr: [0.1, 0.01], depth: [3, 5]}
          pick: {run: y, depends: [train]}
        "));
    let names: Vec<&str> = p.steps.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "prep",
            "train[lr=0.1,depth=3]",
            "train[lr=0.1,depth=5]",
            "train[lr=0.01,depth=3]",
            "train[lr=0.01,depth=5]",
            "pick"
        ]
    );
    assert_eq!(step(&p, "pick").depends, &names[1..5]);
    let cell = step(&p, "train[lr=0.01,depth=5]");
    assert_eq!(cell.depends, ["prep"]);
    assert_eq!(cell.env.get("MATRIX_LR").map(String::as_str), Some("0.01"));
    assert_eq!(cell.env.get("MATRIX_DEPTH").map(String::as_str), Some("5"));
    assert_eq!(p.steps_named("train").len(), 4);
    assert_eq!(p.steps_named("prep").len(), 1);
    assert!(p.steps_named("nope").is_empty());
}

#[test]
fn a_matrix_over_the_cap_is_an_error_that_says_how_large_it_is() {
    let values = |n: usize| (0..n).map(|i| i.to_string()).collect::<Vec<_>>().join(", ");
    let text = with_steps(&format!(
        "  t:\n    run: x\n    matrix: {{a: [{}], b: [{}], c: [0, 1, 2]}}\n",
        values(20),
        values(20)
    ));
    let d = one_error(&text);
    assert_eq!(d.field, "steps.t.matrix");
    assert_eq!(
        d.message,
        "`steps.t.matrix` expands into 1200 steps (20 x 20 x 3); at most 1000 are allowed"
    );
}

#[test]
fn broken_matrices_are_each_explained() {
    let cases = [
        ("[0.1, 0.2]", "`steps.t.matrix` must be a mapping of name to a list of values, found a list"),
        ("{}", "`steps.t.matrix` has no values to sweep"),
        ("{LR: [1]}", "matrix name `LR` must be lower-case letters, digits and `_`, starting with a letter (it becomes `MATRIX_LR`)"),
        ("{lr: 0.1}", "`steps.t.matrix.lr` must be a list of values, found a number"),
        ("{lr: []}", "`steps.t.matrix.lr` has no values"),
        ("{lr: [1, 1]}", "`1` is listed twice"),
        ("{data: [a/b.csv]}", "matrix value `a/b.csv` must be 1-64 characters of letters, digits, `.`, `_`, `-` and `+` (it becomes part of the step's name)"),
    ];
    for (matrix, message) in cases {
        let text = with_steps(&format!("  t: {{run: x, matrix: {matrix}}}\n"));
        assert_eq!(one_error(&text).message, message, "for {matrix}");
    }
}

#[test]
fn what_reads_one_steps_values_cannot_name_a_matrix_step() {
    let text = doc("
        name: p
        steps:
          train: {run: x, matrix: {lr: [1, 2]}}
          eval: {run: y, depends: [train], when: steps.train.outputs.ok == yes}
        ");
    assert_eq!(
        one_error(&text).message,
        "`when` reads step `train`, which has a `matrix`: each of its expansions has its own outputs"
    );
    let text = with_steps("  t: {uses: noop, matrix: {lr: [1]}}\n");
    assert_eq!(
        one_error(&text).message,
        "step `t` is a built-in (`uses:`), which cannot have a `matrix`"
    );
}
