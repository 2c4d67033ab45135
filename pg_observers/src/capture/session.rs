//! The capture trigger and the writer's session: nothing it does outlives the call, and nothing
//! the writer's session says changes the payload (SPEC §2.7).
//!
//! * **Settings.** A condition may call a user function that lies about its volatility and runs
//!   `set_config(...)`; a cast to json may be user code too. `SessionGuard::enter` opens a GUC
//!   nest level and `leave` rolls back every setting changed inside it (`AtEOXact_GUC(false)`,
//!   what a function's `SET` clause does on error). When nothing was changed that is a counter
//!   decrement. On an error, the (sub)transaction abort restores them.
//! * **Formats.** Output functions read `TimeZone`, `DateStyle`, `IntervalStyle`, `bytea_output`
//!   and `extra_float_digits` from the session: the same row gave `"\\000\\377"` or `"\\x00ff"`,
//!   `+05:30` or `+00:00` depending on who wrote it. For the duration of the call the guard sets
//!   the variables those functions read to one canonical set (UTC, ISO, postgres interval style,
//!   hex, shortest exact floats) and puts the writer's values back before the trigger returns,
//!   on error too (`restore_formats`, from the caller's `finally`). Setting them through the GUC
//!   machinery would cost every captured statement a save/restore of each setting (the reason
//!   capture() has no `SET` clause), so the guard swaps the variables directly and only when
//!   they differ from the canonical ones: a session with the defaults pays a few comparisons.
//!   `lc_monetary` (the `money` type) is not covered: see docs/WEBHOOKS.md.
//! * **Identity.** For the duration of the call the current user is the owner of
//!   `observers.capture()` (`observers_capture`), with `SECURITY_LOCAL_USERID_CHANGE` set: what a
//!   SECURITY DEFINER function does. capture() is not declared SECURITY DEFINER because
//!   PostgreSQL's wrapper for such functions looks the function up in the catalog again for every
//!   statement that fires the trigger (~1,150 CPU instructions per captured statement); the guard
//!   switches with two assignments and caches the owner per backend (reset when any function
//!   changes). On an error the (sub)transaction abort restores the user too, and `restore` puts
//!   it back first.

use pgrx::pg_sys;
use pgrx::prelude::*;
use std::cell::Cell;
use std::ffi::c_int;

unsafe extern "C" {
    /// `bytea_output` (utils/bytea.h); pgrx's bindings do not export it.
    static mut bytea_output: c_int;
}

const BYTEA_OUTPUT_HEX: c_int = 1;
/// Any value > 0 selects the shortest exact output (the default is 1).
const EXTRA_FLOAT_DIGITS: c_int = 1;

static mut UTC: *mut pg_sys::pg_tz = std::ptr::null_mut();

#[derive(Clone, Copy, PartialEq, Eq)]
struct Formats {
    timezone: *mut pg_sys::pg_tz,
    date_style: c_int,
    interval_style: c_int,
    bytea_output: c_int,
    extra_float_digits: c_int,
}

impl Formats {
    /// The output formats in force in this session now.
    ///
    /// # Safety
    /// Reads backend-local globals.
    unsafe fn current() -> Formats {
        // SAFETY: reads backend-local globals of this (single-threaded) backend.
        unsafe {
            Formats {
                timezone: pg_sys::session_timezone,
                date_style: pg_sys::DateStyle,
                interval_style: pg_sys::IntervalStyle,
                bytea_output,
                extra_float_digits: pg_sys::extra_float_digits,
            }
        }
    }

    /// The canonical output formats of payloads (UTC, ISO, postgres interval style, hex bytea,
    /// extra_float_digits 1).
    ///
    /// # Safety
    /// Backend-local; `pg_tzset` caches the zone in TopMemoryContext (it lives as long
    /// as the backend), so the pointer stays valid.
    unsafe fn canonical() -> Formats {
        // SAFETY: backend-local globals; `pg_tzset` caches the zone in TopMemoryContext (it lives
        // as long as the backend), so the pointer kept in UTC stays valid.
        unsafe {
            if UTC.is_null() {
                UTC = pg_sys::pg_tzset(c"UTC".as_ptr());
            }
            Formats {
                timezone: UTC,
                date_style: pg_sys::USE_ISO_DATES as c_int,
                interval_style: pg_sys::INTSTYLE_POSTGRES as c_int,
                bytea_output: BYTEA_OUTPUT_HEX,
                extra_float_digits: EXTRA_FLOAT_DIGITS,
            }
        }
    }

    /// Makes these formats the session's.
    ///
    /// # Safety
    /// Writes backend-local globals; `timezone` is a zone from `pg_tzset`.
    unsafe fn install(self) {
        // SAFETY: writes backend-local globals of this backend; `timezone` is a zone from
        // `pg_tzset` (or the session's own), which lives as long as the backend.
        unsafe {
            if !self.timezone.is_null() {
                pg_sys::session_timezone = self.timezone;
            }
            pg_sys::DateStyle = self.date_style;
            pg_sys::IntervalStyle = self.interval_style;
            bytea_output = self.bytea_output;
            pg_sys::extra_float_digits = self.extra_float_digits;
        }
    }
}

/// Is the session's time zone now the canonical UTC of payloads (inside a capture call it is,
/// unless the zone could not be loaded)?
///
/// # Safety
/// Reads backend-local globals.
pub unsafe fn timezone_is_canonical_utc() -> bool {
    // SAFETY: reads backend-local globals of this (single-threaded) backend.
    unsafe { !UTC.is_null() && pg_sys::session_timezone == UTC }
}

thread_local! {
    /// (capture function OID, its owner): whom capture runs as, looked up once per backend
    static OWNER: Cell<(pg_sys::Oid, pg_sys::Oid)> =
        const { Cell::new((pg_sys::InvalidOid, pg_sys::InvalidOid)) };
}

/// A function changed (ALTER FUNCTION ... OWNER TO, DROP, ...): look the owner up again.
#[pg_guard]
unsafe extern "C-unwind" fn proc_changed(_arg: pg_sys::Datum, _cacheid: c_int, _hash: u32) {
    OWNER.with(|o| o.set((pg_sys::InvalidOid, pg_sys::InvalidOid)));
}

pub fn init() {
    // SAFETY: registering a backend-local callback from _PG_init.
    unsafe {
        pg_sys::CacheRegisterSyscacheCallback(
            pg_sys::SysCacheIdentifier::PROCOID as i32,
            Some(proc_changed),
            pg_sys::Datum::from(0),
        );
    }
}

/// The owner of function `fn_oid` (the capture function: its owner is `observers_capture`).
///
/// # Safety
/// Inside a transaction.
unsafe fn owner_of(fn_oid: pg_sys::Oid) -> pg_sys::Oid {
    let (cached_fn, cached_owner) = OWNER.with(|o| o.get());
    if cached_fn == fn_oid && cached_owner != pg_sys::InvalidOid {
        return cached_owner;
    }
    // SAFETY: inside a transaction (contract): a syscache look-up of pg_proc by OID, released
    // before returning; these pgrx calls are guarded (an error becomes a panic).
    let owner = unsafe {
        let tuple = pg_sys::SearchSysCache1(
            pg_sys::SysCacheIdentifier::PROCOID as i32,
            pg_sys::Datum::from(fn_oid),
        );
        if tuple.is_null() {
            crate::error::raise(
                PgSqlErrorCode::ERRCODE_UNDEFINED_FUNCTION,
                format!("cache lookup failed for function {}", fn_oid.to_u32()),
                None,
            );
        }
        let form = pg_sys::GETSTRUCT(tuple) as *const pg_sys::FormData_pg_proc;
        let owner = (*form).proowner;
        pg_sys::ReleaseSysCache(tuple);
        owner
    };
    OWNER.with(|o| o.set((fn_oid, owner)));
    owner
}

/// Held for the duration of one capture call; see the module documentation.
pub struct SessionGuard {
    guc_level: c_int,
    /// the writer's formats, when they differ from the canonical ones
    saved: Option<Formats>,
    /// the writer's user and security context
    user: pg_sys::Oid,
    sec_context: c_int,
}

impl SessionGuard {
    /// Becomes the owner of the capture function `fn_oid`, pins the canonical formats and opens
    /// a GUC nest level for one capture call.
    ///
    /// # Safety
    /// Inside a transaction; pair with `leave` (normal return) or `restore` (error path).
    pub unsafe fn enter(fn_oid: pg_sys::Oid) -> SessionGuard {
        // SAFETY: inside a transaction (contract): a GUC nest level may be opened and the user
        // switched; `leave`/`restore` or the transaction's abort undo both.
        unsafe {
            let owner = owner_of(fn_oid);
            let (mut user, mut sec_context) = (pg_sys::InvalidOid, 0);
            // plain reads and writes of two backend globals: no error guard needed
            super::raw::GetUserIdAndSecContext(&mut user, &mut sec_context);
            super::raw::SetUserIdAndSecContext(
                owner,
                sec_context | pg_sys::SECURITY_LOCAL_USERID_CHANGE as c_int,
            );
            // `return ++GUCNestLevel;`: raises nothing, so it needs no error guard
            let guc_level = super::raw::NewGUCNestLevel();
            let current = Formats::current();
            let canonical = Formats::canonical();
            let saved = if current != canonical && !canonical.timezone.is_null() {
                canonical.install();
                Some(current)
            } else {
                None
            };
            SessionGuard {
                guc_level,
                saved,
                user,
                sec_context,
            }
        }
    }

    /// Put the writer's user and formats back (idempotent). Used on every exit, error or not.
    ///
    /// # Safety
    /// Writes backend-local globals.
    pub unsafe fn restore(&self) {
        // SAFETY: writes backend-local globals; the saved user and formats were read from this
        // backend by `enter`.
        unsafe {
            super::raw::SetUserIdAndSecContext(self.user, self.sec_context);
            if let Some(saved) = self.saved {
                saved.install();
            }
        }
    }

    /// Normal return: roll back every setting changed during the call, then the formats.
    ///
    /// # Safety
    /// No other GUC nest level opened after `enter` may still be open.
    pub unsafe fn leave(self) {
        // SAFETY: no GUC nest level opened after `enter` is still open (contract), so this one can
        // be closed.
        unsafe {
            pg_sys::AtEOXact_GUC(false, self.guc_level);
            self.restore();
        }
    }
}
