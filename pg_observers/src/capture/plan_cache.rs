//! Per-backend cache of what a capture trigger needs, keyed by trigger OID: the jsonb builder
//! for the table's rows, the columns compared for `changed`, and for observers with a
//! condition the compiled condition (`filter`), or, for a condition the filter does not take,
//! the prepared SPI statement that evaluates it.
//!
//! The write path never reads the observer registry: everything a trigger needs (observer id,
//! name, condition) is in its arguments, and re-creating an observer's triggers gives them new
//! OIDs. An entry is dropped
//! * when a relcache invalidation arrives for its table (ALTER TABLE, DROP/CREATE TRIGGER,
//!   VACUUM/ANALYZE statistics updates, ...), or for all relations;
//! * when the table's row shape or the trigger's condition no longer match (belt and braces);
//! * compiled conditions also when a function, type, operator, schema or role changes
//!   (syscache callbacks), and when the current user is not the one that compiled them.
//!
//! Entries are reference counted: a capture that is still executing a plan (a condition that
//! writes to another observed table re-enters the trigger) keeps it alive until it returns.

use super::changed::{self, Column};
use super::filter::Condition;
use super::jsonb::RowJsonb;
use super::query::{self, Level, Op};
use crate::error::raise;
use pgrx::pg_sys;
use pgrx::prelude::*;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::ptr;
use std::rc::Rc;

/// How a trigger writes its events.
pub enum Path {
    /// Events are appended directly (`writer`), payloads built by `json`; rows that fail the
    /// condition, if any, are skipped (`filter`).
    Direct {
        json: RowJsonb,
        condition: Option<Condition>,
    },
    /// A condition the in-process filter does not take (`filter::Condition::compile` said
    /// None): a prepared `INSERT ... SELECT ... WHERE <condition>` run through SPI.
    Spi { plan: pg_sys::SPIPlanPtr },
}

/// What one capture trigger needs, built on its first call in a backend.
pub struct Entry {
    pub relid: pg_sys::Oid,
    pub observer_id: i32,
    pub path: Path,
    /// UPDATE only: the columns compared to compute `changed`.
    pub columns: Vec<Column>,
    shape: Vec<(pg_sys::Oid, i32, bool)>,
    /// statement-level triggers: the slot that reads the transition table, made at the first
    /// capture over a private copy of the row type (TopMemoryContext) and kept with the entry
    /// (making and dropping one per statement cost ~350 instructions)
    reader: Cell<*mut pg_sys::TupleTableSlot>,
}

thread_local! {
    /// an entry's reader slot is in use (a capture nested in another one, through user code run
    /// while building a payload, makes its own); reset at the end of every transaction
    static READER_BUSY: Cell<bool> = const { Cell::new(false) };
}

/// At the end of a transaction no capture is reading a transition table.
pub fn at_xact_end() {
    READER_BUSY.with(|b| b.set(false));
}

impl Entry {
    /// A slot to read the transition table of `rel` (this entry's relation) with: the entry's own
    /// (`owned` = false) unless a capture of this backend is already reading with one, else a new
    /// one that the caller drops (`owned` = true). Give the entry's own back with `release_reader`.
    ///
    /// # Safety
    /// Inside a `raw::guarded` region of a trigger call on `rel`, whose descriptor has the
    /// entry's shape (checked by `lookup`).
    pub unsafe fn reader(&self, rel: pg_sys::Relation) -> (*mut pg_sys::TupleTableSlot, bool) {
        // SAFETY: inside a guarded region (contract); the copy of the descriptor and the slot are
        // made in TopMemoryContext, and CurrentMemoryContext is put back.
        unsafe {
            if READER_BUSY.with(|b| b.replace(true)) {
                let slot = super::raw::MakeSingleTupleTableSlot(
                    (*rel).rd_att,
                    &pg_sys::TTSOpsMinimalTuple,
                );
                return (slot, true);
            }
            let mut slot = self.reader.get();
            if slot.is_null() {
                let old = pg_sys::CurrentMemoryContext;
                pg_sys::CurrentMemoryContext = pg_sys::TopMemoryContext;
                let desc = pg_sys::CreateTupleDescCopy((*rel).rd_att);
                slot = super::raw::MakeSingleTupleTableSlot(desc, &pg_sys::TTSOpsMinimalTuple);
                pg_sys::CurrentMemoryContext = old;
                self.reader.set(slot);
            }
            (slot, false)
        }
    }

    /// The entry's own reader slot is free again.
    pub fn release_reader(&self) {
        READER_BUSY.with(|b| b.set(false));
    }

    /// The in-process compiled condition, if the entry has one.
    pub fn condition(&self) -> Option<&Condition> {
        match &self.path {
            Path::Direct { condition, .. } => condition.as_ref(),
            Path::Spi { .. } => None,
        }
    }

    fn compiled_condition(&self) -> bool {
        self.condition().is_some()
    }
}

impl Drop for Entry {
    fn drop(&mut self) {
        if let Path::Spi { plan } = self.path {
            // SAFETY: the plan was kept with SPI_keepplan and nobody else holds it (Rc).
            unsafe { pg_sys::SPI_freeplan(plan) };
        }
        let slot = self.reader.get();
        if !slot.is_null() {
            // SAFETY: the slot and its descriptor copy were made by `reader` for this entry only;
            // nothing reads with it any more (entries are dropped between captures). Dropping a
            // slot clears it (what it points to is not freed: it reads tuples in place).
            unsafe {
                let desc = (*slot).tts_tupleDescriptor;
                pg_sys::ExecDropSingleTupleTableSlot(slot);
                pg_sys::pfree(desc.cast());
            }
        }
    }
}

thread_local! {
    static CACHE: RefCell<HashMap<pg_sys::Oid, Rc<Entry>, BuildOidHasher>> =
        const { RefCell::new(HashMap::with_hasher(BuildOidHasher)) };
    static INVALIDATED: RefCell<Vec<pg_sys::Oid>> = const { RefCell::new(Vec::new()) };
    static FLUSH_ALL: Cell<bool> = const { Cell::new(false) };
    /// a function, type, operator, schema or role changed: compiled conditions are dropped
    static FLUSH_CONDITIONS: Cell<bool> = const { Cell::new(false) };
}

/// Trigger OIDs hash as themselves: the cache is looked up on every capture, and SipHash (the
/// default, made for keys an attacker chooses) costs more than the rest of the look-up.
#[derive(Clone, Copy, Default)]
struct BuildOidHasher;

#[derive(Default)]
struct OidHasher(u64);

impl std::hash::BuildHasher for BuildOidHasher {
    type Hasher = OidHasher;
    fn build_hasher(&self) -> OidHasher {
        OidHasher(0)
    }
}

impl std::hash::Hasher for OidHasher {
    fn finish(&self) -> u64 {
        // spread the bits: hashbrown takes its control bytes from the top 7 bits
        self.0.wrapping_mul(0x9E37_79B9_7F4A_7C15)
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }
    fn write_u32(&mut self, n: u32) {
        self.0 = u64::from(n);
    }
}

/// Catalogs whose changes can change what a compiled condition means or may do (what
/// PostgreSQL's plan cache watches for a kept plan, plus roles: EXECUTE rights were checked
/// when the condition was compiled).
const CONDITION_SYSCACHES: [pg_sys::SysCacheIdentifier::Type; 6] = [
    pg_sys::SysCacheIdentifier::PROCOID,
    pg_sys::SysCacheIdentifier::TYPEOID,
    pg_sys::SysCacheIdentifier::OPEROID,
    pg_sys::SysCacheIdentifier::NAMESPACEOID,
    pg_sys::SysCacheIdentifier::AUTHOID,
    pg_sys::SysCacheIdentifier::AUTHMEMROLEMEM,
];

unsafe extern "C-unwind" fn syscache_callback(_arg: pg_sys::Datum, _cacheid: i32, _hash: u32) {
    // Never raise or panic here: only record what to drop at the next capture.
    FLUSH_CONDITIONS.with(|f| f.set(true));
}

const MAX_PENDING_INVALIDATIONS: usize = 64;

unsafe extern "C-unwind" fn relcache_callback(_arg: pg_sys::Datum, relid: pg_sys::Oid) {
    // Never raise or panic here: only record what to drop at the next capture.
    super::writer::relcache_invalidated(relid);
    if relid == pg_sys::InvalidOid {
        FLUSH_ALL.with(|f| f.set(true));
        return;
    }
    let relevant = CACHE.with(|c| match c.try_borrow() {
        Ok(cache) => cache.values().any(|e| e.relid == relid),
        Err(_) => true,
    });
    if !relevant {
        return;
    }
    INVALIDATED.with(|v| match v.try_borrow_mut() {
        Ok(mut pending) if pending.len() < MAX_PENDING_INVALIDATIONS => pending.push(relid),
        _ => FLUSH_ALL.with(|f| f.set(true)),
    });
}

pub fn init() {
    // SAFETY: registering a backend-local callback from _PG_init.
    unsafe {
        pg_sys::CacheRegisterRelcacheCallback(Some(relcache_callback), pg_sys::Datum::from(0));
        for cacheid in CONDITION_SYSCACHES {
            pg_sys::CacheRegisterSyscacheCallback(
                cacheid as i32,
                Some(syscache_callback),
                pg_sys::Datum::from(0),
            );
        }
    };
}

/// Apply invalidations recorded since the last capture.
pub fn process_invalidations() {
    let flush_all = FLUSH_ALL.with(|f| f.replace(false));
    let flush_conditions = FLUSH_CONDITIONS.with(|f| f.replace(false));
    if !flush_all && !flush_conditions && INVALIDATED.with(|v| v.borrow().is_empty()) {
        return;
    }
    let relids: Vec<pg_sys::Oid> = INVALIDATED.with(|v| std::mem::take(&mut *v.borrow_mut()));
    // Remove under the borrow, free the plans after releasing it.
    let removed: Vec<Rc<Entry>> = CACHE.with(|c| {
        let mut cache = c.borrow_mut();
        if flush_all {
            cache.drain().map(|(_, e)| e).collect()
        } else {
            let stale: Vec<pg_sys::Oid> = cache
                .iter()
                .filter(|(_, e)| {
                    relids.contains(&e.relid) || (flush_conditions && e.compiled_condition())
                })
                .map(|(k, _)| *k)
                .collect();
            stale.iter().filter_map(|k| cache.remove(k)).collect()
        }
    });
    drop(removed);
}

/// Shape of a row type: what the prepared statement was planned against.
unsafe fn shape_of(tupdesc: pg_sys::TupleDesc) -> Vec<(pg_sys::Oid, i32, bool)> {
    // SAFETY: `tupdesc` is a valid tuple descriptor (callers pass the trigger relation's `rd_att`):
    // its `natts` attributes are readable.
    unsafe {
        let natts = (*tupdesc).natts as usize;
        let attrs = (*tupdesc).attrs.as_ptr();
        (0..natts)
            .map(|i| {
                let a = &*attrs.add(i);
                (a.atttypid, a.atttypmod, a.attisdropped)
            })
            .collect()
    }
}

unsafe fn shape_matches(shape: &[(pg_sys::Oid, i32, bool)], tupdesc: pg_sys::TupleDesc) -> bool {
    // SAFETY: `tupdesc` is a valid tuple descriptor (callers pass the trigger relation's `rd_att`):
    // only its `natts` attributes are read.
    unsafe {
        let natts = (*tupdesc).natts as usize;
        if natts != shape.len() {
            return false;
        }
        let attrs = (*tupdesc).attrs.as_ptr();
        shape.iter().enumerate().all(|(i, s)| {
            let a = &*attrs.add(i);
            *s == (a.atttypid, a.atttypmod, a.attisdropped)
        })
    }
}

/// The trigger's argument: the observer id. The observer's name and condition are read from the
/// registry when the trigger's entry is built (`registry_row`): PostgreSQL copies every trigger
/// of a table with its arguments for every statement on it, and two more arguments per trigger
/// cost ~650 CPU instructions per statement. A new condition re-creates the triggers (new OIDs,
/// new entries: create_observer), so an entry never outlives its condition.
pub struct TriggerArgs<'a> {
    pub id: &'a CStr,
}

thread_local! {
    /// observer id -> name, as read from the registry by `build` (for error messages)
    static NAMES: RefCell<HashMap<i32, String>> = RefCell::new(HashMap::new());
}

/// The name of observer `id`, if this backend has read it from the registry.
pub fn observer_name(id: i32) -> Option<String> {
    NAMES.with(|n| n.borrow().get(&id).cloned())
}

/// (name, condition) of observer `id` in `observers.observer`, read with the latest snapshot (not
/// the transaction's: a REPEATABLE READ writer that started before the observer was replaced
/// must not cache the old condition under the new trigger), without privilege checks (the
/// capture role may not read the registry; nothing of it reaches a condition).
///
/// # Safety
/// Inside a transaction.
unsafe fn registry_row(observer_id: i32) -> Option<(String, Option<String>)> {
    // SAFETY: inside a transaction (contract): the registry is opened with AccessShareLock and
    // closed, the snapshot registered and unregistered, the scan ended; the tuple's columns are
    // read while the scan holds it.
    unsafe {
        let relid = super::writer::observers_relation(c"observer");
        let attnum = |name: &CStr| pg_sys::get_attnum(relid, name.as_ptr());
        let (id_att, name_att, condition_att) =
            (attnum(c"id"), attnum(c"name"), attnum(c"condition"));
        let rel = pg_sys::table_open(relid, pg_sys::AccessShareLock as i32);
        let snapshot = pg_sys::RegisterSnapshot(pg_sys::GetLatestSnapshot());
        let mut key: pg_sys::ScanKeyData = std::mem::zeroed();
        pg_sys::ScanKeyInit(
            &mut key,
            id_att,
            pg_sys::BTEqualStrategyNumber as u16,
            pg_sys::Oid::from(pg_sys::F_INT4EQ),
            pg_sys::Datum::from(observer_id),
        );
        let scan =
            pg_sys::systable_beginscan(rel, pg_sys::InvalidOid, false, snapshot, 1, &mut key);
        let tuple = pg_sys::systable_getnext(scan);
        let row = if tuple.is_null() {
            None
        } else {
            let text_at = |att: i16| {
                let mut isnull = false;
                let datum = pg_sys::heap_getattr(tuple, att as i32, (*rel).rd_att, &mut isnull);
                (!isnull).then(|| String::from_datum(datum, false).unwrap_or_default())
            };
            Some((
                text_at(name_att).unwrap_or_default(),
                text_at(condition_att),
            ))
        };
        pg_sys::systable_endscan(scan);
        pg_sys::UnregisterSnapshot(snapshot);
        pg_sys::table_close(rel, pg_sys::AccessShareLock as i32);
        row
    }
}

/// The cached entry for `tgoid`, if it is still valid for `rel`.
///
/// # Safety
/// `rel` must be the trigger's open relation.
pub unsafe fn lookup(tgoid: pg_sys::Oid, rel: pg_sys::Relation) -> Option<Rc<Entry>> {
    let entry = CACHE.with(|c| c.borrow().get(&tgoid).cloned())?;
    // SAFETY: `rel` is the trigger's open relation (this function's contract): `rd_id` and `rd_att`
    // are valid.
    let valid = unsafe {
        entry.relid == (*rel).rd_id
            && shape_matches(&entry.shape, (*rel).rd_att)
            && entry
                .condition()
                .is_none_or(|c| c.userid == pg_sys::GetUserId())
    };
    if valid {
        return Some(entry);
    }
    let stale = CACHE.with(|c| c.borrow_mut().remove(&tgoid));
    drop(stale);
    drop(entry);
    None
}

/// Build and cache the entry of a trigger. An observer's condition is compiled in-process
/// (`filter`) with `search_path` pinned by the caller; a condition the filter does not take gets
/// the SPI statement, so this must run inside an SPI connection (with the transition tables
/// registered for statement-level triggers).
///
/// # Safety
/// `td` must be the current trigger call's data.
pub unsafe fn build(
    td: &pg_sys::TriggerData,
    op: Op,
    row_level: bool,
    args: &TriggerArgs,
) -> Rc<Entry> {
    // SAFETY: `td` is the current trigger call's data (contract): its trigger and relation are
    // live; the caller (`capture_impl`) has connected SPI for SPI_prepare and finishes it after;
    // the plan is kept with SPI_keepplan.
    unsafe {
        let trigger = &*td.tg_trigger;
        let rel = td.tg_relation;
        let observer_id: i32 = match args.id.to_str().ok().and_then(|s| s.parse().ok()) {
            Some(id) => id,
            None => raise(
                PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                format!(
                    "trigger \"{}\" passes an invalid observer id {:?} to observers.capture()",
                    CStr::from_ptr(trigger.tgname).to_string_lossy(),
                    args.id
                ),
                Some("Capture triggers are managed by observers.create_observer(); do not create them by hand."),
            ),
        };
        // a trigger whose observer is gone (made by hand, or left behind) captures as before,
        // without a condition; status() reports it (capture integrity)
        let condition_text = match registry_row(observer_id) {
            Some((name, condition)) => {
                NAMES.with(|n| n.borrow_mut().insert(observer_id, name));
                condition
            }
            None => None,
        };
        let condition = condition_text.as_deref().filter(|c| !c.trim().is_empty());

        let level = if row_level {
            Level::Row
        } else {
            let name = match op {
                Op::Insert => trigger.tgnewtable,
                _ => trigger.tgoldtable,
            };
            if name.is_null() {
                raise(
                    PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                    format!(
                        "statement-level capture trigger \"{}\" has no {} transition table",
                        CStr::from_ptr(trigger.tgname).to_string_lossy(),
                        if op == Op::Insert { "NEW" } else { "OLD" }
                    ),
                    Some("Re-create the observer with observers.create_observer(..., replace => true)."),
                );
            }
            Level::Statement {
                transition_table: CStr::from_ptr(pg_sys::quote_identifier(name))
                    .to_string_lossy()
                    .into_owned(),
            }
        };

        // everything that can fail before the plan exists, so that an error cannot leak it
        let columns = if op == Op::Update {
            changed::columns_of((*rel).rd_att)
        } else {
            Vec::new()
        };
        let shape = shape_of((*rel).rd_att);
        let compiled = match condition {
            Some(text) => Condition::compile(rel, op, text).map(Some),
            None => Some(None),
        };
        let path = match (compiled, condition) {
            (Some(compiled), _) => {
                let json = RowJsonb::new((*rel).rd_att);
                if let Some(c) = &compiled {
                    c.keep();
                }
                Path::Direct {
                    json,
                    condition: compiled,
                }
            }
            (None, None) => unreachable!("no condition always compiles"),
            (None, Some(condition)) => {
                let sql = query::capture_sql(op, &level, Some(condition));
                let reltype = (*(*rel).rd_rel).reltype;
                let mut argtypes = [pg_sys::INT4OID, reltype, reltype, pg_sys::TEXTARRAYOID];
                let nargs = query::capture_nargs(op, &level);
                let csql = CString::new(sql).expect("generated SQL contains no NUL byte");
                let plan = pg_sys::SPI_prepare(csql.as_ptr(), nargs as i32, argtypes.as_mut_ptr());
                if plan.is_null() {
                    let code = pg_sys::SPI_result;
                    raise(
                        PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
                        format!("SPI_prepare failed for the capture statement of observer {observer_id}: SPI code {code}"),
                        None,
                    );
                }
                if pg_sys::SPI_keepplan(plan) != 0 {
                    pg_sys::SPI_freeplan(plan);
                    raise(
                        PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
                        "SPI_keepplan failed",
                        None,
                    );
                }
                Path::Spi { plan }
            }
        };
        let entry = Rc::new(Entry {
            relid: (*rel).rd_id,
            observer_id,
            path,
            columns,
            shape,
            reader: Cell::new(ptr::null_mut()),
        });
        let replaced = CACHE.with(|c| c.borrow_mut().insert(trigger.tgoid, Rc::clone(&entry)));
        drop(replaced);
        entry
    }
}
