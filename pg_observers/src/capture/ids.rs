//! Event ids: `observers.event_id_seq`, handed out in blocks from a counter in shared memory.
//!
//! Ids must grow in the order they are drawn, across every backend of the database, and every
//! id must be drawn after its transaction got its xid: delivery's id floors rely on it
//! (`batch_open` in 20_worker_api.sql), and a later writer of a row gets a larger id than the
//! earlier one. `nextval` on a `CACHE 1` sequence does that, for ~3,100 CPU instructions per id
//! plus ~600 to release the sequence's lock at commit (a tenth of what a 1-row capture adds).
//!
//! The backends of a server share one counter per database instead, in shared memory, under one
//! LWLock: taking ids is a compare and an add. The counter hands out a block of ids that was
//! first reserved from the sequence (`nextval`, then `setval` to the block's last id, both
//! WAL-logged before any id of the block is used), so:
//! * the sequence is always at or above every id handed out, and a new block starts above it:
//!   after a restart or a crash (shared memory is empty again) ids continue above everything
//!   used before;
//! * ids stay ordered by the time they are drawn: one counter, one lock, and a block is reserved
//!   and installed under that lock;
//! * a WAL record of the block's reservation precedes every commit that uses one of its ids, so
//!   a replica or a crash recovery that has the commit has the reservation too.
//!
//! The counter a floor reads (`high`) is the last id handed out, read under the same lock; when
//! this database has no block in shared memory, the sequence's last value, read under the lock
//! as well so that no block can be reserved in between.
//!
//! The counter needs no `shared_preload_libraries`: the first backend that draws an id creates it
//! with `ShmemInitStruct`, under `AddinShmemInitLock`, in the few kilobytes of shared memory
//! PostgreSQL keeps spare for structures made after start-up (it is listed in
//! `pg_shmem_allocations` as "pg_observers event ids"), with an LWLock of a tranche it registers;
//! every other backend finds it there by name. Every backend of every server therefore draws from
//! the same counter, preloaded or not: a backend drawing with `nextval` while others draw from a
//! block would hand out ids above the block's later ones, so there is no such fallback. Preloading
//! the library only reserves the struct's space at start-up instead of taking it from the spare
//! (`shmem_request_hook`). If the spare is used up (it is shared with the lock table's growth),
//! creating the counter fails with "not enough shared memory for data structure" and the write
//! that needed an id fails with it, losing nothing; preloading avoids that (docs/OPERATIONS.md).
//!
//! Every writer of `observers.event` draws its ids here: the capture trigger, and the column's
//! default (`observers._event_id()`, used by the SPI path of conditions and by hand-written
//! inserts). `nextval('observers.event_id_seq')` called by hand returns an id above the current
//! block, which later ids of the block are below: don't (docs/OPERATIONS.md).

use super::raw;
use pgrx::pg_sys;
use pgrx::prelude::*;
use std::cell::Cell;
use std::ffi::c_int;
use std::ptr;

/// Ids reserved from the sequence at a time (a multi-row statement reserves more if it needs
/// them). At most this many ids are skipped when the server restarts.
const BLOCK: i64 = 1024;
/// Databases with a counter in shared memory at once; a database whose slot is taken over by
/// another one reserves a new block from its sequence at its next capture (always safe: the
/// sequence is above every id handed out).
const SLOTS: usize = 32;

#[repr(C)]
#[derive(Clone, Copy)]
struct Slot {
    db: pg_sys::Oid,
    seq: pg_sys::Oid,
    /// the next id to hand out
    next: i64,
    /// one past the block's last id
    end: i64,
    /// when the slot was last refilled (for taking over the least recently refilled one)
    stamp: u64,
}

#[repr(C)]
struct Shared {
    lock: pg_sys::LWLock,
    tranche: c_int,
    clock: u64,
    slots: [Slot; SLOTS],
}

/// The struct's name in PostgreSQL's shared memory index (and its LWLock tranche's name). A new
/// layout of `Shared` needs a new name: a server running an older build's backends beside a
/// newer one's would otherwise share a struct of the wrong size.
const NAME: &std::ffi::CStr = c"pg_observers event ids v2";

/// This backend's pointer to the shared struct, once attached (`attach`).
static mut SHARED: *mut Shared = ptr::null_mut();
static mut PREV_REQUEST_HOOK: pg_sys::shmem_request_hook_type = None;

thread_local! {
    /// the slot this backend found its counter in last time (checked under the lock)
    static SLOT_HINT: Cell<usize> = const { Cell::new(0) };
}

/// From `_PG_init`: when the library is being preloaded, reserve the struct's space at start-up
/// (it is created by the first backend that needs it either way, see `attach`).
pub fn init() {
    // SAFETY: _PG_init runs in the postmaster (preloading) or in a backend, single-threaded; the
    // hook is chained as PostgreSQL documents.
    unsafe {
        if !pg_sys::process_shared_preload_libraries_in_progress {
            return;
        }
        PREV_REQUEST_HOOK = pg_sys::shmem_request_hook;
        pg_sys::shmem_request_hook = Some(shmem_request);
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn shmem_request() {
    // SAFETY: called by the postmaster in shmem_request_hook, where this request is allowed.
    unsafe {
        if let Some(prev) = PREV_REQUEST_HOOK {
            prev();
        }
        pg_sys::RequestAddinShmemSpace(std::mem::size_of::<Shared>());
    }
}

/// The shared struct: found by name, or created and initialized by the first backend that asks.
///
/// # Safety
/// Inside a `raw::guarded` region: an error (no shared memory left) aborts the transaction,
/// which releases `AddinShmemInitLock`.
unsafe fn attach() -> *mut Shared {
    // SAFETY: SHARED is this backend's own (single-threaded); ShmemInitStruct is called under
    // AddinShmemInitLock as PostgreSQL's extensions do, so exactly one backend initializes the
    // struct and every other one sees it initialized; the main shared memory segment is mapped
    // at the same address in every backend, so the pointer stays valid for the backend's life
    // (a crash restart ends every backend).
    unsafe {
        if !SHARED.is_null() {
            return SHARED;
        }
        // AddinShmemInitLock is MainLWLockArray[21] (storage/lwlocknames.h)
        let init_lock = &raw mut (*pg_sys::MainLWLockArray.add(21)).lock;
        raw::LWLockAcquire(init_lock, pg_sys::LWLockMode::LW_EXCLUSIVE);
        let mut found = false;
        let shared = raw::ShmemInitStruct(NAME.as_ptr(), std::mem::size_of::<Shared>(), &mut found)
            .cast::<Shared>();
        if !found {
            let tranche = raw::LWLockNewTrancheId();
            (&raw mut (*shared).tranche).write(tranche);
            (&raw mut (*shared).clock).write(0);
            (&raw mut (*shared).slots).write(
                [Slot {
                    db: pg_sys::InvalidOid,
                    seq: pg_sys::InvalidOid,
                    next: 0,
                    end: 0,
                    stamp: 0,
                }; SLOTS],
            );
            raw::LWLockInitialize(&raw mut (*shared).lock, tranche);
        }
        raw::LWLockRelease(init_lock);
        // names the lock's wait event in pg_stat_activity (backend-local)
        raw::LWLockRegisterTranche((*shared).tranche, NAME.as_ptr());
        SHARED = shared;
        shared
    }
}

/// This database's slot for sequence `seq`, if any. Under the lock.
unsafe fn find(shared: *mut Shared, seq: pg_sys::Oid) -> Option<usize> {
    // SAFETY: `shared` is the shared struct and the caller holds its lock.
    unsafe {
        let db = pg_sys::MyDatabaseId;
        let hint = SLOT_HINT.with(|h| h.get());
        let slots = &(*shared).slots;
        if slots[hint].db == db && slots[hint].seq == seq {
            return Some(hint);
        }
        let found = slots.iter().position(|s| s.db == db && s.seq == seq);
        if let Some(i) = found {
            SLOT_HINT.with(|h| h.set(i));
        }
        found
    }
}

/// Take `n` ids from this database's block, if it has that many left. Under the lock.
unsafe fn take_from_block(shared: *mut Shared, seq: pg_sys::Oid, n: i64) -> Option<i64> {
    // SAFETY: `shared` is the shared struct and the caller holds its lock.
    unsafe {
        let i = find(shared, seq)?;
        let slot = &mut (*shared).slots[i];
        if slot.end - slot.next < n {
            return None;
        }
        let first = slot.next;
        slot.next += n;
        Some(first)
    }
}

/// The first of `n` consecutive new ids of sequence `seq`.
///
/// # Safety
/// Inside a transaction, in a `raw::guarded` region (or under pgrx's guard): an error aborts the
/// transaction, which releases the lock.
unsafe fn take_shared(seq: pg_sys::Oid, n: i64) -> i64 {
    // SAFETY: `attach` gives the shared struct; the lock is held only around reads and writes of
    // it, and around the reservation (see below); an error releases it (LWLockReleaseAll at
    // abort).
    unsafe {
        let shared = attach();
        let lock = &raw mut (*shared).lock;
        raw::LWLockAcquire(lock, pg_sys::LWLockMode::LW_EXCLUSIVE);
        let taken = take_from_block(shared, seq, n);
        raw::LWLockRelease(lock);
        if let Some(first) = taken {
            return first;
        }
        // Reserve a new block. The sequence's lock first, as nextval takes it: holding our
        // LWLock, we must never wait for a heavyweight lock.
        raw::LockRelationOid(seq, pg_sys::RowExclusiveLock as pg_sys::LOCKMODE);
        raw::LWLockAcquire(lock, pg_sys::LWLockMode::LW_EXCLUSIVE);
        if let Some(first) = take_from_block(shared, seq, n) {
            // another backend reserved one meanwhile
            raw::LWLockRelease(lock);
            return first;
        }
        let size = n.max(BLOCK);
        let first = raw::nextval_internal(seq, false);
        set_sequence(seq, first + size - 1);
        let i = find(shared, seq).unwrap_or_else(|| {
            // a free slot, else the one refilled longest ago
            let slots = &(*shared).slots;
            let i = slots
                .iter()
                .position(|s| s.db == pg_sys::InvalidOid)
                .unwrap_or_else(|| (0..SLOTS).min_by_key(|&i| slots[i].stamp).unwrap_or(0));
            SLOT_HINT.with(|h| h.set(i));
            i
        });
        (*shared).clock += 1;
        (*shared).slots[i] = Slot {
            db: pg_sys::MyDatabaseId,
            seq,
            next: first + n,
            end: first + size,
            stamp: (*shared).clock,
        };
        raw::LWLockRelease(lock);
        first
    }
}

/// `setval(seq, value)`, as the bootstrap superuser: the capture role may call `nextval` on the
/// sequence but not `setval` (a condition, which runs as that role, must never move it back).
unsafe fn set_sequence(seq: pg_sys::Oid, value: i64) {
    // SAFETY: inside a transaction (callers); the user is switched for the call only and put back
    // (an error aborts the (sub)transaction, which restores it as well).
    unsafe {
        let (mut user, mut context) = (pg_sys::InvalidOid, 0);
        raw::GetUserIdAndSecContext(&mut user, &mut context);
        raw::SetUserIdAndSecContext(
            pg_sys::Oid::from(pg_sys::BOOTSTRAP_SUPERUSERID),
            context | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32,
        );
        pgrx::direct_function_call::<i64>(
            pg_sys::setval_oid,
            &[seq.into_datum(), value.into_datum()],
        );
        raw::SetUserIdAndSecContext(user, context);
    }
}

/// Give each of the `n` slots' first column (`values[i][0]`) a new id, in order.
///
/// # Safety
/// Inside a transaction whose xid is assigned, in a `raw::guarded` region; `slots` hold `n`
/// virtual rows whose first column is the id.
pub unsafe fn assign(seq: pg_sys::Oid, slots: &[*mut pg_sys::TupleTableSlot]) {
    // SAFETY: as the contract says; each slot's values array has the id at index 0.
    unsafe {
        let first = take_shared(seq, slots.len() as i64);
        for (i, &slot) in slots.iter().enumerate() {
            *(*slot).tts_values = pg_sys::Datum::from(first + i as i64);
        }
    }
}

/// One new id (the column default `observers._event_id()`).
///
/// # Safety
/// Inside a transaction.
pub unsafe fn next(seq: pg_sys::Oid) -> i64 {
    // SAFETY: inside a transaction (contract); the raw calls are under one guard.
    unsafe { raw::guarded(|| take_shared(seq, 1)) }
}

/// The last id handed out so far (0 if none): every id drawn after this returns is greater.
///
/// # Safety
/// Inside a transaction.
pub unsafe fn high(seq: pg_sys::Oid) -> i64 {
    let last_value = || {
        // SAFETY: a pgrx-guarded call of a built-in function (NULL before the first nextval).
        unsafe {
            pgrx::direct_function_call::<i64>(pg_sys::pg_sequence_last_value, &[seq.into_datum()])
                .unwrap_or(0)
        }
    };
    // SAFETY: `attach` (under its own guard) gives the shared struct; the sequence's lock is
    // taken before ours (see take_shared); an error releases the LWLock (LWLockReleaseAll at
    // abort).
    unsafe {
        let shared = raw::guarded(|| attach());
        pg_sys::LockRelationOid(seq, pg_sys::RowExclusiveLock as pg_sys::LOCKMODE);
        let lock = &raw mut (*shared).lock;
        pg_sys::LWLockAcquire(lock, pg_sys::LWLockMode::LW_EXCLUSIVE);
        let value = match find(shared, seq) {
            Some(i) => (*shared).slots[i].next - 1,
            None => last_value(),
        };
        pg_sys::LWLockRelease(lock);
        value
    }
}
