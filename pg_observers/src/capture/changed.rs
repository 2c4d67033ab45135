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

use pgrx::pg_sys;
use std::ffi::{c_char, CStr, CString};

/// What capture needs to know about one (non-dropped) column of the observed table.
pub struct Column {
    index: usize,
    name: CString,
    typlen: i16,
    typbyval: bool,
    typoutput: pg_sys::Oid,
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
            out.push(Column {
                index,
                name: CStr::from_ptr(att.attname.data.as_ptr()).to_owned(),
                typlen: att.attlen,
                typbyval: att.attbyval,
                typoutput,
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

/// Same text output (the fallback of `changed_columns`).
///
/// # Safety
/// `a` and `b` are non-null datums of the type whose output function is `typoutput`.
unsafe fn text_equal(a: pg_sys::Datum, b: pg_sys::Datum, typoutput: pg_sys::Oid) -> bool {
    // SAFETY: the datums are valid values of the type `typoutput` prints (contract); the two
    // palloc'd C strings are compared before they are freed, and freed once.
    unsafe {
        let sa = pg_sys::OidOutputFunctionCall(typoutput, a);
        let sb = pg_sys::OidOutputFunctionCall(typoutput, b);
        let equal = CStr::from_ptr(sa) == CStr::from_ptr(sb);
        pg_sys::pfree(sa.cast());
        pg_sys::pfree(sb.cast());
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
    // slot_getallattrs every `c.index` is inside `tts_values`/`tts_isnull`.
    unsafe {
        pg_sys::slot_getallattrs(old);
        pg_sys::slot_getallattrs(new);
        let (ov, on) = ((*old).tts_values, (*old).tts_isnull);
        let (nv, nn) = ((*new).tts_values, (*new).tts_isnull);
        let mut names: Vec<pg_sys::Datum> = Vec::new();
        for c in columns {
            let i = c.index;
            let differs = match (*on.add(i), *nn.add(i)) {
                (true, true) => false,
                (true, false) | (false, true) => true,
                (false, false) => {
                    let (a, b) = (*ov.add(i), *nv.add(i));
                    !binary_equal(a, b, c.typlen, c.typbyval) && !text_equal(a, b, c.typoutput)
                }
            };
            if differs {
                let bytes = c.name.as_bytes();
                let text =
                    pg_sys::cstring_to_text_with_len(bytes.as_ptr().cast(), bytes.len() as i32);
                names.push(pg_sys::Datum::from(text));
            }
        }
        let array = pg_sys::construct_array(
            names.as_mut_ptr(),
            names.len() as i32,
            pg_sys::TEXTOID,
            -1,
            false,
            pg_sys::TYPALIGN_INT as c_char,
        );
        pg_sys::Datum::from(array)
    }
}
