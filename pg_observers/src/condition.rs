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
//!
//! A condition must also be a *pure* predicate over NEW/OLD (SPEC §2.7): it runs inside every
//! writer's transaction, so it may not change the writer's session (`set_config`), send anything
//! (`pg_notify`), read other tables (a subquery, which would also run with the capture role's
//! rights instead of its creator's), or depend on the writer's session (`now()`,
//! `current_setting()`, a cast that depends on `TimeZone`). `check_pure` walks the analyzed
//! condition and refuses subqueries, parameters and every function, operator or cast that is
//! not IMMUTABLE. The capture trigger additionally rolls back any setting changed while it runs
//! (a user function may lie about its volatility), see `capture::SessionGuard`.

use crate::capture::query::{self, Op};
use crate::error::raise;
use pgrx::pg_sys;
use pgrx::prelude::*;
use std::ffi::{c_char, c_void, CStr, CString};

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
        // subqueries and parameters are refused before any name is resolved, so the error says
        // what is wrong rather than which privilege a subquery's table lacks
        let mut found: Option<Impurity> = None;
        raw_impure_walker(
            (*target).val,
            &mut found as *mut Option<Impurity> as *mut c_void,
        );
        if let Some(what) = found {
            report(what);
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
        let plan = pg_sys::SPI_prepare(csql.as_ptr(), nargs as i32, argtypes.as_mut_ptr());
        if plan.is_null() {
            ereport!(
                ERROR,
                PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
                "preparing the condition failed"
            );
        }
        check_pure(plan);
        // execute it too (LIMIT 0: reads nothing), so that planning errors show up now. The
        // planner folds the condition over the NULL rows, so it may call its functions: roll
        // back whatever setting they change, as capture does.
        let guc_level = pg_sys::NewGUCNestLevel();
        let rc = pg_sys::SPI_execute_plan(plan, values.as_mut_ptr(), nulls.as_ptr(), false, 0);
        pg_sys::AtEOXact_GUC(false, guc_level);
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

/// What makes a condition impure; the first one found is reported.
enum Impurity {
    Subquery,
    Parameter(i32),
    Function(pg_sys::Oid),
    SqlValue,
    NextValue,
}

/// Raise unless the WHERE clause of the prepared probe query is a pure predicate: no subquery,
/// no parameter, only IMMUTABLE functions, operators and casts.
///
/// # Safety
/// `plan` is a plan prepared by SPI in the current SPI connection.
unsafe fn check_pure(plan: pg_sys::SPIPlanPtr) {
    // SAFETY: `plan` was prepared by SPI in the current connection (contract): its plan sources,
    // query list and Query nodes are live, and they are only read; the walker gets a pointer to a
    // local that outlives the walk.
    unsafe {
        let sources = pg_sys::SPI_plan_get_plan_sources(plan);
        if sources.is_null() || (*sources).length != 1 {
            invalid("condition is not a single SQL expression".into());
        }
        let source = (*(*sources).elements).ptr_value as *mut pg_sys::CachedPlanSource;
        let queries = (*source).query_list;
        if queries.is_null() || (*queries).length != 1 {
            invalid("condition is not a single SQL expression".into());
        }
        let query = (*(*queries).elements).ptr_value as *mut pg_sys::Query;
        let quals = if (*query).jointree.is_null() {
            std::ptr::null_mut()
        } else {
            (*(*query).jointree).quals
        };
        let mut found: Option<Impurity> = None;
        impure_walker(quals, &mut found as *mut Option<Impurity> as *mut c_void);
        if let Some(what) = found {
            report(what);
        }
    }
}

/// Raise the error for an impure condition.
fn report(what: Impurity) -> ! {
    // SAFETY: syscache look-ups by OID.
    unsafe {
        let (message, hint) = match what {
            Impurity::Subquery => (
                "condition contains a subquery: conditions may only read NEW and OLD".to_string(),
                "A condition is evaluated in every writer's transaction and may not read other tables; enrich the event in the worker instead (lookups).",
            ),
            Impurity::Parameter(n) => (
                format!("condition contains the parameter ${n}: conditions may only read NEW and OLD"),
                "Write the value into the condition, e.g. NEW.total > 1000.",
            ),
            Impurity::Function(oid) => {
                let name = pg_sys::get_func_name(oid);
                let name = if name.is_null() {
                    format!("function {}", oid.to_u32())
                } else {
                    format!("{}()", CStr::from_ptr(name).to_string_lossy())
                };
                let kind = match pg_sys::func_volatile(oid) as u8 {
                    b'v' => "VOLATILE",
                    _ => "STABLE",
                };
                (
                    format!("condition calls {name}, which is {kind}: conditions may only use IMMUTABLE functions, operators and casts"),
                    "A condition runs in every writer's transaction: it may not change or depend on the writer's session (settings, time zone, the clock) or have side effects. Compare columns with constants, e.g. NEW.total > 1000 or NEW.status IN ('paid', 'shipped'); a cast of a timestamptz column to date or text depends on TimeZone, compare timestamps with timestamps instead.",
                )
            }
            Impurity::SqlValue => (
                "condition uses CURRENT_DATE, CURRENT_USER or a similar session value: conditions may only read NEW and OLD".to_string(),
                "A condition must not depend on the writer's session or the clock.",
            ),
            Impurity::NextValue => (
                "condition calls a sequence function: conditions may not have side effects".to_string(),
                "A condition must not change anything.",
            ),
        };
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            message,
            Some(hint),
        )
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn not_immutable(func: pg_sys::Oid, context: *mut c_void) -> bool {
    // SAFETY: syscache look-up by OID; `context` is the walker's `Option<Impurity>`.
    unsafe {
        if pg_sys::func_volatile(func) as u8 == b'i' {
            return false;
        }
        *(context as *mut Option<Impurity>) = Some(Impurity::Function(func));
        true
    }
}

/// The raw parse tree walker of `check_single_expression`: subqueries and parameters.
#[pg_guard]
unsafe extern "C-unwind" fn raw_impure_walker(
    node: *mut pg_sys::Node,
    context: *mut c_void,
) -> bool {
    // SAFETY: PostgreSQL's raw expression walker hands us valid nodes of a raw parse tree.
    unsafe {
        if node.is_null() {
            return false;
        }
        let impurity = match (*node).type_ {
            pg_sys::NodeTag::T_SubLink => Some(Impurity::Subquery),
            pg_sys::NodeTag::T_ParamRef => Some(Impurity::Parameter(
                (*(node as *mut pg_sys::ParamRef)).number,
            )),
            _ => None,
        };
        if let Some(i) = impurity {
            *(context as *mut Option<Impurity>) = Some(i);
            return true;
        }
        pg_sys::raw_expression_tree_walker(node, Some(raw_impure_walker), context)
    }
}

/// The expression walker of `check_pure`: returns true (stop) at the first impurity, which it
/// stores in `context` (an `Option<Impurity>`).
#[pg_guard]
unsafe extern "C-unwind" fn impure_walker(node: *mut pg_sys::Node, context: *mut c_void) -> bool {
    // SAFETY: PostgreSQL's expression walker hands us valid nodes of an analyzed query.
    unsafe {
        if node.is_null() {
            return false;
        }
        let found = context as *mut Option<Impurity>;
        let impurity = match (*node).type_ {
            pg_sys::NodeTag::T_SubLink | pg_sys::NodeTag::T_Query => Some(Impurity::Subquery),
            pg_sys::NodeTag::T_Param => {
                Some(Impurity::Parameter((*(node as *mut pg_sys::Param)).paramid))
            }
            pg_sys::NodeTag::T_SQLValueFunction => Some(Impurity::SqlValue),
            pg_sys::NodeTag::T_NextValueExpr => Some(Impurity::NextValue),
            _ => None,
        };
        if let Some(i) = impurity {
            *found = Some(i);
            return true;
        }
        if pg_sys::check_functions_in_node(node, Some(not_immutable), context) {
            return true;
        }
        pg_sys::expression_tree_walker(node, Some(impure_walker), context)
    }
}
