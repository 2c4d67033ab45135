//! Appending events to the outbox without going through SQL.
//!
//! Planning and starting an `INSERT ... SELECT` for every captured statement costs more than
//! the user's own statement. The writer does what the executor would do for that INSERT, once
//! per captured statement:
//! * route: all events of one call share `captured_at` (the clock when the trigger fired), so
//!   the partition of `observers.event` is chosen once, with PostgreSQL's own range search over
//!   the partition bounds (the DEFAULT partition when no daily partition covers the time);
//! * insert the rows with `heap_multi_insert` (one WAL record per page, as COPY does) and their
//!   entries into every index of that partition (`ExecInsertIndexTuples`);
//! * `id` from `nextval(observers.event_id_seq)` per event, `txid` the top-level transaction id.
//!
//! observers.event has no triggers, rules, RLS or CHECK constraints (the extension owns it);
//! its columns are checked against the expected layout before writing.

use pgrx::pg_sys;
use pgrx::prelude::*;
use std::ffi::CStr;
use std::ptr;

use crate::error::raise;

unsafe extern "C-unwind" {
    // commands/sequence.h is not part of pgrx's bindings
    fn nextval_internal(relid: pg_sys::Oid, check_permissions: bool) -> i64;
}

/// Events are handed to heap_multi_insert in chunks of this many rows.
const CHUNK: usize = 256;

/// Column layout of observers.event (and of every partition).
const COLUMNS: [&str; 8] = [
    "id",
    "observer_id",
    "op",
    "txid",
    "captured_at",
    "new",
    "old",
    "changed",
];
const NATTS: usize = COLUMNS.len();

/// One event to append.
pub struct Event {
    pub observer_id: i32,
    pub op: &'static CStr,
    pub new: Option<pg_sys::Datum>,
    pub old: Option<pg_sys::Datum>,
    pub changed: Option<pg_sys::Datum>,
}

/// Slots are expensive to create (several allocations each) and a writer needs one per queued
/// event, so a backend keeps them: virtual slots over a private copy of the outbox row type,
/// allocated in a long-lived context. Every partition of observers.event has that row type
/// (checked when a writer opens).
struct SlotPool {
    tupdesc: pg_sys::TupleDesc,
    slots: Vec<*mut pg_sys::TupleTableSlot>,
    /// text datums 'INSERT', 'UPDATE', 'DELETE'
    ops: [pg_sys::Datum; 3],
}

thread_local! {
    static POOL: std::cell::RefCell<Option<SlotPool>> = const { std::cell::RefCell::new(None) };
}

unsafe fn pool_context() -> pg_sys::MemoryContext {
    // SAFETY: reads a backend-local global (TopMemoryContext is set for the whole life of the
    // backend).
    unsafe { pg_sys::TopMemoryContext }
}

impl SlotPool {
    unsafe fn new(leaf: pg_sys::Relation) -> SlotPool {
        // SAFETY: `leaf` is an open relation (callers: `Writer::open`); the copies and slots live
        // in TopMemoryContext, for the backend's life, like the pool that keeps them;
        // CurrentMemoryContext is put back.
        unsafe {
            let old = pg_sys::CurrentMemoryContext;
            pg_sys::CurrentMemoryContext = pool_context();
            let tupdesc = pg_sys::CreateTupleDescCopy((*leaf).rd_att);
            let text = |s: &CStr| {
                let b = s.to_bytes();
                pg_sys::Datum::from(pg_sys::cstring_to_text_with_len(
                    b.as_ptr().cast(),
                    b.len() as i32,
                ))
            };
            let ops = [text(c"INSERT"), text(c"UPDATE"), text(c"DELETE")];
            pg_sys::CurrentMemoryContext = old;
            SlotPool {
                tupdesc,
                slots: Vec::new(),
                ops,
            }
        }
    }

    unsafe fn slot(&mut self, i: usize) -> *mut pg_sys::TupleTableSlot {
        // SAFETY: `tupdesc` is the pool's own copy (TopMemoryContext); the slot is made there and
        // CurrentMemoryContext is put back.
        unsafe {
            while self.slots.len() <= i {
                let old = pg_sys::CurrentMemoryContext;
                pg_sys::CurrentMemoryContext = pool_context();
                self.slots.push(pg_sys::MakeSingleTupleTableSlot(
                    self.tupdesc,
                    &pg_sys::TTSOpsVirtual,
                ));
                pg_sys::CurrentMemoryContext = old;
            }
            self.slots[i]
        }
    }

    unsafe fn matches(&self, leaf: pg_sys::Relation) -> bool {
        // SAFETY: `leaf` is an open relation and `self.tupdesc` the pool's own copy: only `natts`
        // attributes of each are read.
        unsafe {
            let a = (*leaf).rd_att;
            let b = self.tupdesc;
            (*a).natts == (*b).natts
                && (0..(*a).natts as usize).all(|i| {
                    let x = &*(*a).attrs.as_ptr().add(i);
                    let y = &*(*b).attrs.as_ptr().add(i);
                    x.atttypid == y.atttypid && x.atttypmod == y.atttypmod && x.attlen == y.attlen
                })
        }
    }
}

pub struct Writer {
    parent: pg_sys::Relation,
    leaf: pg_sys::Relation,
    seq: pg_sys::Oid,
    estate: *mut pg_sys::EState,
    rri: *mut pg_sys::ResultRelInfo,
    /// slots of the pool used so far (the pool is borrowed only inside push/flush)
    slots: Vec<*mut pg_sys::TupleTableSlot>,
    used: usize,
    cid: pg_sys::CommandId,
    txid: pg_sys::Datum,
    captured_at: pg_sys::Datum,
    /// per-chunk memory (payloads), reset after each flush
    chunk_context: pg_sys::MemoryContext,
    written: u64,
}

unsafe fn relation_oid(nsp: pg_sys::Oid, name: &CStr) -> pg_sys::Oid {
    // SAFETY: inside a transaction (callers: `Writer::open`): a catalog look-up by name in schema
    // `nsp`.
    unsafe {
        let oid = pg_sys::get_relname_relid(name.as_ptr(), nsp);
        if oid == pg_sys::InvalidOid {
            raise(
                PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE,
                format!("observers.{} does not exist", name.to_string_lossy()),
                Some("Is the pg_observers extension installed in this database? (CREATE EXTENSION pg_observers)"),
            );
        }
        oid
    }
}

/// The partition of `parent` (range-partitioned on one timestamptz column) holding `value`.
unsafe fn route(parent: pg_sys::Relation, value: pg_sys::Datum) -> pg_sys::Oid {
    // SAFETY: `parent` is the open, range-partitioned observers.event (callers: `Writer::open`) and
    // `value` a timestamptz: its partition descriptor is read under the lock the caller holds.
    unsafe {
        let partdesc = pg_sys::RelationGetPartitionDesc(parent, true);
        let bounds = (*partdesc).boundinfo;
        let mut part_index: i32 = -1;
        if !bounds.is_null() && (*bounds).ndatums > 0 {
            // timestamptz's btree comparison support function (timestamp_cmp) and no collation:
            // the partition key of observers.event
            let mut cmp: pg_sys::FmgrInfo = std::mem::zeroed();
            pg_sys::fmgr_info(pg_sys::Oid::from(pg_sys::F_TIMESTAMP_CMP), &mut cmp);
            let mut collation = pg_sys::InvalidOid;
            let mut values = [value];
            let mut equal = false;
            let offset = pg_sys::partition_range_datum_bsearch(
                &mut cmp,
                &mut collation,
                bounds,
                1,
                values.as_mut_ptr(),
                &mut equal,
            );
            // the bound at `offset` is <= value; the partition ending at offset + 1 holds it
            part_index = *(*bounds).indexes.add((offset + 1) as usize);
        }
        if part_index < 0 && !bounds.is_null() {
            part_index = (*bounds).default_index;
        }
        if part_index < 0 {
            raise(
                PgSqlErrorCode::ERRCODE_CHECK_VIOLATION,
                "no partition of observers.event accepts events captured now",
                Some("The DEFAULT partition observers.event_default is missing; re-create the extension or the partition."),
            );
        }
        *(*partdesc).oids.add(part_index as usize)
    }
}

unsafe fn check_layout(rel: pg_sys::Relation) {
    // SAFETY: `rel` is an open relation (callers: `Writer::open`): only its `natts` attributes are
    // read.
    unsafe {
        let tupdesc = (*rel).rd_att;
        let natts = (*tupdesc).natts as usize;
        let attrs = (*tupdesc).attrs.as_ptr();
        let ok = natts == NATTS
            && COLUMNS.iter().enumerate().all(|(i, name)| {
                let att = &*attrs.add(i);
                !att.attisdropped
                    && CStr::from_ptr(att.attname.data.as_ptr()).to_bytes() == name.as_bytes()
            });
        if !ok {
            raise(
                PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                format!(
                    "{} does not have the column layout of observers.event this pg_observers library writes",
                    CStr::from_ptr((*(*rel).rd_rel).relname.data.as_ptr()).to_string_lossy()
                ),
                Some("Was the outbox altered by hand, or is the library newer than the installed extension? Run ALTER EXTENSION pg_observers UPDATE."),
            );
        }
    }
}

impl Writer {
    /// Open the outbox partition for events captured now.
    ///
    /// # Safety
    /// Must run inside a transaction, as the capture role.
    pub unsafe fn open() -> Writer {
        // SAFETY: inside a transaction, as the capture role (contract): relations are opened with
        // RowExclusiveLock and closed by `finish` (or by the transaction's abort).
        unsafe {
            let nsp = pg_sys::get_namespace_oid(c"observers".as_ptr(), true);
            if nsp == pg_sys::InvalidOid {
                raise(
                    PgSqlErrorCode::ERRCODE_INVALID_SCHEMA_NAME,
                    "schema observers does not exist",
                    Some("Is the pg_observers extension installed in this database? (CREATE EXTENSION pg_observers)"),
                );
            }
            let parent_oid = relation_oid(nsp, c"event");
            let seq = relation_oid(nsp, c"event_id_seq");
            let captured_at = pg_sys::Datum::from(pg_sys::GetCurrentTimestamp());

            let parent = pg_sys::table_open(parent_oid, pg_sys::RowExclusiveLock as i32);
            let leaf_oid = route(parent, captured_at);
            let leaf = pg_sys::table_open(leaf_oid, pg_sys::RowExclusiveLock as i32);
            check_layout(leaf);

            let estate = pg_sys::CreateExecutorState();
            let rri = pg_sys::palloc0(std::mem::size_of::<pg_sys::ResultRelInfo>())
                as *mut pg_sys::ResultRelInfo;
            (*rri).type_ = pg_sys::NodeTag::T_ResultRelInfo;
            pg_sys::InitResultRelInfo(rri, leaf, 1, ptr::null_mut(), 0);
            pg_sys::ExecOpenIndices(rri, false);

            let chunk_context = pg_sys::AllocSetContextCreateInternal(
                pg_sys::CurrentMemoryContext,
                c"pg_observers event chunk".as_ptr(),
                0,
                8 * 1024,
                8 * 1024 * 1024,
            );
            let txid = pg_sys::GetTopFullTransactionId();
            POOL.with(|p| {
                let mut p = p.borrow_mut();
                if !p.as_ref().is_some_and(|pool| pool.matches(leaf)) {
                    // the old pool (if any) is dropped without freeing: a few KB, once
                    *p = Some(SlotPool::new(leaf));
                }
            });
            Writer {
                parent,
                leaf,
                seq,
                estate,
                rri,
                slots: Vec::new(),
                used: 0,
                cid: pg_sys::GetCurrentCommandId(true),
                txid: pg_sys::Datum::from(txid.value),
                captured_at,
                chunk_context,
                written: 0,
            }
        }
    }

    /// Memory context for building the payloads of the next events (reset at each flush).
    pub fn payload_context(&self) -> pg_sys::MemoryContext {
        self.chunk_context
    }

    /// Queue one event; flushes every CHUNK events.
    ///
    /// # Safety
    /// Payload datums must live in `payload_context()` (or longer) until the next flush.
    pub unsafe fn push(&mut self, event: Event) {
        // SAFETY: payload datums live until the next flush (contract); the slot comes from the pool
        // made by `Writer::open` for this leaf's descriptor.
        unsafe {
            let (slot, op) = POOL.with(|p| {
                let mut p = p.borrow_mut();
                let pool = p.as_mut().expect("pool created by Writer::open");
                let op = match event.op.to_bytes() {
                    b"INSERT" => pool.ops[0],
                    b"UPDATE" => pool.ops[1],
                    _ => pool.ops[2],
                };
                (pool.slot(self.used), op)
            });
            if self.used == self.slots.len() {
                self.slots.push(slot);
            }
            // Mark the pooled slot empty without freeing anything: if a previous writer failed
            // mid-flush, what the slot still points to died with that transaction's memory.
            (*slot).tts_flags = pg_sys::TTS_FLAG_EMPTY as u16;
            (*slot).tts_nvalid = 0;
            // whatever the slot allocates (heap_multi_insert materializes it) goes to the chunk
            (*slot).tts_mcxt = self.chunk_context;
            let values = (*slot).tts_values;
            let isnull = (*slot).tts_isnull;
            let fields: [Option<pg_sys::Datum>; NATTS] = [
                Some(pg_sys::Datum::from(nextval_internal_guarded(self.seq))),
                Some(pg_sys::Datum::from(event.observer_id)),
                Some(op),
                Some(self.txid),
                Some(self.captured_at),
                event.new,
                event.old,
                event.changed,
            ];
            for (i, f) in fields.iter().enumerate() {
                *values.add(i) = f.unwrap_or(pg_sys::Datum::from(0));
                *isnull.add(i) = f.is_none();
            }
            pg_sys::ExecStoreVirtualTuple(slot);
            self.used += 1;
            if self.used == CHUNK {
                self.flush();
            }
        }
    }

    unsafe fn flush(&mut self) {
        // SAFETY: `self` was opened in this transaction and its slots hold `used` queued rows;
        // heap_multi_insert runs in the chunk context, which is reset afterwards, and
        // CurrentMemoryContext is put back.
        unsafe {
            if self.used == 0 {
                return;
            }
            // virtual slots: heap_multi_insert forms the heap tuples in the current (chunk) context
            let old = pg_sys::CurrentMemoryContext;
            pg_sys::CurrentMemoryContext = self.chunk_context;
            pg_sys::heap_multi_insert(
                self.leaf,
                self.slots.as_mut_ptr(),
                self.used as i32,
                self.cid,
                0,
                ptr::null_mut(),
            );
            pg_sys::CurrentMemoryContext = old;
            if (*self.rri).ri_NumIndices > 0 {
                for &slot in &self.slots[..self.used] {
                    pg_sys::ExecInsertIndexTuples(
                        self.rri,
                        slot,
                        self.estate,
                        false,
                        false,
                        ptr::null_mut(),
                        ptr::null_mut(),
                    );
                    pg_sys::MemoryContextReset(
                        (*self.estate)
                            .es_per_tuple_exprcontext
                            .as_ref()
                            .map_or(ptr::null_mut(), |e| e.ecxt_per_tuple_memory),
                    );
                }
            }
            for &slot in &self.slots[..self.used] {
                pg_sys::ExecClearTuple(slot);
            }
            self.written += self.used as u64;
            self.used = 0;
            pg_sys::MemoryContextReset(self.chunk_context);
        }
    }

    /// Write what is queued and release everything; returns the number of events written.
    ///
    /// # Safety
    /// Call once, in the transaction that opened the writer.
    pub unsafe fn finish(mut self) -> u64 {
        // SAFETY: called once, in the transaction that opened the writer (contract): each resource
        // opened by `open` is released exactly once.
        unsafe {
            self.flush();
            pg_sys::ExecCloseIndices(self.rri);
            pg_sys::FreeExecutorState(self.estate);
            pg_sys::table_close(self.leaf, pg_sys::NoLock as i32);
            pg_sys::table_close(self.parent, pg_sys::NoLock as i32);
            pg_sys::MemoryContextDelete(self.chunk_context);
            self.written
        }
    }
}

unsafe fn nextval_internal_guarded(seq: pg_sys::Oid) -> i64 {
    // SAFETY: a plain C call; PostgreSQL errors become Rust panics at the boundary.
    unsafe { pg_sys::ffi::pg_guard_ffi_boundary(|| nextval_internal(seq, false)) }
}
