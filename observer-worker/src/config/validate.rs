//! Rules that span several fields (single fields are checked while reading).

use super::reader::{index, Reader};
use super::yaml::{Node, Value};
use super::Config;

pub fn validate(r: &mut Reader, config: &Config, tree: &Node) {
    // Observer names are unique: the database keys observers by name, so a
    // second definition would silently replace the first one.
    let mut seen: Vec<&str> = Vec::new();
    for o in &config.observers {
        if seen.contains(&o.name.as_str()) {
            let (path, mark) = observer_name_location(tree, &o.name, 1);
            r.problem(
                &path,
                mark,
                format!(
                    "observer name `{}` is used twice (names must be unique)",
                    o.name
                ),
            );
        } else {
            seen.push(&o.name);
        }
    }
}

/// Path and position of the `nth` (0-based) later occurrence of an observer name.
fn observer_name_location(
    tree: &Node,
    name: &str,
    nth: usize,
) -> (String, Option<super::yaml::Mark>) {
    let mut found = 0;
    if let Some(Value::Seq(items)) = get(tree, "observers").map(|n| &n.value) {
        for (i, item) in items.iter().enumerate() {
            if let Some(n) = get(item, "name") {
                if matches!(&n.value, Value::Scalar { text, .. } if text == name) {
                    if found == nth {
                        return (format!("{}.name", index("observers", i)), n.mark);
                    }
                    found += 1;
                }
            }
        }
    }
    ("observers".to_owned(), None)
}

fn get<'n>(node: &'n Node, key: &str) -> Option<&'n Node> {
    match &node.value {
        Value::Map(entries) => entries
            .iter()
            .find(|(k, _)| matches!(&k.value, Value::Scalar { text, .. } if text == key))
            .map(|(_, v)| v),
        _ => None,
    }
}
