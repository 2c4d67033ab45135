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
//! * `id` drawn at flush for the queued events (`ids`: from a counter in shared memory that
//!   reserves blocks of `observers.event_id_seq`), `txid` the top-level
//!   transaction id.
//!
//! observers.event has no triggers, rules, RLS or CHECK constraints (the extension owns it);
//! its columns are checked against the expected layout before writing.

use pgrx::pg_sys;
use pgrx::prelude::*;
use std::ffi::CStr;
use std::ptr;

use super::raw;
use crate::error::raise;

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
    /// heap tuple slots a multi-row flush hands to `heap_multi_insert`, holding tuples formed
    /// from the virtual slots' values (a virtual slot would be materialized, its values copied,
    /// before the tuple is formed: ~450 instructions per row)
    heap_slots: Vec<*mut pg_sys::TupleTableSlot>,
    /// text datums 'INSERT', 'UPDATE', 'DELETE'
    ops: [pg_sys::Datum; 3],
    /// header template when the row type is the one capture/tuple.rs forms directly (else
    /// rows are formed by `heap_form_tuple`)
    template: Option<super::tuple::Template>,
}

thread_local! {
    static POOL: std::cell::RefCell<Option<SlotPool>> = const { std::cell::RefCell::new(None) };
}

/// A new slot of `ops` over `desc`, made in `context` (a guarded pgrx call; CurrentMemoryContext
/// is put back).
///
/// # Safety
/// `desc` lives at least as long as `context`.
unsafe fn make_slot(
    desc: pg_sys::TupleDesc,
    ops: &'static pg_sys::TupleTableSlotOps,
    context: pg_sys::MemoryContext,
) -> *mut pg_sys::TupleTableSlot {
    // SAFETY: `desc` outlives the slot (contract); the context switch is undone before returning
    // (an error aborts the transaction, which resets CurrentMemoryContext).
    unsafe {
        let old = pg_sys::CurrentMemoryContext;
        pg_sys::CurrentMemoryContext = context;
        let slot = pg_sys::MakeSingleTupleTableSlot(desc, ops);
        pg_sys::CurrentMemoryContext = old;
        slot
    }
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
                heap_slots: Vec::new(),
                ops,
                template: super::tuple::layout_matches(tupdesc)
                    .then(|| super::tuple::Template::new(tupdesc, ops[0])),
            }
        }
    }

    unsafe fn slot(&mut self, i: usize) -> *mut pg_sys::TupleTableSlot {
        // SAFETY: `tupdesc` is the pool's own copy (TopMemoryContext); slots are made there.
        unsafe {
            while self.slots.len() <= i {
                let slot = make_slot(self.tupdesc, &pg_sys::TTSOpsVirtual, pool_context());
                self.slots.push(slot);
            }
            self.slots[i]
        }
    }

    /// The first `n` heap tuple slots (made on first use, like `slot`).
    unsafe fn heap_slots(&mut self, n: usize) -> Vec<*mut pg_sys::TupleTableSlot> {
        // SAFETY: as `slot`: made in TopMemoryContext over the pool's descriptor.
        unsafe {
            while self.heap_slots.len() < n {
                let slot = make_slot(self.tupdesc, &pg_sys::TTSOpsHeapTuple, pool_context());
                self.heap_slots.push(slot);
            }
            self.heap_slots[..n].to_vec()
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

/// Where events captured now go, remembered by the backend between captures (`TARGET`): the
/// outbox and its sequence, and the daily partition last written with its time range. The
/// partition is locked, not its parent: a capture whose time falls in the remembered range opens
/// that partition directly, so the common capture takes one relation lock fewer and skips the
/// partition routing. Valid because:
/// * a partition cannot be detached, dropped or re-bounded without an ACCESS EXCLUSIVE lock on
///   it, which waits for our ROW EXCLUSIVE lock, and
/// * taking that lock (the first time in a transaction) processes pending invalidations: a
///   detach, drop or layout change committed meanwhile sent a relcache invalidation of the
///   partition or of `observers.event`, which `relcache_invalidated` turns into a new
///   generation; the writer then forgets the partition and routes through the parent again.
///
/// A new partition can never overlap the remembered range (PostgreSQL refuses overlapping
/// bounds), and the DEFAULT partition is never remembered (a new daily partition may take over
/// part of its range), so a write always lands in the partition PostgreSQL would choose.
struct Target {
    seq: pg_sys::Oid,
    /// (partition, lower bound, upper bound, generation when remembered): captured_at in
    /// [lower, upper) goes there as long as the generation has not moved
    leaf: Option<(pg_sys::Oid, i64, i64, u64)>,
    /// per-backend IndexInfo of the outbox's btree indexes, by index OID (TopMemoryContext)
    index_info: Vec<(pg_sys::Oid, *mut pg_sys::IndexInfo)>,
    /// the remembered partition's indexes when they are all plain btrees, and the generation
    /// they were read at: (partition, generation, [(index, IndexInfo, unique)]). Creating or
    /// dropping an index of the partition invalidates its relcache entry, which moves the
    /// generation, so a capture through the remembered partition can open them without
    /// listing and checking them again.
    leaf_indexes: Option<(pg_sys::Oid, u64, Vec<IndexEntry>)>,
}

/// A plain btree index of the outbox: (index OID, the backend's IndexInfo, unique?).
type IndexEntry = (pg_sys::Oid, *mut pg_sys::IndexInfo, bool);

/// At most this many cached index entries are copied out for one opening (the outbox has one).
const CACHED_INDEXES: usize = 4;

thread_local! {
    static TARGET: std::cell::RefCell<Option<Target>> = const { std::cell::RefCell::new(None) };
    /// bumped by every relcache invalidation that concerns `TARGET`
    static GENERATION: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    /// the relations `TARGET` depends on: outbox, sequence, remembered partition (read by the
    /// invalidation callback without borrowing anything)
    static WATCHED: std::cell::Cell<[pg_sys::Oid; 3]> =
        const { std::cell::Cell::new([pg_sys::InvalidOid; 3]) };
    /// the backend's payload memory, reused by every capture that is not nested in another
    static CHUNK_CONTEXT: std::cell::Cell<pg_sys::MemoryContext> =
        const { std::cell::Cell::new(ptr::null_mut()) };
    static CHUNK_CONTEXT_BUSY: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Called from the relcache invalidation callback (`plan_cache`); must not raise or allocate.
pub fn relcache_invalidated(relid: pg_sys::Oid) {
    if relid == pg_sys::InvalidOid || WATCHED.with(|w| w.get()).contains(&relid) {
        GENERATION.with(|g| g.set(g.get().wrapping_add(1)));
    }
}

fn generation() -> u64 {
    GENERATION.with(|g| g.get())
}

/// At the end of a transaction no capture is running: the shared payload context is free again
/// even if a capture failed before giving it back.
pub fn at_xact_end() {
    CHUNK_CONTEXT_BUSY.with(|b| b.set(false));
}

/// How index entries are written.
enum Indexes {
    /// every index of the partition is a plain btree (the extension's own `event_id_idx`):
    /// `index_insert` straight away, with a cached IndexInfo
    Direct(Vec<(pg_sys::Relation, *mut pg_sys::IndexInfo, bool)>),
    /// an index someone added (expressions, a predicate, another access method, a deferred or
    /// exclusion constraint): what the executor does, `ExecInsertIndexTuples`
    Executor {
        estate: *mut pg_sys::EState,
        rri: *mut pg_sys::ResultRelInfo,
    },
}

pub struct Writer {
    /// observers.event when it had to be opened to route this write, else null
    parent: pg_sys::Relation,
    leaf: pg_sys::Relation,
    seq: pg_sys::Oid,
    indexes: Indexes,
    /// slots of the pool used so far (the pool is borrowed only inside push/flush)
    slots: Vec<*mut pg_sys::TupleTableSlot>,
    used: usize,
    cid: pg_sys::CommandId,
    txid: pg_sys::Datum,
    captured_at: pg_sys::Datum,
    /// per-chunk memory (payloads), reset after each flush
    chunk_context: pg_sys::MemoryContext,
    /// the chunk context is the backend's shared one (else our own, deleted at finish) and the
    /// slots are the pool's; a writer nested in another one (a payload's cast ran user code that
    /// wrote to an observed table) has its own context and its own slots, made in the memory
    /// context it was opened in: the outer writer's queued rows sit in the pool's slots
    shared_context: bool,
    /// where a nested writer makes its slots
    owner_context: pg_sys::MemoryContext,
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

/// The OID of observers.event_id_seq, looked up by name.
///
/// # Safety
/// Inside a transaction.
pub unsafe fn event_id_sequence() -> pg_sys::Oid {
    // SAFETY: inside a transaction (contract).
    unsafe { outbox_oids().1 }
}

/// The OID of relation `observers.<name>`, looked up by name (an error that says to install the
/// extension when it is missing).
///
/// # Safety
/// Inside a transaction.
pub(super) unsafe fn observers_relation(name: &CStr) -> pg_sys::Oid {
    // SAFETY: inside a transaction (contract): catalog look-ups by name.
    unsafe {
        let nsp = pg_sys::get_namespace_oid(c"observers".as_ptr(), true);
        if nsp == pg_sys::InvalidOid {
            raise(
                PgSqlErrorCode::ERRCODE_INVALID_SCHEMA_NAME,
                "schema observers does not exist",
                Some("Is the pg_observers extension installed in this database? (CREATE EXTENSION pg_observers)"),
            );
        }
        relation_oid(nsp, name)
    }
}

/// The OIDs of observers.event and its sequence, looked up by name (once per backend, and again
/// after an invalidation of the outbox).
unsafe fn outbox_oids() -> (pg_sys::Oid, pg_sys::Oid) {
    // SAFETY: inside a transaction (callers: `Writer::open`): catalog look-ups by name.
    unsafe {
        (
            observers_relation(c"event"),
            observers_relation(c"event_id_seq"),
        )
    }
}

/// The partition of `parent` (range-partitioned on one timestamptz column) holding `value`, and
/// its bounds when it is a daily partition with finite bounds (None for the DEFAULT partition).
unsafe fn route(
    parent: pg_sys::Relation,
    value: pg_sys::Datum,
) -> (pg_sys::Oid, Option<(i64, i64)>) {
    // SAFETY: `parent` is the open, range-partitioned observers.event (callers: `Writer::open`) and
    // `value` a timestamptz: its partition descriptor is read under the lock the caller holds.
    unsafe {
        let partdesc = pg_sys::RelationGetPartitionDesc(parent, true);
        let bounds = (*partdesc).boundinfo;
        let mut part_index: i32 = -1;
        let mut range = None;
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
            let finite = |i: i32| {
                (*bounds).kind.is_null()
                    || **(*bounds).kind.add(i as usize)
                        == pg_sys::PartitionRangeDatumKind::PARTITION_RANGE_DATUM_VALUE
            };
            if part_index >= 0
                && offset >= 0
                && offset + 1 < (*bounds).ndatums
                && finite(offset)
                && finite(offset + 1)
            {
                let lo = (**(*bounds).datums.add(offset as usize)).value() as i64;
                let hi = (**(*bounds).datums.add((offset + 1) as usize)).value() as i64;
                range = Some((lo, hi));
            }
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
        (*(*partdesc).oids.add(part_index as usize), range)
    }
}

/// Close the outbox partition, its parent (if opened) and their indexes, keeping the locks until
/// the transaction ends. Inside a `raw::guarded` region.
///
/// # Safety
/// What `Writer::open` opened, not closed yet.
unsafe fn close_relations(indexes: &Indexes, leaf: pg_sys::Relation, parent: pg_sys::Relation) {
    // SAFETY: contract above.
    unsafe {
        match indexes {
            Indexes::Direct(indexes) => {
                for &(index, _, _) in indexes {
                    raw::index_close(index, pg_sys::NoLock as pg_sys::LOCKMODE);
                }
            }
            Indexes::Executor { estate, rri } => {
                pg_sys::ExecCloseIndices(*rri);
                pg_sys::FreeExecutorState(*estate);
            }
        }
        raw::relation_close(leaf, pg_sys::NoLock as pg_sys::LOCKMODE);
        if !parent.is_null() {
            raw::relation_close(parent, pg_sys::NoLock as pg_sys::LOCKMODE);
        }
    }
}

/// The outbox heap tuple for a queued slot's values, formed in CurrentMemoryContext: directly
/// (capture/tuple.rs) when the row type allows it, else by `heap_form_tuple`; with `verify`
/// (observers.verify_tuples) compared with `heap_form_tuple`'s, the first difference kept in
/// `mismatch`. Inside a `raw::guarded` region.
#[inline(always)]
unsafe fn form_tuple(
    slot: *mut pg_sys::TupleTableSlot,
    template: Option<&super::tuple::Template>,
    verify: bool,
    mismatch: &mut Option<(usize, usize, usize)>,
) -> pg_sys::HeapTuple {
    // SAFETY: `slot` is a queued virtual slot over the pool's descriptor (callers: `flush`).
    unsafe {
        let (desc, values, isnull) = (
            (*slot).tts_tupleDescriptor,
            (*slot).tts_values,
            (*slot).tts_isnull,
        );
        match template.and_then(|t| super::tuple::form(t, values, isnull)) {
            Some(tuple) => {
                if verify && mismatch.is_none() {
                    *mismatch = super::tuple::verify(desc, values, isnull, tuple);
                }
                tuple
            }
            None => raw::heap_form_tuple(desc, values, isnull),
        }
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

/// Can entries of this open index be written with a plain `index_insert`? A btree over plain
/// columns, ready for inserts, no predicate, no deferred uniqueness, no exclusion constraint.
/// Inside a `raw::guarded` region.
unsafe fn is_plain_btree(index: pg_sys::Relation) -> bool {
    // SAFETY: `index` is an open index relation: its pg_class and pg_index rows are in its
    // relcache entry.
    unsafe {
        let form = &*(*index).rd_index;
        let natts = form.indnatts as usize;
        let keys = form.indkey.values.as_slice(natts);
        (*(*index).rd_rel).relam == pg_sys::BTREE_AM_OID
            && natts <= NATTS
            && form.indisready
            && !form.indisexclusion
            && (!form.indisunique || form.indimmediate)
            && keys.iter().all(|&k| k > 0 && (k as usize) <= NATTS)
            && raw::heap_attisnull(
                (*index).rd_indextuple,
                pg_sys::Anum_pg_index_indpred as i32,
                ptr::null_mut(),
            )
    }
}

/// The backend's IndexInfo for a plain btree index of the outbox (built once per index).
unsafe fn index_info(target: &mut Target, index: pg_sys::Relation) -> *mut pg_sys::IndexInfo {
    // SAFETY: `index` is an open index relation; the IndexInfo is built in TopMemoryContext (it
    // describes plain columns only: no expression state, nothing tied to a transaction);
    // CurrentMemoryContext is put back.
    unsafe {
        let oid = (*index).rd_id;
        if let Some((_, info)) = target.index_info.iter().find(|(o, _)| *o == oid) {
            return *info;
        }
        let old = pg_sys::CurrentMemoryContext;
        pg_sys::CurrentMemoryContext = pool_context();
        let info = pg_sys::BuildIndexInfo(index);
        pg_sys::CurrentMemoryContext = old;
        target.index_info.push((oid, info));
        info
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
            // one guarded region: the clock, the transaction, and the remembered partition if the
            // time falls in its range and nothing changed it (the TARGET borrow ends before the
            // lock is taken)
            let (captured_at, txid, cid, mut leaf, gen) = raw::guarded(|| {
                let captured_at = raw::GetCurrentTimestamp();
                let txid = raw::GetTopFullTransactionId();
                let cid = raw::GetCurrentCommandId(true);
                let remembered = TARGET.with(|t| {
                    t.borrow()
                        .as_ref()
                        .and_then(|t| t.leaf)
                        .filter(|&(_, lo, hi, gen)| {
                            lo <= captured_at && captured_at < hi && gen == generation()
                        })
                        .map(|(oid, _, _, gen)| (oid, gen))
                });
                let (leaf, gen) = match remembered {
                    // taking the lock processes the invalidations that arrived meanwhile
                    Some((oid, gen)) => (
                        raw::try_relation_open(oid, pg_sys::RowExclusiveLock as pg_sys::LOCKMODE),
                        gen,
                    ),
                    None => (ptr::null_mut(), 0),
                };
                (captured_at, txid, cid, leaf, gen)
            });
            if !leaf.is_null() && generation() != gen {
                // something changed while we waited for the lock: route again
                pg_sys::relation_close(leaf, pg_sys::NoLock as i32);
                leaf = ptr::null_mut();
            }
            // the generation under which the remembered partition was opened, if it was
            let remembered = (!leaf.is_null()).then_some(gen);
            let mut parent: pg_sys::Relation = ptr::null_mut();
            if leaf.is_null() {
                let (parent_oid, seq) = outbox_oids();
                parent = pg_sys::table_open(parent_oid, pg_sys::RowExclusiveLock as i32);
                let (leaf_oid, range) = route(parent, pg_sys::Datum::from(captured_at));
                leaf = pg_sys::table_open(leaf_oid, pg_sys::RowExclusiveLock as i32);
                check_layout(leaf);
                WATCHED.with(|w| {
                    w.set([
                        parent_oid,
                        seq,
                        if range.is_some() {
                            leaf_oid
                        } else {
                            pg_sys::InvalidOid
                        },
                    ])
                });
                let gen = generation();
                TARGET.with(|t| {
                    let mut t = t.borrow_mut();
                    let index_info = t.take().map(|t| t.index_info).unwrap_or_default();
                    *t = Some(Target {
                        seq,
                        leaf: range.map(|(lo, hi)| (leaf_oid, lo, hi, gen)),
                        index_info,
                        leaf_indexes: None,
                    });
                });
            }
            let seq = TARGET.with(|t| t.borrow().as_ref().map(|t| t.seq).unwrap_or_default());

            let indexes = Self::open_indexes(leaf, remembered);

            let (chunk_context, shared_context) = if CHUNK_CONTEXT_BUSY.with(|b| b.replace(true)) {
                // a capture nested in another one (a payload's cast ran user code that wrote to an
                // observed table): its own context, the outer one is still in use
                (Self::new_chunk_context(pg_sys::CurrentMemoryContext), false)
            } else {
                let mut ctx = CHUNK_CONTEXT.with(|c| c.get());
                if ctx.is_null() {
                    ctx = Self::new_chunk_context(pool_context());
                    CHUNK_CONTEXT.with(|c| c.set(ctx));
                } else {
                    // left over by a capture that failed (usually empty already); resetting a
                    // context we own frees memory and raises no error: no guard needed
                    raw::MemoryContextReset(ctx);
                }
                (ctx, true)
            };
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
                indexes,
                slots: Vec::new(),
                used: 0,
                cid,
                txid: pg_sys::Datum::from(txid.value),
                captured_at: pg_sys::Datum::from(captured_at),
                chunk_context,
                shared_context,
                owner_context: pg_sys::CurrentMemoryContext,
                written: 0,
            }
        }
    }

    unsafe fn new_chunk_context(parent: pg_sys::MemoryContext) -> pg_sys::MemoryContext {
        // SAFETY: creates a memory context under a live parent.
        unsafe {
            pg_sys::AllocSetContextCreateInternal(
                parent,
                c"pg_observers event chunk".as_ptr(),
                0,
                8 * 1024,
                8 * 1024 * 1024,
            )
        }
    }

    /// Open the partition's indexes: plain btrees directly, anything else through the executor.
    /// `remembered`: the generation under which `leaf`, the remembered partition, was opened.
    unsafe fn open_indexes(leaf: pg_sys::Relation, remembered: Option<u64>) -> Indexes {
        // SAFETY: `leaf` is open with RowExclusiveLock; its indexes are opened with the same lock
        // (as ExecOpenIndices does) and closed by `finish`.
        unsafe {
            let leaf_oid = (*leaf).rd_id;
            if let Some(gen) = remembered {
                // copied out of TARGET onto the stack: no borrow is held while opening
                let mut cached = [(pg_sys::InvalidOid, ptr::null_mut(), false); CACHED_INDEXES];
                let n = TARGET.with(|t| {
                    let t = t.borrow();
                    match t.as_ref().and_then(|t| t.leaf_indexes.as_ref()) {
                        Some((oid, g, list))
                            if *oid == leaf_oid && *g == gen && list.len() <= CACHED_INDEXES =>
                        {
                            cached[..list.len()].copy_from_slice(list);
                            Some(list.len())
                        }
                        _ => None,
                    }
                });
                if let Some(n) = n {
                    let mut entries = Vec::with_capacity(n);
                    let out = &mut entries;
                    raw::guarded(|| {
                        for &(oid, info, unique) in &cached[..n] {
                            let index =
                                raw::index_open(oid, pg_sys::RowExclusiveLock as pg_sys::LOCKMODE);
                            // capacity reserved: no allocation, nothing to drop in the region
                            out.push((index, info, unique));
                        }
                    });
                    return Indexes::Direct(entries);
                }
            }
            // one guarded region; `direct` lives outside it (nothing in the region needs dropping)
            let mut direct: Vec<pg_sys::Relation> = Vec::with_capacity(4);
            let out = &mut direct;
            let plain = raw::guarded(|| {
                let list = raw::RelationGetIndexList(leaf);
                let n = if list.is_null() {
                    0
                } else {
                    (*list).length as usize
                };
                let mut plain = true;
                for i in 0..n {
                    let oid = (*(*list).elements.add(i)).oid_value;
                    let index = raw::index_open(oid, pg_sys::RowExclusiveLock as pg_sys::LOCKMODE);
                    if !is_plain_btree(index) {
                        plain = false;
                    }
                    // capacity reserved above for the usual few indexes; a push that grows the
                    // vector allocates with Rust's allocator, which raises no PostgreSQL error
                    out.push(index);
                }
                if !list.is_null() {
                    raw::list_free(list);
                }
                plain
            });
            if plain {
                let entries: Vec<(pg_sys::Relation, *mut pg_sys::IndexInfo, bool)> =
                    TARGET.with(|t| {
                        let mut t = t.borrow_mut();
                        let t = t.as_mut().expect("target set by Writer::open");
                        let entries: Vec<_> = direct
                            .iter()
                            .map(|&index| {
                                let unique = (*(*index).rd_index).indisunique;
                                (index, index_info(t, index), unique)
                            })
                            .collect();
                        if let Some(gen) = remembered {
                            let list = entries
                                .iter()
                                .map(|&(index, info, unique)| ((*index).rd_id, info, unique))
                                .collect();
                            t.leaf_indexes = Some((leaf_oid, gen, list));
                        }
                        entries
                    });
                return Indexes::Direct(entries);
            }
            for index in direct {
                pg_sys::index_close(index, pg_sys::NoLock as i32);
            }
            let estate = pg_sys::CreateExecutorState();
            let rri = pg_sys::palloc0(std::mem::size_of::<pg_sys::ResultRelInfo>())
                as *mut pg_sys::ResultRelInfo;
            (*rri).type_ = pg_sys::NodeTag::T_ResultRelInfo;
            pg_sys::InitResultRelInfo(rri, leaf, 1, ptr::null_mut(), 0);
            pg_sys::ExecOpenIndices(rri, false);
            Indexes::Executor { estate, rri }
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
                let slot = if self.shared_context {
                    pool.slot(self.used)
                } else if self.used < self.slots.len() {
                    self.slots[self.used]
                } else {
                    // nested writer: a slot of its own, over the pool's row type
                    make_slot(pool.tupdesc, &pg_sys::TTSOpsVirtual, self.owner_context)
                };
                (slot, op)
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
                // the id: set in the guarded region below
                Some(pg_sys::Datum::from(0)),
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
            // the id is drawn at flush (`ids::assign`), for all the queued rows at once.
            // ExecStoreVirtualTuple only sets the slot's flags and nvalid: it cannot raise an
            // error, so it needs no guard (a guard costs ~100 instructions a row)
            raw::ExecStoreVirtualTuple(slot);
            self.used += 1;
            if self.used == CHUNK {
                self.flush();
            }
        }
    }

    unsafe fn flush(&mut self) {
        // SAFETY: as for `flush_and_close`.
        unsafe { self.flush_and_close(false) }
    }

    /// Write the queued rows; with `close`, then close the relations `open` opened (in the same
    /// guarded region: `finish`).
    unsafe fn flush_and_close(&mut self, close: bool) {
        // SAFETY: `self` was opened in this transaction and its slots hold `used` queued rows;
        // the heap insert runs in the chunk context, which is reset afterwards, and
        // CurrentMemoryContext is put back. The relations are closed at most once (`finish`).
        unsafe {
            let parent = self.parent;
            if self.used == 0 {
                if close {
                    let (indexes, leaf) = (&self.indexes, self.leaf);
                    raw::guarded(|| close_relations(indexes, leaf, parent));
                }
                return;
            }
            // one guarded region for the heap insert, the index entries and the cleanup: nothing
            // in it needs dropping (slices and references to what `self` owns)
            let used = self.used;
            let slots: &[*mut pg_sys::TupleTableSlot] = &self.slots[..used];
            let (leaf, cid, chunk_context, seq) =
                (self.leaf, self.cid, self.chunk_context, self.seq);
            let indexes = &self.indexes;
            // several rows: heap tuple slots for heap_multi_insert (taken before the guarded
            // region: no RefCell borrow inside it). Nothing that runs while they are in use can
            // capture (the heap insert runs no user code; the slots are cleared before the index
            // entries, where an index someone added could).
            let (heap_slots, template) = POOL.with(|p| {
                let mut p = p.borrow_mut();
                let pool = p.as_mut().expect("pool created by Writer::open");
                let heap_slots = if used > 1 {
                    pool.heap_slots(used)
                } else {
                    Vec::new()
                };
                (heap_slots, pool.template)
            });
            let template = template.as_ref();
            let verify = crate::gucs::VERIFY_TUPLES.get();
            let mut mismatch = None;
            let mismatch_ref = &mut mismatch;
            let heap_slots = &heap_slots[..];
            raw::guarded(|| {
                // the ids, in queue order, from the counter in shared memory: one take for
                // all of them (capture/ids.rs)
                super::ids::assign(seq, slots);
                // virtual slots: the heap tuples are formed in the current (chunk) context
                let old = pg_sys::CurrentMemoryContext;
                pg_sys::CurrentMemoryContext = chunk_context;
                if used == 1 {
                    // one row (the common 1-row statement): a plain insert, cheaper than a
                    // multi-insert of one (no arrays, a smaller WAL record); the tuple is formed
                    // straight from the slot's values (what heapam_tuple_insert does, without
                    // materializing the slot first). The outbox and its partitions are heap
                    // tables: the extension creates them.
                    let slot = slots[0];
                    let tuple = form_tuple(slot, template, verify, mismatch_ref);
                    (*tuple).t_tableOid = (*leaf).rd_id;
                    raw::heap_insert(leaf, tuple, cid, 0, ptr::null_mut());
                    (*slot).tts_tableOid = (*leaf).rd_id;
                    (*slot).tts_tid = (*tuple).t_self;
                } else {
                    for (&slot, &heap_slot) in slots.iter().zip(heap_slots) {
                        let tuple = form_tuple(slot, template, verify, mismatch_ref);
                        // should_free: the slot owns the tuple, so fetching it copies nothing
                        raw::ExecStoreHeapTuple(tuple, heap_slot, true);
                    }
                    pg_sys::heap_multi_insert(
                        leaf,
                        heap_slots.as_ptr().cast_mut(),
                        used as i32,
                        cid,
                        0,
                        ptr::null_mut(),
                    );
                    for (&slot, &heap_slot) in slots.iter().zip(heap_slots) {
                        (*slot).tts_tableOid = (*leaf).rd_id;
                        (*slot).tts_tid = (*heap_slot).tts_tid;
                        raw::exec_clear_tuple(heap_slot);
                    }
                }
                match indexes {
                    Indexes::Direct(indexes) => {
                        let mut values = [pg_sys::Datum::from(0); NATTS];
                        let mut isnull = [false; NATTS];
                        for &slot in slots {
                            for &(index, info, unique) in indexes {
                                let form = &*(*index).rd_index;
                                let keys = form.indkey.values.as_slice(form.indnatts as usize);
                                for (j, &k) in keys.iter().enumerate() {
                                    values[j] = *(*slot).tts_values.add(k as usize - 1);
                                    isnull[j] = *(*slot).tts_isnull.add(k as usize - 1);
                                }
                                raw::index_insert(
                                    index,
                                    values.as_mut_ptr(),
                                    isnull.as_mut_ptr(),
                                    &mut (*slot).tts_tid,
                                    leaf,
                                    if unique {
                                        pg_sys::IndexUniqueCheck::UNIQUE_CHECK_YES
                                    } else {
                                        pg_sys::IndexUniqueCheck::UNIQUE_CHECK_NO
                                    },
                                    false,
                                    info,
                                );
                            }
                        }
                    }
                    Indexes::Executor { estate, rri } => {
                        if (**rri).ri_NumIndices > 0 {
                            for &slot in slots {
                                pg_sys::ExecInsertIndexTuples(
                                    *rri,
                                    slot,
                                    *estate,
                                    false,
                                    false,
                                    ptr::null_mut(),
                                    ptr::null_mut(),
                                );
                                pg_sys::MemoryContextReset(
                                    (**estate)
                                        .es_per_tuple_exprcontext
                                        .as_ref()
                                        .map_or(ptr::null_mut(), |e| e.ecxt_per_tuple_memory),
                                );
                            }
                        }
                    }
                }
                pg_sys::CurrentMemoryContext = old;
                for &slot in slots {
                    raw::exec_clear_tuple(slot);
                }
                raw::MemoryContextReset(chunk_context);
                if close {
                    close_relations(indexes, leaf, parent);
                }
            });
            self.written += self.used as u64;
            self.used = 0;
            if let Some((ours, want, at)) = mismatch {
                raise(
                    PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
                    format!(
                        "pg_observers formed an outbox row that differs from heap_form_tuple's \
                         ({ours} bytes vs {want}, first difference at byte {at})"
                    ),
                    Some(
                        "observers.verify_tuples found a bug in capture/tuple.rs: report it; \
                          SET observers.verify_tuples = off does not fix it",
                    ),
                );
            }
        }
    }

    /// Write what is queued and release everything; returns the number of events written.
    ///
    /// # Safety
    /// Call once, in the transaction that opened the writer.
    pub unsafe fn finish(mut self) -> u64 {
        // SAFETY: called once, in the transaction that opened the writer (contract): each resource
        // opened by `open` is released exactly once; locks are kept until the transaction ends.
        unsafe {
            // the last rows and the closing share one guarded region
            self.flush_and_close(true);
            if self.shared_context {
                CHUNK_CONTEXT_BUSY.with(|b| b.set(false));
            } else {
                pg_sys::MemoryContextDelete(self.chunk_context);
            }
            self.written
        }
    }
}
