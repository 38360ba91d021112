//! Avro binary decoding straight into the JSON the JsonConverter writes for the same
//! Connect value: ints and longs as numbers, bytes (decimals included) as base64,
//! non-finite floats as `"NaN"`, `"Infinity"`, `"-Infinity"`, structs as objects in
//! field order, string-keyed maps as objects, optional nulls as `null`.
//!
//! Input comes from the network: every length and count is checked against the bytes
//! left before anything is allocated, and a record must use its bytes exactly.

use std::io::Write;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use super::schema::{Kind, Node};

/// Arrays and maps of zero-width items (nulls, empty records) may claim this many
/// items at most; any other item takes at least a byte, so its count is bounded by
/// the bytes left.
const MAX_ZERO_WIDTH_ITEMS: u64 = 1 << 20;

/// Decodes one record of `node` from `bytes` as JSON appended to `out`.
pub fn decode(node: &Node, bytes: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
    let mut r = Reader { bytes, pos: 0 };
    r.value(node, out)?;
    if r.pos != bytes.len() {
        return Err(format!(
            "{} bytes left over after the record (the schema does not match the data)",
            bytes.len() - r.pos
        ));
    }
    Ok(())
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn left(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if n > self.left() {
            return Err(format!(
                "the record ends early: {n} bytes wanted at byte {}, {} left",
                self.pos,
                self.left()
            ));
        }
        let s = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    /// A zig-zag varint (Avro `int` and `long`).
    fn long(&mut self) -> Result<i64, String> {
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = *self.take(1)?.first().unwrap_or(&0);
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok((v >> 1) as i64 ^ -((v & 1) as i64));
            }
        }
        Err(format!(
            "a varint longer than 10 bytes at byte {}",
            self.pos
        ))
    }

    fn int(&mut self) -> Result<i32, String> {
        let v = self.long()?;
        i32::try_from(v).map_err(|_| format!("int {v} out of range"))
    }

    fn len(&mut self) -> Result<usize, String> {
        let n = self.long()?;
        usize::try_from(n).map_err(|_| format!("a negative length ({n})"))
    }

    fn str(&mut self) -> Result<&'a str, String> {
        let n = self.len()?;
        let b = self.take(n)?;
        std::str::from_utf8(b).map_err(|e| format!("a string that is not UTF-8: {e}"))
    }

    /// The item count of the next block of an array or map (0: the end), its byte
    /// size skipped when given.
    fn block(&mut self, zero_width: bool) -> Result<u64, String> {
        let n = self.long()?;
        let count = if n < 0 {
            self.long()?; // the block's size in bytes
            n.unsigned_abs()
        } else {
            n as u64
        };
        let max = if zero_width {
            MAX_ZERO_WIDTH_ITEMS
        } else {
            self.left() as u64
        };
        if count > max {
            return Err(format!(
                "a block of {count} items, more than the record's {} bytes left can hold",
                self.left()
            ));
        }
        Ok(count)
    }

    /// The items of an array or map, block by block, each written by `item` after a
    /// comma but the first.
    fn blocks(
        &mut self,
        zero_width: bool,
        out: &mut Vec<u8>,
        mut item: impl FnMut(&mut Self, &mut Vec<u8>) -> Result<(), String>,
    ) -> Result<(), String> {
        let mut first = true;
        loop {
            let count = self.block(zero_width)?;
            if count == 0 {
                return Ok(());
            }
            for _ in 0..count {
                if !first {
                    out.push(b',');
                }
                first = false;
                item(self, out)?;
            }
        }
    }

    fn value(&mut self, node: &Node, out: &mut Vec<u8>) -> Result<(), String> {
        match &node.kind {
            Kind::Null => out.extend_from_slice(b"null"),
            Kind::Boolean => match self.take(1)?[0] {
                0 => out.extend_from_slice(b"false"),
                1 => out.extend_from_slice(b"true"),
                b => return Err(format!("a boolean byte of {b}")),
            },
            Kind::Int => {
                let v = self.int()?;
                write!(out, "{v}").map_err(|e| e.to_string())?;
            }
            Kind::Long => {
                let v = self.long()?;
                write!(out, "{v}").map_err(|e| e.to_string())?;
            }
            Kind::Float => {
                let b = self.take(4)?;
                let v = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                if v.is_finite() {
                    serde_json::to_writer(&mut *out, &v).map_err(|e| e.to_string())?;
                } else {
                    non_finite(f64::from(v), out);
                }
            }
            Kind::Double => {
                let b = self.take(8)?;
                let v = f64::from_le_bytes(b.try_into().unwrap_or([0; 8]));
                if v.is_finite() {
                    serde_json::to_writer(&mut *out, &v).map_err(|e| e.to_string())?;
                } else {
                    non_finite(v, out);
                }
            }
            Kind::Bytes => {
                let n = self.len()?;
                base64(self.take(n)?, out);
            }
            Kind::Fixed(n) => base64(self.take(*n)?, out),
            Kind::String => {
                let s = self.str()?;
                serde_json::to_writer(&mut *out, s).map_err(|e| e.to_string())?;
            }
            Kind::Enum(symbols) => {
                let i = self.int()?;
                let s = usize::try_from(i)
                    .ok()
                    .and_then(|i| symbols.get(i))
                    .ok_or_else(|| format!("enum index {i} of {} symbols", symbols.len()))?;
                serde_json::to_writer(&mut *out, s).map_err(|e| e.to_string())?;
            }
            Kind::Array(items) => {
                out.push(b'[');
                self.blocks(zero_width(items), out, |r, out| r.value(items, out))?;
                out.push(b']');
            }
            Kind::Map(values) => {
                out.push(b'{');
                // A key takes at least its length byte.
                self.blocks(false, out, |r, out| {
                    let k = r.str()?;
                    serde_json::to_writer(&mut *out, k).map_err(|e| e.to_string())?;
                    out.push(b':');
                    r.value(values, out)
                })?;
                out.push(b'}');
            }
            Kind::Record(fields) => {
                out.push(b'{');
                for (i, f) in fields.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    serde_json::to_writer(&mut *out, &f.name).map_err(|e| e.to_string())?;
                    out.push(b':');
                    self.value(&f.node, out)
                        .map_err(|e| format!("field '{}': {e}", f.name))?;
                }
                out.push(b'}');
            }
            Kind::Optional { null_branch, inner } => {
                let branch = self.long()?;
                match branch {
                    0 | 1 if branch == i64::from(*null_branch) => out.extend_from_slice(b"null"),
                    0 | 1 => self.value(inner, out)?,
                    other => return Err(format!("union branch {other} of 2")),
                }
            }
        }
        Ok(())
    }
}

/// Whether a value of `node` may take no bytes at all.
fn zero_width(node: &Node) -> bool {
    match &node.kind {
        Kind::Null | Kind::Fixed(0) => true,
        Kind::Record(fields) => fields.iter().all(|f| zero_width(&f.node)),
        _ => false,
    }
}

fn base64(bytes: &[u8], out: &mut Vec<u8>) {
    out.push(b'"');
    let start = out.len();
    out.resize(start + bytes.len().div_ceil(3) * 4, 0);
    let n = STANDARD
        .encode_slice(bytes, &mut out[start..])
        .unwrap_or_default();
    out.truncate(start + n);
    out.push(b'"');
}

/// A non-finite float as the JsonConverter (Jackson) writes it: quoted.
fn non_finite(v: f64, out: &mut Vec<u8>) {
    let text: &[u8] = if v.is_nan() {
        b"\"NaN\""
    } else if v > 0.0 {
        b"\"Infinity\""
    } else {
        b"\"-Infinity\""
    };
    out.extend_from_slice(text);
}

#[cfg(test)]
pub(crate) mod tests {
    use super::super::schema::parse;
    use super::*;
    use serde_json::{Value, json};

    /// Avro binary writing, for tests: zig-zag varints and length-prefixed bytes.
    pub(crate) fn long(v: i64, out: &mut Vec<u8>) {
        let mut z = ((v << 1) ^ (v >> 63)) as u64;
        loop {
            let b = (z & 0x7f) as u8;
            z >>= 7;
            if z == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }

    pub(crate) fn bytes(b: &[u8], out: &mut Vec<u8>) {
        long(b.len() as i64, out);
        out.extend_from_slice(b);
    }

    fn decoded(schema: Value, data: &[u8]) -> Result<Value, String> {
        let node = parse(&schema.to_string())?;
        let mut out = Vec::new();
        decode(&node, data, &mut out)?;
        Ok(serde_json::from_slice(&out).expect("valid JSON"))
    }

    #[test]
    fn every_avro_type_decodes_as_the_json_converter_writes_it() {
        let schema = json!({"type": "record", "name": "R", "fields": [
            {"name": "i", "type": "int"},
            {"name": "l", "type": "long"},
            {"name": "f", "type": "float"},
            {"name": "d", "type": "double"},
            {"name": "nan", "type": "double"},
            {"name": "b", "type": "boolean"},
            {"name": "s", "type": "string"},
            {"name": "raw", "type": "bytes"},
            {"name": "fx", "type": {"type": "fixed", "name": "F", "size": 2}},
            {"name": "e", "type": {"type": "enum", "name": "E", "symbols": ["a", "b"]}},
            {"name": "none", "type": ["null", "string"]},
            {"name": "some", "type": ["string", "null"]},
            {"name": "arr", "type": {"type": "array", "items": "int"}},
            {"name": "m", "type": {"type": "map", "values": "long"}}
        ]});
        let mut d = Vec::new();
        long(-3, &mut d);
        long(i64::MIN, &mut d);
        d.extend_from_slice(&1.5f32.to_le_bytes());
        d.extend_from_slice(&0.1f64.to_le_bytes());
        d.extend_from_slice(&f64::NAN.to_le_bytes());
        d.push(1);
        bytes("é\"\n".as_bytes(), &mut d);
        bytes(&[0xff, 0, 1], &mut d);
        d.extend_from_slice(&[1, 2]);
        long(1, &mut d);
        long(0, &mut d); // null branch
        long(0, &mut d); // string branch
        bytes(b"x", &mut d);
        // Two blocks: one with its byte size (negative count), then the end.
        long(-2, &mut d);
        long(2, &mut d);
        long(7, &mut d);
        long(-8, &mut d);
        long(1, &mut d);
        long(9, &mut d);
        long(0, &mut d);
        long(1, &mut d);
        bytes(b"k", &mut d);
        long(42, &mut d);
        long(0, &mut d);
        assert_eq!(
            decoded(schema, &d).unwrap(),
            json!({"i": -3, "l": i64::MIN, "f": 1.5, "d": 0.1, "nan": "NaN", "b": true,
                   "s": "é\"\n", "raw": "/wAB", "fx": "AQI=", "e": "b", "none": null,
                   "some": "x", "arr": [7, -8, 9], "m": {"k": 42}})
        );
    }

    #[test]
    fn hostile_bytes_are_errors_not_allocations_or_loops() {
        let s = json!({"type": "record", "name": "R", "fields": [{"name": "s", "type": "string"}]});
        // A length far beyond the data.
        let mut d = Vec::new();
        long(1 << 40, &mut d);
        assert!(decoded(s.clone(), &d).unwrap_err().contains("ends early"));
        // A negative length.
        let mut d = Vec::new();
        long(-5, &mut d);
        assert!(
            decoded(s.clone(), &d)
                .unwrap_err()
                .contains("negative length")
        );
        // Trailing bytes.
        let mut d = Vec::new();
        bytes(b"a", &mut d);
        d.push(0);
        assert!(decoded(s.clone(), &d).unwrap_err().contains("left over"));
        // Invalid UTF-8.
        let mut d = Vec::new();
        bytes(&[0xc3, 0x28], &mut d);
        assert!(decoded(s, &d).unwrap_err().contains("not UTF-8"));
        // A huge count of null items.
        let nulls = json!({"type": "array", "items": "null"});
        let mut d = Vec::new();
        long(1 << 50, &mut d);
        assert!(decoded(nulls.clone(), &d).unwrap_err().contains("items"));
        let mut d = Vec::new();
        long(3, &mut d);
        long(0, &mut d);
        assert_eq!(decoded(nulls, &d).unwrap(), json!([null, null, null]));
        // A huge count of ints in a few bytes.
        let mut d = Vec::new();
        long(1 << 30, &mut d);
        let ints = json!({"type": "array", "items": "int"});
        assert!(decoded(ints, &d).unwrap_err().contains("items"));
        // An endless varint, an int out of range, a bad union branch, a bad boolean.
        assert!(
            decoded(json!("long"), &[0xff; 11])
                .unwrap_err()
                .contains("varint")
        );
        let mut d = Vec::new();
        long(1 << 40, &mut d);
        assert!(
            decoded(json!("int"), &d)
                .unwrap_err()
                .contains("out of range")
        );
        assert!(
            decoded(json!(["null", "int"]), &[4])
                .unwrap_err()
                .contains("branch 2")
        );
        assert!(
            decoded(json!("boolean"), &[2])
                .unwrap_err()
                .contains("boolean")
        );
    }
}
