//! The capture trigger `observers.capture(observer_id, observer_name, condition)`.
//!
//! This is the only code of the project that runs on the users' write path, so it does as
//! little as possible per call:
//! * INSERT and DELETE on plain tables: one AFTER ... FOR EACH STATEMENT trigger per observer
//!   and operation, with a transition table: one call per statement, whatever its row count.
//! * UPDATE, and every operation on partitioned tables, partitions and inheritance children
//!   (where statement-level triggers would miss rows written through another table of the
//!   hierarchy): AFTER ... FOR EACH ROW. For UPDATE the trigger's WHEN clause filters on
//!   `columns` before the function is even called; the function computes `changed`.
//! * Events are appended directly (`writer`: one partition routing per call,
//!   `heap_multi_insert`, index tuples) with payloads built by a per-table jsonb builder
//!   (`jsonb`). An observer's condition is compiled once per backend into an expression over the
//!   NEW/OLD slots and evaluated in-process before a row is written (`filter`); a condition the
//!   filter does not take (whole-row references, text that is not one expression) runs one
//!   prepared `INSERT ... SELECT ... WHERE <condition>` through SPI instead.
//! * No catalog or registry look-ups per row: trigger arguments carry the observer; builders
//!   and prepared statements are cached per backend (`plan_cache`).
//! * Wake-up: the trigger only marks the transaction; at pre-commit it notifies if its backend's
//!   `observers.notify_interval` passed and it wins the database's notify try-lock (`notify`).
//!
//! The function runs as its owner, role `observers_capture` (which may only INSERT into
//! `observers.event`), as a SECURITY DEFINER function would; `session::SessionGuard` switches the
//! user in code because PostgreSQL's SECURITY DEFINER wrapper costs a catalog look-up per
//! statement. Writers need no rights on the outbox, and observer conditions never
//! run with more rights than that. Conditions are compiled with `search_path = pg_catalog,
//! pg_temp` pinned in code (`with_pinned_search_path`), and evaluated with it pinned unless they
//! call only built-in functions (`filter`).

mod changed;
mod filter;
pub mod ids;
mod jsonb;
pub mod notify;
pub mod plan_cache;
pub mod query;
mod raw;
mod session;
mod tuple;
pub mod writer;

use crate::error::raise;
use jsonb::RowJsonb;
use pgrx::pg_sys;
use pgrx::pg_sys::panic::{CaughtError, ErrorReport};
use pgrx::prelude::*;
use pgrx::trigger_support::{
    trigger_fired_after, trigger_fired_by_delete, trigger_fired_by_insert, trigger_fired_by_update,
    trigger_fired_for_row,
};
use plan_cache::{Path, TriggerArgs};
use query::Op;
use session::SessionGuard;
use std::ffi::{c_char, CStr};
use std::ptr;

pub fn init() {
    ids::init();
    plan_cache::init();
    notify::init();
    session::init();
}

#[pg_trigger(sql = r#"
-- The capture trigger. Privileges (SECURITY DEFINER, owner observers_capture, pinned
-- search_path) are set in 90_privileges.sql.
CREATE FUNCTION observers.capture() RETURNS trigger
    LANGUAGE c
    AS 'MODULE_PATHNAME', '@FUNCTION_NAME@';
"#)]
fn capture<'a>(
    trigger: &'a PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, AllocatedByPostgres>>, std::convert::Infallible> {
    let td: *const pg_sys::TriggerData = trigger.trigger_data();
    // SAFETY: PostgreSQL called us as a trigger; `td` is valid for the duration of the call.
    unsafe { capture_impl(td.cast_mut()) };
    Ok(None)
}

unsafe fn trigger_args(trigger: &pg_sys::Trigger) -> TriggerArgs<'_> {
    // SAFETY: `trigger` is the current trigger call's Trigger: `tgname` and the `tgnargs` strings
    // of `tgargs` are live NUL-terminated strings for the call.
    unsafe {
        if trigger.tgnargs != 1 || trigger.tgargs.is_null() {
            let tgname = CStr::from_ptr(trigger.tgname).to_string_lossy();
            raise(
                PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                format!(
                    "trigger \"{tgname}\" passes {} arguments to observers.capture(); it expects one, the observer id",
                    trigger.tgnargs
                ),
                Some("Capture triggers are managed by observers.create_observer(); do not create them by hand. observers.repair_observer(name) re-creates them."),
            );
        }
        TriggerArgs {
            id: CStr::from_ptr(*trigger.tgargs as *const c_char),
        }
    }
}

unsafe fn capture_impl(td: *mut pg_sys::TriggerData) {
    // SAFETY: `td` is the TriggerData PostgreSQL passed to this trigger call (the caller,
    // `capture`): it and everything it points at live for the call.
    unsafe {
        let tdr = &*td;
        let trigger = &*tdr.tg_trigger;
        let event = tdr.tg_event;
        let op = if trigger_fired_by_insert(event) {
            Op::Insert
        } else if trigger_fired_by_update(event) {
            Op::Update
        } else if trigger_fired_by_delete(event) {
            Op::Delete
        } else {
            raise(
                PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
                "observers.capture() captures INSERT, UPDATE and DELETE only (TRUNCATE is not captured)",
                None,
            );
        };
        if !trigger_fired_after(event) {
            raise(
                PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                "observers.capture() must be fired AFTER the change",
                None,
            );
        }
        let row_level = trigger_fired_for_row(event);
        if op == Op::Update && !row_level {
            raise(
                PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                "observers.capture() captures UPDATE only FOR EACH ROW",
                None,
            );
        }
        let args = trigger_args(trigger);

        // the call runs as the function's owner (observers_capture), settings changed during it
        // are rolled back, and payloads are formatted the same whatever the writer's session says
        // (TimeZone, DateStyle, bytea_output, ...). Entered before the cache look-up: a compiled
        // condition is valid for the user that compiled it, observers_capture, not the writer.
        // (An error before the try below aborts the (sub)transaction, which restores the user.)
        let guard = SessionGuard::enter(trigger.tgfoid);
        plan_cache::process_invalidations();
        let cached = plan_cache::lookup(trigger.tgoid, tdr.tg_relation);
        let written = PgTryBuilder::new(std::panic::AssertUnwindSafe(|| {
            let entry = match cached.clone() {
                Some(e) => e,
                None => with_pinned_search_path(|| {
                    // building an SPI entry prepares a statement over the transition table
                    connect_spi(td, row_level);
                    let e = plan_cache::build(tdr, op, row_level, &args);
                    pg_sys::SPI_finish();
                    e
                }),
            };
            match &entry.path {
                Path::Direct {
                    json,
                    condition: Some(c),
                } if c.pins_search_path => with_pinned_search_path(|| {
                    write_direct(tdr, op, row_level, &entry, json, Some(c))
                }),
                Path::Direct { json, condition } => {
                    write_direct(tdr, op, row_level, &entry, json, condition.as_ref())
                }
                Path::Spi { plan } => {
                    with_pinned_search_path(|| run_spi(td, op, row_level, &entry, *plan))
                }
            }
        }))
        .catch_others(|e| {
            guard.restore();
            rethrow_with_context(e, &args, tdr.tg_relation)
        })
        .execute();
        guard.leave();
        drop(cached);
        if written > 0 {
            notify::after_capture();
        }
    }
}

/// Run `f` with `search_path = pg_catalog, pg_temp`, as `SET search_path` on a function does.
///
/// capture() is SECURITY DEFINER but deliberately has no `SET search_path` clause: that clause
/// costs every captured statement a GUC save/restore, and makes the application's next
/// statement recompute its search path, as much as all the rest of a 1-row capture. Only the
/// SPI path resolves names (the condition, the statement text), so only it pins the path; the
/// direct path looks up nothing by unqualified name (schema `observers` explicitly, everything
/// else by OID). On error the transaction's abort restores the setting.
unsafe fn with_pinned_search_path<R>(f: impl FnOnce() -> R) -> R {
    // SAFETY: inside a trigger call (a transaction): the GUC nest level is opened and closed here
    // around `f`; on error the transaction abort restores the setting.
    unsafe {
        let level = pg_sys::NewGUCNestLevel();
        pg_sys::set_config_option(
            c"search_path".as_ptr(),
            c"pg_catalog, pg_temp".as_ptr(),
            pg_sys::GucContext::PGC_USERSET,
            pg_sys::GucSource::PGC_S_SESSION,
            pg_sys::GucAction::GUC_ACTION_SAVE,
            true,
            0,
            false,
        );
        let result = f();
        // false: roll back everything set meanwhile, not only search_path (a condition's
        // function may have called set_config)
        pg_sys::AtEOXact_GUC(false, level);
        result
    }
}

unsafe fn connect_spi(td: *mut pg_sys::TriggerData, row_level: bool) {
    // SAFETY: inside the trigger call whose data `td` is: SPI_connect/SPI_register_trigger_data are
    // allowed there, and the caller finishes SPI before returning.
    unsafe {
        if pg_sys::SPI_connect() != pg_sys::SPI_OK_CONNECT as i32 {
            raise(
                PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
                "SPI_connect failed",
                None,
            );
        }
        if !row_level && pg_sys::SPI_register_trigger_data(td) != pg_sys::SPI_OK_TD_REGISTER as i32
        {
            raise(
                PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
                "SPI_register_trigger_data failed",
                None,
            );
        }
    }
}

/// Build a payload in the writer's chunk memory.
unsafe fn payload(
    writer: &writer::Writer,
    json: &RowJsonb,
    slot: *mut pg_sys::TupleTableSlot,
) -> pg_sys::Datum {
    // SAFETY: `slot` is a live slot of the trigger call and `json` was built for its descriptor;
    // the payload context of `writer` outlives the payload until the writer's next flush;
    // CurrentMemoryContext is put back (an error aborts the transaction). One guarded region:
    // deforming the row and building the payload create nothing that needs dropping.
    unsafe {
        let context = writer.payload_context();
        raw::guarded(|| build_payload(context, json, slot))
    }
}

/// The payload of the row in `slot`, built in `context`; inside a `raw::guarded` region.
///
/// # Safety
/// As for `payload`; `context` is the writer's payload context.
#[inline(always)]
unsafe fn build_payload(
    context: pg_sys::MemoryContext,
    json: &RowJsonb,
    slot: *mut pg_sys::TupleTableSlot,
) -> pg_sys::Datum {
    // SAFETY: contract above; CurrentMemoryContext is put back (an error aborts the transaction).
    unsafe {
        raw::slot_getallattrs(slot);
        let old = pg_sys::CurrentMemoryContext;
        pg_sys::CurrentMemoryContext = context;
        let datum = json.build((*slot).tts_values, (*slot).tts_isnull);
        pg_sys::CurrentMemoryContext = old;
        datum
    }
}

/// The event of one transition-table row: its payload is `new` for INSERT, `old` for DELETE.
fn row_event(entry: &plan_cache::Entry, op: Op, datum: pg_sys::Datum) -> writer::Event {
    let (new, old) = if op == Op::Insert {
        (Some(datum), None)
    } else {
        (None, Some(datum))
    };
    writer::Event {
        observer_id: entry.observer_id,
        op: op.as_cstr(),
        new,
        old,
        changed: None,
    }
}

/// Read the next row of a transition table into `slot`; at the end, give the slot back (drop
/// it if it was made for this call) and return false. Inside a `raw::guarded` region.
///
/// # Safety
/// `store` is a live transition table and `slot` the reader `entry.reader` returned for it.
#[inline(always)]
unsafe fn next_row(
    store: *mut pg_sys::Tuplestorestate,
    slot: *mut pg_sys::TupleTableSlot,
    owned: bool,
    entry: &plan_cache::Entry,
) -> bool {
    // SAFETY: contract above.
    unsafe {
        let more = raw::tuplestore_gettupleslot(store, true, false, slot);
        if !more {
            release_reader(slot, owned, entry);
        }
        more
    }
}

/// Give the transition-table reader slot back to its entry (drop it if it was made for this
/// call). Inside a `raw::guarded` region.
///
/// # Safety
/// `slot` is the reader `entry.reader` returned, not given back yet.
#[inline(always)]
unsafe fn release_reader(
    slot: *mut pg_sys::TupleTableSlot,
    owned: bool,
    entry: &plan_cache::Entry,
) {
    // SAFETY: contract above.
    unsafe {
        if owned {
            raw::ExecDropSingleTupleTableSlot(slot);
        } else {
            raw::exec_clear_tuple(slot);
            entry.release_reader();
        }
    }
}

/// Every row of the call that passes the condition (if any) becomes an event, written directly.
unsafe fn write_direct(
    tdr: &pg_sys::TriggerData,
    op: Op,
    row_level: bool,
    entry: &plan_cache::Entry,
    json: &RowJsonb,
    condition: Option<&filter::Condition>,
) -> u64 {
    // SAFETY: inside the trigger call `tdr` describes (callers: `capture_impl`): its relation,
    // slots and transition tables are live; `entry`, `json` and `condition` were built for this
    // relation.
    unsafe {
        let rel = tdr.tg_relation;
        let opname = op.as_cstr();
        if row_level {
            if let Some(c) = condition {
                let (new, old) = match op {
                    Op::Insert => (tdr.tg_trigslot, ptr::null_mut()),
                    Op::Delete => (ptr::null_mut(), tdr.tg_trigslot),
                    Op::Update => (tdr.tg_newslot, tdr.tg_trigslot),
                };
                if !c.passes(rel, new, old) {
                    return 0;
                }
            }
            let mut writer = writer::Writer::open();
            json.begin_call();
            let event = match op {
                Op::Insert => writer::Event {
                    observer_id: entry.observer_id,
                    op: opname,
                    new: Some(payload(&writer, json, tdr.tg_trigslot)),
                    old: None,
                    changed: None,
                },
                Op::Delete => writer::Event {
                    observer_id: entry.observer_id,
                    op: opname,
                    new: None,
                    old: Some(payload(&writer, json, tdr.tg_trigslot)),
                    changed: None,
                },
                Op::Update => {
                    let new = payload(&writer, json, tdr.tg_newslot);
                    let old = payload(&writer, json, tdr.tg_trigslot);
                    let ctx = pg_sys::CurrentMemoryContext;
                    pg_sys::CurrentMemoryContext = writer.payload_context();
                    let changed =
                        changed::changed_columns(&entry.columns, tdr.tg_trigslot, tdr.tg_newslot);
                    pg_sys::CurrentMemoryContext = ctx;
                    writer::Event {
                        observer_id: entry.observer_id,
                        op: opname,
                        new: Some(new),
                        old: Some(old),
                        changed: Some(changed),
                    }
                }
            };
            writer.push(event);
            writer.finish()
        } else {
            // statement level: every row of the transition table (INSERT: new, DELETE: old)
            let store = if op == Op::Insert {
                tdr.tg_newtable
            } else {
                tdr.tg_oldtable
            };
            // opened at the first row that passes: a statement whose rows all fail the condition
            // opens and locks nothing
            let mut writer: Option<writer::Writer> = None;
            if !store.is_null() {
                let (slot, owned, count) = raw::guarded(|| {
                    let (slot, owned) = entry.reader(rel);
                    // our own read pointer: other observers' triggers read the same transition
                    // table
                    let reader =
                        raw::tuplestore_alloc_read_pointer(store, pg_sys::EXEC_FLAG_REWIND as i32);
                    raw::tuplestore_select_read_pointer(store, reader);
                    raw::tuplestore_rescan(store);
                    let count = raw::tuplestore_tuple_count(store);
                    if count == 0 {
                        release_reader(slot, owned, entry);
                    }
                    (slot, owned, count)
                });
                // the slot is given back (or dropped, if it was made for this call) in the
                // guarded call that reads the last row or finds the end of the table; after an
                // error the transaction's end frees the entry's slot for the next capture
                if count == 0 {
                    // nothing to capture (e.g. INSERT ... SELECT of no rows): nothing opened
                } else if condition.is_none() {
                    // every row becomes an event: the writer is opened before the first row, and
                    // reading a row, building its payload and (after the last) giving the slot
                    // back share one guarded region (a guard costs ~100 instructions)
                    json.begin_call();
                    let writer = writer.insert(writer::Writer::open());
                    let context = writer.payload_context();
                    for i in 1..=count {
                        let datum = raw::guarded(|| {
                            if !raw::tuplestore_gettupleslot(store, true, false, slot) {
                                // fewer rows than counted (cannot happen): stop there
                                release_reader(slot, owned, entry);
                                return None;
                            }
                            let datum = build_payload(context, json, slot);
                            if i == count {
                                release_reader(slot, owned, entry);
                            }
                            Some(datum)
                        });
                        let Some(datum) = datum else { break };
                        writer.push(row_event(entry, op, datum));
                    }
                } else {
                    while raw::guarded(|| next_row(store, slot, owned, entry)) {
                        if let Some(c) = condition {
                            let passes = if op == Op::Insert {
                                c.passes(rel, slot, ptr::null_mut())
                            } else {
                                c.passes(rel, ptr::null_mut(), slot)
                            };
                            if !passes {
                                continue;
                            }
                        }
                        let writer = writer.get_or_insert_with(|| {
                            json.begin_call();
                            writer::Writer::open()
                        });
                        let datum = payload(writer, json, slot);
                        writer.push(row_event(entry, op, datum));
                    }
                }
            }
            writer.map_or(0, |w| w.finish())
        }
    }
}

/// With a condition: run the prepared INSERT ... SELECT ... WHERE <condition> through SPI;
/// returns the number of events inserted.
unsafe fn run_spi(
    td: *mut pg_sys::TriggerData,
    op: Op,
    row_level: bool,
    entry: &plan_cache::Entry,
    plan: pg_sys::SPIPlanPtr,
) -> u64 {
    // SAFETY: `td` is the current trigger call's data (callers: `capture_impl`) and `plan` was
    // prepared by `entry` in this backend; SPI is connected here and finished before returning.
    unsafe {
        let tdr = &*td;
        connect_spi(td, row_level);
        let mut values = [pg_sys::Datum::from(0); 4];
        let nulls = [b' ' as c_char; 4];
        values[0] = pg_sys::Datum::from(entry.observer_id);
        if row_level {
            let tupdesc = (*tdr.tg_relation).rd_att;
            match op {
                Op::Insert | Op::Delete => {
                    values[1] = pg_sys::heap_copy_tuple_as_datum(tdr.tg_trigtuple, tupdesc);
                }
                Op::Update => {
                    values[1] = pg_sys::heap_copy_tuple_as_datum(tdr.tg_newtuple, tupdesc);
                    values[2] = pg_sys::heap_copy_tuple_as_datum(tdr.tg_trigtuple, tupdesc);
                    values[3] =
                        changed::changed_columns(&entry.columns, tdr.tg_trigslot, tdr.tg_newslot);
                }
            }
        }
        let rc = pg_sys::SPI_execute_plan(plan, values.as_mut_ptr(), nulls.as_ptr(), false, 0);
        if rc != pg_sys::SPI_OK_INSERT as i32 {
            raise(
                PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
                format!(
                    "capture statement of observer {} returned SPI code {rc}",
                    entry.observer_id
                ),
                None,
            );
        }
        let processed = pg_sys::SPI_processed;
        pg_sys::SPI_finish();
        processed
    }
}

/// Re-raise an error of the capture statement naming the observer, so that the application
/// developer who sees it in their write knows where it comes from and how to stop it.
fn rethrow_with_context(e: CaughtError, args: &TriggerArgs, rel: pg_sys::Relation) -> u64 {
    let id = args.id.to_string_lossy();
    // the name as the registry gave it when the trigger's entry was (being) built; none for a
    // trigger whose observer is not in the registry
    let name = id.parse::<i32>().ok().and_then(plan_cache::observer_name);
    let report = match &e {
        CaughtError::PostgresError(r) | CaughtError::ErrorReport(r) => r,
        CaughtError::RustPanic { .. } => e.rethrow(),
    };
    let code = report.sql_error_code();
    // Cancellation, shutdown, lack of resources, serialization/deadlock: pass through untouched.
    let passthrough = matches!(
        code,
        PgSqlErrorCode::ERRCODE_QUERY_CANCELED
            | PgSqlErrorCode::ERRCODE_ADMIN_SHUTDOWN
            | PgSqlErrorCode::ERRCODE_CRASH_SHUTDOWN
            | PgSqlErrorCode::ERRCODE_OUT_OF_MEMORY
            | PgSqlErrorCode::ERRCODE_DISK_FULL
            | PgSqlErrorCode::ERRCODE_T_R_SERIALIZATION_FAILURE
            | PgSqlErrorCode::ERRCODE_T_R_DEADLOCK_DETECTED
            | PgSqlErrorCode::ERRCODE_LOCK_NOT_AVAILABLE
    );
    if passthrough {
        e.rethrow();
    }
    // SAFETY: the relation is open for the duration of the trigger call.
    let table = unsafe { CStr::from_ptr((*(*rel).rd_rel).relname.data.as_ptr()).to_string_lossy() };
    let (who, hint) = match name {
        Some(name) => (
            format!("observer \"{name}\" (id {id})"),
            format!(
                "Fix the observer (observers.create_observer(..., replace => true)) or stop it: SELECT observers.disable_observer('{name}');"
            ),
        ),
        None => (
            format!("observer id {id} (not in observers.observer)"),
            "This capture trigger's observer does not exist: drop the trigger, or create the observer again.".to_string(),
        ),
    };
    let mut out = ErrorReport::new(
        code,
        format!(
            "{who} could not capture a change of table {table}: {}",
            report.message()
        ),
        "observers.capture",
    )
    .set_hint(hint);
    if let Some(detail) = report.detail() {
        out = out.set_detail(detail);
    }
    out.report(PgLogLevel::ERROR);
    unreachable!("ERROR does not return")
}
