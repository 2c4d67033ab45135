//! Rate-limited wake-up: at most one `NOTIFY observers_wakeup` per backend per
//! `observers.notify_interval`.
//!
//! Every transaction that notifies takes a cluster-wide lock at commit and holds it across its
//! WAL flush, so notifying on every capture would serialize all writing transactions. NOTIFY is
//! only a hint: the worker polls after a wake-up and on a safety interval.
//!
//! A notification queued by a transaction (or subtransaction) that then aborts is discarded by
//! PostgreSQL; the transaction callbacks below forget such a notification so that the next
//! capture of this backend notifies again instead of staying silent for the interval.

use crate::gucs;
use pgrx::pg_sys;
use std::cell::Cell;
use std::ffi::{c_char, c_void};
use std::time::{Duration, Instant};

// commands/async.h is not part of pgrx's bindings.
unsafe extern "C-unwind" {
    fn Async_Notify(channel: *const c_char, payload: *const c_char);
}

thread_local! {
    /// When this backend last queued a notification that was (or may still be) committed.
    static LAST_NOTIFY: Cell<Option<Instant>> = const { Cell::new(None) };
    /// Transaction nesting level at which the pending notification was queued, if any.
    static PENDING_LEVEL: Cell<Option<i32>> = const { Cell::new(None) };
}

/// Called after a capture inserted at least one event.
pub fn after_capture() {
    let interval_ms = gucs::NOTIFY_INTERVAL_MS.get();
    if interval_ms <= 0 {
        return;
    }
    let now = Instant::now();
    let due = LAST_NOTIFY.with(|last| match last.get() {
        None => true,
        Some(t) => now.duration_since(t) >= Duration::from_millis(interval_ms as u64),
    });
    if !due {
        return;
    }
    // SAFETY: plain C call inside a transaction (we are in a trigger); the channel name is a
    // static NUL-terminated string and the payload is empty.
    unsafe {
        pg_sys::ffi::pg_guard_ffi_boundary(|| Async_Notify(gucs::NOTIFY_CHANNEL.as_ptr(), c"".as_ptr()))
    };
    LAST_NOTIFY.with(|last| last.set(Some(now)));
    // SAFETY: reads a backend-local counter.
    let level = unsafe { pg_sys::GetCurrentTransactionNestLevel() };
    PENDING_LEVEL.with(|p| {
        // keep the outermost level: aborting it discards everything queued below it too
        if p.get().is_none_or(|l| level < l) {
            p.set(Some(level));
        }
    });
}

unsafe extern "C-unwind" fn xact_callback(event: pg_sys::XactEvent::Type, _arg: *mut c_void) {
    use pg_sys::XactEvent::*;
    match event {
        XACT_EVENT_COMMIT | XACT_EVENT_PARALLEL_COMMIT | XACT_EVENT_PREPARE => {
            PENDING_LEVEL.with(|p| p.set(None));
        }
        XACT_EVENT_ABORT | XACT_EVENT_PARALLEL_ABORT => {
            if PENDING_LEVEL.with(|p| p.take()).is_some() {
                LAST_NOTIFY.with(|l| l.set(None));
            }
        }
        _ => {}
    }
}

unsafe extern "C-unwind" fn subxact_callback(
    event: pg_sys::SubXactEvent::Type,
    _my_subid: pg_sys::SubTransactionId,
    _parent_subid: pg_sys::SubTransactionId,
    _arg: *mut c_void,
) {
    // SAFETY: reads a backend-local counter; during the callback it is the ending level.
    let level = unsafe { pg_sys::GetCurrentTransactionNestLevel() };
    if event == pg_sys::SubXactEvent::SUBXACT_EVENT_COMMIT_SUB {
        // a released savepoint hands its pending notification to the parent level
        PENDING_LEVEL.with(|p| {
            if p.get() == Some(level) {
                p.set(Some(level - 1));
            }
        });
        return;
    }
    if event != pg_sys::SubXactEvent::SUBXACT_EVENT_ABORT_SUB {
        return;
    }
    let discarded = PENDING_LEVEL.with(|p| match p.get() {
        Some(l) if l >= level => {
            p.set(None);
            true
        }
        _ => false,
    });
    if discarded {
        LAST_NOTIFY.with(|l| l.set(None));
    }
}

pub fn init() {
    // SAFETY: registering backend-local callbacks from _PG_init; the functions never raise.
    unsafe {
        pg_sys::RegisterXactCallback(Some(xact_callback), std::ptr::null_mut());
        pg_sys::RegisterSubXactCallback(Some(subxact_callback), std::ptr::null_mut());
    }
}
