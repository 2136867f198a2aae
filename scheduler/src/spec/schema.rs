//! The JSON Schema of pipeline files, for editors' YAML language servers.
//!
//! It describes shapes only; `sluice validate` remains the authority (cycles, dependency targets,
//! cron syntax and the like cannot be said in JSON Schema). The key lists come from the parser's
//! own constants, so the schema cannot drift from what the parser accepts.

use serde_json::{json, Map, Value};

use super::parse::{
    CONCURRENCY_KEYS, DEFAULTS_KEYS, PARAM_KEYS, PIPELINE_KEYS, RESOURCE_KEYS, RETRY_KEYS,
    STEP_KEYS,
};

/// The JSON Schema (draft 2020-12) of a pipeline file.
pub fn pipeline_schema() -> Value {
    let cache = json!({
        "description": "Reuse an earlier successful attempt with the same definition, image digest, params and inputs.",
        "oneOf": [
            {"type": "boolean"},
            {"type": "object", "additionalProperties": false, "properties": {
                "inputs": {"type": "array", "items": {"type": "string"}, "description": "Globs of files the step reads, under the pipeline's folder."}
            }}
        ]
    });
    let duration = json!({
        "type": "string",
        "pattern": "^\\s*([0-9]+(\\.[0-9]+)?\\s*[a-zA-Zµ]+\\s*)+$",
        "description": "A duration with units: 500ms, 10s, 5m, 2h, 1d, 1h30m."
    });
    let env = json!({
        "type": "object",
        "propertyNames": {"pattern": "^[A-Za-z_][A-Za-z0-9_]*$"},
        "additionalProperties": {"type": ["string", "number", "boolean"]}
    });
    let string_or_list = json!({
        "oneOf": [
            {"type": "string"},
            {"type": "array", "items": {"type": ["string", "number"]}}
        ]
    });
    let retry = json!({
        "oneOf": [
            {"type": "integer", "minimum": 0, "maximum": 100},
            object(RETRY_KEYS, json!({
                "limit": {"type": "integer", "minimum": 0, "maximum": 100},
                "lost": {"type": "integer", "minimum": 0, "maximum": 100},
                "backoff": {"enum": ["fixed", "exponential"]},
                "delay": duration,
                "max_delay": duration,
                "on_exit_codes": {"type": "array", "items": {"type": "integer", "minimum": 1, "maximum": 255}}
            }))
        ]
    });
    let resources = object(
        RESOURCE_KEYS,
        json!({
            "cpu": {"type": ["number", "string"], "description": "Cores (2, 0.5) or millicores (500m)."},
            "memory": {"type": ["string", "integer"], "description": "512Mi, 16Gi, 2G or bytes."},
            "gpu": {"oneOf": [
                {"type": "integer", "minimum": 1},
                {"const": "all"},
                object(&["ids"], json!({"ids": {"type": "array", "items": {"type": ["string", "integer"]}, "minItems": 1}}))
            ]}
        }),
    );
    let step = object(
        STEP_KEYS,
        json!({
            "description": {"type": "string"},
            "depends": string_or_list,
            "when": {"type": "string", "description": "Comparisons (==, !=, <, <=, >, >=) of steps.<step>.outputs.<key>, params.<name> and values, combined with and, or, not and parentheses."},
            "run": {"type": "string", "description": "Shell command, run with sh -c."},
            "command": {"type": "array", "items": {"type": ["string", "number", "boolean"]}, "minItems": 1},
            "uses": {"enum": ["noop", "register", "gate", "drift", "deploy"], "description": "A step kind built into Sluice: `noop` succeeds at once; `register`, `gate`, `drift` and `deploy` are the model registry, quality gates, drift checks and deployments (their arguments go in `with`)."},
            "with": {"type": "object", "description": "Arguments of the `uses` kind (see the README's built-in step kinds)."},
            "image": {"type": "string"},
            "env": env,
            "secrets": {"type": "array", "items": {"type": "string", "pattern": "^(?!SLUICE_)[A-Za-z_][A-Za-z0-9_]*$"}},
            "workdir": {"type": "string"},
            "retry": retry,
            "timeout": duration,
            "resources": resources,
            "queue": {"type": "string"},
            "outputs": string_or_list,
            "pull": {"enum": ["if_not_present", "always", "never"]},
            "user": {"type": ["string", "integer"], "description": "uid[:gid] or a user name the image knows."},
            "cache": cache,
            "matrix": {
                "type": "object",
                "description": "One step per combination of values, named `step[a=1,b=x]`, each seeing MATRIX_<NAME>.",
                "minProperties": 1,
                "propertyNames": {"pattern": "^[a-z][a-z0-9_]{0,63}$"},
                "additionalProperties": {"type": "array", "minItems": 1, "uniqueItems": true, "items": {"type": ["string", "number", "boolean"]}}
            }
        }),
    );
    let section = |about: &str| {
        json!({
            "type": "object",
            "minProperties": 1,
            "description": about,
            "propertyNames": {"pattern": "^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"},
            "additionalProperties": step.clone()
        })
    };
    let param = json!({
        "oneOf": [
            {"type": ["string", "number", "boolean", "null"]},
            object(PARAM_KEYS, json!({
                "type": {"enum": ["string", "integer", "number", "boolean"]},
                "default": {"type": ["string", "number", "boolean"]},
                "description": {"type": "string"}
            }))
        ]
    });
    let trigger = json!({
        "oneOf": [
            object(&["cron", "timezone", "catchup"], json!({
                "cron": {"type": "string"},
                "timezone": {"type": "string"},
                "catchup": {"enum": ["none", "latest", "all"]}
            })).with_required(&["cron"]),
            object(&["webhook", "secret_env", "params", "insecure"], json!({
                "insecure": {"type": "boolean"},
                "webhook": {"type": "string"},
                "secret_env": {"type": "string"},
                "params": {"type": "object", "additionalProperties": {"type": "string"}}
            })).with_required(&["webhook"]),
            object(&["watch", "param"], json!({
                "watch": object(&["path", "pattern"], json!({"path": {"type": "string"}, "pattern": {"type": "string"}})),
                "param": {"type": "string"}
            })).with_required(&["watch"]),
            object(&["after", "params"], json!({
                "after": object(&["pipeline", "status", "when", "breaches", "cooldown"], json!({
                    "pipeline": {"type": "string"},
                    "status": {"enum": ["succeeded", "failed", "cancelled", "finished"]},
                    "when": {"type": "string"},
                    "breaches": object(&["count", "within"], json!({
                        "count": {"type": "integer", "minimum": 1, "maximum": 1000},
                        "within": {"type": "string"}
                    })),
                    "cooldown": {"type": "string"}
                })).with_required(&["pipeline"]),
                "params": {"type": "object", "additionalProperties": {"type": "string"}}
            })).with_required(&["after"])
        ]
    });
    let mut root = object(
        PIPELINE_KEYS,
        json!({
            "name": {"type": "string", "pattern": "^[a-z0-9_-]{1,64}$"},
            "description": {"type": "string"},
            "params": {"type": "object", "additionalProperties": param},
            "env": env,
            "defaults": object(DEFAULTS_KEYS, json!({
                "timeout": duration, "retry": retry, "workdir": {"type": "string"},
                "image": {"type": "string"}, "queue": {"type": "string"}, "resources": resources,
                "pull": {"enum": ["if_not_present", "always", "never"]},
                "user": {"type": ["string", "integer"]},
                "cache": cache
            })),
            "parallelism": {"type": "integer", "minimum": 1},
            "concurrency": object(CONCURRENCY_KEYS, json!({
                "limit": {"type": "integer", "minimum": 1},
                "overlap": {"enum": ["queue", "skip", "cancel_running", "allow"]}
            })),
            "triggers": {"type": "array", "items": trigger},
            "timeout": {"type": "string", "description": "Longest the whole run may take (`2h`); past it, it is stopped and ends failed."},
            "notify": {"type": "array", "items": object(&["on", "webhook", "format", "secret_env"], json!({
                "on": {"type": "array", "items": {"enum": ["succeeded", "failed", "cancelled"]}},
                "webhook": {"type": "string", "pattern": "^https?://"},
                "format": {"enum": ["json", "slack"]},
                "secret_env": {"type": "string"}
            })).with_required(&["webhook"])},
            "steps": section("The run's steps, by name."),
            "on_failure": section("Steps run after the others when the run failed; they see SLUICE_RUN_STATUS and SLUICE_FAILED_STEPS."),
            "finally": section("Steps run last whatever happened, even after a cancel; they see SLUICE_RUN_STATUS.")
        }),
    )
    .with_required(&["name", "steps"]);
    if let Value::Object(map) = &mut root {
        map.insert(
            "$schema".into(),
            json!("https://json-schema.org/draft/2020-12/schema"),
        );
        map.insert("title".into(), json!("Sluice pipeline"));
    }
    root
}

/// An object schema that allows exactly `keys`, with the given property schemas.
fn object(keys: &[&str], properties: Value) -> Value {
    let mut props = match properties {
        Value::Object(map) => map,
        _ => Map::new(),
    };
    props.retain(|k, _| keys.contains(&k.as_str()));
    for key in keys {
        props.entry(key.to_string()).or_insert(json!({}));
    }
    json!({"type": "object", "properties": props, "additionalProperties": false})
}

trait WithRequired {
    fn with_required(self, keys: &[&str]) -> Value;
}

impl WithRequired for Value {
    fn with_required(mut self, keys: &[&str]) -> Value {
        if let Value::Object(map) = &mut self {
            map.insert("required".into(), json!(keys));
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_step_key_the_parser_knows_is_in_the_schema() {
        let schema = pipeline_schema();
        let step = &schema["properties"]["steps"]["additionalProperties"]["properties"];
        for key in STEP_KEYS {
            assert!(
                step.get(key).is_some(),
                "step key {key} missing from schema"
            );
        }
        assert_eq!(schema["required"], json!(["name", "steps"]));
    }
}
