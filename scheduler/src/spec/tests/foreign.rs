//! Messages for people coming from other tools: template syntax, other tools' keys, step keys
//! indented one level too high, and YAML files that are not pipelines.

use super::*;

// ---------------------------------------------------------------------------------------------
// Template syntax
// ---------------------------------------------------------------------------------------------

#[test]
fn a_param_template_in_a_script_points_at_the_template_and_names_the_variable() {
    let text = doc("
        name: p
        params: {lr: 0.1}
        steps:
          train:
            run: |
              echo start
              python train.py --lr {{ params.lr }}
        ");
    assert_diag(
        &one_error(&text),
        Expect {
            line: 7,
            column: 28,
            field: "steps.train.run",
            step: Some("train"),
            message: "`steps.train.run` holds template syntax `{{ params.lr }}`, which Sluice does not expand",
            help: Some("params reach a step as environment variables, never spliced into its command: write `\"$PARAM_LR\"`"),
        },
    );
}

#[test]
fn each_template_of_a_value_is_reported_where_it_stands() {
    let text = with_steps("  a: {run: \"x --d '{{ds}}' --id {{ run_id }} --d '{{ds}}'\"}\n");
    let diags = invalid(&text);
    let seen: Vec<(usize, usize, &str)> = diags
        .iter()
        .map(|d| (d.line, d.column, d.help.as_deref().unwrap_or("")))
        .collect();
    assert_eq!(
        seen,
        [
            (3, 20, "there is no logical date in Sluice: declare a param (`params: {date: {type: string}}`) and read `\"$PARAM_DATE\"`, or compute it in a `run` step: `\"$(date +%F)\"`"),
            (3, 33, "Sluice sets `SLUICE_RUN_ID` in every step's environment: write `\"$SLUICE_RUN_ID\"`"),
        ],
        "the same template twice is one error"
    );
}

#[test]
fn an_actions_expression_in_a_command_says_that_command_has_no_shell() {
    let text = with_steps("  a:\n    command: [python, t.py, '${{ inputs.epochs }}']\n");
    assert_diag(
        &one_error(&text),
        Expect {
            line: 4,
            column: 30,
            field: "steps.a.command[2]",
            step: Some("a"),
            message: "`steps.a.command[2]` holds template syntax `${{ inputs.epochs }}`, which Sluice does not expand",
            help: Some("`command` runs without a shell, so nothing in it is expanded; params reach a step as environment variables: use `run: ... \"$PARAM_EPOCHS\"`, or `command: [sh, -c, '... \"$PARAM_EPOCHS\"']`"),
        },
    );
}

#[test]
fn a_template_in_env_is_reported_for_the_pipeline_and_for_a_step() {
    let text = doc("
        name: p
        env: {DAY: '{{ execution_date }}'}
        steps:
          a:
            run: x
            env:
              TOKEN: ${{ secrets.HF_TOKEN }}
        ");
    let diags = invalid(&text);
    let seen: Vec<(usize, usize, &str, Option<&str>)> = diags
        .iter()
        .map(|d| (d.line, d.column, d.field.as_str(), d.help.as_deref()))
        .collect();
    assert_eq!(
        seen,
        [
            (2, 13, "env.DAY", Some("`env` values are taken as written; there is no logical date in Sluice: declare a param (`params: {date: {type: string}}`) and read `\"$PARAM_DATE\"`, or compute it in a `run` step: `\"$(date +%F)\"`")),
            (7, 14, "steps.a.env.TOKEN", Some("`env` values are taken as written; list the secret in the step's `secrets: [HF_TOKEN]` and read `\"$HF_TOKEN\"` in the step")),
        ]
    );
}

#[test]
fn a_template_in_when_is_one_error_that_shows_the_reference() {
    let text = doc("
        name: p
        params: {mode: fast}
        steps:
          a: {run: x}
          b:
            depends: [a]
            when: \"{{ params.mode }} == 'full'\"
            run: y
          c:
            depends: [a]
            when: '{{ ti.xcom_pull(task_ids=\"a\", key=\"score\") }} > 0.9'
            run: z
        ");
    let diags = invalid(&text);
    let seen: Vec<(usize, usize, &str, Option<&str>)> = diags
        .iter()
        .map(|d| (d.line, d.column, d.field.as_str(), d.help.as_deref()))
        .collect();
    assert_eq!(
        seen,
        [
            (
                7,
                12,
                "steps.b.when",
                Some("in `when`, a param is written without braces: `params.mode`")
            ),
            (
                11,
                12,
                "steps.c.when",
                Some(
                    "in `when`, a step's value is written without braces: `steps.a.outputs.score`"
                )
            ),
        ]
    );
}

#[test]
fn upstream_outputs_and_jinja_statements_get_the_sluice_way() {
    let cases = [
        (
            "python t.py --in {{ ti.xcom_pull(task_ids='ingest') }}",
            "an upstream step's declared `outputs` are files under `$SLUICE_IN/ingest/`, and the small values it writes to `$SLUICE_OUTPUTS` are read in `when` as `steps.ingest.outputs.<key>`",
        ),
        (
            "cat {{inputs.artifacts.data}}",
            "an upstream step's declared `outputs` are files under `$SLUICE_IN/<step>/`: `\"$SLUICE_IN/<step>/data\"`",
        ),
        (
            "{% if params.full %}make all{% endif %}",
            "Sluice does not expand templates: write the logic in the shell (`if [ \"$PARAM_MODE\" = full ]; then ...; fi`), or skip the step with `when: params.mode == 'full'`",
        ),
        (
            "echo {{ lr }}",
            "a param `lr` reaches the step as `\"$PARAM_LR\"`, and an environment variable is read by the shell: `\"$lr\"`",
        ),
        (
            "echo {{ matrix.lr }}",
            "params reach a step as `$PARAM_<NAME>` environment variables, an upstream step's files lie under `$SLUICE_IN/<step>/`, and its small values are read in `when` as `steps.<step>.outputs.<key>`",
        ),
    ];
    for (run, help) in cases {
        let text = with_steps(&format!(
            "  a:\n    run: {}\n",
            serde_json::to_string(run).unwrap()
        ));
        let d = invalid(&text).remove(0);
        assert_eq!(d.field, "steps.a.run", "{run}");
        assert_eq!(d.help.as_deref(), Some(help), "{run}");
    }
}

#[test]
fn shell_variables_go_templates_and_awk_are_not_templates() {
    let text = doc(r#"
        name: p
        env: {FORMAT: '{{.Names}}', HOME_DIR: '${HOME}'}
        steps:
          a:
            run: |
              echo "${PARAM_LR}" $PARAM_LR ${X:-default}
              docker ps --format '{{.Names}}'
              kubectl get pods -o go-template='{{range .items}}{{.metadata.name}}{{end}}'
              awk '{{print $1}}' data.txt
              printf '%s\n' {a,b}{c,d} && echo '{"a": {"b": 1}}'
          b:
            command: [docker, inspect, -f, '{{.State.Status}}', c]
        "#);
    valid(&text);
}

#[test]
fn a_template_in_an_after_trigger_condition_is_reported() {
    let text = doc("
        name: p
        triggers:
          - after: {pipeline: m, when: '{{ steps.d.outputs.drift }} == true'}
        steps:
          a: {run: x}
        ");
    let d = one_error(&text);
    assert_eq!(
        (d.line, d.column, d.field.as_str()),
        (3, 33, "triggers[0].after.when")
    );
    assert_eq!(
        d.help.as_deref(),
        Some("in `when`, a step's value is written without braces: `steps.d.outputs.drift`")
    );
}

// ---------------------------------------------------------------------------------------------
// Other tools' keys
// ---------------------------------------------------------------------------------------------

#[test]
fn step_keys_of_other_tools_name_the_tool_and_the_sluice_key() {
    let cases = [
        ("needs: [a]", "`needs` is GitHub Actions' name; Sluice says `depends: [a, b]`"),
        ("dependencies: [a]", "`dependencies` is Argo's name; Sluice says `depends: [a, b]`"),
        ("upstream: [a]", "`upstream` is Airflow's name; Sluice says `depends: [a, b]`"),
        ("if: x", "`if` is GitHub Actions' name; Sluice says `when: params.x == 'y'`"),
        ("preconditions: x", "`preconditions` is Dagu's name; Sluice says `when: params.x == 'y'`"),
        ("execution_timeout: 1h", "`execution_timeout` is Airflow's name; Sluice says `timeout: 1h`"),
        ("timeout-minutes: 30", "`timeout-minutes` is GitHub Actions' name; Sluice says `timeout: 30m`"),
        ("container: python", "`container` is Argo's and GitHub Actions' name; Sluice says `image: name:tag`"),
        ("image_pull_policy: Always", "`image_pull_policy` is Airflow's name; Sluice says `pull: always | if_not_present | never`"),
        ("imagePullPolicy: Always", "`imagePullPolicy` is Kubernetes' and Argo's name; Sluice says `pull: always | if_not_present | never`"),
        ("retries: 3", "`retries` is Airflow's name; Sluice says `retry: 3`"),
        ("retryStrategy: {limit: 3}", "`retryStrategy` is Argo's name; Sluice says `retry: {limit: 3}`"),
        ("env_vars: {A: b}", "`env_vars` is Airflow's name; Sluice says `env: {NAME: value}`"),
        ("environment: {A: b}", "`environment` is Docker Compose's name; Sluice says `env: {NAME: value}`"),
        ("runs-on: gpu", "`runs-on` is GitHub Actions' name; Sluice says `queue: gpu`"),
        ("working-directory: src", "`working-directory` is GitHub Actions' name; Sluice says `workdir: path`"),
        ("args: [x]", "`args` is Kubernetes' and Argo's name; Sluice says `command: [program, arg, ...]`"),
        ("docker_image: python", "did you mean `image: name:tag`?"),
        ("gpus: 1", "did you mean `resources: {gpu: 1}`?"),
        ("gpu: 1", "did you mean `resources: {gpu: 1}`?"),
        ("memory: 16Gi", "did you mean `resources: {memory: 16Gi}`?"),
    ];
    for (line, help) in cases {
        let text = with_steps(&format!("  a: {{run: x}}\n  b:\n    run: y\n    {line}\n"));
        let key = line.split(':').next().unwrap();
        assert_diag(
            &one_error(&text),
            Expect {
                line: 6,
                column: 5,
                field: &format!("steps.b.{key}"),
                step: Some("b"),
                message: &format!("unknown key `{key}` in step `b`"),
                help: Some(help),
            },
        );
    }
}

#[test]
fn top_level_keys_of_other_tools_name_the_tool_and_the_sluice_key() {
    let cases = [
        ("jobs: {}", "`jobs` is GitHub Actions' name; Sluice says `steps: {train: {run: ...}}`"),
        ("on: push", "`on` is GitHub Actions' name; Sluice says `triggers: [{cron: '0 3 * * *'}]`"),
        ("schedule: '@daily'", "`schedule` is Airflow's and Dagu's name; Sluice says `triggers: [{cron: '0 3 * * *'}]`"),
        ("schedule_interval: '@daily'", "`schedule_interval` is Airflow's name; Sluice says `triggers: [{cron: '0 3 * * *'}]`"),
        ("cron: '0 3 * * *'", "did you mean `triggers: [{cron: '0 3 * * *'}]`?"),
        ("dag_id: churn", "`dag_id` is Airflow's name; Sluice says `name: my-pipeline`"),
        ("default_args: {retries: 2}", "`default_args` is Airflow's name; Sluice says `defaults: {retry: 2, timeout: 1h}`"),
        ("max_active_runs: 1", "`max_active_runs` is Airflow's name; Sluice says `concurrency: {limit: 1}`"),
    ];
    for (line, help) in cases {
        let text = format!("name: p\n{line}\nsteps:\n  a: {{run: x}}\n");
        let key = line.split(':').next().unwrap();
        assert_diag(
            &one_error(&text),
            Expect {
                line: 2,
                column: 1,
                field: key,
                step: None,
                message: &format!("unknown key `{key}` in the pipeline"),
                help: Some(help),
            },
        );
    }
}

#[test]
fn a_pointer_is_given_only_where_the_sluice_key_belongs() {
    // `retries` in `defaults` means `retry`, which `defaults` has.
    let d = one_error(&doc("
        name: p
        defaults: {retries: 2}
        steps:
          a: {run: x}
        "));
    assert_eq!(
        d.help.as_deref(),
        Some("`retries` is Airflow's name; Sluice says `retry: 3`")
    );
    // `gpus` inside `resources` is a typo of `gpu`, not a pointer to `resources`.
    let d = one_error(&with_steps("  a: {run: x, resources: {gpus: 1}}\n"));
    assert_eq!(d.field, "steps.a.resources.gpus");
    assert_eq!(d.help.as_deref(), Some("did you mean `gpu`?"));
}

#[test]
fn steps_written_as_a_list_say_how_sluice_names_them() {
    let d = one_error(&doc("
        name: p
        steps:
          - name: train
            run: x
        "));
    assert_eq!(
        d.message,
        "`steps` must be a mapping of step name to step, found a list"
    );
    assert_eq!(
        d.help.as_deref(),
        Some("GitHub Actions, Argo and Dagu write steps as a list; Sluice names each one: `steps: {train: {run: ...}}`")
    );
}

// ---------------------------------------------------------------------------------------------
// Indentation
// ---------------------------------------------------------------------------------------------

#[test]
fn a_step_key_among_step_names_asks_to_indent_it_under_the_step_above() {
    let text = with_steps(
        "
          ingest: {run: x}
          train:
            run: y
          depends: [ingest]
          timeout: 1h
        ",
    );
    let diags = invalid(&text);
    let seen: Vec<Expect<'_>> = diags.iter().map(seen).collect();
    assert_eq!(
        seen,
        [
            Expect {
                line: 6,
                column: 3,
                field: "steps.depends",
                step: Some("train"),
                message: "`depends` is a step key, found where a step's name belongs",
                help: Some("did you mean to indent it under `train`?"),
            },
            Expect {
                line: 7,
                column: 3,
                field: "steps.timeout",
                step: Some("train"),
                message: "`timeout` is a step key, found where a step's name belongs",
                help: Some("did you mean to indent it under `train`?"),
            },
        ]
    );
}

#[test]
fn a_step_key_before_any_step_says_where_step_keys_go() {
    let d = one_error(&with_steps("  run: echo hi\n"));
    assert_diag(
        &d,
        Expect {
            line: 3,
            column: 3,
            field: "steps.run",
            step: None,
            message: "`run` is a step key, found where a step's name belongs",
            help: Some("a step's keys go under its name: `steps: {train: {run: ...}}`"),
        },
    );
}

#[test]
fn a_step_named_like_a_step_key_is_still_a_step() {
    let p = valid(&with_steps(
        "
          run: {run: x}
          cache: {run: y, depends: [run]}
        ",
    ));
    assert_eq!(step(&p, "cache").depends, strings(&["run"]));
}

#[test]
fn a_step_key_at_the_top_level_asks_to_indent_it_under_the_last_step() {
    let text = doc("
        name: p
        depends: [x]
        steps:
          train:
            run: x
        run: y
        ");
    let diags = invalid(&text);
    let seen: Vec<(usize, &str, Option<&str>)> = diags
        .iter()
        .map(|d| (d.line, d.field.as_str(), d.help.as_deref()))
        .collect();
    assert_eq!(
        seen,
        [
            (
                2,
                "depends",
                Some("`depends` is a step key: it goes under a step's name in `steps`")
            ),
            (
                6,
                "run",
                Some("`run` is a step key; did you mean to indent it under `train`?")
            ),
        ]
    );
}

// ---------------------------------------------------------------------------------------------
// YAML files that are not pipelines
// ---------------------------------------------------------------------------------------------

#[test]
fn yaml_files_without_steps_are_other_yaml() {
    for text in [
        "services:\n  redis: {image: redis:7}\n",
        "on: push\njobs:\n  test:\n    runs-on: ubuntu-latest\n    steps:\n      - run: make\n",
        "apiVersion: v1\nkind: Pod\n---\napiVersion: v1\nkind: Service\n",
        "- hosts: all\n  tasks: []\n",
        "just text\n",
    ] {
        assert!(is_other_yaml_text(text), "{text}");
    }
}

#[test]
fn pipelines_broken_ones_and_near_misses_are_not_other_yaml() {
    for text in [
        "name: p\nsteps:\n  a: {run: x}\n",
        "steps: {}\n",
        "name: p\nSteps:\n  a: {run: x}\n",
        "name: p\nstpes:\n  a: {run: x}\n",
        "name: p\nstep:\n  a: {run: x}\n",
        "base: &b {steps: {a: {run: x}}}\n<<: *b\n",
        "kind: x\n---\nname: p\nsteps: {}\n",
        "",
        "# only a comment\n",
        "name: [unclosed\n",
    ] {
        assert!(!is_other_yaml_text(text), "{text}");
    }
}

#[test]
fn a_template_in_a_deploy_command_is_reported_too() {
    let text = with_steps(
        "
          train: {run: x}
          deploy:
            depends: [train]
            uses: deploy
            with:
              model: m
              version: 3
              alias: production
              run: ./serve.sh --port {{ params.port }}
              health: {url: 'http://127.0.0.1:8080/health'}
        ",
    );
    let d = one_error(&text);
    assert_eq!(
        (d.line, d.column, d.field.as_str()),
        (11, 30, "steps.deploy.with.run")
    );
    assert_eq!(
        d.help.as_deref(),
        Some("params reach a step as environment variables, never spliced into its command: write `\"$PARAM_PORT\"`")
    );
}
