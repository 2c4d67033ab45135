//! Wake-up without a commit bottleneck.
//!
//! Every transaction that sends a NOTIFY takes PostgreSQL's cluster-wide notify lock in
//! `PreCommit_Notify` and holds it across its commit's WAL flush, so notifying transactions
//! commit one at a time. A per-backend rate limit alone is not enough: once a few notifying
//! commits queue behind that lock, every waiting backend's interval has expired by the time it
//! writes again, every commit notifies, and throughput collapses to one commit per WAL flush
//! (a convoy, seen with 16 writers on this project's benchmark machine).
//!
//! So the capture trigger never notifies itself. It only records that the transaction captured
//! events; at pre-commit (`XACT_EVENT_PRE_COMMIT`, which PostgreSQL runs before
//! `PreCommit_Notify`) the transaction notifies only if
//! 1. this backend has not notified within `observers.notify_interval`, and
//! 2. it wins a non-blocking, transaction-scoped advisory lock of the database
//!    (`pg_try_advisory_xact_lock(1868723058, 1)`, held until its commit completes).
//!
//! Hence at most one notifying commit per database is in flight at any moment and no commit
//! ever waits for another to notify: a backend that loses the try-lock skips notifying, and the
//! winner's notification (sent when it commits, a moment later) wakes the worker, which then
//! keeps polling briefly and finds the loser's events too. NOTIFY stays a hint; the worker's
//! safety poll delivers everything even without any notification.
//!
//! PREPARE TRANSACTION never notifies (PostgreSQL refuses to prepare a transaction that did),
//! so two-phase commit works on observed tables.

use crate::gucs;
use pgrx::pg_sys;
use std::cell::Cell;
use std::ffi::{c_char, c_void};
use std::time::{Duration, Instant};

// commands/async.h is not part of pgrx's bindings.
unsafe extern "C-unwind" {
    fn Async_Notify(channel: *const c_char, payload: *const c_char);
}

/// The advisory lock that elects the one notifying commit of a database:
/// `pg_try_advisory_xact_lock(1868723058, 1)` in SQL terms (1868723058 is "obsr" in ASCII).
const WAKEUP_LOCK_KEY1: u32 = 0x6F62_7372;
const WAKEUP_LOCK_KEY2: u32 = 1;

thread_local! {
    /// When this backend last queued a notification.
    static LAST_NOTIFY: Cell<Option<Instant>> = const { Cell::new(None) };
    /// The current transaction captured at least one event.
    static CAPTURED: Cell<bool> = const { Cell::new(false) };
}

/// Called by the capture trigger after it inserted at least one event.
pub fn after_capture() {
    CAPTURED.with(|c| c.set(true));
}

fn interval_elapsed(now: Instant) -> bool {
    let interval_ms = gucs::NOTIFY_INTERVAL_MS.get();
    if interval_ms <= 0 {
        return false;
    }
    LAST_NOTIFY.with(|last| match last.get() {
        None => true,
        Some(t) => now.duration_since(t) >= Duration::from_millis(interval_ms as u64),
    })
}

/// Try to take the database's wake-up lock without waiting; it is released at transaction end.
///
/// # Safety
/// Must be called inside a transaction (the pre-commit callback is).
unsafe fn try_wakeup_lock() -> bool {
    // SAFETY: inside a transaction (contract): MyDatabaseId is set and LockAcquire may take a
    // transaction-scoped advisory lock (dontWait, so it never blocks).
    unsafe {
        let tag = pg_sys::LOCKTAG {
            locktag_field1: pg_sys::MyDatabaseId.to_u32(),
            locktag_field2: WAKEUP_LOCK_KEY1,
            locktag_field3: WAKEUP_LOCK_KEY2,
            // 2 = a pair of int4 keys, as pg_try_advisory_xact_lock(int4, int4) does
            locktag_field4: 2,
            locktag_type: pg_sys::LockTagType::LOCKTAG_ADVISORY as u8,
            locktag_lockmethodid: pg_sys::USER_LOCKMETHOD as u8,
        };
        let got = pg_sys::LockAcquire(&tag, pg_sys::ExclusiveLock as pg_sys::LOCKMODE, false, true);
        got != pg_sys::LockAcquireResult::LOCKACQUIRE_NOT_AVAIL
    }
}

fn pre_commit() {
    if !CAPTURED.with(|c| c.replace(false)) {
        return;
    }
    let now = Instant::now();
    if !interval_elapsed(now) {
        return;
    }
    // SAFETY: we are in the pre-commit phase of a live transaction; the channel name is a
    // static NUL-terminated string and the payload is empty.
    let notified = unsafe {
        pg_sys::ffi::pg_guard_ffi_boundary(|| {
            if try_wakeup_lock() {
                Async_Notify(gucs::NOTIFY_CHANNEL.as_ptr(), c"".as_ptr());
                true
            } else {
                false
            }
        })
    };
    if notified {
        LAST_NOTIFY.with(|last| last.set(Some(now)));
    }
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn xact_callback(event: pg_sys::XactEvent::Type, _arg: *mut c_void) {
    use pg_sys::XactEvent::*;
    match event {
        XACT_EVENT_PRE_COMMIT => pre_commit(),
        // parallel workers never capture; a prepared or aborted transaction does not notify
        XACT_EVENT_PRE_PREPARE
        | XACT_EVENT_ABORT
        | XACT_EVENT_PARALLEL_ABORT
        | XACT_EVENT_COMMIT => {
            CAPTURED.with(|c| c.set(false));
            super::writer::at_xact_end();
            super::plan_cache::at_xact_end();
        }
        _ => {}
    }
}

pub fn init() {
    // SAFETY: registering a backend-local callback from _PG_init.
    unsafe {
        pg_sys::RegisterXactCallback(Some(xact_callback), std::ptr::null_mut());
    }
}
