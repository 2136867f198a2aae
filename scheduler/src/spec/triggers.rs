//! The `triggers:` list: cron schedules, webhooks, watched folders and other pipelines' runs.
//!
//! They are read and checked here so a broken schedule fails `sluice validate` in CI, long
//! before a daemon would have fired it.

use indexmap::IndexMap;

use super::condition::{parse_operand, Condition};
use super::model::{AfterStatus, AfterTrigger, Catchup, RunValue, Trigger};
use super::parse::cron_expression;
use super::reader::{join, Reader};
use super::values;
use super::yaml::{Node, Value};
use crate::triggers::cron::Schedule;

const CRON_KEYS: &[&str] = &["cron", "timezone", "catchup"];
const WEBHOOK_KEYS: &[&str] = &["webhook", "secret_env", "params", "insecure"];
const WATCH_KEYS: &[&str] = &["watch", "param"];
const WATCH_INNER_KEYS: &[&str] = &["path", "pattern"];
const AFTER_KEYS: &[&str] = &["after", "params"];
const AFTER_INNER_KEYS: &[&str] = &["pipeline", "status", "when", "breaches", "cooldown"];
const BREACHES_KEYS: &[&str] = &["count", "within"];
const KINDS: [&str; 4] = ["cron", "webhook", "watch", "after"];

/// Reads the list of triggers.
pub fn triggers(r: &mut Reader, node: &Node) -> Option<Vec<Trigger>> {
    let Value::Seq(items) = &node.value else {
        r.error(
            node.mark,
            "triggers",
            format!("`triggers` must be a list, found {}", node.value.kind()),
        );
        return None;
    };
    let mut out = Vec::new();
    let mut ok = true;
    for (i, item) in items.iter().enumerate() {
        match trigger(r, item, &format!("triggers[{i}]")) {
            Some(t) => out.push(t),
            None => ok = false,
        }
    }
    ok.then_some(out)
}

fn trigger(r: &mut Reader, node: &Node, path: &str) -> Option<Trigger> {
    let kind = match &node.value {
        Value::Map(entries) => entries.iter().find_map(|(k, _)| match &k.value {
            Value::String(s) if KINDS.contains(&s.as_str()) => Some(s.clone()),
            _ => None,
        }),
        _ => None,
    };
    match kind.as_deref() {
        Some("cron") => cron(r, node, path),
        Some("webhook") => webhook(r, node, path),
        Some("watch") => watch(r, node, path),
        Some("after") => after(r, node, path),
        _ => {
            r.error(
                node.mark,
                path,
                "a trigger must be one of `cron: ...`, `webhook: ...`, `watch: ...` or `after: ...`",
            );
            None
        }
    }
}

fn cron(r: &mut Reader, node: &Node, path: &str) -> Option<Trigger> {
    let fields = r.mapping(node, path, "a cron trigger", CRON_KEYS)?;
    let (_, expr_node) = fields.get("cron")?;
    let field = join(path, "cron");
    let schedule = r.string(expr_node, &field)?;
    let schedule_ok = cron_expression(&schedule)
        .map_err(|m| r.error(expr_node.mark, &field, m))
        .is_ok();
    let timezone = match fields.get("timezone") {
        Some((_, n)) => {
            let field = join(path, "timezone");
            let tz = r.string(n, &field)?;
            tz.parse::<chrono_tz::Tz>()
                .map_err(|_| {
                    r.error(
                        n.mark,
                        &field,
                        format!(
                            "`{tz}` is not an IANA time zone such as `Europe/Belgrade` or `UTC`"
                        ),
                    )
                })
                .ok()?;
            tz
        }
        None => "UTC".to_string(),
    };
    let catchup = match fields.get("catchup") {
        Some((_, n)) => r.choice(
            n,
            &join(path, "catchup"),
            &[
                ("none", Catchup::None),
                ("latest", Catchup::Latest),
                ("all", Catchup::All),
            ],
        )?,
        None => Catchup::Latest,
    };
    let parsed = Box::new(Schedule::new(&schedule, &timezone).ok()?);
    schedule_ok.then_some(Trigger::Cron {
        schedule,
        timezone,
        catchup,
        parsed,
    })
}

fn webhook(r: &mut Reader, node: &Node, path: &str) -> Option<Trigger> {
    let fields = r.mapping(node, path, "a webhook trigger", WEBHOOK_KEYS)?;
    let (_, name_node) = fields.get("webhook")?;
    let field = join(path, "webhook");
    let name = r.string(name_node, &field)?;
    values::step_name(&name)
        .map_err(|_| {
            r.error(
                name_node.mark,
                &field,
                format!("webhook name `{name}` must be letters, digits, `_` and `-`"),
            )
        })
        .ok()?;
    let secret_env = match fields.get("secret_env") {
        Some((_, n)) => {
            let field = join(path, "secret_env");
            let var = r.string(n, &field)?;
            values::variable_name(&var)
                .map_err(|m| r.error(n.mark, &field, m))
                .ok()?;
            Some(var)
        }
        None => None,
    };
    let params = match fields.get("params") {
        Some((_, n)) => string_map(r, n, &join(path, "params"))?,
        None => IndexMap::new(),
    };
    let insecure = match fields.get("insecure") {
        Some((_, n)) => r.boolean(n, &join(path, "insecure"))?,
        None => false,
    };
    if secret_env.is_none() && !insecure {
        r.error(
            name_node.mark,
            &field,
            format!("webhook `{name}` has no `secret_env`: anyone who can reach the scheduler could start runs; sign deliveries with a secret, or say `insecure: true`"),
        );
        return None;
    }
    Some(Trigger::Webhook {
        name,
        secret_env,
        params,
    })
}

fn watch(r: &mut Reader, node: &Node, path: &str) -> Option<Trigger> {
    let fields = r.mapping(node, path, "a watch trigger", WATCH_KEYS)?;
    let (_, inner) = fields.get("watch")?;
    let inner_path = join(path, "watch");
    let inner_fields = r.mapping(inner, &inner_path, "`watch`", WATCH_INNER_KEYS)?;
    let Some((_, path_node)) = inner_fields.get("path") else {
        r.error(inner.mark, &inner_path, "`watch` needs a `path` to watch");
        return None;
    };
    let folder = r.string(path_node, &join(&inner_path, "path"))?;
    let pattern = match inner_fields.get("pattern") {
        Some((_, n)) => r.string(n, &join(&inner_path, "pattern"))?,
        None => "*".to_string(),
    };
    let param = match fields.get("param") {
        Some((_, n)) => r.string(n, &join(path, "param"))?,
        None => "path".to_string(),
    };
    Some(Trigger::Watch {
        path: folder,
        pattern,
        param,
    })
}

fn after(r: &mut Reader, node: &Node, path: &str) -> Option<Trigger> {
    let fields = r.mapping(node, path, "an after trigger", AFTER_KEYS)?;
    let (_, inner) = fields.get("after")?;
    let inner_path = join(path, "after");
    let inner_fields = r.mapping(inner, &inner_path, "`after`", AFTER_INNER_KEYS)?;
    let Some((_, pipeline_node)) = inner_fields.get("pipeline") else {
        r.error(
            inner.mark,
            &inner_path,
            "`after` needs the `pipeline` whose runs it follows",
        );
        return None;
    };
    let field = join(&inner_path, "pipeline");
    let pipeline = r.string(pipeline_node, &field)?;
    values::pipeline_name(&pipeline)
        .map_err(|m| r.error(pipeline_node.mark, &field, m))
        .ok()?;
    let status = match inner_fields.get("status") {
        Some((_, n)) => r.choice(
            n,
            &join(&inner_path, "status"),
            &[
                ("succeeded", AfterStatus::Succeeded),
                ("failed", AfterStatus::Failed),
                ("cancelled", AfterStatus::Cancelled),
                ("finished", AfterStatus::Finished),
            ],
        )?,
        None => AfterStatus::Succeeded,
    };
    let when = match inner_fields.get("when") {
        Some((_, n)) => {
            let field = join(&inner_path, "when");
            let text = r.string(n, &field)?;
            if !super::templates::check(r, &text, n.mark, &field, super::templates::Place::When) {
                return None;
            }
            let condition = Condition::parse(&text)
                .map_err(|m| r.error(n.mark, &field, m))
                .ok()?;
            super::check::quoted_references(r, &condition, n.mark, &field);
            Some((text, condition))
        }
        None => None,
    };
    let (count, within) = match inner_fields.get("breaches") {
        Some((_, n)) => breaches(r, n, &join(&inner_path, "breaches"))?,
        None => (1, None),
    };
    let cooldown = match inner_fields.get("cooldown") {
        Some((_, n)) => Some(r.duration(n, &join(&inner_path, "cooldown"))?),
        None => None,
    };
    let params = match fields.get("params") {
        Some((_, n)) => run_values(r, n, &join(path, "params"))?,
        None => IndexMap::new(),
    };
    Some(Trigger::After(Box::new(AfterTrigger {
        pipeline,
        status,
        when,
        count,
        within,
        cooldown,
        params,
    })))
}

/// `breaches: {count: 2, within: 3d}`: how many counting runs, in how long.
fn breaches(r: &mut Reader, node: &Node, path: &str) -> Option<(u32, Option<std::time::Duration>)> {
    let fields = r.mapping(node, path, "`breaches`", BREACHES_KEYS)?;
    let count = match fields.get("count") {
        Some((_, n)) => u32::try_from(r.integer(n, &join(path, "count"), 1, 1000)?).ok()?,
        None => 1,
    };
    let within = match fields.get("within") {
        Some((_, n)) => Some(r.positive_duration(n, &join(path, "within"))?),
        None => None,
    };
    Some((count, within))
}

/// `params: {batch: steps.drift.outputs.batch, source: run.id}`.
fn run_values(r: &mut Reader, node: &Node, path: &str) -> Option<IndexMap<String, RunValue>> {
    let mut out = IndexMap::new();
    let mut ok = true;
    for (name, text) in string_map(r, node, path)? {
        let field = join(path, &name);
        if text.trim() == "run.id" {
            out.insert(name, RunValue::RunId);
            continue;
        }
        match parse_operand(text.trim()) {
            Ok(operand) => {
                out.insert(name, RunValue::Operand(operand));
            }
            Err(_) => {
                r.error(
                    node.mark,
                    &field,
                    format!("`{text}` is not something an after trigger can pass: use `run.id`, `params.<name>` or `steps.<step>.outputs.<key>` of the run it follows"),
                );
                ok = false;
            }
        }
    }
    ok.then_some(out)
}

fn string_map(r: &mut Reader, node: &Node, path: &str) -> Option<IndexMap<String, String>> {
    let Value::Map(entries) = &node.value else {
        r.error(
            node.mark,
            path,
            format!("`{path}` must be a mapping, found {}", node.value.kind()),
        );
        return None;
    };
    let mut out = IndexMap::new();
    for (k, v) in entries {
        let key = k.value.scalar_text().unwrap_or_default();
        let value = r.string(v, &join(path, &key))?;
        out.insert(key, value);
    }
    Some(out)
}
