//! Checking observer conditions at creation time.
//!
//! A condition is an SQL boolean expression over `NEW` and/or `OLD`. It is spliced into the
//! capture statement, so before anything else we make sure the text is exactly one expression
//! (no `FROM`, no second statement, nothing that could close our parentheses), using the same
//! grammar entry point PL/pgSQL uses for its expressions. Then `_probe_condition` compiles it
//! in the very position the capture trigger evaluates it, with the rights of
//! `observers_capture` (the function is SECURITY DEFINER, owned by that role), so that
//! unknown columns, type errors, non-boolean results and missing privileges are reported when
//! the observer is created instead of failing the application's writes later.

use crate::capture::query::{self, Op};
use crate::error::raise;
use pgrx::pg_sys;
use pgrx::prelude::*;
use std::ffi::{c_char, CString};

fn invalid(message: String) -> ! {
    // no hint: observers._check_condition adds one that shows what a condition looks like
    raise(PgSqlErrorCode::ERRCODE_SYNTAX_ERROR, message, None)
}

/// Raise unless `condition` parses as exactly one SQL expression.
pub fn check_single_expression(condition: &str) {
    if condition.trim().is_empty() {
        invalid("condition is empty".into());
    }
    let c = match CString::new(condition) {
        Ok(c) => c,
        Err(_) => invalid("condition contains a NUL byte".into()),
    };
    // SAFETY: raw_parser only reads the string; syntax errors are raised as PostgreSQL errors.
    unsafe {
        let list = pg_sys::raw_parser(c.as_ptr(), pg_sys::RawParseMode::RAW_PARSE_PLPGSQL_EXPR);
        if list.is_null() || (*list).length != 1 {
            invalid("condition is not a single SQL expression".into());
        }
        let raw = (*(*list).elements).ptr_value as *mut pg_sys::RawStmt;
        let stmt = (*raw).stmt;
        if stmt.is_null() || (*stmt).type_ != pg_sys::NodeTag::T_SelectStmt {
            invalid("condition is not a single SQL expression".into());
        }
        let s = &*(stmt as *mut pg_sys::SelectStmt);
        let non_empty = |l: *mut pg_sys::List| !l.is_null() && (*l).length > 0;
        let extra = if non_empty(s.distinctClause) {
            Some("DISTINCT")
        } else if non_empty(s.fromClause) {
            Some("a FROM clause")
        } else if !s.whereClause.is_null() {
            Some("a WHERE clause")
        } else if non_empty(s.groupClause) || !s.havingClause.is_null() {
            Some("GROUP BY/HAVING")
        } else if non_empty(s.windowClause) {
            Some("a WINDOW clause")
        } else if non_empty(s.sortClause) {
            Some("ORDER BY")
        } else if !s.limitCount.is_null() || !s.limitOffset.is_null() {
            Some("LIMIT/OFFSET")
        } else if non_empty(s.lockingClause) {
            Some("a locking clause")
        } else {
            None
        };
        if let Some(what) = extra {
            invalid(format!(
                "condition must be a single SQL expression, but it contains {what}"
            ));
        }
        let n_targets = if s.targetList.is_null() {
            0
        } else {
            (*s.targetList).length
        };
        if n_targets != 1 {
            invalid(format!(
                "condition must be a single SQL expression, but it is a list of {n_targets}"
            ));
        }
        let target = (*(*s.targetList).elements).ptr_value as *mut pg_sys::ResTarget;
        if !(*target).name.is_null() {
            invalid("condition must be a single SQL expression, without AS".into());
        }
    }
}

/// Compile `condition` for `op` on table `table` exactly as capture will run it (without
/// reading any row). Raises the compilation error, if any.
pub fn probe(table: pg_sys::Oid, condition: &str, op: &str) {
    let Some(op) = Op::parse(op) else {
        ereport!(
            ERROR,
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("unknown operation {op:?}: expected INSERT, UPDATE or DELETE")
        );
    };
    check_single_expression(condition);
    // SAFETY: catalog lookup by OID, then SPI inside our own connection.
    unsafe {
        let reltype = pg_sys::get_rel_type_id(table);
        if reltype == pg_sys::InvalidOid {
            ereport!(
                ERROR,
                PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE,
                format!("relation with OID {} does not exist", table.to_u32())
            );
        }
        let (sql, nargs) = query::probe_sql(op, condition);
        let csql = CString::new(sql).expect("condition was checked for NUL bytes");
        let mut argtypes = [reltype, reltype];
        let mut values = [pg_sys::Datum::from(0); 2];
        let nulls = [b'n' as c_char; 2];
        if pg_sys::SPI_connect() != pg_sys::SPI_OK_CONNECT as i32 {
            ereport!(
                ERROR,
                PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
                "SPI_connect failed"
            );
        }
        let rc = pg_sys::SPI_execute_with_args(
            csql.as_ptr(),
            nargs as i32,
            argtypes.as_mut_ptr(),
            values.as_mut_ptr(),
            nulls.as_ptr(),
            false,
            0,
        );
        if rc != pg_sys::SPI_OK_SELECT as i32 {
            ereport!(
                ERROR,
                PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
                format!("probing the condition returned SPI code {rc}")
            );
        }
        pg_sys::SPI_finish();
    }
}
