//! PostgreSQL functions of the capture hot path, declared without pgrx's per-call guard.
//!
//! pgrx wraps every `pg_sys` function in its own `sigsetjmp` guard (turning a PostgreSQL error
//! into a Rust panic at that call): about 170 instructions a call, and a 1-row capture made
//! some 20 such calls (~3.5k instructions, a tenth of what capture adds). The hot path instead
//! calls these raw declarations inside one guard per step (`guarded`), e.g. "insert the heap
//! tuple and its index entries, clear the slots, reset the chunk memory".
//!
//! The rule that keeps this sound: an error raised inside a `guarded` region longjmps to that
//! region's guard, skipping the Rust frames in between, so **nothing in those frames may need
//! dropping** — no `Vec`, `String`, `Rc`, or `RefCell` borrow is created inside a region (they
//! are created outside and passed in by reference, or are plain data). The guard then turns the
//! error into a panic, which unwinds normally from there.

use pgrx::pg_sys::{self, Datum};
use std::ffi::{c_char, c_int, c_void};

unsafe extern "C-unwind" {
    pub fn GetCurrentTimestamp() -> pg_sys::TimestampTz;
    pub fn GetTopFullTransactionId() -> pg_sys::FullTransactionId;
    pub fn GetCurrentCommandId(used: bool) -> pg_sys::CommandId;
    pub fn try_relation_open(
        relation_id: pg_sys::Oid,
        lockmode: pg_sys::LOCKMODE,
    ) -> pg_sys::Relation;
    pub fn relation_close(relation: pg_sys::Relation, lockmode: pg_sys::LOCKMODE);
    pub fn RelationGetIndexList(relation: pg_sys::Relation) -> *mut pg_sys::List;
    pub fn list_free(list: *mut pg_sys::List);
    pub fn index_open(relation_id: pg_sys::Oid, lockmode: pg_sys::LOCKMODE) -> pg_sys::Relation;
    pub fn index_close(relation: pg_sys::Relation, lockmode: pg_sys::LOCKMODE);
    pub fn heap_attisnull(tup: pg_sys::HeapTuple, attnum: c_int, desc: pg_sys::TupleDesc) -> bool;
    pub fn index_insert(
        index: pg_sys::Relation,
        values: *mut Datum,
        isnull: *mut bool,
        heap_tid: pg_sys::ItemPointer,
        heap: pg_sys::Relation,
        check_unique: pg_sys::IndexUniqueCheck::Type,
        index_unchanged: bool,
        info: *mut pg_sys::IndexInfo,
    ) -> bool;
    pub fn MemoryContextReset(context: pg_sys::MemoryContext);
    pub fn ExecStoreVirtualTuple(slot: *mut pg_sys::TupleTableSlot) -> *mut pg_sys::TupleTableSlot;
    pub fn ExecStoreHeapTuple(
        tuple: pg_sys::HeapTuple,
        slot: *mut pg_sys::TupleTableSlot,
        should_free: bool,
    ) -> *mut pg_sys::TupleTableSlot;
    pub fn slot_getsomeattrs_int(slot: *mut pg_sys::TupleTableSlot, attnum: c_int);
    pub fn palloc(size: pg_sys::Size) -> *mut c_void;
    pub fn palloc0(size: pg_sys::Size) -> *mut c_void;
    pub fn pfree(pointer: *mut c_void);
    pub fn JsonbValueToJsonb(val: *mut pg_sys::JsonbValue) -> *mut pg_sys::Jsonb;
    pub fn pg_detoast_datum(datum: *mut pg_sys::varlena) -> *mut pg_sys::varlena;
    pub fn pg_detoast_datum_packed(datum: *mut pg_sys::varlena) -> *mut pg_sys::varlena;
    pub fn numeric_is_nan(num: pg_sys::Numeric) -> bool;
    pub fn numeric_is_inf(num: pg_sys::Numeric) -> bool;
    pub fn JsonEncodeDateTime(
        buf: *mut c_char,
        value: Datum,
        typid: pg_sys::Oid,
        tzp: *const c_int,
    ) -> *mut c_char;
    pub fn OidOutputFunctionCall(function_id: pg_sys::Oid, val: Datum) -> *mut c_char;
    pub fn InputFunctionCall(
        flinfo: *mut pg_sys::FmgrInfo,
        str_: *mut c_char,
        typioparam: pg_sys::Oid,
        typmod: i32,
    ) -> Datum;
    pub fn FunctionCall1Coll(
        flinfo: *mut pg_sys::FmgrInfo,
        collation: pg_sys::Oid,
        arg1: Datum,
    ) -> Datum;
    pub fn tuplestore_gettupleslot(
        state: *mut pg_sys::Tuplestorestate,
        forward: bool,
        copy: bool,
        slot: *mut pg_sys::TupleTableSlot,
    ) -> bool;
    pub fn NewGUCNestLevel() -> c_int;
    pub fn GetUserIdAndSecContext(userid: *mut pg_sys::Oid, sec_context: *mut c_int);
    pub fn SetUserIdAndSecContext(userid: pg_sys::Oid, sec_context: c_int);
    pub fn MakeSingleTupleTableSlot(
        desc: pg_sys::TupleDesc,
        ops: *const pg_sys::TupleTableSlotOps,
    ) -> *mut pg_sys::TupleTableSlot;
    pub fn ExecDropSingleTupleTableSlot(slot: *mut pg_sys::TupleTableSlot);
    pub fn tuplestore_alloc_read_pointer(
        state: *mut pg_sys::Tuplestorestate,
        eflags: c_int,
    ) -> c_int;
    pub fn tuplestore_select_read_pointer(state: *mut pg_sys::Tuplestorestate, ptr: c_int);
    pub fn tuplestore_rescan(state: *mut pg_sys::Tuplestorestate);
    pub fn tuplestore_tuple_count(state: *mut pg_sys::Tuplestorestate) -> i64;
    pub fn heap_form_tuple(
        desc: pg_sys::TupleDesc,
        values: *const Datum,
        isnull: *const bool,
    ) -> pg_sys::HeapTuple;
    pub fn heap_insert(
        relation: pg_sys::Relation,
        tup: pg_sys::HeapTuple,
        cid: pg_sys::CommandId,
        options: c_int,
        bistate: pg_sys::BulkInsertState,
    );
    pub fn nextval_internal(relid: pg_sys::Oid, check_permissions: bool) -> i64;
    pub fn LWLockAcquire(lock: *mut pg_sys::LWLock, mode: pg_sys::LWLockMode::Type) -> bool;
    pub fn LWLockRelease(lock: *mut pg_sys::LWLock);
    pub fn LockRelationOid(relid: pg_sys::Oid, lockmode: pg_sys::LOCKMODE);
    pub fn ShmemInitStruct(
        name: *const c_char,
        size: pg_sys::Size,
        found: *mut bool,
    ) -> *mut c_void;
    pub fn LWLockNewTrancheId() -> c_int;
    pub fn LWLockInitialize(lock: *mut pg_sys::LWLock, tranche_id: c_int);
    pub fn LWLockRegisterTranche(tranche_id: c_int, tranche_name: *const c_char);
    pub fn construct_array(
        elems: *mut Datum,
        nelems: c_int,
        elmtype: pg_sys::Oid,
        elmlen: c_int,
        elmbyval: bool,
        elmalign: c_char,
    ) -> *mut pg_sys::ArrayType;
}

/// Run `f` (which calls the raw functions above) under one PostgreSQL error guard.
///
/// # Safety
/// Main thread only; `f` creates nothing that needs dropping (module documentation).
#[inline(always)]
pub unsafe fn guarded<T>(f: impl FnOnce() -> T) -> T {
    // SAFETY: the backend's main thread (contract); an error inside `f` lands in this guard and
    // is turned into a Rust panic here.
    unsafe { pg_sys::ffi::pg_guard_ffi_boundary(f) }
}

/// `slot_getallattrs`, unguarded: deform every attribute of the slot.
///
/// # Safety
/// Inside a `guarded` region; `slot` is a live slot.
#[inline(always)]
pub unsafe fn slot_getallattrs(slot: *mut pg_sys::TupleTableSlot) {
    // SAFETY: `slot` is live (contract); the descriptor's `natts` is read in place.
    unsafe {
        let natts = (*(*slot).tts_tupleDescriptor).natts;
        if ((*slot).tts_nvalid as c_int) < natts {
            slot_getsomeattrs_int(slot, natts);
        }
    }
}

/// `ExecClearTuple`, unguarded (the slot's own `clear` callback).
///
/// # Safety
/// Inside a `guarded` region; `slot` is a live slot.
#[inline(always)]
pub unsafe fn exec_clear_tuple(slot: *mut pg_sys::TupleTableSlot) {
    // SAFETY: `slot` is live (contract); its ops table is PostgreSQL's.
    unsafe {
        if let Some(clear) = (*(*slot).tts_ops).clear {
            clear(slot);
        }
    }
}
