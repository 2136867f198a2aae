//! `matrix:` sweeps: a step written once runs once per combination of values.
//!
//! `train: {matrix: {lr: [0.1, 0.01], depth: [3, 5]}}` becomes four steps named
//! `train[lr=0.1,depth=3]` ... each seeing `MATRIX_LR` and `MATRIX_DEPTH`. A step that depends
//! on `train` waits for all of them and finds each one's outputs under
//! `$SLUICE_IN/train[lr=0.1,depth=3]/`. The expansion happens after validation, so every
//! message about the file names the step as written.

use indexmap::IndexMap;

use super::model::{Matrix, Pipeline, Step};
use super::reader::{join, Reader};
use super::yaml::{Node, Value};

/// Most steps one `matrix:` may expand into: a sweep larger than this belongs in a tuning
/// library inside one step, not in a thousand scheduled steps.
pub const MAX_MATRIX_CELLS: usize = 1_000;

/// Longest matrix value: it becomes part of a step name and a folder name.
const MAX_VALUE_LEN: usize = 64;

/// Reads `matrix:`: a mapping of axis name to a non-empty list of distinct scalar values.
pub fn read(r: &mut Reader, node: &Node, path: &str) -> Option<IndexMap<String, Vec<String>>> {
    let Value::Map(entries) = &node.value else {
        r.diags
            .error(
                node.mark,
                path,
                format!(
                    "`{path}` must be a mapping of name to a list of values, found {}",
                    node.value.kind()
                ),
            )
            .help("for example `matrix: {lr: [0.1, 0.01], depth: [3, 5]}`");
        return None;
    };
    if entries.is_empty() {
        r.error(node.mark, path, format!("`{path}` has no values to sweep"));
        return None;
    }
    let mut axes = IndexMap::new();
    let mut ok = true;
    for (key, value) in entries {
        let name = key.value.scalar_text().unwrap_or_default();
        let field = join(path, &name);
        if let Err(message) = axis_name(&name) {
            r.error(key.mark, &field, message);
            ok = false;
            continue;
        }
        let Some(values) = axis_values(r, value, &field) else {
            ok = false;
            continue;
        };
        axes.insert(name, values);
    }
    if !ok {
        return None;
    }
    let cells = axes
        .values()
        .try_fold(1usize, |n, values| n.checked_mul(values.len()));
    match cells {
        Some(n) if n <= MAX_MATRIX_CELLS => Some(axes),
        _ => {
            let sizes: Vec<String> = axes.values().map(|v| v.len().to_string()).collect();
            r.diags
                .error(
                    node.mark,
                    path,
                    format!(
                        "`{path}` expands into {} steps ({}); at most {MAX_MATRIX_CELLS} are allowed",
                        cells.map_or("too many".to_string(), |n| n.to_string()),
                        sizes.join(" x ")
                    ),
                )
                .help("sweep fewer values, or run the search inside one step (Optuna, Ray Tune)");
            None
        }
    }
}

/// Axis names become `MATRIX_<NAME>` and part of step names: lower-case letters, digits, `_`.
fn axis_name(name: &str) -> Result<(), String> {
    let ok = name.len() <= 64
        && name.chars().next().is_some_and(|c| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "matrix name `{name}` must be lower-case letters, digits and `_`, starting with a letter (it becomes `MATRIX_{}`)",
            name.to_uppercase()
        ))
    }
}

fn axis_values(r: &mut Reader, node: &Node, path: &str) -> Option<Vec<String>> {
    let Value::Seq(items) = &node.value else {
        r.diags
            .error(
                node.mark,
                path,
                format!(
                    "`{path}` must be a list of values, found {}",
                    node.value.kind()
                ),
            )
            .help("write one value as a list of one: `[0.1]`");
        return None;
    };
    if items.is_empty() {
        r.error(node.mark, path, format!("`{path}` has no values"));
        return None;
    }
    let mut values: Vec<String> = Vec::with_capacity(items.len());
    let mut ok = true;
    for (i, item) in items.iter().enumerate() {
        let field = format!("{path}[{i}]");
        let Some(text) = r.text(item, &field) else {
            ok = false;
            continue;
        };
        if let Err(message) = value_text(&text) {
            r.error(item.mark, &field, message);
            ok = false;
        } else if values.contains(&text) {
            r.error(item.mark, &field, format!("`{text}` is listed twice"));
            ok = false;
        } else {
            values.push(text);
        }
    }
    ok.then_some(values)
}

/// A value becomes part of a step's name and of the folder its outputs arrive in downstream.
fn value_text(text: &str) -> Result<(), String> {
    let ok = !text.is_empty()
        && text.len() <= MAX_VALUE_LEN
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '+'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "matrix value `{text}` must be 1-{MAX_VALUE_LEN} characters of letters, digits, `.`, `_`, `-` and `+` (it becomes part of the step's name)"
        ))
    }
}

/// The name of one expansion: `train[lr=0.1,depth=3]`.
pub fn cell_name(of: &str, values: &IndexMap<String, String>) -> String {
    let pairs: Vec<String> = values.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("{of}[{}]", pairs.join(","))
}

/// Replaces every step with a `matrix:` by its expansions, in place and in file order, and
/// every `depends` on such a step by all of its expansions.
pub fn expand(pipeline: &mut Pipeline) {
    if !pipeline
        .steps
        .values()
        .any(|s| matches!(s.matrix, Some(Matrix::Axes(_))))
    {
        return;
    }
    let mut expansions: IndexMap<String, Vec<String>> = IndexMap::new();
    let mut steps = IndexMap::with_capacity(pipeline.steps.len());
    for (name, step) in std::mem::take(&mut pipeline.steps) {
        let Some(Matrix::Axes(axes)) = &step.matrix else {
            steps.insert(name, step);
            continue;
        };
        let cells = combinations(axes);
        let mut names = Vec::with_capacity(cells.len());
        for values in cells {
            let mut cell = step.clone();
            cell.name = cell_name(&name, &values);
            for (axis, value) in &values {
                cell.env
                    .insert(format!("MATRIX_{}", axis.to_uppercase()), value.clone());
            }
            cell.matrix = Some(Matrix::Cell {
                of: name.clone(),
                values,
            });
            names.push(cell.name.clone());
            steps.insert(cell.name.clone(), cell);
        }
        expansions.insert(name, names);
    }
    for step in steps.values_mut() {
        if step.depends.iter().any(|d| expansions.contains_key(d)) {
            step.depends = std::mem::take(&mut step.depends)
                .into_iter()
                .flat_map(|d| match expansions.get(&d) {
                    Some(names) => names.clone(),
                    None => vec![d],
                })
                .collect();
        }
    }
    pipeline.steps = steps;
}

/// Every combination of the axes' values, the first axis varying slowest.
fn combinations(axes: &IndexMap<String, Vec<String>>) -> Vec<IndexMap<String, String>> {
    let mut out = vec![IndexMap::new()];
    for (axis, values) in axes {
        out = out
            .into_iter()
            .flat_map(|partial| {
                values.iter().map(move |value| {
                    let mut next = partial.clone();
                    next.insert(axis.clone(), value.clone());
                    next
                })
            })
            .collect();
    }
    out
}

impl Pipeline {
    /// The steps a name given on the command line means: the step itself, or every expansion
    /// of a step written with `matrix:` (`train` for `train[lr=0.1]` and `train[lr=0.01]`).
    pub fn steps_named(&self, name: &str) -> Vec<&Step> {
        if let Some(step) = self.steps.get(name) {
            return vec![step];
        }
        self.steps
            .values()
            .filter(|s| matches!(&s.matrix, Some(Matrix::Cell { of, .. }) if of == name))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_axis_varies_slowest_and_names_list_every_axis() {
        let axes: IndexMap<String, Vec<String>> = [
            (
                "lr".to_string(),
                vec!["0.1".to_string(), "0.01".to_string()],
            ),
            ("depth".to_string(), vec!["3".to_string(), "5".to_string()]),
        ]
        .into_iter()
        .collect();
        let names: Vec<String> = combinations(&axes)
            .iter()
            .map(|values| cell_name("train", values))
            .collect();
        assert_eq!(
            names,
            [
                "train[lr=0.1,depth=3]",
                "train[lr=0.1,depth=5]",
                "train[lr=0.01,depth=3]",
                "train[lr=0.01,depth=5]"
            ]
        );
    }

    #[test]
    fn values_that_would_break_a_folder_or_a_name_are_refused() {
        for bad in [
            "",
            "a/b",
            "..x/",
            "a b",
            "a,b",
            "a]",
            "x=y",
            &"9".repeat(65),
        ] {
            assert!(value_text(bad).is_err(), "{bad:?} was accepted");
        }
        for good in ["0.1", "1e-3", "resnet50", "v1.2+cpu", "-1"] {
            assert!(value_text(good).is_ok(), "{good:?} was refused");
        }
    }
}
