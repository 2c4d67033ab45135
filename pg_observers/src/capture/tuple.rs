//! The outbox row as a heap tuple, formed directly for observers.event's fixed layout.
//!
//! `heap_form_tuple` walks the descriptor twice (sizes, then values) through generic per-type
//! macros: about 1,240 CPU instructions for one outbox row, a tenth of what a row of a multi-row
//! capture costs (docs/BENCHMARKS.md, section 1b). The layout of observers.event is the
//! extension's own and is checked when a writer opens (`Layout::check`), so the tuple is written
//! here in one pass with every offset known but the varlenas' lengths: ~300 instructions.
//!
//! The result is byte for byte what `heap_form_tuple` makes from the same values (header, null
//! bitmap, alignment padding, short varlena headers). The fixed part of the header (type id,
//! typmod, t_ctid, the infomask bits that do not describe the data) is copied from a template
//! that `heap_form_tuple` itself formed for the same descriptor (`Template::new`), not written
//! from our reading of PostgreSQL's source: a server built with changes to the header (the one
//! on these machines writes a descriptor version there) gets its own header back. `observers.verify_tuples` (a superuser
//! setting, on in the test clusters) forms every outbox row both ways and raises an error on the
//! first difference, so the whole test suite checks that claim. Values the fast path does not
//! handle (a NULL where the capture never writes one, an external TOAST pointer) and a layout
//! that is not the expected one fall back to `heap_form_tuple`.

use super::raw;
use pgrx::pg_sys::{self, Datum};

// Varlena headers are read byte-wise below, as PostgreSQL's little-endian macros do.
const _: () = assert!(cfg!(target_endian = "little"));

/// Columns of observers.event: (type, attlen, attalign); the varlenas must also be packable
/// (storage other than PLAIN), as their types' defaults are.
const LAYOUT: [(pg_sys::Oid, i16, u8); 8] = [
    (pg_sys::INT8OID, 8, b'd'),        // id
    (pg_sys::INT4OID, 4, b'i'),        // observer_id
    (pg_sys::TEXTOID, -1, b'i'),       // op
    (pg_sys::XID8OID, 8, b'd'),        // txid
    (pg_sys::TIMESTAMPTZOID, 8, b'd'), // captured_at
    (pg_sys::JSONBOID, -1, b'i'),      // new
    (pg_sys::JSONBOID, -1, b'i'),      // old
    (pg_sys::TEXTARRAYOID, -1, b'i'),  // changed
];
const NATTS: usize = LAYOUT.len();

/// MAXALIGN(sizeof(HeapTupleData)): the tuple header struct, then the tuple itself.
const HEAPTUPLESIZE: usize = (std::mem::size_of::<pg_sys::HeapTupleData>() + 7) & !7;
/// offsetof(HeapTupleHeaderData, t_bits)
const T_BITS: usize = std::mem::offset_of!(pg_sys::HeapTupleHeaderData, t_bits);
/// The largest varlena a 1-byte header can describe (VARATT_SHORT_MAX).
const SHORT_MAX: usize = 0x7F;

#[inline(always)]
const fn align(off: usize, to: usize) -> usize {
    (off + to - 1) & !(to - 1)
}

/// How a varlena datum is stored in the tuple.
#[derive(Clone, Copy)]
enum Var {
    /// already has a 1-byte header: copied as is, unaligned
    Short(usize),
    /// 4-byte header, small enough to be stored with a 1-byte one (total stored size)
    MakeShort(usize),
    /// 4-byte header (large or compressed): copied as is at int alignment
    Long(usize),
}

/// The stored form of the varlena at `p`; None for an external TOAST pointer (fall back).
///
/// # Safety
/// `p` points to a varlena.
#[inline(always)]
unsafe fn varlena(p: *const u8) -> Option<Var> {
    // SAFETY: `p` points to a varlena (contract): its first byte, and for a 4-byte header its
    // first four, are readable.
    unsafe {
        let b = *p;
        if b & 0x01 == 0x01 {
            if b == 0x01 {
                return None; // VARATT_IS_1B_E: external
            }
            return Some(Var::Short((b >> 1) as usize)); // VARSIZE_1B
        }
        let size = ((p.cast::<u32>().read_unaligned() >> 2) & 0x3FFF_FFFF) as usize;
        // VARSIZE - VARHDRSZ + VARHDRSZ_SHORT <= VARATT_SHORT_MAX
        if b & 0x03 == 0x00 && size < SHORT_MAX + 4 {
            Some(Var::MakeShort(size - 3)) // VARATT_CAN_MAKE_SHORT, VARATT_CONVERTED_SHORT_SIZE
        } else {
            Some(Var::Long(size))
        }
    }
}

impl Var {
    /// Offset after storing this varlena at `off`.
    #[inline(always)]
    fn end(self, off: usize) -> usize {
        match self {
            Var::Short(n) | Var::MakeShort(n) => off + n,
            Var::Long(n) => align(off, 4) + n,
        }
    }

    /// Store the varlena `src` at `data + off`; returns the offset after it.
    ///
    /// # Safety
    /// `src` is the varlena this was computed from; `data` has room up to `self.end(off)`.
    #[inline(always)]
    unsafe fn store(self, data: *mut u8, off: usize, src: *const u8) -> usize {
        // SAFETY: sizes come from `src`'s header (contract); the destination has room.
        unsafe {
            match self {
                Var::Short(n) => {
                    std::ptr::copy_nonoverlapping(src, data.add(off), n);
                    off + n
                }
                Var::MakeShort(n) => {
                    *data.add(off) = ((n as u8) << 1) | 0x01; // SET_VARSIZE_SHORT
                    std::ptr::copy_nonoverlapping(src.add(4), data.add(off + 1), n - 1);
                    off + n
                }
                Var::Long(n) => {
                    let off = align(off, 4);
                    std::ptr::copy_nonoverlapping(src, data.add(off), n);
                    off + n
                }
            }
        }
    }
}

/// Whether a descriptor has exactly the layout `form` writes.
///
/// # Safety
/// `desc` is a live tuple descriptor.
pub unsafe fn layout_matches(desc: pg_sys::TupleDesc) -> bool {
    // SAFETY: `desc` is live (contract); only its `natts` attributes are read.
    unsafe {
        if (*desc).natts as usize != NATTS {
            return false;
        }
        let attrs = (*desc).attrs.as_ptr();
        LAYOUT.iter().enumerate().all(|(i, &(typid, len, al))| {
            let att = &*attrs.add(i);
            !att.attisdropped
                && att.atttypid == typid
                && att.attlen == len
                && att.attalign as u8 == al
                && (len > 0) == att.attbyval
                && (len > 0 || att.attstorage as u8 != b'p')
        })
    }
}

/// The fixed part of the outbox row's tuple header, as `heap_form_tuple` writes it for the
/// pool's descriptor: the first `T_BITS` bytes of a tuple it formed.
#[derive(Clone, Copy)]
pub struct Template {
    header: [u8; T_BITS],
}

impl Template {
    /// Form one outbox row with `heap_form_tuple` and keep its header.
    ///
    /// # Safety
    /// `desc` passed `layout_matches`; `text` is a text datum (e.g. 'INSERT'); a pgrx-guarded
    /// context (the palloc'd tuple is freed again).
    pub unsafe fn new(desc: pg_sys::TupleDesc, text: Datum) -> Template {
        // SAFETY: contract above; the values are valid for the layout (NULLs where nullable).
        unsafe {
            let zero = Datum::from(0);
            let values = [zero, zero, text, zero, zero, zero, zero, zero];
            let isnull = [false, false, false, false, false, true, true, true];
            let tuple = pg_sys::heap_form_tuple(
                desc,
                values.as_ptr().cast_mut(),
                isnull.as_ptr().cast_mut(),
            );
            let mut header = [0u8; T_BITS];
            std::ptr::copy_nonoverlapping(
                (*tuple).t_data.cast::<u8>(),
                header.as_mut_ptr(),
                T_BITS,
            );
            pg_sys::pfree(tuple.cast());
            Template { header }
        }
    }
}

/// The outbox row for `values`/`isnull` (NATTS of each), palloc'd in CurrentMemoryContext as
/// `heap_form_tuple(desc, values, isnull)` would make it, or None when the fast path does not
/// apply (the caller then calls `heap_form_tuple`).
///
/// # Safety
/// Inside a `raw::guarded` region; `template` was made for a descriptor that passed
/// `layout_matches`, the one the values are for; `values`/`isnull` hold NATTS
/// entries, the varlenas pointing to live data.
#[inline]
pub unsafe fn form(
    template: &Template,
    values: *const Datum,
    isnull: *const bool,
) -> Option<pg_sys::HeapTuple> {
    // SAFETY: contract above; every write stays inside the `HEAPTUPLESIZE + len` bytes allocated
    // (sizes computed first, from the same headers the copies read).
    unsafe {
        let isnull = std::slice::from_raw_parts(isnull, NATTS);
        if isnull[..5].iter().any(|&n| n) {
            return None;
        }
        let ptr = |i: usize| (*values.add(i)).cast_mut_ptr::<u8>() as *const u8;
        let op = varlena(ptr(2))?;
        let mut vars = [None::<Var>; 3];
        for (k, var) in vars.iter_mut().enumerate() {
            if !isnull[5 + k] {
                *var = Some(varlena(ptr(5 + k))?);
            }
        }
        let hasnull = vars.iter().any(Option::is_none);
        // header: t_bits holds one byte of null bitmap for 8 columns (BITMAPLEN)
        let hoff = align(T_BITS + usize::from(hasnull), 8);
        // data: id 0..8, observer_id 8..12, op, then txid and captured_at at 8-byte alignment
        let mut end = align(op.end(12), 8) + 16;
        for var in vars.iter().flatten() {
            end = var.end(end);
        }
        let len = hoff + end;

        let tuple = raw::palloc0(HEAPTUPLESIZE + len).cast::<pg_sys::HeapTupleData>();
        let td = tuple
            .cast::<u8>()
            .add(HEAPTUPLESIZE)
            .cast::<pg_sys::HeapTupleHeaderData>();
        (*tuple).t_len = len as u32;
        (*tuple).t_self = invalid_item_pointer();
        (*tuple).t_tableOid = pg_sys::InvalidOid;
        (*tuple).t_data = td;
        // the template's header, then what describes this row: length, nulls, header size
        std::ptr::copy_nonoverlapping(template.header.as_ptr(), td.cast::<u8>(), T_BITS);
        (*td).t_choice.t_datum.datum_len_ = (len as i32) << 2; // HeapTupleHeaderSetDatumLength
        (*td).t_hoff = hoff as u8;
        let data_bits =
            (pg_sys::HEAP_HASNULL | pg_sys::HEAP_HASVARWIDTH | pg_sys::HEAP_HASEXTERNAL) as u16;
        // op is never NULL: always a varlena
        let mut infomask = ((*td).t_infomask & !data_bits) | pg_sys::HEAP_HASVARWIDTH as u16;
        if hasnull {
            infomask |= pg_sys::HEAP_HASNULL as u16;
            let mut bits: u8 = 0b0001_1111;
            for (k, var) in vars.iter().enumerate() {
                if var.is_some() {
                    bits |= 1 << (5 + k);
                }
            }
            *td.cast::<u8>().add(T_BITS) = bits;
        }
        (*td).t_infomask = infomask;

        let data = td.cast::<u8>().add(hoff);
        data.cast::<i64>().write((*values).value() as i64);
        data.add(8)
            .cast::<i32>()
            .write((*values.add(1)).value() as i32);
        let off = align(op.store(data, 12, ptr(2)), 8);
        data.add(off)
            .cast::<i64>()
            .write((*values.add(3)).value() as i64);
        data.add(off + 8)
            .cast::<i64>()
            .write((*values.add(4)).value() as i64);
        let mut off = off + 16;
        for (k, var) in vars.iter().enumerate() {
            if let Some(var) = var {
                off = var.store(data, off, ptr(5 + k));
            }
        }
        debug_assert_eq!(off, end);
        Some(tuple)
    }
}

#[inline(always)]
fn invalid_item_pointer() -> pg_sys::ItemPointerData {
    pg_sys::ItemPointerData {
        ip_blkid: pg_sys::BlockIdData {
            bi_hi: 0xFFFF,
            bi_lo: 0xFFFF,
        },
        ip_posid: 0,
    }
}

/// `observers.verify_tuples`: compare `tuple` with what `heap_form_tuple` makes from the same
/// values; returns (our length, its length, first differing byte) on a difference, for the
/// caller to raise once outside its guarded region.
///
/// # Safety
/// Inside a `raw::guarded` region; as for `form`, and `tuple` is what `form` returned for them.
pub unsafe fn verify(
    desc: pg_sys::TupleDesc,
    values: *const Datum,
    isnull: *const bool,
    tuple: pg_sys::HeapTuple,
) -> Option<(usize, usize, usize)> {
    // SAFETY: contract above; both tuples are `t_len` bytes after their header struct.
    unsafe {
        let want = raw::heap_form_tuple(desc, values, isnull);
        let a = std::slice::from_raw_parts((*tuple).t_data.cast::<u8>(), (*tuple).t_len as usize);
        let b = std::slice::from_raw_parts((*want).t_data.cast::<u8>(), (*want).t_len as usize);
        let diff = (a != b).then(|| {
            let at = a.iter().zip(b).position(|(x, y)| x != y);
            let at = at.unwrap_or(a.len().min(b.len()));
            (a.len(), b.len(), at)
        });
        raw::pfree(want.cast());
        diff
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 4-byte-header varlena of `total` bytes (header included), as SET_VARSIZE writes it.
    fn long(total: usize) -> Vec<u8> {
        let mut v = vec![b'x'; total];
        v[..4].copy_from_slice(&((total as u32) << 2).to_le_bytes());
        v
    }

    fn stored(v: &[u8]) -> Option<(usize, &'static str)> {
        // SAFETY: `v` holds a whole varlena.
        unsafe { varlena(v.as_ptr()) }.map(|var| match var {
            Var::Short(n) => (n, "short"),
            Var::MakeShort(n) => (n, "make-short"),
            Var::Long(n) => (n, "long"),
        })
    }

    #[test]
    fn varlena_headers_are_classified_as_heap_fill_tuple_stores_them() {
        // VARATT_CAN_MAKE_SHORT: data + 1-byte header fits in 127 bytes
        assert_eq!(stored(&long(4)), Some((1, "make-short")));
        assert_eq!(stored(&long(130)), Some((127, "make-short")));
        assert_eq!(stored(&long(131)), Some((131, "long")));
        // compressed inline (VARATT_IS_4B_C): kept as it is, aligned
        let mut c = long(20);
        c[0] |= 0x02;
        assert_eq!(stored(&c), Some((20, "long")));
        // already short: 1-byte header (size << 1) | 1
        assert_eq!(
            stored(&[(7 << 1) | 1, b'I', b'N', b'S', b'E', b'R', b'T']),
            Some((7, "short"))
        );
        // external TOAST pointer (VARATT_IS_1B_E): not handled, heap_form_tuple is used
        assert_eq!(stored(&[0x01, 18, 0, 0]), None);
    }

    #[test]
    fn store_writes_a_converted_short_header_and_aligns_long_ones() {
        let src = long(10);
        let mut buf = [0u8; 64];
        // SAFETY: `buf` has room for both stores.
        unsafe {
            let end = Var::MakeShort(7).store(buf.as_mut_ptr(), 1, src.as_ptr());
            assert_eq!(end, 8);
            assert_eq!(buf[1], (7 << 1) | 1);
            assert_eq!(&buf[2..8], &src[4..10]);
            let big = long(140);
            assert_eq!(Var::Long(140).end(9), 12 + 140);
            let mut out = vec![0u8; 200];
            let end = Var::Long(140).store(out.as_mut_ptr(), 9, big.as_ptr());
            assert_eq!(end, 152);
            assert_eq!(&out[12..152], &big[..]);
            assert!(out[9..12].iter().all(|&b| b == 0));
        }
    }
}
