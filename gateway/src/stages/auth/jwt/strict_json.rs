//! JSON for tokens, read strictly: a duplicate key at any depth is an
//! error. Parsers disagree on duplicates (first wins, last wins), so a token
//! with two `sub` or two `alg` could mean one thing to the gateway and
//! another to a backend or a later check (RFC 8725 §3.6 and RFC 7515 §4).

use std::fmt;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// A JSON value whose objects had no duplicate keys.
pub struct Strict(pub Value);

impl<'de> serde::Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor).map(Strict)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JSON")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut v = Vec::new();
        while let Some(Strict(item)) = seq.next_element()? {
            v.push(item);
        }
        Ok(Value::Array(v))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut m = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let Strict(value) = map.next_value()?;
            if m.insert(key.clone(), value).is_some() {
                return Err(de::Error::custom(format!("duplicate key `{key}`")));
            }
        }
        Ok(Value::Object(m))
    }
}

/// Why bytes are not a strict JSON object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotStrict {
    /// Not JSON, or JSON but not one object.
    Malformed,
    /// A JSON object with a key twice somewhere.
    Duplicate,
}

/// Parses `bytes` as one JSON object with no duplicate keys anywhere.
pub fn object(bytes: &[u8]) -> Result<Map<String, Value>, NotStrict> {
    match serde_json::from_slice::<Strict>(bytes) {
        Ok(Strict(Value::Object(m))) => Ok(m),
        Ok(_) => Err(NotStrict::Malformed),
        // Only a document that reads as an object when duplicates are
        // allowed failed for a duplicate (the error path only: a second,
        // lenient parse to tell which).
        Err(_) => match serde_json::from_slice::<Value>(bytes) {
            Ok(Value::Object(_)) => Err(NotStrict::Duplicate),
            _ => Err(NotStrict::Malformed),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_are_refused_at_any_depth() {
        use NotStrict::*;
        assert!(object(br#"{"a":1,"b":{"c":[1,{"d":2}]}}"#).is_ok());
        assert_eq!(object(br#"{"a":1,"a":2}"#).err(), Some(Duplicate));
        assert_eq!(object(br#"{"a":{"b":1,"b":1}}"#).err(), Some(Duplicate));
        assert_eq!(object(br#"{"a":[{"b":1,"b":2}]}"#).err(), Some(Duplicate));
        assert_eq!(object(br#"[1]"#).err(), Some(Malformed));
        assert_eq!(object(br#"{"a":1} x"#).err(), Some(Malformed));
        assert_eq!(object(b"not json").err(), Some(Malformed));
        assert_eq!(object(br#"{"a":1,"a":2"#).err(), Some(Malformed));
    }
}
