//! JSON exactly as the database wrote it, for the payloads the CLI prints (`debug-event`,
//! `dlq show`).
//!
//! `serde_json::Value` keeps a number as `i64`, `u64` or `f64`, so a `numeric` column holding
//! `12345678901234567890.123456789` would print as `1.2345678901234567e+19`. serde_json's
//! `arbitrary_precision` feature would fix that for every `Value` in the process, and change
//! how numbers behave everywhere else in the worker (template values, comparisons, the
//! `Deserialize` of untagged data), so the CLI keeps the text instead: [`Exact`] is parsed from
//! the JSON text the database sends (`jsonb::text`, which prints a `numeric` in full), keeps
//! every number as written and the keys in their order, and serializes back to the same
//! numbers. Navigation and the non-payload columns use the lossy [`Exact::to_value`].

use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};
use serde_json::value::RawValue;
use serde_json::Value;

use super::failure::CliError;

/// A JSON value whose numbers are kept as their text.
#[derive(Debug, Clone, PartialEq)]
pub enum Exact {
    Null,
    Bool(bool),
    /// The number as written (`12345678901234567890.123456789`, `1e400`, `-0`).
    Number(String),
    String(String),
    Array(Vec<Exact>),
    /// Keys in document order.
    Object(Vec<(String, Exact)>),
}

/// The members of a JSON object, each value still unparsed.
struct RawMembers<'a>(Vec<(String, &'a RawValue)>);

impl<'de: 'a, 'a> Deserialize<'de> for RawMembers<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = RawMembers<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<RawMembers<'a>, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = m.next_entry::<String, &'de RawValue>()? {
                    out.push((k, v));
                }
                Ok(RawMembers(out))
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

impl Exact {
    /// Parses JSON text (the whole text must be one JSON value).
    pub fn parse(text: &str) -> Result<Exact, serde_json::Error> {
        let raw: &RawValue = serde_json::from_str(text)?;
        Exact::from_raw(raw)
    }

    fn from_raw(raw: &RawValue) -> Result<Exact, serde_json::Error> {
        let text = raw.get().trim();
        Ok(match text.as_bytes().first() {
            Some(b'{') => Exact::Object(
                serde_json::from_str::<RawMembers>(text)?
                    .0
                    .into_iter()
                    .map(|(k, v)| Ok((k, Exact::from_raw(v)?)))
                    .collect::<Result<_, serde_json::Error>>()?,
            ),
            Some(b'[') => Exact::Array(
                serde_json::from_str::<Vec<&RawValue>>(text)?
                    .into_iter()
                    .map(Exact::from_raw)
                    .collect::<Result<_, _>>()?,
            ),
            Some(b'"') => Exact::String(serde_json::from_str(text)?),
            Some(b't') | Some(b'f') => Exact::Bool(serde_json::from_str(text)?),
            Some(b'n') => Exact::Null,
            // the parser accepted it as a value: a number
            _ => Exact::Number(text.to_owned()),
        })
    }

    /// JSON text from the database (`None`: SQL NULL).
    pub fn from_db(text: Option<&str>) -> Result<Exact, CliError> {
        match text {
            None => Ok(Exact::Null),
            Some(t) => Exact::parse(t).map_err(|e| {
                CliError::runtime(format!(
                    "the database returned JSON the CLI cannot read: {e}"
                ))
            }),
        }
    }

    /// The same value as a `serde_json::Value` (numbers may lose precision): for reading
    /// fields, never for printing payloads.
    pub fn to_value(&self) -> Value {
        match self {
            Exact::Null => Value::Null,
            Exact::Bool(b) => Value::Bool(*b),
            Exact::Number(n) => serde_json::from_str(n).unwrap_or(Value::Null),
            Exact::String(s) => Value::String(s.clone()),
            Exact::Array(a) => Value::Array(a.iter().map(Exact::to_value).collect()),
            Exact::Object(o) => {
                Value::Object(o.iter().map(|(k, v)| (k.clone(), v.to_value())).collect())
            }
        }
    }

    /// `self[key]` of an object.
    pub fn get(&self, key: &str) -> Option<&Exact> {
        match self {
            Exact::Object(o) => o.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self, Exact::Null)
    }

    /// Compact JSON text.
    pub fn compact(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| "null".to_owned())
    }

    /// Indented JSON text (two spaces), like `serde_json::to_string_pretty`.
    pub fn pretty(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|_| "null".to_owned())
    }
}

impl From<&Value> for Exact {
    fn from(v: &Value) -> Exact {
        match v {
            Value::Null => Exact::Null,
            Value::Bool(b) => Exact::Bool(*b),
            Value::Number(n) => Exact::Number(n.to_string()),
            Value::String(s) => Exact::String(s.clone()),
            Value::Array(a) => Exact::Array(a.iter().map(Exact::from).collect()),
            Value::Object(o) => {
                Exact::Object(o.iter().map(|(k, v)| (k.clone(), Exact::from(v))).collect())
            }
        }
    }
}

impl Serialize for Exact {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Exact::Null => s.serialize_unit(),
            Exact::Bool(b) => s.serialize_bool(*b),
            // written verbatim by serde_json (the text was validated as a JSON number)
            Exact::Number(n) => RawValue::from_string(n.clone())
                .map_err(serde::ser::Error::custom)?
                .serialize(s),
            Exact::String(x) => s.serialize_str(x),
            Exact::Array(a) => {
                let mut seq = s.serialize_seq(Some(a.len()))?;
                for v in a {
                    seq.serialize_element(v)?;
                }
                seq.end()
            }
            Exact::Object(o) => {
                let mut map = s.serialize_map(Some(o.len()))?;
                for (k, v) in o {
                    map.serialize_entry(k, v)?;
                }
                map.end()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BIG: &str = "12345678901234567890.123456789";

    #[test]
    fn numbers_and_key_order_survive_a_round_trip() {
        let text = format!(
            r#"{{"new": {{"total": {BIG}, "id": 7, "neg": -0.000000000000000000001, "big": 1e400,
                "int": 123456789012345678901234567890, "list": [{BIG}, true, null, "s\"x"]}},
                "a": 1}}"#
        );
        let e = Exact::parse(&text).unwrap();
        assert_eq!(
            e.compact(),
            format!(
                r#"{{"new":{{"total":{BIG},"id":7,"neg":-0.000000000000000000001,"big":1e400,"int":123456789012345678901234567890,"list":[{BIG},true,null,"s\"x"]}},"a":1}}"#
            )
        );
        assert!(
            e.pretty().contains(&format!("\"total\": {BIG},")),
            "{}",
            e.pretty()
        );
        assert_eq!(Exact::parse(&e.pretty()).unwrap(), e);
        // the lossy view still navigates
        let v = e.to_value();
        assert_eq!(v["new"]["id"], 7);
        assert_eq!(v["a"], 1);
        assert_eq!(
            e.get("new").and_then(|n| n.get("id")),
            Some(&Exact::Number("7".into()))
        );
        // a number no f64 holds reads as null in the lossy view (serde_json refuses it)
        assert_eq!(v["new"]["big"], Value::Null);
        // what serde_json alone would print
        let lossy: Value = serde_json::from_str(&format!(r#"{{"total": {BIG}}}"#)).unwrap();
        assert_eq!(lossy.to_string(), r#"{"total":1.2345678901234567e+19}"#);
    }

    #[test]
    fn scalars_and_errors() {
        assert_eq!(Exact::parse(" null ").unwrap(), Exact::Null);
        assert_eq!(Exact::parse("false").unwrap(), Exact::Bool(false));
        assert_eq!(Exact::parse("\"x\"").unwrap(), Exact::String("x".into()));
        assert_eq!(Exact::parse("[]").unwrap(), Exact::Array(vec![]));
        assert_eq!(Exact::parse("{}").unwrap().compact(), "{}");
        assert!(Exact::parse("{").is_err());
        assert!(Exact::parse("1 2").is_err());
        assert!(Exact::parse("").is_err());
        assert_eq!(
            Exact::from(&serde_json::json!({"b": [1, 2.5]})).compact(),
            r#"{"b":[1,2.5]}"#
        );
    }
}
