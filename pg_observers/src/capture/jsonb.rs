//! `to_jsonb(row)` for the rows of one table, without the per-row catalog work.
//!
//! `to_jsonb(record)` looks up the row type and categorizes every column's type (syscache
//! look-ups) for every row, and turns integers into JSON numbers through their text form. This
//! builder decides once per table shape how each column is converted, then only converts
//! values. It mirrors PostgreSQL 15's `composite_to_jsonb` / `datum_to_jsonb` category by
//! category (`jsonb_categorize_type`): the result is the same jsonb value. Column types it has
//! no shortcut for (arrays, composites, json, types with a cast to json, ...) go through
//! `to_jsonb` itself, one value at a time. `tests/sql` compares both paths on many types.

use super::raw;
use pgrx::pg_sys;
use std::cell::UnsafeCell;
use std::ffi::{c_char, c_int, CStr, CString};
use std::ptr;

/// How one column's value becomes a JSON value.
enum Kind {
    Bool,
    /// int2/int4/int8: a JSON number (to_jsonb goes through text and numeric_in; same value)
    Int {
        typlen: i16,
    },
    /// numeric: a JSON number, NaN/Infinity as strings (their output contains an 'N' or 'n')
    Numeric {
        typoutput: pg_sys::Oid,
    },
    /// float4/float8: output text, then a number unless it contains 'N'/'n' (NaN, Infinity)
    Float {
        typoutput: pg_sys::Oid,
    },
    /// date, timestamp, timestamptz: ISO 8601 strings (JsonEncodeDateTime)
    DateTime {
        typid: pg_sys::Oid,
    },
    /// text, varchar, bpchar: the string itself (their output function returns it unchanged)
    Text,
    /// jsonb: embedded as is
    Jsonb,
    /// everything else to_jsonb turns into a string: the type's output function
    Output {
        typoutput: pg_sys::Oid,
    },
    /// arrays, composites, json, user types (which may have a cast to json): to_jsonb(value)
    ToJsonb {
        finfo: *mut pg_sys::FmgrInfo,
    },
}

struct JsonColumn {
    index: usize,
    key: CString,
    kind: Kind,
}

/// A date/time Datum (its `usize` value, as passed by value) and the JSON text it converted to.
/// (None after `begin_call`: nothing remembered; the buffer is kept to be reused.)
type MemoEntry = (Option<usize>, Vec<u8>);

/// The converter for rows of one tuple descriptor.
pub struct RowJsonb {
    /// columns in jsonb key order (shorter names first, then bytewise), as jsonb stores them
    columns: Vec<JsonColumn>,
    /// every column converts to a scalar: rows can be handed to JsonbValueToJsonb as an
    /// already sorted object, without pushJsonbValue and its per-row key sort
    all_scalar: bool,
    /// Per column, the last date/time value converted in the current call and its text: a
    /// `DEFAULT now()` column has one value for every row of a statement. Cleared by
    /// `begin_call` (the session's TimeZone may change between calls, not within one).
    /// An UnsafeCell, not a RefCell: `build` runs inside one error guard (`raw`), and an error
    /// there must not leave a borrow flag set forever; no reference into it outlives a
    /// statement of `convert` that makes no PostgreSQL call.
    memo: UnsafeCell<Vec<MemoEntry>>,
    /// long-lived memory for the FmgrInfos of `Kind::ToJsonb`
    context: pg_sys::MemoryContext,
    numeric_in: *mut pg_sys::FmgrInfo,
}

impl Drop for RowJsonb {
    fn drop(&mut self) {
        // SAFETY: the context was created by us and nothing else points into it.
        unsafe { pg_sys::MemoryContextDelete(self.context) };
    }
}

unsafe fn alloc_in<T>(context: pg_sys::MemoryContext) -> *mut T {
    // SAFETY: `context` is a live memory context (contract); the zeroed allocation of
    // size_of::<T>() is valid for any T made of plain C fields (palloc's MAXALIGN covers their
    // alignment).
    unsafe { pg_sys::MemoryContextAllocZero(context, std::mem::size_of::<T>()) as *mut T }
}

impl RowJsonb {
    /// Categorize the columns of `tupdesc` (dropped columns are skipped, as to_jsonb does).
    ///
    /// # Safety
    /// `tupdesc` must be valid; must run inside a transaction (catalog look-ups).
    pub unsafe fn new(tupdesc: pg_sys::TupleDesc) -> RowJsonb {
        // SAFETY: `tupdesc` is valid and we are inside a transaction (contract): the catalog
        // look-ups of `categorize` may run, and the new context is a child of CacheMemoryContext,
        // deleted in Drop.
        unsafe {
            let context = pg_sys::AllocSetContextCreateInternal(
                pg_sys::CacheMemoryContext,
                c"pg_observers row jsonb".as_ptr(),
                0,
                1024,
                8 * 1024,
            );
            let mut builder = RowJsonb {
                columns: Vec::new(),
                all_scalar: false,
                memo: UnsafeCell::new(Vec::new()),
                context,
                numeric_in: ptr::null_mut(),
            };
            let numeric_in = alloc_in::<pg_sys::FmgrInfo>(context);
            pg_sys::fmgr_info_cxt(pg_sys::Oid::from(pg_sys::F_NUMERIC_IN), numeric_in, context);
            builder.numeric_in = numeric_in;

            let natts = (*tupdesc).natts as usize;
            let attrs = (*tupdesc).attrs.as_ptr();
            for index in 0..natts {
                let att = &*attrs.add(index);
                if att.attisdropped {
                    continue;
                }
                let kind = builder.categorize(att);
                builder.columns.push(JsonColumn {
                    index,
                    key: CStr::from_ptr(att.attname.data.as_ptr()).to_owned(),
                    kind,
                });
            }
            // jsonb object keys are stored sorted by length, then bytes (lengthCompareJsonbString)
            builder.columns.sort_by(|a, b| {
                let (a, b) = (a.key.as_bytes(), b.key.as_bytes());
                a.len().cmp(&b.len()).then_with(|| a.cmp(b))
            });
            builder.all_scalar = builder
                .columns
                .iter()
                .all(|c| !matches!(c.kind, Kind::Jsonb | Kind::ToJsonb { .. }));
            builder.memo = UnsafeCell::new(
                (0..builder.columns.len())
                    .map(|_| (None, Vec::new()))
                    .collect(),
            );
            builder
        }
    }

    /// Start converting the rows of one trigger call.
    pub fn begin_call(&self) {
        // SAFETY: single-threaded backend; no reference into the memo is alive outside `convert`.
        unsafe { (*self.memo.get()).iter_mut().for_each(|m| m.0 = None) };
    }

    /// `jsonb_categorize_type`, resolved down to what this builder does per value.
    unsafe fn categorize(&self, att: &pg_sys::FormData_pg_attribute) -> Kind {
        // SAFETY: `att` is an attribute of a valid tuple descriptor and we are inside a transaction
        // (the contract of `new`, the only caller): catalog look-ups by type OID.
        unsafe {
            let base = pg_sys::getBaseType(att.atttypid);
            let output = |typid: pg_sys::Oid| {
                let mut typoutput = pg_sys::InvalidOid;
                let mut is_varlena = false;
                pg_sys::getTypeOutputInfo(typid, &mut typoutput, &mut is_varlena);
                typoutput
            };
            match base {
                pg_sys::BOOLOID => Kind::Bool,
                pg_sys::INT2OID => Kind::Int { typlen: 2 },
                pg_sys::INT4OID => Kind::Int { typlen: 4 },
                pg_sys::INT8OID => Kind::Int { typlen: 8 },
                pg_sys::NUMERICOID => Kind::Numeric {
                    typoutput: output(base),
                },
                pg_sys::FLOAT4OID | pg_sys::FLOAT8OID => Kind::Float {
                    typoutput: output(base),
                },
                pg_sys::DATEOID | pg_sys::TIMESTAMPOID | pg_sys::TIMESTAMPTZOID => {
                    Kind::DateTime { typid: base }
                }
                pg_sys::JSONBOID => Kind::Jsonb,
                pg_sys::TEXTOID | pg_sys::VARCHAROID | pg_sys::BPCHAROID => Kind::Text,
                _ => {
                    let is_array = pg_sys::get_element_type(base) != pg_sys::InvalidOid
                        || base == pg_sys::ANYARRAYOID
                        || base == pg_sys::ANYCOMPATIBLEARRAYOID
                        || base == pg_sys::RECORDARRAYOID;
                    let generic = is_array
                        || base == pg_sys::JSONOID
                        || pg_sys::type_is_rowtype(base)
                        || base.to_u32() >= pg_sys::FirstNormalObjectId;
                    if generic {
                        Kind::ToJsonb {
                            finfo: self.to_jsonb_finfo(att),
                        }
                    } else {
                        Kind::Output {
                            typoutput: output(base),
                        }
                    }
                }
            }
        }
    }

    /// An FmgrInfo for `to_jsonb(anyelement)` whose call expression tells it the argument type.
    unsafe fn to_jsonb_finfo(&self, att: &pg_sys::FormData_pg_attribute) -> *mut pg_sys::FmgrInfo {
        // SAFETY: called from `new` inside a transaction; the nodes are built in `self.context`,
        // which lives as long as the FmgrInfo that points at them; CurrentMemoryContext is put back
        // before returning (an error aborts the transaction, which resets it).
        unsafe {
            let old = pg_sys::CurrentMemoryContext;
            pg_sys::CurrentMemoryContext = self.context;
            let arg = pg_sys::makeNullConst(att.atttypid, att.atttypmod, att.attcollation);
            let args = pg_sys::lappend(ptr::null_mut(), arg.cast());
            let expr = pg_sys::makeFuncExpr(
                pg_sys::Oid::from(pg_sys::F_TO_JSONB),
                pg_sys::JSONBOID,
                args,
                pg_sys::InvalidOid,
                pg_sys::InvalidOid,
                pg_sys::CoercionForm::COERCE_EXPLICIT_CALL,
            );
            pg_sys::CurrentMemoryContext = old;
            let finfo = alloc_in::<pg_sys::FmgrInfo>(self.context);
            pg_sys::fmgr_info_cxt(pg_sys::Oid::from(pg_sys::F_TO_JSONB), finfo, self.context);
            (*finfo).fn_expr = expr.cast();
            finfo
        }
    }

    /// The jsonb object of one row (allocated in the current memory context).
    ///
    /// # Safety
    /// `values`/`isnull` must hold a deformed row of the descriptor this builder was made for;
    /// must run inside a `raw::guarded` region (it calls PostgreSQL unguarded and creates nothing
    /// that needs dropping).
    pub unsafe fn build(&self, values: *const pg_sys::Datum, isnull: *const bool) -> pg_sys::Datum {
        use pg_sys::JsonbIteratorToken::*;
        // SAFETY: `values`/`isnull` hold a deformed row of this builder's descriptor (contract):
        // every `c.index` is in bounds, and each non-null value has the type `c.kind` was
        // categorized from.
        unsafe {
            // Integers become numerics in this frame's buffer, and an object of up to
            // STACK_COLUMNS columns is assembled in this frame's pair array: no palloc per row
            // for either (they are copied into the jsonb before `build` returns). On the stack,
            // not in `self`: a nested capture (a user output function writing to an observed
            // table) may run `build` of this same builder while this one is half done.
            let mut ints = [[0u8; INT_NUMERIC_MAX]; STACK_COLUMNS];
            let mut stack_pairs =
                [const { std::mem::MaybeUninit::<pg_sys::JsonbPair>::uninit() }; STACK_COLUMNS];
            let n = self.columns.len();
            let ints_ptr = ints.as_mut_ptr();
            let value_of = |position: usize, c: &JsonColumn| {
                if *isnull.add(c.index) {
                    null_value()
                } else {
                    let buf = if position < STACK_COLUMNS {
                        ints_ptr.add(position)
                    } else {
                        ptr::null_mut()
                    };
                    self.convert(position, &c.kind, *values.add(c.index), buf)
                }
            };
            if self.all_scalar {
                // keys unique and already in jsonb order: build the object value directly
                let pairs = if n <= STACK_COLUMNS {
                    stack_pairs.as_mut_ptr().cast::<pg_sys::JsonbPair>()
                } else {
                    raw::palloc(n * std::mem::size_of::<pg_sys::JsonbPair>())
                        as *mut pg_sys::JsonbPair
                };
                for (position, c) in self.columns.iter().enumerate() {
                    let key_bytes = c.key.as_bytes();
                    pairs.add(position).write(pg_sys::JsonbPair {
                        key: string_value(key_bytes.as_ptr().cast(), key_bytes.len()),
                        value: value_of(position, c),
                        order: position as u32,
                    });
                }
                if let Some(datum) = encode_scalar_object(pairs, n) {
                    return datum;
                }
                let mut object = null_value();
                object.type_ = pg_sys::jbvType::jbvObject;
                object.val.object = pg_sys::JsonbValue__bindgen_ty_1__bindgen_ty_3 {
                    nPairs: n as c_int,
                    pairs,
                };
                return pg_sys::Datum::from(raw::JsonbValueToJsonb(&mut object));
            }
            let mut state: *mut pg_sys::JsonbParseState = ptr::null_mut();
            pg_sys::pushJsonbValue(&mut state, WJB_BEGIN_OBJECT, ptr::null_mut());
            for (position, c) in self.columns.iter().enumerate() {
                let key_bytes = c.key.as_bytes();
                let mut key = string_value(key_bytes.as_ptr().cast(), key_bytes.len());
                pg_sys::pushJsonbValue(&mut state, WJB_KEY, &mut key);
                let mut value = value_of(position, c);
                pg_sys::pushJsonbValue(&mut state, WJB_VALUE, &mut value);
            }
            let result = pg_sys::pushJsonbValue(&mut state, WJB_END_OBJECT, ptr::null_mut());
            pg_sys::Datum::from(raw::JsonbValueToJsonb(result))
        }
    }

    /// The JSON value of one non-null column value. `int_buf`, when not null, receives an
    /// integer's numeric (it must outlive the returned value's use).
    unsafe fn convert(
        &self,
        position: usize,
        kind: &Kind,
        value: pg_sys::Datum,
        int_buf: *mut [u8; INT_NUMERIC_MAX],
    ) -> pg_sys::JsonbValue {
        // SAFETY: `value` is a non-null datum of the type `kind` was categorized from (callers:
        // `build`, under its contract, inside its guarded region); the FmgrInfos were set up by
        // `new` in `self.context`; the memo is only touched between PostgreSQL calls.
        unsafe {
            match *kind {
                Kind::Bool => {
                    let mut v = null_value();
                    v.type_ = pg_sys::jbvType::jbvBool;
                    v.val.boolean = value.value() & 0xff != 0;
                    v
                }
                Kind::Int { typlen } => {
                    let n: i64 = match typlen {
                        2 => value.value() as i16 as i64,
                        4 => value.value() as i32 as i64,
                        _ => value.value() as i64,
                    };
                    let out = if int_buf.is_null() {
                        raw::palloc(INT_NUMERIC_MAX) as *mut u8
                    } else {
                        int_buf.cast::<u8>()
                    };
                    numeric_value(int64_numeric(n, out))
                }
                Kind::Numeric { typoutput } => {
                    let num = raw::pg_detoast_datum(value.cast_mut_ptr()) as pg_sys::Numeric;
                    if raw::numeric_is_nan(num) || raw::numeric_is_inf(num) {
                        output_string(typoutput, value)
                    } else {
                        numeric_value(num)
                    }
                }
                Kind::Float { typoutput } => {
                    let text = raw::OidOutputFunctionCall(typoutput, value);
                    let s = CStr::from_ptr(text).to_bytes();
                    if s.contains(&b'N') || s.contains(&b'n') {
                        string_value(text, s.len())
                    } else {
                        let num =
                            raw::InputFunctionCall(self.numeric_in, text, pg_sys::InvalidOid, -1);
                        numeric_value(num.cast_mut_ptr())
                    }
                }
                Kind::DateTime { typid } => {
                    let memo = &mut *self.memo.get();
                    let (key, bytes) = &mut memo[position];
                    if *key != Some(value.value()) {
                        *key = None;
                        bytes.clear();
                        if typid == pg_sys::TIMESTAMPTZOID
                            && super::session::timezone_is_canonical_utc()
                        {
                            // what JsonEncodeDateTime writes in UTC, without timestamp2tm and
                            // EncodeDateTime
                            let mut buf = [0u8; TIMESTAMPTZ_UTC_MAX];
                            let len = encode_timestamptz_utc(value.value() as i64, &mut buf);
                            bytes.extend_from_slice(&buf[..len]);
                        } else {
                            let text = raw::JsonEncodeDateTime(
                                ptr::null_mut(),
                                value,
                                typid,
                                ptr::null::<c_int>(),
                            );
                            // the buffer's capacity is kept between calls: no allocation once
                            // it is large enough (an error above leaves the key None)
                            bytes.extend_from_slice(CStr::from_ptr(text).to_bytes());
                            raw::pfree(text.cast());
                        }
                        *key = Some(value.value());
                    }
                    // the memo keeps the bytes alive until the row is converted to jsonb
                    string_value(bytes.as_ptr().cast(), bytes.len())
                }
                Kind::Text => {
                    let v = raw::pg_detoast_datum_packed(value.cast_mut_ptr());
                    string_value(
                        pgrx::varlena::vardata_any(v),
                        pgrx::varlena::varsize_any_exhdr(v),
                    )
                }
                Kind::Jsonb => binary_value(raw::pg_detoast_datum(value.cast_mut_ptr())),
                Kind::Output { typoutput } => output_string(typoutput, value),
                Kind::ToJsonb { finfo } => {
                    let jb = raw::FunctionCall1Coll(finfo, pg_sys::InvalidOid, value);
                    binary_value(raw::pg_detoast_datum(jb.cast_mut_ptr()))
                }
            }
        }
    }
}

/// `int64_to_numeric(n)`: the same bytes, written directly into `out` (PostgreSQL 15's
/// numeric.c: `int64_int64_to_numericvar` then `make_result`: base-10000 digits, most significant
/// first, trailing zero digits dropped, dscale 0, always the short format, 0 as no digits with
/// weight 0). `out` has room for INT_NUMERIC_MAX bytes.
unsafe fn int64_numeric(n: i64, out: *mut u8) -> pg_sys::Numeric {
    const NUMERIC_SHORT: u16 = 0x8000;
    const NUMERIC_SHORT_SIGN_MASK: u16 = 0x2000;
    // a u64 holds at most 5 base-10000 digits
    let mut digits = [0u16; 5];
    let mut count = 0;
    let mut v = n.unsigned_abs();
    while v != 0 {
        digits[count] = (v % 10_000) as u16;
        v /= 10_000;
        count += 1;
    }
    // digits[..count] is least significant first; weight is the exponent of the leading one
    let weight = if count == 0 { 0 } else { count as u16 - 1 };
    let mut low = 0;
    while low < count && digits[low] == 0 {
        low += 1;
    }
    let ndigits = count - low;
    let len = 4 + 2 + 2 * ndigits;
    // SAFETY: `out` has room for INT_NUMERIC_MAX >= `len` bytes (contract): the 4-byte varlena
    // header, the short header and the digits.
    unsafe {
        (out as *mut u32).write_unaligned((len as u32) << 2);
        let sign = if n < 0 { NUMERIC_SHORT_SIGN_MASK } else { 0 };
        (out.add(4) as *mut u16).write_unaligned(NUMERIC_SHORT | sign | weight);
        for (i, d) in digits[low..count].iter().rev().enumerate() {
            (out.add(6 + 2 * i) as *mut u16).write_unaligned(*d);
        }
        out as pg_sys::Numeric
    }
}

/// Columns whose JSON pairs and integer numerics `build` keeps in its own stack frame.
const STACK_COLUMNS: usize = 32;
/// Size of an int8's numeric: varlena header, short header, at most 5 base-10000 digits.
const INT_NUMERIC_MAX: usize = 4 + 2 + 2 * 5;

// jsonb's on-disk format (utils/jsonb.h, PostgreSQL 15)
const JB_FOBJECT: u32 = 0x2000_0000;
const JENTRY_OFFLENMASK: u32 = 0x0FFF_FFFF;
const JENTRY_HAS_OFF: u32 = 0x8000_0000;
const JENTRY_ISSTRING: u32 = 0x0000_0000;
const JENTRY_ISNUMERIC: u32 = 0x1000_0000;
const JENTRY_ISBOOL_FALSE: u32 = 0x2000_0000;
const JENTRY_ISBOOL_TRUE: u32 = 0x3000_0000;
const JENTRY_ISNULL: u32 = 0x4000_0000;
const JB_OFFSET_STRIDE: usize = 32;

/// The jsonb datum of an object whose keys are unique and sorted the jsonb way and whose values
/// are scalars (null, bool, numeric, string), written straight into its binary form: the bytes
/// `JsonbValueToJsonb` (`convertToJsonb`) writes for the same value, without its growing
/// buffer. None (the caller then uses `JsonbValueToJsonb`, which raises the error) when a
/// length exceeds what a jsonb can hold.
///
/// # Safety
/// `pairs` points at `n` pairs whose values are scalars; inside a `raw::guarded` region.
unsafe fn encode_scalar_object(pairs: *const pg_sys::JsonbPair, n: usize) -> Option<pg_sys::Datum> {
    // SAFETY: `pairs` holds `n` initialized pairs whose strings and numerics are live (contract);
    // the result is written into one palloc'd block sized from a first pass over the same pairs.
    unsafe {
        let pairs = std::slice::from_raw_parts(pairs, n);
        let int_align = |x: usize| (x + 3) & !3;
        let data_len = |v: &pg_sys::JsonbValue| -> usize {
            match v.type_ {
                pg_sys::jbvType::jbvString => v.val.string.len as usize,
                pg_sys::jbvType::jbvNumeric => {
                    pgrx::varlena::varsize_any(v.val.numeric as *const pg_sys::varlena)
                }
                _ => 0,
            }
        };
        // first pass: the size (numerics are aligned to 4 bytes from the start of the datum)
        let header_len = 4 + 4 + 8 * n;
        let mut end = header_len;
        for p in pairs {
            end += data_len(&p.key);
        }
        for p in pairs {
            if p.value.type_ == pg_sys::jbvType::jbvNumeric {
                end = int_align(end);
            }
            end += data_len(&p.value);
        }
        // convertJsonbObject's limit: the container (header, entries, data) after the varlena
        // header
        if end - 4 > JENTRY_OFFLENMASK as usize {
            return None;
        }
        let out = raw::palloc(end) as *mut u8;
        // varlena header (4 bytes, SET_VARSIZE) and the container header
        (out as *mut u32).write_unaligned((end as u32) << 2);
        (out.add(4) as *mut u32).write_unaligned(n as u32 | JB_FOBJECT);
        let jentries = out.add(8) as *mut u32;
        let mut pos = header_len;
        let mut total: u32 = 0;
        let mut entry = |i: usize, v: &pg_sys::JsonbValue, pos: &mut usize| {
            let (kind, len) = match v.type_ {
                pg_sys::jbvType::jbvString => {
                    let len = v.val.string.len as usize;
                    ptr::copy_nonoverlapping(v.val.string.val as *const u8, out.add(*pos), len);
                    *pos += len;
                    (JENTRY_ISSTRING, len)
                }
                pg_sys::jbvType::jbvNumeric => {
                    let aligned = int_align(*pos);
                    ptr::write_bytes(out.add(*pos), 0, aligned - *pos);
                    let padlen = aligned - *pos;
                    let len = pgrx::varlena::varsize_any(v.val.numeric as *const pg_sys::varlena);
                    ptr::copy_nonoverlapping(v.val.numeric as *const u8, out.add(aligned), len);
                    *pos = aligned + len;
                    (JENTRY_ISNUMERIC, padlen + len)
                }
                pg_sys::jbvType::jbvBool => (
                    if v.val.boolean {
                        JENTRY_ISBOOL_TRUE
                    } else {
                        JENTRY_ISBOOL_FALSE
                    },
                    0,
                ),
                _ => (JENTRY_ISNULL, 0),
            };
            total += len as u32;
            let meta = if i % JB_OFFSET_STRIDE == 0 {
                kind | total | JENTRY_HAS_OFF
            } else {
                kind | len as u32
            };
            jentries.add(i).write_unaligned(meta);
        };
        for (i, p) in pairs.iter().enumerate() {
            entry(i, &p.key, &mut pos);
        }
        for (i, p) in pairs.iter().enumerate() {
            entry(n + i, &p.value, &mut pos);
        }
        Some(pg_sys::Datum::from(out))
    }
}

/// Longest text of `encode_timestamptz_utc`: "-infinity", or a 6-digit year, the date and time
/// with microseconds, "+00:00" and " BC".
const TIMESTAMPTZ_UTC_MAX: usize = 48;

/// A timestamptz as `JsonEncodeDateTime` writes it when the session's zone is UTC (PostgreSQL
/// 15, `EncodeDateTime` with `USE_XSD_DATES`): `YYYY-MM-DDTHH:MM:SS[.ffffff]+00:00`, trailing
/// zeros of the fraction dropped, years before 1 AD as `YYYY-...+00:00 BC` counted from 1 BC,
/// `infinity` / `-infinity`. Returns the number of bytes written into `out`.
fn encode_timestamptz_utc(ts: i64, out: &mut [u8]) -> usize {
    const USECS_PER_DAY: i64 = 86_400_000_000;
    /// days from 1970-01-01 to 2000-01-01, PostgreSQL's epoch
    const PG_EPOCH_DAYS: i64 = 10_957;
    let mut w = Out { buf: out, len: 0 };
    if ts == i64::MIN {
        w.put(b"-infinity");
        return w.len;
    }
    if ts == i64::MAX {
        w.put(b"infinity");
        return w.len;
    }
    let days = ts.div_euclid(USECS_PER_DAY) + PG_EPOCH_DAYS;
    let usecs = ts.rem_euclid(USECS_PER_DAY);
    // proleptic Gregorian civil date from days since 1970-01-01 (H. Hinnant's civil_from_days),
    // the calendar of PostgreSQL's j2date; year 0 is 1 BC
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let bc = year <= 0;
    let secs = usecs / 1_000_000;
    let fsec = usecs % 1_000_000;

    w.number(if bc { 1 - year } else { year }, 4);
    w.put(b"-");
    w.number(month, 2);
    w.put(b"-");
    w.number(day, 2);
    w.put(b"T");
    w.number(secs / 3600, 2);
    w.put(b":");
    w.number(secs / 60 % 60, 2);
    w.put(b":");
    w.number(secs % 60, 2);
    if fsec != 0 {
        let mut frac = fsec;
        let mut width = 6;
        while frac % 10 == 0 {
            frac /= 10;
            width -= 1;
        }
        w.put(b".");
        w.number(frac, width);
    }
    w.put(b"+00:00");
    if bc {
        w.put(b" BC");
    }
    w.len
}

/// A byte buffer being filled (`encode_timestamptz_utc`).
struct Out<'a> {
    buf: &'a mut [u8],
    len: usize,
}

impl Out<'_> {
    fn put(&mut self, bytes: &[u8]) {
        self.buf[self.len..self.len + bytes.len()].copy_from_slice(bytes);
        self.len += bytes.len();
    }

    /// `value` (>= 0) in decimal, zero-padded to at least `width` digits.
    fn number(&mut self, value: i64, width: usize) {
        let mut tmp = [b'0'; 20];
        let mut start = tmp.len();
        let mut v = value;
        loop {
            start -= 1;
            tmp[start] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        start = start.min(tmp.len() - width);
        self.put(&tmp[start..]);
    }
}

fn null_value() -> pg_sys::JsonbValue {
    // SAFETY: JsonbValue is plain data; an all-zero value is jbvNull.
    let mut v: pg_sys::JsonbValue = unsafe { std::mem::zeroed() };
    v.type_ = pg_sys::jbvType::jbvNull;
    v
}

fn string_value(s: *const c_char, len: usize) -> pg_sys::JsonbValue {
    let mut v = null_value();
    v.type_ = pg_sys::jbvType::jbvString;
    v.val.string = pg_sys::JsonbValue__bindgen_ty_1__bindgen_ty_1 {
        len: len as c_int,
        val: s.cast_mut(),
    };
    v
}

fn numeric_value(num: pg_sys::Numeric) -> pg_sys::JsonbValue {
    let mut v = null_value();
    v.type_ = pg_sys::jbvType::jbvNumeric;
    v.val.numeric = num;
    v
}

/// A jsonb datum (detoasted, 4-byte header) pushed as a whole; pushJsonbValue unpacks it,
/// scalar roots included.
unsafe fn binary_value(jb: *mut pg_sys::varlena) -> pg_sys::JsonbValue {
    // SAFETY: `jb` is a detoasted jsonb datum (4-byte header, the caller's promise): its size and
    // root container are read in place and stay alive as long as the datum.
    unsafe {
        let mut v = null_value();
        v.type_ = pg_sys::jbvType::jbvBinary;
        let jsonb = jb as *mut pg_sys::Jsonb;
        v.val.binary = pg_sys::JsonbValue__bindgen_ty_1__bindgen_ty_4 {
            len: (pgrx::varlena::varsize(jb) - pg_sys::VARHDRSZ) as c_int,
            data: ptr::addr_of_mut!((*jsonb).root),
        };
        v
    }
}

unsafe fn output_string(typoutput: pg_sys::Oid, value: pg_sys::Datum) -> pg_sys::JsonbValue {
    // SAFETY: `value` is a non-null datum of the type whose output function is `typoutput`
    // (callers' promise); the returned C string is palloc'd and NUL-terminated.
    unsafe {
        let text = raw::OidOutputFunctionCall(typoutput, value);
        string_value(text, CStr::from_ptr(text).to_bytes().len())
    }
}

#[cfg(test)]
mod tests {
    use super::encode_timestamptz_utc;

    fn enc(ts: i64) -> String {
        let mut buf = [0u8; super::TIMESTAMPTZ_UTC_MAX];
        let n = encode_timestamptz_utc(ts, &mut buf);
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn timestamptz_texts_are_postgres_own() {
        // expected values: SELECT to_jsonb(x::timestamptz) under TimeZone UTC, PostgreSQL 15
        assert_eq!(enc(0), "2000-01-01T00:00:00+00:00");
        assert_eq!(enc(848_052_000_123_456), "2026-11-15T10:00:00.123456+00:00");
        assert_eq!(enc(500_000), "2000-01-01T00:00:00.5+00:00");
        assert_eq!(enc(-1), "1999-12-31T23:59:59.999999+00:00");
        assert_eq!(enc(i64::MAX), "infinity");
        assert_eq!(enc(i64::MIN), "-infinity");
        // 0001-01-01 00:00:00 UTC and the microsecond before it (1 BC)
        assert_eq!(enc(-63_082_281_600_000_000), "0001-01-01T00:00:00+00:00");
        assert_eq!(
            enc(-63_082_281_600_000_001),
            "0001-12-31T23:59:59.999999+00:00 BC"
        );
        // the smallest timestamptz
        assert_eq!(
            enc(-211_781_865_600_000_000),
            "4713-11-24T00:00:00+00:00 BC"
        );
        // the largest timestamptz: 294276-12-31 23:59:59.999999
        assert_eq!(
            enc(9_223_371_331_199_999_999),
            "294276-12-31T23:59:59.999999+00:00"
        );
    }
}
