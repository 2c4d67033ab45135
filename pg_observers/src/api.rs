//! Small SQL-callable helpers used by the SQL API in `sql/bootstrap/`. They are internal
//! (underscore names, EXECUTE revoked from PUBLIC); the public functions are SQL/PL/pgSQL.

use crate::{capture, condition, gucs};
use pgrx::pg_sys;
use pgrx::prelude::*;

/// The role that called into the SQL API: the session's current role outside any SECURITY
/// DEFINER function (`SET ROLE` is honoured). Used to check that the creator of an observer
/// may read the table it publishes.
#[pg_extern(name = "_calling_role", stable, parallel_safe)]
fn calling_role() -> pg_sys::Oid {
    // SAFETY: reads a backend-local variable.
    unsafe { pg_sys::GetOuterUserId() }
}

/// The current value of `observers.retention` (text; `maintain()` casts it to interval).
#[pg_extern(name = "_retention_setting", stable, parallel_safe)]
fn retention_setting() -> String {
    gucs::retention_text()
}

/// Compile an observer condition for one operation, as the capture trigger will run it.
/// SECURITY DEFINER, owned by observers_capture (see 90_privileges.sql).
#[pg_extern(name = "_probe_condition")]
fn probe_condition(table_oid: pg_sys::Oid, condition: &str, op: &str) {
    condition::probe(table_oid, condition, op)
}

/// The next event id: the default of `observers.event.id` (hand-written inserts, and the SPI path
/// of conditions). Ids come from the counter in shared memory (`capture/ids.rs`).
#[pg_extern(name = "_event_id", volatile, parallel_unsafe)]
fn event_id() -> i64 {
    // SAFETY: called from SQL, inside a transaction.
    unsafe { capture::ids::next(capture::writer::event_id_sequence()) }
}

/// The last event id handed out so far (0 if none): every id drawn after it returns is greater.
/// The id floors of delivery, search indexing and names (20_worker_api.sql) read it.
#[pg_extern(name = "_event_id_high", volatile, parallel_unsafe)]
fn event_id_high() -> i64 {
    // SAFETY: called from SQL, inside a transaction.
    unsafe { capture::ids::high(capture::writer::event_id_sequence()) }
}
