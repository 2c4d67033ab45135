//! Which columns an UPDATE changed.
//!
//! A column is *changed* when its value's text representation changed (NULL counts as a value).
//! Binary-identical values are unchanged without calling anything, which is the common case
//! for columns an UPDATE did not touch (they keep the very same datum, TOAST pointer included).
//! Only binary-different values are compared through the type's output function, so that e.g.
//! a compressed and an uncompressed copy of the same text are not reported as a change.
//!
//! `create_observer` builds the trigger's WHEN clause for `columns` with the same rule
//! (`IS DISTINCT FROM` for types whose equality is identity, `::text IS DISTINCT FROM`
//! otherwise), so an event that passed the filter always names a filtered column in `changed`.

use super::raw;
use pgrx::pg_sys;
use std::ffi::{c_char, CStr};

/// How two binary-different values of a column are compared.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Compare {
    /// types whose binary form is canonical (integers, bool, oid, date/time types, uuid):
    /// different bytes are a different text, no output function needed
    Binary,
    /// text, varchar, bpchar: the output is the stored string, so compare the (detoasted)
    /// strings (a compressed and a plain copy of one string differ in bytes only)
    Text,
    /// numeric: PostgreSQL stores numerics normalized (no leading or trailing zero digits), and
    /// the short format whenever the value fits it (NaN and infinities have a form of their
    /// own), so two values in those formats print the same exactly when their (detoasted) bytes
    /// are the same. A value in the long format (a scale or weight too large for the short one,
    /// or written by PostgreSQL < 9.1) goes through the output function.
    Numeric,
    /// everything else: the type's output function
    Output,
}

/// What capture needs to know about one (non-dropped) column of the observed table.
pub struct Column {
    index: usize,
    /// the column name as a `text` datum (4-byte varlena header, then the bytes), built once;
    /// words, so that the header is aligned as PostgreSQL expects
    name_text: Vec<u32>,
    typlen: i16,
    typbyval: bool,
    typoutput: pg_sys::Oid,
    compare: Compare,
}

/// The columns of `tupdesc`, in table order, without dropped ones.
///
/// # Safety
/// `tupdesc` must be a valid tuple descriptor.
pub unsafe fn columns_of(tupdesc: pg_sys::TupleDesc) -> Vec<Column> {
    // SAFETY: `tupdesc` is valid (this function's contract): its `natts` attributes are readable.
    unsafe {
        let natts = (*tupdesc).natts as usize;
        let attrs = (*tupdesc).attrs.as_ptr();
        let mut out = Vec::with_capacity(natts);
        for index in 0..natts {
            let att = &*attrs.add(index);
            if att.attisdropped {
                continue;
            }
            let mut typoutput = pg_sys::InvalidOid;
            let mut is_varlena = false;
            pg_sys::getTypeOutputInfo(att.atttypid, &mut typoutput, &mut is_varlena);
            let name = CStr::from_ptr(att.attname.data.as_ptr()).to_bytes();
            let mut name_text = vec![0u32; 1 + name.len().div_ceil(4)];
            name_text[0] = ((4 + name.len()) as u32) << 2;
            std::ptr::copy_nonoverlapping(
                name.as_ptr(),
                name_text.as_mut_ptr().add(1).cast::<u8>(),
                name.len(),
            );
            let compare = match pg_sys::getBaseType(att.atttypid) {
                pg_sys::BOOLOID
                | pg_sys::INT2OID
                | pg_sys::INT4OID
                | pg_sys::INT8OID
                | pg_sys::OIDOID
                | pg_sys::DATEOID
                | pg_sys::TIMEOID
                | pg_sys::TIMESTAMPOID
                | pg_sys::TIMESTAMPTZOID
                | pg_sys::UUIDOID => Compare::Binary,
                pg_sys::TEXTOID | pg_sys::VARCHAROID | pg_sys::BPCHAROID => Compare::Text,
                pg_sys::NUMERICOID => Compare::Numeric,
                _ => Compare::Output,
            };
            out.push(Column {
                index,
                name_text,
                typlen: att.attlen,
                typbyval: att.attbyval,
                typoutput,
                compare,
            });
        }
        out
    }
}

/// Same bytes (the test `datumIsEqual` does): identical datums are certainly equal values.
///
/// # Safety
/// `a` and `b` are non-null datums of one type described by `typlen`/`typbyval`.
unsafe fn binary_equal(a: pg_sys::Datum, b: pg_sys::Datum, typlen: i16, typbyval: bool) -> bool {
    // SAFETY: by-reference datums point at live values of their type (contract): `typlen` bytes, a
    // varlena whose header gives its size, or a NUL-terminated C string; nothing beyond them is
    // read.
    unsafe {
        if typbyval {
            return a == b;
        }
        let pa = a.cast_mut_ptr::<u8>();
        let pb = b.cast_mut_ptr::<u8>();
        let len = match typlen {
            l if l > 0 => l as usize,
            -1 => {
                let la = pgrx::varlena::varsize_any(pa as *const pg_sys::varlena);
                let lb = pgrx::varlena::varsize_any(pb as *const pg_sys::varlena);
                if la != lb {
                    return false;
                }
                la
            }
            _ => {
                // cstring (-2)
                return CStr::from_ptr(pa as *const c_char) == CStr::from_ptr(pb as *const c_char);
            }
        };
        std::slice::from_raw_parts(pa, len) == std::slice::from_raw_parts(pb, len)
    }
}

/// Same text output (the fallback of `changed_columns`), for two binary-different values.
///
/// # Safety
/// `a` and `b` are non-null datums of `column`'s type; inside a `raw::guarded` region.
unsafe fn text_equal(a: pg_sys::Datum, b: pg_sys::Datum, column: &Column) -> bool {
    // SAFETY: the datums are valid values of the column's type (contract): text types are
    // detoasted (into the current memory context) and their strings compared; otherwise the two
    // palloc'd C strings of the output function are compared before they are freed, once.
    unsafe {
        match column.compare {
            Compare::Binary => false,
            Compare::Text => {
                let va = raw::pg_detoast_datum_packed(a.cast_mut_ptr());
                let vb = raw::pg_detoast_datum_packed(b.cast_mut_ptr());
                content(va) == content(vb)
            }
            Compare::Numeric => {
                let va = raw::pg_detoast_datum_packed(a.cast_mut_ptr());
                let vb = raw::pg_detoast_datum_packed(b.cast_mut_ptr());
                let (ca, cb) = (content(va), content(vb));
                if ca == cb {
                    return true;
                }
                if numeric_is_compact(ca) && numeric_is_compact(cb) {
                    return false;
                }
                output_equal(a, b, column)
            }
            Compare::Output => output_equal(a, b, column),
        }
    }
}

/// The bytes of a detoasted varlena, without its header.
///
/// # Safety
/// `v` is a detoasted (possibly short-header) varlena that outlives the slice.
unsafe fn content<'a>(v: *mut pg_sys::varlena) -> &'a [u8] {
    // SAFETY: `v` is a detoasted varlena (contract): its header gives the length of its data.
    unsafe {
        std::slice::from_raw_parts(
            pgrx::varlena::vardata_any(v) as *const u8,
            pgrx::varlena::varsize_any_exhdr(v),
        )
    }
}

/// Is this numeric (its bytes after the varlena header) in the short format, or NaN or an
/// infinity? `NUMERIC_SHORT` is 0x8000 and `NUMERIC_SPECIAL` 0xC000 in the top bits of the first
/// 16-bit word; the long format has 0x0000 (positive) or 0x4000 (negative) there.
fn numeric_is_compact(bytes: &[u8]) -> bool {
    bytes.len() >= 2 && u16::from_ne_bytes([bytes[0], bytes[1]]) & 0x8000 != 0
}

/// Same text output, through the type's output function.
///
/// # Safety
/// As `text_equal`.
unsafe fn output_equal(a: pg_sys::Datum, b: pg_sys::Datum, column: &Column) -> bool {
    // SAFETY: the datums are valid values of the column's type (contract): the two palloc'd C
    // strings of the output function are compared before they are freed, once.
    unsafe {
        let sa = raw::OidOutputFunctionCall(column.typoutput, a);
        let sb = raw::OidOutputFunctionCall(column.typoutput, b);
        let equal = CStr::from_ptr(sa) == CStr::from_ptr(sb);
        raw::pfree(sa.cast());
        raw::pfree(sb.cast());
        equal
    }
}

/// `text[]` of the names of the columns whose value differs between `old` and `new`
/// (an empty array when nothing changed), allocated in the current memory context.
///
/// # Safety
/// Both slots must hold tuples of the descriptor `columns` was built from.
pub unsafe fn changed_columns(
    columns: &[Column],
    old: *mut pg_sys::TupleTableSlot,
    new: *mut pg_sys::TupleTableSlot,
) -> pg_sys::Datum {
    // SAFETY: both slots hold tuples of the descriptor `columns` was built from (contract): after
    // slot_getallattrs every `c.index` is inside `tts_values`/`tts_isnull`. One guarded region:
    // `names` lives outside it, and the region creates nothing that needs dropping (pushes
    // into `names` allocate with Rust's allocator, which raises no PostgreSQL error).
    unsafe {
        let mut names: Vec<pg_sys::Datum> = Vec::with_capacity(columns.len());
        let out = &mut names;
        raw::guarded(|| {
            raw::slot_getallattrs(old);
            raw::slot_getallattrs(new);
            let (ov, on) = ((*old).tts_values, (*old).tts_isnull);
            let (nv, nn) = ((*new).tts_values, (*new).tts_isnull);
            for c in columns {
                let i = c.index;
                let differs = match (*on.add(i), *nn.add(i)) {
                    (true, true) => false,
                    (true, false) | (false, true) => true,
                    (false, false) => {
                        let (a, b) = (*ov.add(i), *nv.add(i));
                        !binary_equal(a, b, c.typlen, c.typbyval) && !text_equal(a, b, c)
                    }
                };
                if differs {
                    // construct_array copies the names into the array
                    out.push(pg_sys::Datum::from(c.name_text.as_ptr()));
                }
            }
            let array = raw::construct_array(
                out.as_mut_ptr(),
                out.len() as i32,
                pg_sys::TEXTOID,
                -1,
                false,
                pg_sys::TYPALIGN_INT as c_char,
            );
            pg_sys::Datum::from(array)
        })
    }
}
