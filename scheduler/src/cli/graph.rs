//! `sluice graph`: the DAG as Graphviz dot or Mermaid, for docs and reviews.

use std::fmt::Write as _;
use std::path::PathBuf;

use clap::{Args, ValueEnum};

use super::EXIT_INVALID;
use crate::spec::{self, Pipeline};

/// Arguments of `sluice graph`.
#[derive(Debug, Args)]
pub struct GraphArgs {
    /// The pipeline file.
    pub file: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value_t = GraphFormat::Dot)]
    pub format: GraphFormat,
}

/// Graph formats.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum GraphFormat {
    /// Graphviz (`dot -Tsvg`).
    Dot,
    /// Mermaid (renders in GitHub Markdown).
    Mermaid,
}

/// Prints the graph; exit 2 when the file is not valid.
pub fn graph(args: GraphArgs) -> anyhow::Result<u8> {
    let loaded = match spec::load_file(&args.file, spec::DEFAULT_MAX_FILE_BYTES) {
        Ok(loaded) => loaded,
        Err(errors) => {
            let source = std::fs::read_to_string(&args.file).unwrap_or_default();
            for error in &errors {
                eprintln!("{}", error.render(&source));
            }
            return Ok(EXIT_INVALID);
        }
    };
    let text = match args.format {
        GraphFormat::Dot => to_dot(&loaded.pipeline),
        GraphFormat::Mermaid => to_mermaid(&loaded.pipeline),
    };
    print!("{text}");
    Ok(0)
}

/// Graphviz text; an edge points from a step to the steps that depend on it.
pub fn to_dot(pipeline: &Pipeline) -> String {
    let mut out = format!(
        "digraph \"{}\" {{\n  rankdir=LR;\n  node [shape=box, style=rounded];\n",
        pipeline.name
    );
    for step in pipeline.steps.values() {
        let style = if step.when.is_some() {
            ", style=\"rounded,dashed\""
        } else {
            ""
        };
        // Handlers are labelled with their section: they run after every other step.
        let label = match step.phase.is_handler() {
            true => format!("{}\\n({})", step.name, step.phase.section()),
            false => step.name.clone(),
        };
        let _ = writeln!(out, "  \"{}\" [label=\"{label}\"{style}];", step.name);
    }
    for step in pipeline.steps.values() {
        for dep in &step.depends {
            let _ = writeln!(out, "  \"{dep}\" -> \"{}\";", step.name);
        }
    }
    out.push_str("}\n");
    out
}

/// Mermaid flowchart text; conditional steps are drawn with a dashed-looking rhombus.
pub fn to_mermaid(pipeline: &Pipeline) -> String {
    let mut out = String::from("flowchart LR\n");
    let id = |name: &str| {
        pipeline
            .steps
            .get_index_of(name)
            .map_or_else(String::new, |i| format!("s{i}"))
    };
    for step in pipeline.steps.values() {
        let (open, close) = if step.when.is_some() {
            ("{", "}")
        } else {
            ("[", "]")
        };
        let _ = writeln!(out, "  {}{open}\"{}\"{close}", id(&step.name), step.name);
    }
    for step in pipeline.steps.values() {
        for dep in &step.depends {
            let _ = writeln!(out, "  {} --> {}", id(dep), id(&step.name));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pipeline() -> Pipeline {
        spec::parse_str(
            "t.yaml",
            "name: t\nsteps:\n  a: {run: 'true'}\n  b: {run: 'true', depends: [a]}\n  c: {run: 'true', depends: [a, b], when: params.x == 1}\nparams: {x: 1}\n",
        )
        .unwrap()
    }

    #[test]
    fn dot_has_every_edge() {
        let dot = to_dot(&pipeline());
        assert!(dot.starts_with("digraph \"t\" {"));
        for edge in ["\"a\" -> \"b\"", "\"a\" -> \"c\"", "\"b\" -> \"c\""] {
            assert!(dot.contains(edge), "{edge} missing from {dot}");
        }
    }

    #[test]
    fn mermaid_has_every_edge_and_marks_conditional_steps() {
        let m = to_mermaid(&pipeline());
        assert_eq!(
            m,
            "flowchart LR\n  s0[\"a\"]\n  s1[\"b\"]\n  s2{\"c\"}\n  s0 --> s1\n  s0 --> s2\n  s1 --> s2\n"
        );
    }
}
