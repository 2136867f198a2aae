//! A YAML tree that remembers where every node came from.
//!
//! Pipeline files are read with yaml-rust2's event parser rather than `serde_yaml`: serde_yaml keeps
//! no positions in its `Value`, stops at the first error and rejects a duplicate key outright, while
//! Sluice reports every problem in a file at once with its line and column. The tree built here is
//! deliberately small: scalars resolved by the YAML 1.2 core schema, sequences, and mappings that
//! keep their keys in file order.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser, Tag};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// Where a node starts in its file, 1-based like a compiler's diagnostics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, PartialOrd, Ord)]
pub struct Mark {
    /// Line, counting from 1.
    pub line: usize,
    /// Column, counting from 1.
    pub column: usize,
}

/// One node of the tree and the place it was written.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// What the node holds.
    pub value: Value,
    /// Where it starts.
    pub mark: Mark,
}

/// The value of a node, scalars resolved by the YAML 1.2 core schema.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `~`, `null` or nothing at all.
    Null,
    /// `true` or `false`.
    Bool(bool),
    /// An integer that fits in 64 bits.
    Int(i64),
    /// A floating-point number.
    Float(f64),
    /// Any other scalar, and every quoted one.
    String(String),
    /// A sequence.
    Seq(Vec<Node>),
    /// A mapping, keys in file order, duplicates already dropped.
    Map(Vec<(Node, Node)>),
}

impl Value {
    /// A short name of the kind of value, for messages such as "expected a list, found a number".
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Null => "nothing (null)",
            Value::Bool(_) => "a boolean",
            Value::Int(_) | Value::Float(_) => "a number",
            Value::String(_) => "a string",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }

    /// The scalar as text, the way a user wrote it (for keys and string-like fields).
    pub fn scalar_text(&self) -> Option<String> {
        match self {
            Value::Null => Some(String::new()),
            Value::Bool(b) => Some(b.to_string()),
            Value::Int(i) => Some(i.to_string()),
            Value::Float(f) => Some(f.to_string()),
            Value::String(s) => Some(s.clone()),
            Value::Seq(_) | Value::Map(_) => None,
        }
    }
}

/// A problem found while building the tree that does not stop the rest of the file being read.
#[derive(Debug, Clone, PartialEq)]
pub struct TreeProblem {
    /// Where the problem is.
    pub mark: Mark,
    /// What is wrong, as a sentence fragment.
    pub message: String,
    /// Where the first of two duplicate keys stands.
    pub first: Option<Mark>,
    /// The dotted path of the key (`steps.train`), for the diagnostic's field.
    pub path: String,
}

/// The outcome of reading a document.
#[derive(Debug)]
pub struct Tree {
    /// The root node; `Null` for an empty file.
    pub root: Node,
    /// Duplicate keys and other problems that left a usable tree.
    pub problems: Vec<TreeProblem>,
}

/// A syntax error: the file could not be read as YAML at all.
#[derive(Debug, Clone, PartialEq)]
pub struct SyntaxError {
    /// Where the parser stopped.
    pub mark: Mark,
    /// The parser's explanation.
    pub message: String,
}

/// Most nodes a document may expand to, aliases included: a "billion laughs" file of nested
/// aliases would otherwise grow without bound.
pub const MAX_NODES: usize = 1_000_000;

/// Deepest nesting accepted. Pipelines nest a handful of levels; the limit keeps recursive
/// work on the tree (dropping it, among others) far from the stack's end.
pub const MAX_DEPTH: usize = 128;

/// Reads one YAML document into a marked tree.
pub fn parse(text: &str) -> Result<Tree, SyntaxError> {
    let mut builder = Builder::default();
    let mut parser = Parser::new_from_str(text);
    // Events are pulled one by one rather than with `Parser::load`, which recurses once per
    // nesting level and would let a deeply nested file overflow the stack.
    loop {
        let (event, marker) = parser.next_token().map_err(|err| SyntaxError {
            mark: clamp(mark_of(err.marker()), text),
            message: err.info().to_string(),
        })?;
        let end = event == Event::StreamEnd;
        builder.on_event(event, marker);
        if end || builder.fatal.is_some() {
            break;
        }
    }
    if let Some(err) = builder.fatal {
        return Err(err);
    }
    let root = builder.root.unwrap_or(Node {
        value: Value::Null,
        mark: Mark { line: 1, column: 1 },
    });
    Ok(Tree {
        root,
        problems: builder.problems,
    })
}

/// The keys at the top level of every document in `text`, as written, without building a tree
/// (a folder's Compose files and manifests are only looked at, not read); `None` when the text
/// is not YAML or holds no document.
pub fn top_level_keys(text: &str) -> Option<Vec<String>> {
    let mut parser = Parser::new_from_str(text);
    let mut keys = Vec::new();
    let mut depth = 0usize;
    let mut root_is_map = false;
    let mut expecting_key = false;
    let mut documents = 0usize;
    loop {
        let (event, _) = parser.next_token().ok()?;
        // A node at depth 1 of a mapping is a key and a value in turn; a collection there counts
        // once, at its start (what it holds is deeper).
        let at_top = depth == 1 && root_is_map;
        match event {
            Event::StreamEnd => break,
            Event::MappingStart(..) | Event::SequenceStart(..) => {
                if depth == 0 {
                    documents += 1;
                    root_is_map = matches!(event, Event::MappingStart(..));
                    expecting_key = true;
                } else if at_top {
                    expecting_key = !expecting_key;
                }
                depth += 1;
            }
            Event::MappingEnd | Event::SequenceEnd => depth = depth.saturating_sub(1),
            Event::Scalar(text, style, ..) => {
                if depth == 0 {
                    root_is_map = false;
                    if !(text.is_empty() && style == TScalarStyle::Plain) {
                        documents += 1;
                    }
                } else if at_top {
                    if expecting_key {
                        keys.push(text);
                    }
                    expecting_key = !expecting_key;
                }
            }
            Event::Alias(_) if at_top => expecting_key = !expecting_key,
            _ => {}
        }
    }
    (documents > 0).then_some(keys)
}

/// The scanner reports an unexpected end of input one line past the last; point at the last.
fn clamp(mark: Mark, text: &str) -> Mark {
    let all = super::diagnostic::source_lines(text);
    let lines = all.len().max(1);
    if mark.line > lines {
        let last = all.last().copied().unwrap_or("");
        Mark {
            line: lines,
            column: last.chars().count() + 1,
        }
    } else {
        mark
    }
}

fn mark_of(marker: &Marker) -> Mark {
    Mark {
        line: marker.line(),
        column: marker.col() + 1,
    }
}

/// A collection being built, with what it needs to finish itself.
enum Frame {
    Seq {
        mark: Mark,
        anchor: usize,
        items: Vec<Node>,
    },
    Map {
        mark: Mark,
        anchor: usize,
        entries: Vec<(Node, Node)>,
        key: Option<Node>,
        merges: Vec<Node>,
        /// Keys seen so far, as text, so duplicate detection stays linear in big files.
        seen: HashMap<String, Mark>,
    },
}

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    anchors: HashMap<usize, Node>,
    root: Option<Node>,
    documents: usize,
    nodes: usize,
    problems: Vec<TreeProblem>,
    fatal: Option<SyntaxError>,
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, event: Event, marker: Marker) {
        if self.fatal.is_some() {
            return;
        }
        let mark = mark_of(&marker);
        match event {
            Event::DocumentStart => {
                self.documents += 1;
                if self.documents > 1 {
                    self.fail(
                        mark,
                        "a pipeline file holds one YAML document; found a second one",
                    );
                }
            }
            Event::Scalar(text, style, anchor, tag) => {
                // An empty value (`run:` and nothing) is marked where the next token starts,
                // possibly lines below; its key's place is where a person looks for it.
                let empty = text.is_empty() && style == TScalarStyle::Plain;
                let mark = match self.stack.last() {
                    Some(Frame::Map { key: Some(key), .. }) if empty => key.mark,
                    _ => mark,
                };
                let value = resolve_scalar(text, style, tag.as_ref());
                self.finish(Node { value, mark }, anchor);
            }
            Event::Alias(id) => match self.anchors.get(&id).cloned() {
                Some(node) => {
                    self.nodes += count_nodes(&node);
                    self.finish(Node { mark, ..node }, 0);
                }
                None => self.fail(mark, "alias to an unknown anchor"),
            },
            Event::SequenceStart(..) | Event::MappingStart(..) if self.stack.len() >= MAX_DEPTH => {
                self.fail(mark, "the document nests deeper than 128 levels");
            }
            Event::SequenceStart(anchor, _) => self.stack.push(Frame::Seq {
                mark,
                anchor,
                items: Vec::new(),
            }),
            Event::MappingStart(anchor, _) => self.stack.push(Frame::Map {
                mark,
                anchor,
                entries: Vec::new(),
                key: None,
                merges: Vec::new(),
                seen: HashMap::new(),
            }),
            Event::SequenceEnd | Event::MappingEnd => match self.stack.pop() {
                Some(Frame::Seq {
                    mark,
                    anchor,
                    items,
                }) => self.finish(
                    Node {
                        value: Value::Seq(items),
                        mark,
                    },
                    anchor,
                ),
                Some(Frame::Map {
                    mark,
                    anchor,
                    mut entries,
                    merges,
                    seen,
                    ..
                }) => {
                    for bad in apply_merges(&mut entries, &seen, merges) {
                        self.problems.push(TreeProblem {
                            mark: bad,
                            message: "a merge key `<<` takes a mapping or a list of mappings"
                                .into(),
                            first: None,
                            path: path_to(&self.stack, "<<"),
                        });
                    }
                    self.finish(
                        Node {
                            value: Value::Map(entries),
                            mark,
                        },
                        anchor,
                    )
                }
                None => self.fail(mark, "unbalanced collection end"),
            },
            Event::Nothing | Event::StreamStart | Event::StreamEnd | Event::DocumentEnd => {}
        }
    }
}

impl Builder {
    fn fail(&mut self, mark: Mark, message: &str) {
        self.fatal.get_or_insert(SyntaxError {
            mark,
            message: message.to_string(),
        });
    }

    /// Places a completed node into its parent collection (or makes it the root).
    fn finish(&mut self, node: Node, anchor: usize) {
        self.nodes += 1;
        if self.nodes > MAX_NODES {
            self.fail(
                node.mark,
                "the document expands to more than a million nodes (nested aliases?)",
            );
            return;
        }
        if anchor != 0 {
            self.anchors.insert(anchor, node.clone());
        }
        match self.stack.last_mut() {
            None => self.root = Some(node),
            Some(Frame::Seq { items, .. }) => items.push(node),
            Some(Frame::Map {
                entries,
                key,
                merges,
                seen,
                ..
            }) => match key.take() {
                None => *key = Some(node),
                Some(k) if k.value == Value::String("<<".into()) => merges.push(node),
                Some(k) => {
                    let text = k.value.scalar_text();
                    match text.as_ref().and_then(|t| seen.get(t)) {
                        Some(first) => {
                            let first = *first;
                            let key = text.unwrap_or_default();
                            let path = path_to(&self.stack, &key);
                            self.problems.push(TreeProblem {
                                mark: k.mark,
                                message: format!("duplicate key `{key}`"),
                                first: Some(first),
                                path,
                            });
                        }
                        None => {
                            if let Some(text) = text {
                                seen.insert(text, k.mark);
                            }
                            entries.push((k, node));
                        }
                    }
                }
            },
        }
    }
}

/// The dotted path of `key` inside the collections being built: `steps.train`.
fn path_to(stack: &[Frame], key: &str) -> String {
    let mut path = String::new();
    for frame in stack {
        match frame {
            Frame::Map { key: Some(k), .. } => {
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(&k.value.scalar_text().unwrap_or_default());
            }
            Frame::Seq { items, .. } => path.push_str(&format!("[{}]", items.len())),
            Frame::Map { key: None, .. } => {}
        }
    }
    if !path.is_empty() {
        path.push('.');
    }
    path.push_str(key);
    path
}

/// YAML merge keys (`<<: *base`): keys written in the mapping itself win over merged ones, and
/// earlier merge sources win over later ones, as the merge-key spec says.
/// Returns where a merge source that is not a mapping was written.
fn apply_merges(
    entries: &mut Vec<(Node, Node)>,
    seen: &HashMap<String, Mark>,
    merges: Vec<Node>,
) -> Vec<Mark> {
    let mut not_mappings = Vec::new();
    let mut merged: std::collections::HashSet<String> = std::collections::HashSet::new();
    let sources = merges.into_iter().flat_map(|merge| match merge.value {
        Value::Seq(items) => items,
        _ => vec![merge],
    });
    for source in sources {
        let Value::Map(source_entries) = source.value else {
            not_mappings.push(source.mark);
            continue;
        };
        for (k, v) in source_entries {
            let Some(text) = k.value.scalar_text() else {
                continue;
            };
            if !seen.contains_key(&text) && merged.insert(text) {
                entries.push((k, v));
            }
        }
    }
    not_mappings
}

fn count_nodes(node: &Node) -> usize {
    match &node.value {
        Value::Seq(items) => 1 + items.iter().map(count_nodes).sum::<usize>(),
        Value::Map(entries) => {
            1 + entries
                .iter()
                .map(|(k, v)| count_nodes(k) + count_nodes(v))
                .sum::<usize>()
        }
        _ => 1,
    }
}

/// The YAML 1.2 core schema for plain scalars; quoted scalars and `!!str` are always strings.
fn resolve_scalar(text: String, style: TScalarStyle, tag: Option<&Tag>) -> Value {
    if let Some(tag) = tag {
        if tag.suffix == "str" {
            return Value::String(text);
        }
    }
    if style != TScalarStyle::Plain {
        return Value::String(text);
    }
    match text.as_str() {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "true" | "True" | "TRUE" => return Value::Bool(true),
        "false" | "False" | "FALSE" => return Value::Bool(false),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => {
            return Value::Float(f64::INFINITY)
        }
        "-.inf" | "-.Inf" | "-.INF" => return Value::Float(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => return Value::Float(f64::NAN),
        _ => {}
    }
    if let Some(hex) = text.strip_prefix("0x") {
        if let Ok(i) = i64::from_str_radix(hex, 16) {
            return Value::Int(i);
        }
    }
    if let Some(oct) = text.strip_prefix("0o") {
        if let Ok(i) = i64::from_str_radix(oct, 8) {
            return Value::Int(i);
        }
    }
    let looks_numeric = text
        .chars()
        .all(|c| c.is_ascii_digit() || matches!(c, '-' | '+' | '.' | 'e' | 'E'))
        && text.chars().any(|c| c.is_ascii_digit());
    if looks_numeric {
        if let Ok(i) = text.parse::<i64>() {
            return Value::Int(i);
        }
        if let Ok(f) = text.parse::<f64>() {
            return Value::Float(f);
        }
    }
    Value::String(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map_keys(node: &Node) -> Vec<String> {
        match &node.value {
            Value::Map(entries) => entries
                .iter()
                .map(|(k, _)| k.value.scalar_text().unwrap())
                .collect(),
            other => panic!("not a map: {other:?}"),
        }
    }

    #[test]
    fn marks_are_one_based_lines_and_columns() {
        let tree = parse("name: x\nsteps:\n  a:\n    run: echo\n").unwrap();
        let Value::Map(entries) = &tree.root.value else {
            panic!()
        };
        assert_eq!(entries[1].0.mark, Mark { line: 2, column: 1 });
        let Value::Map(steps) = &entries[1].1.value else {
            panic!()
        };
        assert_eq!(steps[0].0.mark, Mark { line: 3, column: 3 });
    }

    #[test]
    fn scalars_follow_the_core_schema() {
        let tree = parse("[1, 1.5, true, ~, '1', 0x10, hello, 1e3, -.inf]").unwrap();
        let Value::Seq(items) = tree.root.value else {
            panic!()
        };
        let values: Vec<Value> = items.into_iter().map(|n| n.value).collect();
        assert_eq!(values[0], Value::Int(1));
        assert_eq!(values[1], Value::Float(1.5));
        assert_eq!(values[2], Value::Bool(true));
        assert_eq!(values[3], Value::Null);
        assert_eq!(values[4], Value::String("1".into()));
        assert_eq!(values[5], Value::Int(16));
        assert_eq!(values[6], Value::String("hello".into()));
        assert_eq!(values[7], Value::Float(1000.0));
        assert_eq!(values[8], Value::Float(f64::NEG_INFINITY));
    }

    #[test]
    fn duplicate_keys_are_reported_with_both_places_and_the_first_kept() {
        let tree = parse("a: 1\nb: 2\na: 3\n").unwrap();
        assert_eq!(map_keys(&tree.root), vec!["a", "b"]);
        assert_eq!(tree.problems.len(), 1);
        assert_eq!(tree.problems[0].mark, Mark { line: 3, column: 1 });
        assert_eq!(tree.problems[0].first, Some(Mark { line: 1, column: 1 }));
    }

    #[test]
    fn merge_keys_fill_in_what_the_mapping_does_not_say() {
        let tree = parse("base: &b {x: 1, y: 2}\nuse:\n  <<: *b\n  y: 3\n").unwrap();
        let Value::Map(entries) = &tree.root.value else {
            panic!()
        };
        let used = &entries[1].1;
        assert_eq!(map_keys(used), vec!["y", "x"]);
        let Value::Map(used_entries) = &used.value else {
            panic!()
        };
        assert_eq!(used_entries[0].1.value, Value::Int(3));
    }

    #[test]
    fn a_merge_of_something_that_is_not_a_mapping_is_a_problem() {
        let tree = parse("a:\n  <<: 5\n  b: 1\n").unwrap();
        assert_eq!(tree.problems.len(), 1);
        assert_eq!(tree.problems[0].mark, Mark { line: 2, column: 7 });
        assert!(tree.problems[0].message.contains("merge key"));
    }

    #[test]
    fn nested_aliases_cannot_blow_up_memory() {
        let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..12 {
            let prev = i - 1;
            text.push_str(&format!(
                "a{i}: &a{i} [*a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}]\n"
            ));
        }
        let err = parse(&text).unwrap_err();
        assert!(err.message.contains("million nodes"), "{err:?}");
    }

    #[test]
    fn syntax_errors_carry_a_position() {
        let err = parse("a: [1, 2\nb: 3\n").unwrap_err();
        assert!(err.mark.line >= 1, "{err:?}");
        assert!(!err.message.is_empty());
    }

    #[test]
    fn a_second_document_is_an_error() {
        let err = parse("a: 1\n---\nb: 2\n").unwrap_err();
        assert!(err.message.contains("one YAML document"), "{err:?}");
    }
}
