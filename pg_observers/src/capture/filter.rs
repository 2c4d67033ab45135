//! Observer conditions evaluated in the trigger's own process, without SPI.
//!
//! The SPI path (`INSERT ... SELECT ... WHERE <condition>`) starts an executor for every captured
//! statement: 2.5x what the direct path costs. Here a condition is compiled once per
//! (trigger, backend) into an `ExprState` over the trigger's NEW/OLD slots, the way PostgreSQL
//! compiles a trigger's `WHEN` clause (`CreateTrigger` / `TriggerEnabled`): the relation is added
//! to a parse state as `new` and/or `old` (INSERT: `new`; DELETE: `old`; UPDATE: both, in the
//! same order as the SPI statement's `FROM`), the expression is analysed as a `WHERE` clause,
//! simplified by `expression_planner`, its `new`/`old` columns are pointed at the outer/inner
//! slot, and `ExecInitQual` compiles it. Rows that pass are written by the direct writer.
//!
//! What the SPI path guaranteed still holds:
//! * **Rights.** Compilation and evaluation run inside capture(), as `observers_capture`
//!   (SECURITY DEFINER): `ExecInitQual` checks EXECUTE on every function with that role, as the
//!   executor does for the SPI statement. A compiled condition is dropped when a function, type,
//!   operator, schema or role changes (syscache callbacks in `plan_cache`, as PostgreSQL's plan
//!   cache does for a kept SPI plan) and when the current user differs from the compiling one,
//!   so a REVOKE takes effect at the next capture.
//! * **Names.** The condition is analysed with `search_path = pg_catalog, pg_temp` pinned, like
//!   the SPI statement. Evaluation pins it too unless every function the expression calls is a
//!   built-in `internal` function over node types that call nothing else (`needs_pinned_path`):
//!   those never resolve names at run time, so the common condition (`NEW.total > 1000`) costs no
//!   GUC save/restore; a user function (SQL, PL/pgSQL, C) runs with the path pinned as before.
//! * **Session.** Evaluation happens inside the capture call's `SessionGuard`: settings a lying
//!   function changes are rolled back, formats are the canonical ones.
//! * **Meaning.** Anything this compiler would read differently from the SPI statement falls back
//!   to SPI: whole-row references (`new` as a value: a record of the subquery there, the table's
//!   row type here), system columns, subqueries and parameters (refused at creation anyway), or a
//!   text that is not exactly one expression. NULL means "no event" in both (`ExecQual`).
//!
//! A compiled condition is not re-entrant (its steps keep intermediate results): a condition
//! whose function writes to a table observed by the same trigger re-enters it; the nested call
//! compiles a private copy for itself.

use super::query::Op;
use pgrx::pg_sys;
use std::cell::Cell;
use std::ffi::{c_void, CString};
use std::ptr;

unsafe extern "C-unwind" {
    // parser/parse_clause.h and rewrite/rewriteManip.h are not part of pgrx's bindings
    fn transformWhereClause(
        pstate: *mut pg_sys::ParseState,
        clause: *mut pg_sys::Node,
        exprKind: pg_sys::ParseExprKind::Type,
        constructName: *const std::ffi::c_char,
    ) -> *mut pg_sys::Node;
    fn ChangeVarNodes(node: *mut pg_sys::Node, old_varno: i32, new_varno: i32, sublevels_up: i32);
}

/// `INTERNALlanguageId` (catalog/pg_language_d.h)
const INTERNAL_LANGUAGE: u32 = 12;

/// Range-table indexes of the parse: `new` then `old` for UPDATE, the only one otherwise.
const FIRST: i32 = 1;
const SECOND: i32 = 2;

/// A condition compiled for one trigger's relation and operation.
pub struct Condition {
    /// owns the expression, its ExprState and the ExprContext (deleted in Drop)
    context: pg_sys::MemoryContext,
    /// null when the condition folded to constant TRUE (`ExecInitQual` of an empty list)
    state: *mut pg_sys::ExprState,
    econtext: *mut pg_sys::ExprContext,
    /// evaluation must run with `search_path` pinned (the expression calls non-built-in code)
    pub pins_search_path: bool,
    /// the role that compiled it (EXECUTE rights were checked for that role)
    pub userid: pg_sys::Oid,
    op: Op,
    text: CString,
    busy: Cell<bool>,
}

impl Drop for Condition {
    fn drop(&mut self) {
        // SAFETY: the context was created by `compile` and everything of this condition lives in
        // it; nothing else points into it once the condition is dropped.
        unsafe { pg_sys::MemoryContextDelete(self.context) };
    }
}

/// Clears a condition's `busy` flag when an evaluation ends, by return or by unwinding.
struct Busy<'a>(&'a Cell<bool>);

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.set(false);
    }
}

impl Condition {
    /// Compile `text` for `op` on `rel`, or None when it must stay on the SPI path (see the
    /// module documentation). Errors (unknown column, type mismatch, missing EXECUTE right) are
    /// raised as the SPI statement's preparation would raise them.
    ///
    /// # Safety
    /// Inside a capture call, as the capture role, with `search_path` pinned; `rel` is the
    /// trigger's open relation.
    pub unsafe fn compile(rel: pg_sys::Relation, op: Op, text: &str) -> Option<Condition> {
        // SAFETY: inside a capture call (contract): parsing, analysis and planning of an
        // expression over `rel`, which the writer's statement holds locked. The context is made
        // under the current (call) memory, so an error frees it with the transaction; only a
        // finished condition is moved under CacheMemoryContext. CurrentMemoryContext is put back.
        unsafe {
            let ctext = CString::new(text).ok()?;
            let raw = raw_expression(&ctext)?;
            let context = pg_sys::AllocSetContextCreateInternal(
                pg_sys::CurrentMemoryContext,
                c"pg_observers condition".as_ptr(),
                0,
                1024,
                8 * 1024,
            );
            let old_context = pg_sys::CurrentMemoryContext;
            pg_sys::CurrentMemoryContext = context;

            let pstate = pg_sys::make_parsestate(ptr::null_mut());
            (*pstate).p_sourcetext = ctext.as_ptr();
            let names: &[&std::ffi::CStr] = match op {
                Op::Insert => &[c"new"],
                Op::Delete => &[c"old"],
                Op::Update => &[c"new", c"old"],
            };
            for name in names {
                let alias = pg_sys::makeAlias(pg_sys::pstrdup(name.as_ptr()), ptr::null_mut());
                let nsitem = pg_sys::addRangeTableEntryForRelation(
                    pstate,
                    rel,
                    pg_sys::AccessShareLock as i32,
                    alias,
                    false,
                    false,
                );
                pg_sys::addNSItemToQuery(pstate, nsitem, false, true, true);
            }
            // declared here without pgrx's guard: call it under one (an unknown column or a
            // dropped function raises here, and the error must reach capture()'s handler)
            let analysed = super::raw::guarded(|| {
                transformWhereClause(
                    pstate,
                    raw,
                    pg_sys::ParseExprKind::EXPR_KIND_WHERE,
                    c"WHERE".as_ptr(),
                )
            });
            pg_sys::assign_expr_collations(pstate, analysed);
            pg_sys::free_parsestate(pstate);

            let mut scan = Scan::default();
            scan_node(analysed, &mut scan);
            if scan.fallback {
                pg_sys::CurrentMemoryContext = old_context;
                pg_sys::MemoryContextDelete(context);
                return None;
            }
            let planned = pg_sys::expression_planner(analysed.cast()) as *mut pg_sys::Node;
            // what the planner folded in may differ (an inlined SQL function's body): look again
            let mut scan = Scan::default();
            scan_node(planned, &mut scan);
            if scan.fallback {
                pg_sys::CurrentMemoryContext = old_context;
                pg_sys::MemoryContextDelete(context);
                return None;
            }
            // NEW is the outer slot, OLD the inner one (as TriggerEnabled does)
            let (new_varno, old_varno) = match op {
                Op::Insert => (Some(FIRST), None),
                Op::Delete => (None, Some(FIRST)),
                Op::Update => (Some(FIRST), Some(SECOND)),
            };
            super::raw::guarded(|| {
                if let Some(v) = old_varno {
                    ChangeVarNodes(planned, v, pg_sys::INNER_VAR, 0);
                }
                if let Some(v) = new_varno {
                    ChangeVarNodes(planned, v, pg_sys::OUTER_VAR, 0);
                }
            });
            let quals = pg_sys::make_ands_implicit(planned.cast());
            let state = pg_sys::ExecInitQual(quals, ptr::null_mut());
            let econtext = pg_sys::CreateStandaloneExprContext();
            pg_sys::CurrentMemoryContext = old_context;
            Some(Condition {
                context,
                state,
                econtext,
                pins_search_path: scan.needs_pinned_path,
                userid: pg_sys::GetUserId(),
                op,
                text: ctext,
                busy: Cell::new(false),
            })
        }
    }

    /// Keep the compiled condition for the backend's life (until its entry is dropped).
    ///
    /// # Safety
    /// Call once, right after `compile`, before anything else refers to the condition.
    pub unsafe fn keep(&self) {
        // SAFETY: the context was created by `compile`; moving it under CacheMemoryContext only
        // changes who frees it.
        unsafe { pg_sys::MemoryContextSetParent(self.context, pg_sys::CacheMemoryContext) };
    }

    /// Does the row pass? `new` / `old` are the trigger's slots (null where the operation has
    /// none). NULL counts as false, as in a WHERE clause.
    ///
    /// # Safety
    /// Inside the capture call of the trigger this condition was compiled for; the slots hold
    /// rows of `rel`, its open relation.
    pub unsafe fn passes(
        &self,
        rel: pg_sys::Relation,
        new: *mut pg_sys::TupleTableSlot,
        old: *mut pg_sys::TupleTableSlot,
    ) -> bool {
        // SAFETY: the slots are the trigger call's (contract); the ExprState and ExprContext are
        // this condition's; evaluation runs in the per-tuple memory, reset before each row. A
        // nested call (the condition's function wrote to this table) uses a private compilation.
        unsafe {
            if self.state.is_null() {
                return true;
            }
            if self.busy.replace(true) {
                let text = self.text.to_string_lossy();
                return match Condition::compile(rel, self.op, &text) {
                    Some(private) => private.passes(rel, new, old),
                    None => unreachable!("a condition that compiled once compiles again"),
                };
            }
            let _busy = Busy(&self.busy);
            let econtext = self.econtext;
            pg_sys::MemoryContextReset((*econtext).ecxt_per_tuple_memory);
            (*econtext).ecxt_outertuple = new;
            (*econtext).ecxt_innertuple = old;
            let state = self.state;
            let evalfunc = (*state).evalfunc.expect("ExecInitQual sets evalfunc");
            let old_context = pg_sys::CurrentMemoryContext;
            pg_sys::CurrentMemoryContext = (*econtext).ecxt_per_tuple_memory;
            let mut isnull = false;
            let result =
                pg_sys::ffi::pg_guard_ffi_boundary(|| evalfunc(state, econtext, &mut isnull));
            pg_sys::CurrentMemoryContext = old_context;
            !isnull && result.value() != 0
        }
    }
}

/// The single expression of `text`, raw (unanalysed), or None if the text is anything else (a
/// list, a FROM clause, a subquery or a parameter; creation refuses those, so only conditions
/// written by hand into a trigger's arguments get here, and they stay on the SPI path).
unsafe fn raw_expression(text: &CString) -> Option<*mut pg_sys::Node> {
    // SAFETY: raw_parser reads the string (a syntax error is raised, as the SPI statement's
    // preparation would raise it); the nodes it returns are read only.
    unsafe {
        let list = pg_sys::raw_parser(text.as_ptr(), pg_sys::RawParseMode::RAW_PARSE_PLPGSQL_EXPR);
        if list.is_null() || (*list).length != 1 {
            return None;
        }
        let raw = (*(*list).elements).ptr_value as *mut pg_sys::RawStmt;
        let stmt = (*raw).stmt;
        if stmt.is_null() || (*stmt).type_ != pg_sys::NodeTag::T_SelectStmt {
            return None;
        }
        let s = &*(stmt as *mut pg_sys::SelectStmt);
        let empty = |l: *mut pg_sys::List| l.is_null() || (*l).length == 0;
        let plain = empty(s.distinctClause)
            && empty(s.fromClause)
            && s.whereClause.is_null()
            && empty(s.groupClause)
            && s.havingClause.is_null()
            && empty(s.windowClause)
            && empty(s.sortClause)
            && s.limitCount.is_null()
            && s.limitOffset.is_null()
            && empty(s.lockingClause)
            && s.withClause.is_null()
            && s.valuesLists.is_null()
            && s.op == pg_sys::SetOperation::SETOP_NONE
            && !s.targetList.is_null()
            && (*s.targetList).length == 1;
        if !plain {
            return None;
        }
        let target = (*(*s.targetList).elements).ptr_value as *mut pg_sys::ResTarget;
        if !(*target).name.is_null() || !(*target).indirection.is_null() {
            return None;
        }
        let val = (*target).val;
        let mut found = false;
        raw_walker(val, &mut found as *mut bool as *mut c_void);
        if found {
            return None;
        }
        Some(val)
    }
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn raw_walker(node: *mut pg_sys::Node, context: *mut c_void) -> bool {
    // SAFETY: PostgreSQL's raw expression walker hands us valid nodes; `context` is a `bool`.
    unsafe {
        if node.is_null() {
            return false;
        }
        if matches!(
            (*node).type_,
            pg_sys::NodeTag::T_SubLink | pg_sys::NodeTag::T_ParamRef
        ) {
            *(context as *mut bool) = true;
            return true;
        }
        pg_sys::raw_expression_tree_walker(node, Some(raw_walker), context)
    }
}

/// What `scan_node` found in an analysed expression.
#[derive(Default)]
struct Scan {
    /// something the SPI statement would read differently, or that this path cannot evaluate
    fallback: bool,
    /// something may run code that resolves names at run time
    needs_pinned_path: bool,
}

unsafe fn scan_node(node: *mut pg_sys::Node, scan: &mut Scan) {
    // SAFETY: `node` is an analysed expression tree (callers: `compile`); the walker only reads.
    unsafe {
        scan_walker(node, scan as *mut Scan as *mut c_void);
    }
}

/// Is `func` a built-in function in C of the server itself (language `internal`)?
unsafe fn builtin_internal(func: pg_sys::Oid) -> bool {
    // SAFETY: a syscache look-up by OID; the pg_proc row is read while the cache entry is held
    // and released right after.
    unsafe {
        if func.to_u32() >= pg_sys::FirstNormalObjectId {
            return false;
        }
        let tuple = pg_sys::SearchSysCache1(
            pg_sys::SysCacheIdentifier::PROCOID as i32,
            pg_sys::Datum::from(func),
        );
        if tuple.is_null() {
            return false;
        }
        let proc_ = pg_sys::heap_tuple_get_struct::<pg_sys::FormData_pg_proc>(tuple);
        let internal = (*proc_).prolang.to_u32() == INTERNAL_LANGUAGE;
        pg_sys::ReleaseSysCache(tuple);
        internal
    }
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn not_builtin(func: pg_sys::Oid, _context: *mut c_void) -> bool {
    // SAFETY: a syscache look-up by OID.
    unsafe { !builtin_internal(func) }
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn scan_walker(node: *mut pg_sys::Node, context: *mut c_void) -> bool {
    // SAFETY: PostgreSQL's expression walker hands us valid nodes of an analysed expression;
    // `context` is the caller's `Scan`.
    unsafe {
        if node.is_null() {
            return false;
        }
        let scan = &mut *(context as *mut Scan);
        use pg_sys::NodeTag::*;
        match (*node).type_ {
            T_Var => {
                let var = &*(node as *mut pg_sys::Var);
                // whole-row references and system columns: the SPI statement reads them
                // differently (a record of the subquery's columns; no system columns at all)
                if var.varattno <= 0 || var.varlevelsup != 0 {
                    scan.fallback = true;
                    return true;
                }
                return false;
            }
            T_SubLink | T_SubPlan | T_AlternativeSubPlan | T_Query | T_Param | T_Aggref
            | T_WindowFunc | T_GroupingFunc | T_NextValueExpr | T_SQLValueFunction => {
                scan.fallback = true;
                return true;
            }
            // nodes that call nothing, or only the functions check_functions_in_node reports
            T_Const | T_OpExpr | T_FuncExpr | T_BoolExpr | T_NullTest | T_BooleanTest
            | T_ScalarArrayOpExpr | T_DistinctExpr | T_NullIfExpr | T_CoerceViaIO
            | T_RelabelType | T_CaseExpr | T_CaseWhen | T_CaseTestExpr | T_CoalesceExpr
            | T_ArrayExpr | T_List | T_NamedArgExpr | T_CollateExpr => {}
            // anything else may run code of the types involved (domains, custom subscripting,
            // comparisons of user types, ...): evaluate with the path pinned
            _ => scan.needs_pinned_path = true,
        }
        if !scan.needs_pinned_path
            && pg_sys::check_functions_in_node(node, Some(not_builtin), ptr::null_mut())
        {
            scan.needs_pinned_path = true;
        }
        pg_sys::expression_tree_walker(node, Some(scan_walker), context)
    }
}
