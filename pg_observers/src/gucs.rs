//! Configuration parameters (GUCs) of pg_observers.
//!
//! They are registered when the library is loaded (first capture or first call of one of our
//! functions in a backend); no `shared_preload_libraries` entry is needed. Values set before
//! the library is loaded (postgresql.conf, `ALTER DATABASE ... SET`) are picked up then.

use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};
use std::ffi::CString;

/// `observers.notify_interval`: minimum time between two `NOTIFY observers_wakeup` sent by one
/// backend, in milliseconds (on top of the one-notifier-at-a-time election in
/// `capture::notify`). `0` disables notifications (the worker's safety poll still delivers
/// everything).
pub static NOTIFY_INTERVAL_MS: GucSetting<i32> = GucSetting::<i32>::new(10);

/// `observers.retention`: how long `observers.maintain()` keeps outbox partitions after their
/// day ended (an interval, e.g. `7 days`). Partitions that a group has not passed yet are
/// always kept.
pub static RETENTION: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(c"7 days"));

/// `observers.verify_tuples`: form every outbox row twice, directly (capture/tuple.rs) and with
/// PostgreSQL's `heap_form_tuple`, and raise an error if they differ. A check for the test
/// suite (the test clusters turn it on); it roughly doubles what forming a row costs.
pub static VERIFY_TUPLES: GucSetting<bool> = GucSetting::<bool>::new(false);

pub const NOTIFY_CHANNEL: &std::ffi::CStr = c"observers_wakeup";

pub fn init() {
    GucRegistry::define_int_guc(
        c"observers.notify_interval",
        c"Minimum interval between two wake-up notifications sent by one backend.",
        c"A committing transaction that captured events sends NOTIFY observers_wakeup only if its \
          backend has not notified within this interval and no other transaction of the database \
          is notifying at the same moment, because every notifying transaction serializes on a \
          cluster-wide lock at commit. 0 disables notifications; the worker then relies on its \
          safety poll.",
        &NOTIFY_INTERVAL_MS,
        0,
        3_600_000,
        GucContext::Userset,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_string_guc(
        c"observers.retention",
        c"How long observers.maintain() keeps outbox partitions after their day ended.",
        c"An interval such as '7 days'. Partitions holding events that some worker group has \
          not processed yet are kept regardless.",
        &RETENTION,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_bool_guc(
        c"observers.verify_tuples",
        c"Check every outbox row capture writes against PostgreSQL's heap_form_tuple.",
        c"For tests: capture forms outbox rows itself (faster than heap_form_tuple); with this on \
          it also forms each with heap_form_tuple and raises an error if the two differ.",
        &VERIFY_TUPLES,
        GucContext::Suset,
        GucFlags::default(),
    );
    // SAFETY: called from _PG_init, after the variables above were defined.
    unsafe { pgrx::pg_sys::MarkGUCPrefixReserved(c"observers".as_ptr()) };
}

/// The current value of `observers.retention` as text (validated by the SQL caller).
pub fn retention_text() -> String {
    RETENTION
        .get()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "7 days".to_owned())
}
