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

use pgrx::pg_sys;
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

/// Held for the duration of one capture call; see the module documentation.
pub struct SessionGuard {
    guc_level: c_int,
    /// the writer's formats, when they differ from the canonical ones
    saved: Option<Formats>,
}

impl SessionGuard {
    /// Pins the canonical formats and opens a GUC nest level for one capture call.
    ///
    /// # Safety
    /// Inside a transaction; pair with `leave` (normal return) or `restore_formats`
    /// (error path).
    pub unsafe fn enter() -> SessionGuard {
        // SAFETY: inside a transaction (contract): a GUC nest level may be opened; `leave` or the
        // transaction's abort closes it.
        unsafe {
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
            SessionGuard { guc_level, saved }
        }
    }

    /// Put the writer's formats back (idempotent). Used on every exit, error or not.
    ///
    /// # Safety
    /// Writes backend-local globals.
    pub unsafe fn restore_formats(&self) {
        if let Some(saved) = self.saved {
            // SAFETY: writes backend-local globals; the saved formats were read from this backend
            // by `enter`.
            unsafe { saved.install() };
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
            self.restore_formats();
        }
    }
}
