//! Between the engine's MessagePack field values and [`JsValue`]: the engine keeps encoding
//! session values as it always does, and the JSON layout translates at the store boundary. What
//! JSON cannot hold (binary, NaN, integers past 2^53 - 1, non-string keys other than integers)
//! is refused with an error naming the field, never written as something else.

use std::fmt;

use bytes::Bytes;
use serde::{
    de::{self, MapAccess, SeqAccess, Visitor},
    ser::{SerializeMap, SerializeSeq},
    Deserialize, Deserializer, Serialize, Serializer,
};

use super::json::{number, JsValue, ObjBuilder, MAX_SAFE_INTEGER};
use crate::error::{Error, ErrorKind, Result};

impl Serialize for JsValue {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            JsValue::Null => s.serialize_unit(),
            JsValue::Bool(b) => s.serialize_bool(*b),
            // Non-negative as unsigned, so the bytes equal what the engine writes for a `u64`.
            JsValue::Int(i) if *i >= 0 => s.serialize_u64(*i as u64),
            JsValue::Int(i) => s.serialize_i64(*i),
            JsValue::Num(x) => s.serialize_f64(*x),
            JsValue::Str(v) => s.serialize_str(v),
            JsValue::Arr(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(item)?;
                }
                seq.end()
            }
            JsValue::Obj(entries) => {
                let mut map = s.serialize_map(Some(entries.len()))?;
                for (k, v) in entries {
                    map.serialize_entry(k, v)?;
                }
                map.end()
            }
        }
    }
}

struct ValueVisitor;

fn safe<E: de::Error>(n: i128) -> std::result::Result<JsValue, E> {
    if n.unsigned_abs() > u128::from(MAX_SAFE_INTEGER) {
        return Err(E::custom(format!(
            "the integer {n} is beyond 2^53 - 1, which JavaScript cannot hold exactly (Node \
             would read another number); store it as a string"
        )));
    }
    Ok(JsValue::Int(n as i64))
}

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = JsValue;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a value JSON can hold")
    }
    fn visit_unit<E: de::Error>(self) -> std::result::Result<JsValue, E> {
        Ok(JsValue::Null)
    }
    fn visit_none<E: de::Error>(self) -> std::result::Result<JsValue, E> {
        Ok(JsValue::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> std::result::Result<JsValue, D::Error> {
        d.deserialize_any(self)
    }
    fn visit_bool<E: de::Error>(self, b: bool) -> std::result::Result<JsValue, E> {
        Ok(JsValue::Bool(b))
    }
    fn visit_i64<E: de::Error>(self, n: i64) -> std::result::Result<JsValue, E> {
        safe(i128::from(n))
    }
    fn visit_u64<E: de::Error>(self, n: u64) -> std::result::Result<JsValue, E> {
        safe(i128::from(n))
    }
    fn visit_f32<E: de::Error>(self, x: f32) -> std::result::Result<JsValue, E> {
        self.visit_f64(f64::from(x))
    }
    fn visit_f64<E: de::Error>(self, x: f64) -> std::result::Result<JsValue, E> {
        if !x.is_finite() {
            return Err(E::custom(format!(
                "{x} has no JSON form (JSON.stringify would write null)"
            )));
        }
        // Kept a float so the engine reads back the type it wrote; written like any number.
        Ok(match number(x) {
            JsValue::Int(_) => JsValue::Num(x),
            other => other,
        })
    }
    fn visit_str<E: de::Error>(self, v: &str) -> std::result::Result<JsValue, E> {
        Ok(JsValue::Str(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> std::result::Result<JsValue, E> {
        Ok(JsValue::Str(v))
    }
    fn visit_bytes<E: de::Error>(self, _: &[u8]) -> std::result::Result<JsValue, E> {
        Err(E::custom(
            "binary values have no JSON form; store them as a string (e.g. base64) or an array",
        ))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<JsValue, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(item) = seq.next_element::<JsValue>()? {
            items.push(item);
        }
        Ok(JsValue::Arr(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<JsValue, A::Error> {
        let mut obj = ObjBuilder::default();
        while let Some(Key(k)) = map.next_key::<Key>()? {
            obj.insert(k, map.next_value::<JsValue>()?);
        }
        Ok(JsValue::Obj(obj.finish()))
    }
}

impl<'de> Deserialize<'de> for JsValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        d.deserialize_any(ValueVisitor)
    }
}

/// A map key: a string, or an integer written as JavaScript names such a property.
struct Key(String);

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or integer map key")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> std::result::Result<Key, E> {
                Ok(Key(v.to_owned()))
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> std::result::Result<Key, E> {
                Ok(Key(n.to_string()))
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> std::result::Result<Key, E> {
                Ok(Key(n.to_string()))
            }
            fn visit_bool<E: de::Error>(self, b: bool) -> std::result::Result<Key, E> {
                Ok(Key(b.to_string()))
            }
        }
        d.deserialize_any(KeyVisitor)
    }
}

/// A stored JSON value as the engine's MessagePack bytes.
pub fn to_msgpack(value: &JsValue) -> Bytes {
    Bytes::from(rmp_serde::to_vec_named(value).expect("a JsValue always encodes"))
}

/// The engine's MessagePack bytes of session field `field` as a JSON value.
///
/// # Errors
///
/// [`ErrorKind::Decode`](crate::ErrorKind::Decode) when `bytes` is not the engine's MessagePack.
pub fn from_msgpack(field: &str, bytes: &[u8]) -> Result<JsValue> {
    let mut de = rmp_serde::Deserializer::from_read_ref(bytes);
    de.set_max_depth(crate::record::MAX_DEPTH);
    JsValue::deserialize(&mut de).map_err(|err| {
        Error::new(
            ErrorKind::Encode,
            format!("session field {field:?} cannot be stored as koa-session-redis3 JSON: {err}"),
        )
    })
}

#[cfg(test)]
mod tests {
    use serde::Serialize;

    use super::*;
    use crate::{
        koa::json::{parse, stringify},
        record::{decode_value, encode_value},
    };

    #[derive(Serialize)]
    struct Cart {
        items: Vec<&'static str>,
        total: f64,
        user: Option<u32>,
    }

    #[test]
    fn engine_values_become_json_and_back() {
        let bytes = encode_value(&Cart {
            items: vec!["a", "é"],
            total: 2.5,
            user: None,
        })
        .unwrap();
        let value = from_msgpack("cart", &bytes).unwrap();
        assert_eq!(
            stringify(&value),
            r#"{"items":["a","é"],"total":2.5,"user":null}"#
        );
        // A loaded integer reads back as the integer the engine wrote: skip-unchanged holds.
        let n = to_msgpack(&parse("42").unwrap());
        assert_eq!(n, encode_value(&42u64).unwrap());
        assert_eq!(n, encode_value(&42i32).unwrap());
        assert_eq!(
            to_msgpack(&parse("-7").unwrap()),
            encode_value(&-7i64).unwrap()
        );
        assert_eq!(decode_value::<f64>("x", &n).unwrap(), 42.0);
    }

    #[test]
    fn what_json_cannot_hold_is_an_error() {
        for bytes in [
            encode_value(&(MAX_SAFE_INTEGER + 1)).unwrap(),
            encode_value(&i64::MIN).unwrap(),
            encode_value(&f64::NAN).unwrap(),
            encode_value(&f64::INFINITY).unwrap(),
            Bytes::from(rmp_serde::to_vec(&serde_bytes_like()).unwrap()),
        ] {
            let err = from_msgpack("f", &bytes).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Encode, "{err}");
            assert!(err.to_string().contains("\"f\""), "{err}");
        }
        assert!(from_msgpack("f", &encode_value(&MAX_SAFE_INTEGER).unwrap()).is_ok());
    }

    /// A MessagePack bin value.
    fn serde_bytes_like() -> impl Serialize {
        struct Bin;
        impl Serialize for Bin {
            fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
                s.serialize_bytes(b"\x00\x01")
            }
        }
        Bin
    }
}
