//! A small YAML document tree that remembers where every node came from.
//!
//! `serde_yaml` stops at the first problem and loses positions once a value is
//! deserialized; `validate-config` has to report *every* problem with its
//! line:column. So the file is parsed into this tree (with yaml-rust2's event
//! parser) and the typed configuration is extracted from it by
//! [`super::parse`], collecting problems as it goes.
//!
//! The same tree is built from JSON (an observer's `actions` as stored in the
//! database), without positions, so actions defined in YAML and in SQL go
//! through exactly the same extraction code.

use std::collections::HashMap;
use std::fmt;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// A position in the configuration file (both 1-based).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Mark {
    pub line: usize,
    pub column: usize,
}

impl Mark {
    fn from_marker(m: Marker) -> Self {
        Mark {
            line: m.line(),
            column: m.col() + 1,
        }
    }
}

impl fmt::Display for Mark {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

/// One node of the document.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub value: Value,
    /// Where the node starts; `None` for nodes built from JSON.
    pub mark: Option<Mark>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// `~`, `null`, or nothing at all.
    Null,
    /// Any scalar, as written. `plain` is false for quoted and block scalars
    /// (they are always strings); plain scalars are typed by the reader.
    Scalar {
        text: String,
        plain: bool,
    },
    Seq(Vec<Node>),
    /// Keys in file order; duplicates are kept so the reader can report them.
    Map(Vec<(Node, Node)>),
}

impl Node {
    pub fn new(value: Value, mark: Option<Mark>) -> Self {
        Node { value, mark }
    }

    /// A short name of the node's kind for error messages.
    pub fn kind(&self) -> &'static str {
        match &self.value {
            Value::Null => "nothing",
            Value::Scalar { .. } => "a scalar",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a map",
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self.value, Value::Null)
    }

    /// The value of `key` in a map node.
    pub fn get(&self, key: &str) -> Option<&Node> {
        match &self.value {
            Value::Map(entries) => entries
                .iter()
                .find(|(k, _)| matches!(&k.value, Value::Scalar { text, .. } if text == key))
                .map(|(_, v)| v),
            _ => None,
        }
    }

    /// Item `i` of a list node.
    pub fn item(&self, i: usize) -> Option<&Node> {
        match &self.value {
            Value::Seq(items) => items.get(i),
            _ => None,
        }
    }

    /// Converts the node to JSON **without** expanding `${VAR}` placeholders.
    /// Plain scalars are typed with the YAML 1.2 core schema (null, booleans,
    /// integers, floats); everything else is a string.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match &self.value {
            Value::Null => J::Null,
            Value::Scalar { text, plain: false } => J::String(text.clone()),
            Value::Scalar { text, plain: true } => plain_scalar_to_json(text),
            Value::Seq(items) => J::Array(items.iter().map(Node::to_json).collect()),
            Value::Map(entries) => {
                let mut map = serde_json::Map::new();
                for (k, v) in entries {
                    let key = match &k.value {
                        Value::Scalar { text, .. } => text.clone(),
                        Value::Null => "null".to_owned(),
                        _ => k.to_json().to_string(),
                    };
                    map.insert(key, v.to_json());
                }
                J::Object(map)
            }
        }
    }

    /// Builds a tree (without positions) from JSON, e.g. an observer's
    /// `actions` as stored in the database.
    pub fn from_json(value: &serde_json::Value) -> Node {
        use serde_json::Value as J;
        let v = match value {
            J::Null => Value::Null,
            J::Bool(b) => Value::Scalar {
                text: b.to_string(),
                plain: true,
            },
            J::Number(n) => Value::Scalar {
                text: n.to_string(),
                plain: true,
            },
            J::String(s) => Value::Scalar {
                text: s.clone(),
                plain: false,
            },
            J::Array(items) => Value::Seq(items.iter().map(Node::from_json).collect()),
            J::Object(map) => Value::Map(
                map.iter()
                    .map(|(k, v)| {
                        (
                            Node::new(
                                Value::Scalar {
                                    text: k.clone(),
                                    plain: false,
                                },
                                None,
                            ),
                            Node::from_json(v),
                        )
                    })
                    .collect(),
            ),
        };
        Node::new(v, None)
    }
}

fn plain_scalar_to_json(text: &str) -> serde_json::Value {
    use serde_json::Value as J;
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return J::Null,
        "true" | "True" | "TRUE" => return J::Bool(true),
        "false" | "False" | "FALSE" => return J::Bool(false),
        _ => {}
    }
    if let Ok(i) = text.parse::<i64>() {
        return J::from(i);
    }
    let looks_numeric = text
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_digit() || c == '-' || c == '+' || c == '.');
    if looks_numeric {
        if let Ok(f) = text.parse::<f64>() {
            if let Some(n) = serde_json::Number::from_f64(f) {
                return J::Number(n);
            }
        }
    }
    J::String(text.to_owned())
}

/// Most nodes that aliases (`*name`) may add to a document, counting every node of every
/// copy. A configuration that repeats a `retry:` or `headers:` block through an alias a few
/// hundred times stays far below it; a "billion laughs" document (aliases of aliases of
/// aliases) reaches it after a few KiB of memory instead of gigabytes.
pub const MAX_ALIAS_NODES: usize = 100_000;
/// Most scalar bytes that aliases may add to a document (one long scalar aliased many times).
pub const MAX_ALIAS_BYTES: usize = 16 * 1024 * 1024;

/// Why a document could not be parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyntaxErrorKind {
    /// Not YAML (or not the single document a configuration is).
    Syntax,
    /// Aliases would expand the document past [`MAX_ALIAS_NODES`] / [`MAX_ALIAS_BYTES`].
    AliasLimit,
}

/// A YAML syntax error, or a document whose aliases expand too far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    pub mark: Mark,
    pub message: String,
    pub kind: SyntaxErrorKind,
}

/// Parses a YAML document. An empty document yields a `Null` node.
pub fn parse(source: &str) -> Result<Node, SyntaxError> {
    let mut builder = TreeBuilder::default();
    let mut parser = Parser::new_from_str(source);
    parser.load(&mut builder, true).map_err(|e| SyntaxError {
        mark: Mark::from_marker(*e.marker()),
        message: e.info().to_owned(),
        kind: SyntaxErrorKind::Syntax,
    })?;
    if let Some(err) = builder.error {
        return Err(err);
    }
    if builder.documents.len() > 1 {
        let mark = builder.documents[1]
            .mark
            .unwrap_or(Mark { line: 1, column: 1 });
        return Err(SyntaxError {
            mark,
            message:
                "the configuration must be a single YAML document (found a second `---` document)"
                    .into(),
            kind: SyntaxErrorKind::Syntax,
        });
    }
    Ok(builder
        .documents
        .pop()
        .unwrap_or(Node::new(Value::Null, Some(Mark { line: 1, column: 1 }))))
}

enum Frame {
    Seq {
        items: Vec<Node>,
        mark: Mark,
        anchor: usize,
        weight: Weight,
    },
    Map {
        entries: Vec<(Node, Node)>,
        pending_key: Option<Node>,
        mark: Mark,
        anchor: usize,
        weight: Weight,
    },
}

/// The size of a node: how many nodes (itself included) and scalar bytes it holds.
/// Kept alongside the tree as it is built, so an alias knows what a copy costs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Weight {
    nodes: usize,
    bytes: usize,
}

impl Weight {
    const ONE: Weight = Weight { nodes: 1, bytes: 0 };

    fn add(&mut self, other: Weight) {
        self.nodes = self.nodes.saturating_add(other.nodes);
        self.bytes = self.bytes.saturating_add(other.bytes);
    }
}

#[derive(Default)]
struct TreeBuilder {
    stack: Vec<Frame>,
    documents: Vec<Node>,
    /// Anchored nodes and their weight.
    anchors: HashMap<usize, (Node, Weight)>,
    /// What aliases copied so far (bounded by [`MAX_ALIAS_NODES`] / [`MAX_ALIAS_BYTES`]).
    expanded: Weight,
    error: Option<SyntaxError>,
}

impl TreeBuilder {
    fn push_node(&mut self, node: Node, weight: Weight, anchor: usize) {
        if anchor > 0 {
            self.anchors.insert(anchor, (node.clone(), weight));
        }
        match self.stack.last_mut() {
            None => self.documents.push(node),
            Some(Frame::Seq {
                items, weight: w, ..
            }) => {
                w.add(weight);
                items.push(node)
            }
            Some(Frame::Map {
                entries,
                pending_key,
                weight: w,
                ..
            }) => {
                w.add(weight);
                match pending_key.take() {
                    None => *pending_key = Some(node),
                    Some(key) => entries.push((key, node)),
                }
            }
        }
    }

    /// Copies an anchored node, unless the copies would pass the alias limits.
    fn push_alias(&mut self, id: usize, mark: Mark) {
        let Some((node, weight)) = self.anchors.get(&id) else {
            self.error = Some(SyntaxError {
                mark,
                message: "alias refers to an unknown anchor".into(),
                kind: SyntaxErrorKind::Syntax,
            });
            return;
        };
        let weight = *weight;
        let mut total = self.expanded;
        total.add(weight);
        // Checked before cloning: the copies are what would exhaust memory.
        if total.nodes > MAX_ALIAS_NODES || total.bytes > MAX_ALIAS_BYTES {
            self.error = Some(SyntaxError {
                mark,
                message: format!(
                    "YAML aliases expand too far: with this alias they would add {} nodes and {} bytes \
                     to the document (at most {MAX_ALIAS_NODES} nodes and {} MiB); write the \
                     repeated part out, or use fewer aliases (aliases of aliases multiply)",
                    total.nodes,
                    total.bytes,
                    MAX_ALIAS_BYTES / (1024 * 1024),
                ),
                kind: SyntaxErrorKind::AliasLimit,
            });
            return;
        }
        self.expanded = total;
        let node = Node {
            mark: Some(mark),
            ..node.clone()
        };
        self.push_node(node, weight, 0);
    }
}

impl MarkedEventReceiver for TreeBuilder {
    fn on_event(&mut self, ev: Event, marker: Marker) {
        if self.error.is_some() {
            return;
        }
        let mark = Mark::from_marker(marker);
        match ev {
            Event::Scalar(text, style, anchor, _tag) => {
                let plain = matches!(style, TScalarStyle::Plain);
                let weight = Weight {
                    nodes: 1,
                    bytes: text.len(),
                };
                let value = if plain && matches!(text.as_str(), "~" | "null" | "Null" | "NULL" | "")
                {
                    Value::Null
                } else {
                    Value::Scalar { text, plain }
                };
                self.push_node(Node::new(value, Some(mark)), weight, anchor);
            }
            Event::SequenceStart(anchor, _) => self.stack.push(Frame::Seq {
                items: Vec::new(),
                mark,
                anchor,
                weight: Weight::ONE,
            }),
            Event::MappingStart(anchor, _) => self.stack.push(Frame::Map {
                entries: Vec::new(),
                pending_key: None,
                mark,
                anchor,
                weight: Weight::ONE,
            }),
            Event::SequenceEnd | Event::MappingEnd => match self.stack.pop() {
                Some(Frame::Seq {
                    items,
                    mark,
                    anchor,
                    weight,
                }) => self.push_node(Node::new(Value::Seq(items), Some(mark)), weight, anchor),
                Some(Frame::Map {
                    entries,
                    mark,
                    anchor,
                    weight,
                    ..
                }) => {
                    // Block mappings report their start after the first key;
                    // the first key's position is where a reader looks.
                    let mark = entries
                        .first()
                        .and_then(|(k, _)| k.mark)
                        .map_or(mark, |k| k.min(mark));
                    self.push_node(Node::new(Value::Map(entries), Some(mark)), weight, anchor)
                }
                None => {}
            },
            Event::Alias(id) => self.push_alias(id, mark),
            Event::Nothing
            | Event::StreamStart
            | Event::StreamEnd
            | Event::DocumentStart
            | Event::DocumentEnd => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_one_based() {
        let doc = parse("a: 1\nb:\n  c: x\n").unwrap();
        let Value::Map(entries) = &doc.value else {
            panic!("not a map")
        };
        assert_eq!(entries[0].0.mark, Some(Mark { line: 1, column: 1 }));
        let Value::Map(inner) = &entries[1].1.value else {
            panic!("not a map")
        };
        assert_eq!(inner[0].0.mark, Some(Mark { line: 3, column: 3 }));
        assert_eq!(inner[0].1.mark, Some(Mark { line: 3, column: 6 }));
    }

    #[test]
    fn empty_document_is_null() {
        assert!(parse("").unwrap().is_null());
        assert!(parse("# only a comment\n").unwrap().is_null());
    }

    #[test]
    fn syntax_error_has_position() {
        let err = parse("a: [1, 2\nb: 3\n").unwrap_err();
        assert!(err.mark.line >= 1);
        assert!(!err.message.is_empty());
    }

    #[test]
    fn aliases_are_resolved() {
        let doc = parse("x: &h {a: 1}\ny: *h\n").unwrap();
        let Value::Map(entries) = &doc.value else {
            panic!()
        };
        assert_eq!(entries[1].1.value, entries[0].1.value);
    }

    #[test]
    fn to_json_keeps_placeholders_and_types_plain_scalars() {
        let doc =
            parse("secret: ${HOOK_SECRET}\nn: 8\nf: 2.5\nb: true\ns: '8'\nd: 5s\nz: ~\n").unwrap();
        let json = doc.to_json();
        assert_eq!(
            json,
            serde_json::json!({"secret": "${HOOK_SECRET}", "n": 8, "f": 2.5, "b": true, "s": "8", "d": "5s", "z": null})
        );
        // and back: same tree shape (positions aside)
        let back = Node::from_json(&json);
        assert_eq!(back.to_json(), json);
    }

    #[test]
    fn multiple_documents_are_rejected() {
        let err = parse("a: 1\n---\nb: 2\n").unwrap_err();
        assert!(
            err.message.contains("single YAML document"),
            "{}",
            err.message
        );
    }

    /// The classic "billion laughs": nine levels of nine aliases under an unknown key
    /// (9^9 = 387 million scalars, tens of GB if copied). It must fail at once with the
    /// alias error and its line:column, before anything is copied beyond the limit.
    #[test]
    fn billion_laughs_is_refused_with_a_clear_error() {
        let mut doc = String::from("observers: []\nunknown_key:\n  a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n");
        let names = ["a", "b", "c", "d", "e", "f", "g", "h", "i"];
        for w in names.windows(2) {
            let (prev, next) = (w[0], w[1]);
            let refs = vec![format!("*{prev}"); 9].join(",");
            doc.push_str(&format!("  {next}: &{next} [{refs}]\n"));
        }
        assert!(doc.len() < 600, "{} bytes", doc.len());
        let err = parse(&doc).unwrap_err();
        assert_eq!(err.kind, SyntaxErrorKind::AliasLimit);
        assert!(
            err.message.contains("aliases expand too far") && err.message.contains("100000 nodes"),
            "{}",
            err.message
        );
        // the alias that crossed the limit: level f (line 8), after a few aliases of level e
        assert_eq!(err.mark.line, 8, "{err:?}");
        assert!(err.mark.column > 1);
    }

    /// One long scalar aliased many times is bounded by bytes, not nodes.
    #[test]
    fn long_scalar_aliased_many_times_is_refused() {
        let long = "x".repeat(1024 * 1024);
        let refs = vec!["*s"; 20].join(", ");
        let doc = format!("s: &s \"{long}\"\nl: [{refs}]\n");
        let err = parse(&doc).unwrap_err();
        assert_eq!(err.kind, SyntaxErrorKind::AliasLimit);
        assert_eq!(err.mark.line, 2);
    }

    /// Ordinary reuse (a retry block shared by many observers) stays well within the limits.
    #[test]
    fn ordinary_aliases_are_fine() {
        let mut doc =
            String::from("retry: &r {max_attempts: 3, initial_backoff: 1s}\nobservers:\n");
        for i in 0..500 {
            doc.push_str(&format!("  - {{name: o{i}, retry: *r}}\n"));
        }
        let tree = parse(&doc).unwrap();
        let o = tree.get("observers").and_then(|n| n.item(499)).unwrap();
        assert_eq!(
            o.get("retry").unwrap().value,
            tree.get("retry").unwrap().value
        );
    }
}
