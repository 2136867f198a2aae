//! `after:` triggers: what `validate` reads and refuses.

use super::*;

#[test]
fn an_after_trigger_reads_every_field() {
    let text = with_triggers(
        r#"
          - after:
              pipeline: monitor
              status: finished
              when: steps.drift.outputs.drift == "true"
              breaches: {count: 2, within: 3d}
              cooldown: 24h
            params: {dataset: steps.drift.outputs.batch}
        "#,
    );
    let p = valid(&text);
    let Trigger::After(after) = &p.triggers[0] else {
        panic!("not an after trigger: {:?}", p.triggers[0]);
    };
    assert_eq!(after.pipeline, "monitor");
    assert_eq!(after.status, AfterStatus::Finished);
    assert_eq!(
        after.when.as_ref().map(|(text, _)| text.as_str()),
        Some(r#"steps.drift.outputs.drift == "true""#)
    );
    assert_eq!(after.count, 2);
    assert_eq!(after.within, Some(Duration::from_secs(3 * 86_400)));
    assert_eq!(after.cooldown, Some(Duration::from_secs(86_400)));
    assert_eq!(
        after.params["dataset"],
        RunValue::Operand(condition::Operand::StepOutput {
            step: "drift".into(),
            key: "batch".into()
        })
    );
}

#[test]
fn an_after_trigger_defaults_to_every_succeeded_run() {
    let p = valid(&with_triggers("  - after: {pipeline: monitor}\n"));
    let Trigger::After(after) = &p.triggers[0] else {
        panic!("not an after trigger");
    };
    assert_eq!(
        (after.status, after.count, after.within, after.cooldown),
        (AfterStatus::Succeeded, 1, None, None)
    );
    assert!(after.when.is_none() && after.params.is_empty());
}

#[test]
fn after_trigger_mistakes_name_their_field() {
    for (trigger, field, says) in [
        (
            "  - after: {}\n",
            "triggers[0].after",
            "needs the `pipeline`",
        ),
        (
            "  - after: {pipeline: monitor, status: done}\n",
            "triggers[0].after.status",
            "expected one of succeeded, failed, cancelled, finished",
        ),
        (
            "  - after: {pipeline: monitor, when: drift is high}\n",
            "triggers[0].after.when",
            "expected a comparison",
        ),
        (
            "  - after: {pipeline: monitor, breaches: {count: 0}}\n",
            "triggers[0].after.breaches.count",
            "between 1 and 1000",
        ),
        (
            "  - after: {pipeline: monitor, breaches: {count: 2, within: 3}}\n",
            "triggers[0].after.breaches.within",
            "has no unit",
        ),
        (
            "  - after: {pipeline: monitor, cooldown: soon}\n",
            "triggers[0].after.cooldown",
            "is not a duration",
        ),
        (
            "  - after: {pipeline: monitor, breach: {count: 2}}\n",
            "triggers[0].after.breach",
            "unknown key `breach`",
        ),
        (
            "  - after: {pipeline: monitor}\n    params: {dataset: body.path}\n",
            "triggers[0].params.dataset",
            "use `run.id`, `params.<name>` or `steps.<step>.outputs.<key>`",
        ),
        (
            "  - after: {pipeline: monitor}\n    params: {epochs: run.id}\n",
            "triggers[0]",
            "sets param `epochs`, which is not declared",
        ),
        (
            "  - after: {pipeline: p}\n",
            "triggers[0].after.pipeline",
            "cannot start after its own runs",
        ),
    ] {
        let text = with_triggers(trigger);
        let d = one_error(&text);
        assert_eq!(d.field, field, "{trigger}: {d}");
        assert!(d.message.contains(says), "{trigger}: {d}");
    }
}

#[test]
fn a_breach_count_mistake_suggests_the_key() {
    let d = one_error(&with_triggers(
        "  - after: {pipeline: monitor, breaches: {cout: 2}}\n",
    ));
    assert_eq!(d.help.as_deref(), Some("did you mean `count`?"));
}
