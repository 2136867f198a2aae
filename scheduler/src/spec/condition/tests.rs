//! The `when:` grammar: what it reads, how tightly its words bind, how it prints and what it
//! comes to on given values.

use super::*;

fn parse(text: &str) -> Condition {
    Condition::parse(text).unwrap_or_else(|e| panic!("`{text}`: {e}"))
}

fn param(name: &str) -> Term {
    Term::Read(Operand::Param(name.into()))
}

fn text(value: &str) -> Term {
    Term::Text(value.into())
}

fn compare(left: Term, op: Comparison, right: Term) -> Condition {
    Condition::Compare(Compare { left, op, right })
}

/// `params.<name> == 1`, the leaf the precedence tests are built of.
fn is_one(name: &str) -> Condition {
    compare(param(name), Comparison::Eq, text("1"))
}

/// The params set for one evaluation, as `(name, value)`.
type Set<'a> = &'a [(&'a str, &'a str)];

/// A condition, the params set and what it must come to.
type Row<'a> = (&'a str, Set<'a>, Truth);

/// Evaluates `text` with the params `set` (every other value unset).
fn truth(text: &str, set: Set) -> Truth {
    parse(text)
        .verdict(|operand| match operand {
            Operand::Param(name) => set
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.to_string()),
            Operand::StepOutput { .. } => None,
        })
        .truth
}

#[test]
fn parses_step_outputs_and_params() {
    assert_eq!(
        parse("steps.monitor.outputs.drift == \"true\""),
        compare(
            Term::Read(Operand::StepOutput {
                step: "monitor".into(),
                key: "drift".into()
            }),
            Comparison::Eq,
            text("true")
        )
    );
    assert_eq!(
        parse("params.min >= 0.5"),
        compare(param("min"), Comparison::Ge, text("0.5"))
    );
    assert_eq!(
        parse("params.mode!=dry-run"),
        compare(param("mode"), Comparison::Ne, text("dry-run")),
        "no spaces needed around an operator"
    );
}

#[test]
fn either_side_may_read_a_value() {
    assert_eq!(
        parse("params.a < params.b"),
        compare(param("a"), Comparison::Lt, param("b"))
    );
    assert_eq!(
        parse("0.9 <= steps.eval.outputs.accuracy"),
        compare(
            text("0.9"),
            Comparison::Le,
            Term::Read(Operand::StepOutput {
                step: "eval".into(),
                key: "accuracy".into()
            })
        )
    );
    assert_eq!(
        parse("params.x == 'params.y'"),
        compare(param("x"), Comparison::Eq, text("params.y")),
        "quoted, a reference is text"
    );
}

#[test]
fn not_binds_tighter_than_and_and_and_tighter_than_or() {
    let (a, b, c) = (is_one("a"), is_one("b"), is_one("c"));
    let not = |c: Condition| Condition::Not(Box::new(c));
    let table = [
        (
            "params.a == 1 or params.b == 1 and params.c == 1",
            Condition::Or(vec![a.clone(), Condition::And(vec![b.clone(), c.clone()])]),
        ),
        (
            "params.a == 1 and params.b == 1 or params.c == 1",
            Condition::Or(vec![Condition::And(vec![a.clone(), b.clone()]), c.clone()]),
        ),
        (
            "(params.a == 1 or params.b == 1) and params.c == 1",
            Condition::And(vec![Condition::Or(vec![a.clone(), b.clone()]), c.clone()]),
        ),
        (
            "not params.a == 1 and params.b == 1",
            Condition::And(vec![not(a.clone()), b.clone()]),
        ),
        (
            "not (params.a == 1 and params.b == 1)",
            not(Condition::And(vec![a.clone(), b.clone()])),
        ),
        (
            "params.a == 1 and params.b == 1 and params.c == 1",
            Condition::And(vec![a.clone(), b.clone(), c.clone()]),
        ),
        ("not not params.a == 1", not(not(a.clone()))),
        ("((params.a == 1))", a.clone()),
    ];
    for (text, expected) in table {
        assert_eq!(parse(text), expected, "{text}");
    }
}

#[test]
fn symbols_are_synonyms_of_the_words() {
    for (words, symbols) in [
        (
            "params.a == 1 and params.b == 1",
            "params.a == 1 && params.b == 1",
        ),
        (
            "params.a == 1 or params.b == 1",
            "params.a == 1||params.b == 1",
        ),
        ("not params.a == 1", "!params.a == 1"),
        ("not (params.a == 1)", "!(params.a == 1)"),
    ] {
        assert_eq!(parse(words), parse(symbols), "{symbols}");
    }
}

#[test]
fn printing_reads_back_as_the_same_condition() {
    let table = [
        ("steps.a.outputs.b == x", "steps.a.outputs.b == \"x\""),
        ("params.x != 'say \"hi\"'", "params.x != 'say \"hi\"'"),
        ("params.a<params.b", "params.a < params.b"),
        (
            "params.a == 1 || params.b == 1 && !params.c == 1",
            "params.a == \"1\" or params.b == \"1\" and not params.c == \"1\"",
        ),
        (
            "(params.a == 1 or params.b == 1) and params.c == 1",
            "(params.a == \"1\" or params.b == \"1\") and params.c == \"1\"",
        ),
        (
            "params.a == 1 and (params.b == 1 and params.c == 1)",
            "params.a == \"1\" and (params.b == \"1\" and params.c == \"1\")",
        ),
        (
            "params.a == 1 or (params.b == 1 or params.c == 1)",
            "params.a == \"1\" or (params.b == \"1\" or params.c == \"1\")",
        ),
        (
            "not (params.a == 1 or params.b == 1)",
            "not (params.a == \"1\" or params.b == \"1\")",
        ),
        ("not not params.a == 1", "not not params.a == \"1\""),
        ("params.x == 'and'", "params.x == \"and\""),
        ("params.x == ''", "params.x == \"\""),
    ];
    for (written, printed) in table {
        let condition = parse(written);
        assert_eq!(condition.to_string(), printed, "{written}");
        assert_eq!(parse(printed), condition, "{printed} reads back");
    }
}

#[test]
fn compares_numbers_as_numbers_and_text_as_text() {
    let table: [Row; 9] = [
        ("params.x > 9", &[("x", "10")], Truth::True),
        ("params.x > '9'", &[("x", "10")], Truth::True),
        ("params.x == yes", &[("x", "yes")], Truth::True),
        ("params.x == yes", &[("x", "no")], Truth::False),
        ("params.x != 1.0", &[("x", "1")], Truth::False),
        ("params.x < b", &[("x", "a")], Truth::True),
        ("params.x < 10", &[("x", "9")], Truth::True),
        (
            "params.x == params.y",
            &[("x", "2"), ("y", "2.0")],
            Truth::True,
        ),
        ("params.x != NaN", &[("x", "NaN")], Truth::True),
    ];
    for (text, set, expected) in table {
        assert_eq!(truth(text, set), expected, "{text} with {set:?}");
    }
}

#[test]
fn a_value_never_set_leaves_a_comparison_undecided_and_not_keeps_it_so() {
    let table: [Row; 12] = [
        ("params.x == yes", &[], Truth::Undecided),
        ("params.x != yes", &[], Truth::Undecided),
        ("not params.x == yes", &[], Truth::Undecided),
        ("params.y == params.x", &[("y", "1")], Truth::Undecided),
        // `or` and `and` decide without it when the other side settles the answer.
        ("params.x == 1 or params.y == 1", &[("y", "1")], Truth::True),
        (
            "params.x == 1 or params.y == 1",
            &[("y", "2")],
            Truth::Undecided,
        ),
        (
            "params.x == 1 and params.y == 1",
            &[("y", "2")],
            Truth::False,
        ),
        (
            "params.x == 1 and params.y == 1",
            &[("y", "1")],
            Truth::Undecided,
        ),
        (
            "not (params.x == 1 and params.y == 1)",
            &[("y", "2")],
            Truth::True,
        ),
        (
            "not (params.x == 1 or params.y == 1)",
            &[("y", "1")],
            Truth::False,
        ),
        (
            "params.x == 1 and params.y == 1 or params.z == 1",
            &[("x", "1"), ("y", "1")],
            Truth::True,
        ),
        (
            "params.x == 1 and (params.y == 1 or params.z == 1)",
            &[("x", "1"), ("y", "0"), ("z", "1")],
            Truth::True,
        ),
    ];
    for (text, set, expected) in table {
        assert_eq!(truth(text, set), expected, "{text} with {set:?}");
    }
    assert!(!parse("params.x == yes").eval(|_| None));
    assert!(parse("params.x == yes").eval(|_| Some("yes".into())));
}

#[test]
fn a_verdict_says_which_values_made_it_false() {
    let why = |text: &str, set: Set| {
        parse(text)
            .verdict(|operand| match operand {
                Operand::Param(name) => set
                    .iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, v)| v.to_string()),
                Operand::StepOutput { .. } => None,
            })
            .why_not()
    };
    assert_eq!(why("params.x == 1", &[("x", "1")]), None);
    assert_eq!(
        why("params.x == 1", &[("x", "2")]).as_deref(),
        Some("value: \"2\"")
    );
    assert_eq!(
        why("params.x == 1", &[]).as_deref(),
        Some("params.x was never set")
    );
    assert_eq!(
        why("params.x == 1 or params.y == params.x", &[("y", "2")]).as_deref(),
        Some("params.x was never set")
    );
    assert_eq!(
        why("params.x == 1 or steps.a.outputs.k == 1", &[]).as_deref(),
        Some("params.x and steps.a.outputs.k were never set")
    );
    assert_eq!(
        why("params.x == 1 or params.y == 1", &[("x", "0"), ("y", "2")]).as_deref(),
        Some("params.x = \"0\", params.y = \"2\"")
    );
    assert_eq!(
        why("params.x == 1 and params.y == 1", &[("y", "2")]).as_deref(),
        Some("params.x never set, params.y = \"2\"")
    );
}

#[test]
fn lists_what_it_reads_once_each_and_the_references_in_quotes() {
    let c = parse(
        "params.a == steps.s.outputs.k or not (params.a == 'params.b' and steps.s.outputs.k != \"steps.t.outputs.k\")",
    );
    assert_eq!(
        c.operands(),
        [
            &Operand::Param("a".into()),
            &Operand::StepOutput {
                step: "s".into(),
                key: "k".into()
            }
        ]
    );
    assert_eq!(c.quoted_references(), ["params.b", "steps.t.outputs.k"]);
    assert!(parse("params.a == 'params'").quoted_references().is_empty());
}

#[test]
fn rejects_what_it_cannot_read() {
    let table = [
        (
            "drift",
            "expected a comparison such as `steps.monitor.outputs.drift == true`",
        ),
        (
            "",
            "expected a comparison such as `steps.monitor.outputs.drift == true`",
        ),
        (
            "monitor.drift == 1",
            "`\"monitor.drift\" == \"1\"` reads no value: one side must be `steps.<step>.outputs.<key>` or `params.<name>`",
        ),
        (
            "steps.a.output.b == 1",
            "`steps.a.output.b` is not something a condition can read: use `steps.<step>.outputs.<key>` or `params.<name>`",
        ),
        (
            "params.x == params.",
            "`params.` is not something a condition can read: use `steps.<step>.outputs.<key>` or `params.<name>`",
        ),
        (
            "params.x ==",
            "the comparison has nothing on its right-hand side",
        ),
        ("params.x == 'a", "unterminated quote in `'a`"),
        (
            "params.x == )",
            "expected a value on the right-hand side of `==`, found `)`",
        ),
        (
            "params.x = 1",
            "`=` alone is not an operator: write `==`",
        ),
        (
            "params.x == 1 & params.y == 2",
            "`&` alone is not an operator: write `and` (or `&&`)",
        ),
        (
            "params.x == a b",
            "unexpected `b` after a comparison: join comparisons with `and` or `or`, and quote text that has spaces",
        ),
        (
            "params.x == 1 and",
            "expected a comparison such as `steps.monitor.outputs.drift == true`",
        ),
        (
            "(params.x == 1",
            "`(` without a matching `)`",
        ),
        ("params.x == 1)", "`)` without a matching `(`"),
        (
            "params.x",
            "expected a comparison such as `steps.monitor.outputs.drift == true`",
        ),
    ];
    for (text, message) in table {
        assert_eq!(Condition::parse(text), Err(message.to_string()), "{text}");
    }
}

#[test]
fn nesting_is_bounded() {
    let deep = |n: usize| format!("{}params.x == 1{}", "(".repeat(n), ")".repeat(n));
    assert!(Condition::parse(&deep(MAX_NESTING)).is_ok());
    assert_eq!(
        Condition::parse(&deep(MAX_NESTING + 1)),
        Err(format!(
            "the condition nests more than {MAX_NESTING} levels of `not` and parentheses"
        ))
    );
    let nots = format!("{}params.x == 1", "not ".repeat(100_000));
    assert!(
        Condition::parse(&nots).is_err(),
        "refused, not a stack overflow"
    );
}

#[test]
fn a_long_flat_condition_is_read_in_linear_time() {
    let text = (0..20_000)
        .map(|i| format!("params.p{i} == {i}"))
        .collect::<Vec<_>>()
        .join(" or ");
    let c = parse(&text);
    assert_eq!(c.operands().len(), 20_000);
    assert!(c.eval(|operand| match operand {
        Operand::Param(name) if name == "p19999" => Some("19999".into()),
        _ => Some("x".into()),
    }));
}
