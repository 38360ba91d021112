//! Checks of JSON documents a Snowflake `VARIANT` must hold.

use std::collections::HashSet;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

/// Deepest nesting checked; deeper documents are refused too (serde_json itself
/// stops at 128).
const MAX_DEPTH: usize = 128;

/// `Ok` when no object of `doc` repeats a key (numbers of any size are fine: with
/// `arbitrary_precision` serde_json hands them over as one-entry maps). PostgreSQL's `json` type keeps its text
/// as written, so `{"a":1,"a":2}` is a valid `json` value, but no `VARIANT` holds it
/// (Snowflake's `PARSE_JSON` refuses it, and with it the whole statement).
pub fn check_unique_keys(doc: &str) -> Result<(), String> {
    let mut d = serde_json::Deserializer::from_str(doc);
    Unique { depth: 0 }
        .deserialize(&mut d)
        .map_err(|e| format!("json value: {e}"))
}

struct Unique {
    depth: usize,
}

impl<'de> DeserializeSeed<'de> for Unique {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        if self.depth > MAX_DEPTH {
            return Err(de::Error::custom("nested too deeply"));
        }
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Unique {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JSON")
    }
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_none<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq
            .next_element_seed(Unique {
                depth: self.depth + 1,
            })?
            .is_some()
        {}
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen: HashSet<String> = HashSet::new();
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            if !seen.insert(key.clone().into_owned()) {
                let shown: String = key.chars().take(64).collect();
                return Err(de::Error::custom(format!(
                    "the key {shown:?} appears twice in one object, which no VARIANT holds"
                )));
            }
            map.next_value_seed(Unique {
                depth: self.depth + 1,
            })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicate_keys_are_found_at_any_depth() {
        check_unique_keys(r#"{"a":1,"b":{"a":2},"c":[{"a":1},{"a":2}],"d":1.5e300}"#).unwrap();
        check_unique_keys(r#"[1,"x",null,true,{"k":12345678901234567890123}]"#).unwrap();
        let e = check_unique_keys(r#"{"a":1,"a":2}"#).unwrap_err();
        assert!(e.contains("\"a\"") && e.contains("twice"), "{e}");
        assert!(check_unique_keys(r#"{"x":[{"k":1,"k":1}]}"#).is_err());
        // Escapes name the same key.
        assert!(check_unique_keys(r#"{"a":1,"\u0061":2}"#).is_err());
        let deep = "[".repeat(200) + &"]".repeat(200);
        assert!(check_unique_keys(&deep).is_err());
    }
}
