//! Facts about the live schema, for `validate-config --database-url`.
//! Read-only: nothing is created, locked or executed.

use super::{Db, DbError, Lane};

/// What the database knows about an observer's table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TableInfo {
    Missing,
    /// Exists but is a view, sequence, ... (`relkind` spelled out).
    NotATable {
        label: String,
        kind: String,
    },
    Table {
        label: String,
        columns: Vec<String>,
    },
}

impl Db {
    /// Resolves `table` like `create_observer` would (`to_regclass`).
    pub async fn table_info(&self, table: &str) -> Result<TableInfo, DbError> {
        const CTX: &str = "looking up the table";
        let c = self.client(Lane::Side, CTX).await?;
        let row = c
            .query_opt(
                "SELECT format('%I.%I', n.nspname, c.relname), c.relkind::text, \
                        ARRAY(SELECT a.attname::text FROM pg_catalog.pg_attribute AS a \
                               WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum) \
                   FROM pg_catalog.pg_class AS c JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace \
                  WHERE c.oid = pg_catalog.to_regclass($1)",
                &[&table],
            )
            .await
            .map_err(|e| self.err(CTX, e))?;
        let Some(row) = row else {
            return Ok(TableInfo::Missing);
        };
        let label: String = row.try_get(0).map_err(|e| self.err(CTX, e))?;
        let kind: String = row.try_get(1).map_err(|e| self.err(CTX, e))?;
        if kind == "r" || kind == "p" {
            let columns: Vec<String> = row.try_get(2).map_err(|e| self.err(CTX, e))?;
            return Ok(TableInfo::Table { label, columns });
        }
        let kind = match kind.as_str() {
            "v" => "a view",
            "m" => "a materialized view",
            "f" => "a foreign table",
            "S" => "a sequence",
            "i" | "I" => "an index",
            "c" => "a composite type",
            _ => "not a table",
        };
        Ok(TableInfo::NotATable {
            label,
            kind: kind.to_owned(),
        })
    }

    /// Compiles `condition` the way the capture trigger sees it for `op`
    /// (`NEW` for INSERT, `OLD` for DELETE, both for UPDATE; search_path
    /// `pg_catalog`) by *preparing* — never executing — a query. Returns the
    /// compiler's message if it does not compile.
    pub async fn condition_error(
        &self,
        table_label: &str,
        condition: &str,
        op: &str,
    ) -> Result<Option<String>, DbError> {
        const CTX: &str = "checking the condition";
        let from = match op {
            "INSERT" => format!("{table_label} AS new"),
            "DELETE" => format!("{table_label} AS old"),
            _ => format!("{table_label} AS new, {table_label} AS old"),
        };
        let sql = format!("SELECT 1 FROM {from} WHERE ({condition})");
        let mut c = self.client(Lane::Side, CTX).await?;
        let tx = c.transaction().await.map_err(|e| self.err(CTX, e))?;
        tx.batch_execute("SET LOCAL search_path = pg_catalog, pg_temp")
            .await
            .map_err(|e| self.err(CTX, e))?;
        let result = tx.prepare(&sql).await;
        let _ = tx.rollback().await;
        match result {
            Ok(_) => Ok(None),
            Err(e) => match e.as_db_error() {
                Some(db) => Ok(Some(db.message().to_owned())),
                None => Err(self.err(CTX, e)),
            },
        }
    }
}
