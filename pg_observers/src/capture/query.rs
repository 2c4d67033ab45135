//! SQL text of the statements the capture trigger runs (pure string building).
//!
//! Parameter layout of the prepared statements:
//! * statement-level INSERT/DELETE: `$1` observer id; the rows come from the transition table.
//! * row-level INSERT: `$1` observer id, `$2` the new row.
//! * row-level DELETE: `$1` observer id, `$2` the old row.
//! * row-level UPDATE: `$1` observer id, `$2` new row, `$3` old row, `$4` changed columns.
//!
//! A condition is spliced in as `WHERE (\n<condition>\n)`: the newlines end a trailing `--`
//! comment, and `observers._probe_condition` has verified at creation that the text is exactly
//! one SQL expression, so it cannot escape the parentheses.
//!
//! Whole rows of a transition table are written `new.*` / `old.*`: a bare `new` would mean the
//! user's column of that name when the table has one (`to_jsonb(new)` delivered `"new": 7`).

/// The row operation a trigger captures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Insert,
    Update,
    Delete,
}

impl Op {
    #[cfg_attr(not(test), allow(dead_code))]
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Insert => "INSERT",
            Op::Update => "UPDATE",
            Op::Delete => "DELETE",
        }
    }

    pub fn as_cstr(self) -> &'static std::ffi::CStr {
        match self {
            Op::Insert => c"INSERT",
            Op::Update => c"UPDATE",
            Op::Delete => c"DELETE",
        }
    }

    pub fn parse(s: &str) -> Option<Op> {
        match s {
            "INSERT" => Some(Op::Insert),
            "UPDATE" => Some(Op::Update),
            "DELETE" => Some(Op::Delete),
            _ => None,
        }
    }
}

/// How the trigger delivers rows: a transition table for the whole statement, or one row per call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Level {
    /// `FOR EACH STATEMENT ... REFERENCING NEW/OLD TABLE AS <quoted name>`.
    Statement {
        transition_table: String,
    },
    Row,
}

fn where_clause(condition: Option<&str>) -> String {
    match condition {
        Some(c) => format!("\nWHERE (\n{c}\n)"),
        None => String::new(),
    }
}

/// Number of parameters of the capture statement.
pub fn capture_nargs(op: Op, level: &Level) -> usize {
    match (op, level) {
        (Op::Update, _) => 4,
        (_, Level::Statement { .. }) => 1,
        (_, Level::Row) => 2,
    }
}

/// The INSERT INTO observers.event statement a capture trigger runs. UPDATE is always
/// captured row by row (the trigger rejects statement-level UPDATE triggers before this).
pub fn capture_sql(op: Op, level: &Level, condition: Option<&str>) -> String {
    const INTO: &str = "INSERT INTO observers.event (observer_id, op, ";
    let w = where_clause(condition);
    match (op, level, condition) {
        (Op::Insert, Level::Statement { transition_table }, _) => format!(
            "{INTO}new) SELECT $1, 'INSERT', pg_catalog.to_jsonb(new.*) FROM {transition_table} AS new{w}"
        ),
        (Op::Delete, Level::Statement { transition_table }, _) => format!(
            "{INTO}old) SELECT $1, 'DELETE', pg_catalog.to_jsonb(old.*) FROM {transition_table} AS old{w}"
        ),
        (Op::Insert, Level::Row, None) => {
            format!("{INTO}new) VALUES ($1, 'INSERT', pg_catalog.to_jsonb($2))")
        }
        (Op::Insert, Level::Row, Some(_)) => format!(
            "{INTO}new) SELECT $1, 'INSERT', pg_catalog.to_jsonb($2) FROM (SELECT ($2).*) AS new{w}"
        ),
        (Op::Delete, Level::Row, None) => {
            format!("{INTO}old) VALUES ($1, 'DELETE', pg_catalog.to_jsonb($2))")
        }
        (Op::Delete, Level::Row, Some(_)) => format!(
            "{INTO}old) SELECT $1, 'DELETE', pg_catalog.to_jsonb($2) FROM (SELECT ($2).*) AS old{w}"
        ),
        (Op::Update, _, None) => format!(
            "{INTO}new, old, changed) VALUES ($1, 'UPDATE', pg_catalog.to_jsonb($2), pg_catalog.to_jsonb($3), $4)"
        ),
        (Op::Update, _, Some(_)) => format!(
            "{INTO}new, old, changed) SELECT $1, 'UPDATE', pg_catalog.to_jsonb($2), pg_catalog.to_jsonb($3), $4 \
             FROM (SELECT ($2).*) AS new, (SELECT ($3).*) AS old{w}"
        ),
    }
}

/// A query that compiles `condition` exactly where capture evaluates it, without reading any
/// table: `$1` (and `$2` for UPDATE) are typed as the table's row type.
pub fn probe_sql(op: Op, condition: &str) -> (String, usize) {
    let w = where_clause(Some(condition));
    match op {
        Op::Insert => (
            format!("SELECT 1 FROM (SELECT ($1).*) AS new{w}\nLIMIT 0"),
            1,
        ),
        Op::Delete => (
            format!("SELECT 1 FROM (SELECT ($1).*) AS old{w}\nLIMIT 0"),
            1,
        ),
        Op::Update => (
            format!("SELECT 1 FROM (SELECT ($1).*) AS new, (SELECT ($2).*) AS old{w}\nLIMIT 0"),
            2,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statement_insert_without_condition() {
        let sql = capture_sql(
            Op::Insert,
            &Level::Statement {
                transition_table: "observers_new_rows".into(),
            },
            None,
        );
        assert_eq!(
            sql,
            "INSERT INTO observers.event (observer_id, op, new) SELECT $1, 'INSERT', \
             pg_catalog.to_jsonb(new.*) FROM observers_new_rows AS new"
        );
    }

    #[test]
    fn condition_is_parenthesized_on_its_own_lines() {
        let sql = capture_sql(Op::Delete, &Level::Row, Some("old.x > 1 -- big"));
        assert!(
            sql.ends_with("AS old\nWHERE (\nold.x > 1 -- big\n)"),
            "{sql}"
        );
    }

    #[test]
    fn update_uses_four_parameters() {
        assert_eq!(capture_nargs(Op::Update, &Level::Row), 4);
        let sql = capture_sql(Op::Update, &Level::Row, Some("new.a <> old.a"));
        assert!(
            sql.contains("$4 FROM (SELECT ($2).*) AS new, (SELECT ($3).*) AS old"),
            "{sql}"
        );
    }

    #[test]
    fn op_round_trips() {
        for op in [Op::Insert, Op::Update, Op::Delete] {
            assert_eq!(Op::parse(op.as_str()), Some(op));
        }
        assert_eq!(Op::parse("TRUNCATE"), None);
    }
}
