//! pg_observers: the PostgreSQL side of FraiseQL Observers.
//!
//! * `capture/`  the capture trigger (the only code on the users' write path)
//! * `condition` validation of observer conditions at creation time
//! * `api`       small Rust helpers behind the SQL API
//! * `gucs`      configuration parameters
//! * `sql/bootstrap/*.sql` everything else: tables, the worker API, the admin API, capture
//!   integrity (event triggers, repair), partition maintenance, privileges (see
//!   docs/ARCHITECTURE.md and docs/SQL.md)

// Every `unsafe` block says why it is sound (`// SAFETY: ...` right above it); `make clippy`
// and CI (`cargo clippy --workspace --all-targets -- -D warnings`) enforce it.
#![deny(clippy::undocumented_unsafe_blocks)]

use pgrx::prelude::*;

mod api;
mod capture;
mod condition;
mod error;
mod gucs;

::pgrx::pg_module_magic!(name, version);

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    // Errors raised through Rust would carry a Rust backtrace in their DETAIL whenever the server
    // was started with RUST_BACKTRACE set. Application developers see our errors (a condition
    // failing in their INSERT), so keep them clean unless explicitly asked for with
    // RUST_LIB_BACKTRACE=1. A PostgreSQL backend is single-threaded: setting a variable of its
    // own environment here is safe.
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        // SAFETY: no other thread exists in a backend process.
        unsafe { std::env::set_var("RUST_LIB_BACKTRACE", "0") };
    }
    gucs::init();
    capture::init();
}

extension_sql_file!("../sql/bootstrap/00_roles.sql", name = "roles", bootstrap);
extension_sql_file!(
    "../sql/bootstrap/10_tables.sql",
    name = "tables",
    requires = ["roles", api::event_id]
);
extension_sql_file!(
    "../sql/bootstrap/15_id_floor.sql",
    name = "id_floor",
    requires = ["tables"]
);
extension_sql_file!(
    "../sql/bootstrap/20_worker_api.sql",
    name = "worker_api",
    requires = ["tables"]
);
extension_sql_file!(
    "../sql/bootstrap/30_admin_api.sql",
    name = "admin_api",
    requires = [
        "worker_api",
        capture::capture,
        api::calling_role,
        api::probe_condition
    ]
);
extension_sql_file!(
    "../sql/bootstrap/32_integrity.sql",
    name = "integrity",
    requires = ["admin_api"]
);
extension_sql_file!(
    "../sql/bootstrap/35_dedup.sql",
    name = "dedup",
    requires = ["tables"]
);
extension_sql_file!(
    "../sql/bootstrap/36_parked.sql",
    name = "parked",
    requires = ["worker_api"]
);
extension_sql_file!(
    "../sql/bootstrap/37_operations.sql",
    name = "operations",
    requires = ["admin_api", "integrity", "dedup", "parked", "id_floor"]
);
extension_sql_file!(
    "../sql/bootstrap/38_checkpoints.sql",
    name = "checkpoints",
    requires = ["operations"]
);
extension_sql_file!(
    "../sql/bootstrap/39_event_names.sql",
    name = "event_names",
    requires = ["operations"]
);
extension_sql_file!(
    "../sql/bootstrap/52_search.sql",
    name = "search",
    requires = ["worker_api", "event_names"]
);
extension_sql_file!(
    "../sql/bootstrap/40_maintain.sql",
    name = "maintain",
    requires = ["operations", "id_floor", "search", api::retention_setting]
);
extension_sql_file!(
    "../sql/bootstrap/50_jobs.sql",
    name = "jobs",
    requires = [
        "operations",
        "maintain",
        api::calling_role,
        api::retention_setting
    ]
);
extension_sql_file!(
    "../sql/bootstrap/90_privileges.sql",
    name = "privileges",
    finalize
);

// No `#[pg_test]`s: `cargo pgrx test` cannot run as root without sudo and a postgres-owned data
// directory, and a #[pg_test] runs inside one rolled-back transaction. Condition parsing is
// tested through the SQL API by pg_regress (tests/sql/sql/03_bad_input.sql: a FROM clause and a
// list are refused, with the same messages; 02_admin_api/04_capture: valid conditions are
// accepted), which `make test` runs.
