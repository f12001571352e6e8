//! JSON as JavaScript reads and writes it: a parser with `JSON.parse`'s rules and a writer whose
//! output is byte-identical to `JSON.stringify` of the same object. The Node seed rewrites a
//! session whenever `JSON.stringify(session)` differs from the stored string, so every byte
//! counts. No I/O here.

use std::collections::HashMap;

use crate::error::{Error, ErrorKind, Result};

/// JavaScript's `Number.MAX_SAFE_INTEGER` (2^53 - 1): past it, integers lose precision in Node.
pub const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;

/// The deepest nesting accepted when parsing, as for MessagePack (`record::MAX_DEPTH`).
const MAX_DEPTH: usize = crate::record::MAX_DEPTH;

/// A JSON value with JavaScript's object semantics: keys keep their first insertion position,
/// a repeated key replaces the value in place.
#[derive(Debug, Clone, PartialEq)]
pub enum JsValue {
    /// `null`.
    Null,
    /// `true` / `false`.
    Bool(bool),
    /// A number that is an integer within ±[`MAX_SAFE_INTEGER`] (kept as a MessagePack integer).
    Int(i64),
    /// Any other finite number.
    Num(f64),
    /// A string.
    Str(String),
    /// An array.
    Arr(Vec<JsValue>),
    /// An object, in insertion order.
    Obj(Vec<(String, JsValue)>),
}

/// Builds an object with JavaScript's rule for repeated keys (first position, last value).
#[derive(Debug, Default)]
pub(crate) struct ObjBuilder {
    entries: Vec<(String, JsValue)>,
    index: HashMap<String, usize>,
}

impl ObjBuilder {
    pub(crate) fn insert(&mut self, key: String, value: JsValue) {
        match self.index.get(&key) {
            Some(&i) => self.entries[i].1 = value,
            None => {
                self.index.insert(key.clone(), self.entries.len());
                self.entries.push((key, value));
            }
        }
    }

    pub(crate) fn finish(self) -> Vec<(String, JsValue)> {
        self.entries
    }
}

/// A number as a [`JsValue`]: integers within ±[`MAX_SAFE_INTEGER`] become [`JsValue::Int`]
/// (`-0` too, which JavaScript writes as `0`).
pub fn number(x: f64) -> JsValue {
    if x.fract() == 0.0 && x.abs() <= MAX_SAFE_INTEGER as f64 {
        JsValue::Int(x as i64)
    } else {
        JsValue::Num(x)
    }
}

/// Whether `key` is an array index (a canonical decimal below 2^32 - 1): JavaScript lists such
/// keys first, in ascending numeric order, whatever the insertion order.
fn array_index(key: &str) -> Option<u32> {
    let b = key.as_bytes();
    if b.is_empty() || b.len() > 10 || (b.len() > 1 && b[0] == b'0') {
        return None;
    }
    if !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    key.parse::<u64>()
        .ok()
        .filter(|&n| n < u64::from(u32::MAX))
        .map(|n| n as u32)
}

/// The object's keys in JavaScript's property order.
pub(crate) fn property_order(entries: &[(String, JsValue)]) -> Vec<usize> {
    let mut indices: Vec<(u32, usize)> = Vec::new();
    let mut others = Vec::with_capacity(entries.len());
    for (i, (key, _)) in entries.iter().enumerate() {
        match array_index(key) {
            Some(n) => indices.push((n, i)),
            None => others.push(i),
        }
    }
    indices.sort_unstable();
    indices.into_iter().map(|(_, i)| i).chain(others).collect()
}

/// `JSON.stringify(value)`.
pub fn stringify(value: &JsValue) -> String {
    let mut out = String::new();
    write_value(&mut out, value);
    out
}

pub(crate) fn write_value(out: &mut String, value: &JsValue) {
    match value {
        JsValue::Null => out.push_str("null"),
        JsValue::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        JsValue::Int(i) => out.push_str(&i.to_string()),
        JsValue::Num(x) => write_number(out, *x),
        JsValue::Str(s) => write_string(out, s),
        JsValue::Arr(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(out, item);
            }
            out.push(']');
        }
        JsValue::Obj(entries) => {
            out.push('{');
            for (n, i) in property_order(entries).into_iter().enumerate() {
                if n > 0 {
                    out.push(',');
                }
                write_string(out, &entries[i].0);
                out.push(':');
                write_value(out, &entries[i].1);
            }
            out.push('}');
        }
    }
}

/// JavaScript's `Number.prototype.toString()` for a finite number (ECMA-262 Number::toString):
/// the shortest digits that round-trip, positional between 1e-7 and 1e21, exponent form outside.
/// Non-finite numbers are refused before they get here (they have no JSON form).
pub fn write_number(out: &mut String, x: f64) {
    if x == 0.0 || !x.is_finite() {
        // -0 is written as 0; NaN and infinities never reach here (refused on conversion).
        out.push('0');
        return;
    }
    if x < 0.0 {
        out.push('-');
    }
    let sci = shortest_closest(x.abs());
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let k = digits.len() as i64;
    let n = exp.parse::<i64>().unwrap_or(0) + 1;
    if k <= n && n <= 21 {
        out.push_str(&digits);
        out.extend(std::iter::repeat_n('0', (n - k) as usize));
    } else if 0 < n && n <= 21 {
        out.push_str(&digits[..n as usize]);
        out.push('.');
        out.push_str(&digits[n as usize..]);
    } else if -6 < n && n <= 0 {
        out.push_str("0.");
        out.extend(std::iter::repeat_n('0', (-n) as usize));
        out.push_str(&digits);
    } else {
        out.push_str(&digits[..1]);
        if k > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        out.push('e');
        out.push(if n > 0 { '+' } else { '-' });
        out.push_str(&(n - 1).abs().to_string());
    }
}

/// `x` in exponent form with the fewest digits that read back as `x` and, among those, the digits
/// closest to `x` (ties to even), which is what ECMAScript asks for. Rust's `{:e}` finds the
/// fewest digits but, when two such candidates are equally short, does not always pick the
/// closest (1833589637483807.25 prints as `…807.3`, JavaScript says `…807.2`); its fixed-precision
/// form is the correctly rounded one, so it is used whenever it still reads back as `x`.
fn shortest_closest(x: f64) -> String {
    let shortest = format!("{x:e}");
    let digits = shortest.split_once('e').map_or(shortest.len(), |(m, _)| {
        m.chars().filter(char::is_ascii_digit).count()
    });
    let rounded = format!("{x:.prec$e}", prec = digits.saturating_sub(1));
    if rounded.parse::<f64>().ok() == Some(x) {
        rounded
    } else {
        shortest
    }
}

/// A string as `JSON.stringify` quotes it: `"` and `\` escaped, the five short escapes, other
/// control characters as lowercase `\u00xx`, everything else (non-ASCII included) as is.
pub fn write_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\u{c}' => out.push_str("\\f"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// `JSON.parse(text)`; errors are [`ErrorKind::Decode`].
///
/// # Errors
///
/// [`ErrorKind::Decode`] when `text` is not JSON, or nests deeper than the engine accepts.
pub fn parse(text: &str) -> Result<JsValue> {
    let mut p = Parser {
        s: text.as_bytes(),
        i: 0,
    };
    let value = p.value(0)?;
    p.ws();
    if p.i != p.s.len() {
        return Err(p.err("unexpected data after the JSON value"));
    }
    Ok(value)
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn err(&self, what: &str) -> Error {
        Error::new(
            ErrorKind::Decode,
            format!("the stored JSON is invalid at byte {}: {what}", self.i),
        )
    }

    fn ws(&mut self) {
        while matches!(self.s.get(self.i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    fn eat(&mut self, lit: &[u8]) -> bool {
        if self.s[self.i..].starts_with(lit) {
            self.i += lit.len();
            true
        } else {
            false
        }
    }

    fn value(&mut self, depth: usize) -> Result<JsValue> {
        if depth > MAX_DEPTH {
            return Err(self.err("nested too deeply"));
        }
        self.ws();
        match self.s.get(self.i) {
            Some(b'{') => {
                self.i += 1;
                let mut obj = ObjBuilder::default();
                self.ws();
                if self.eat(b"}") {
                    return Ok(JsValue::Obj(obj.finish()));
                }
                loop {
                    self.ws();
                    if self.s.get(self.i) != Some(&b'"') {
                        return Err(self.err("expected a string key"));
                    }
                    let key = self.string()?;
                    self.ws();
                    if !self.eat(b":") {
                        return Err(self.err("expected ':'"));
                    }
                    let value = self.value(depth + 1)?;
                    obj.insert(key, value);
                    self.ws();
                    if self.eat(b"}") {
                        return Ok(JsValue::Obj(obj.finish()));
                    }
                    if !self.eat(b",") {
                        return Err(self.err("expected ',' or '}'"));
                    }
                }
            }
            Some(b'[') => {
                self.i += 1;
                let mut items = Vec::new();
                self.ws();
                if self.eat(b"]") {
                    return Ok(JsValue::Arr(items));
                }
                loop {
                    items.push(self.value(depth + 1)?);
                    self.ws();
                    if self.eat(b"]") {
                        return Ok(JsValue::Arr(items));
                    }
                    if !self.eat(b",") {
                        return Err(self.err("expected ',' or ']'"));
                    }
                }
            }
            Some(b'"') => Ok(JsValue::Str(self.string()?)),
            Some(b't') if self.eat(b"true") => Ok(JsValue::Bool(true)),
            Some(b'f') if self.eat(b"false") => Ok(JsValue::Bool(false)),
            Some(b'n') if self.eat(b"null") => Ok(JsValue::Null),
            Some(b'-' | b'0'..=b'9') => self.number(),
            _ => Err(self.err("expected a JSON value")),
        }
    }

    fn number(&mut self) -> Result<JsValue> {
        let start = self.i;
        let digits = |p: &mut Self| {
            let from = p.i;
            while matches!(p.s.get(p.i), Some(b'0'..=b'9')) {
                p.i += 1;
            }
            p.i - from
        };
        self.eat(b"-");
        let int_start = self.i;
        let n = digits(self);
        if n == 0 || (n > 1 && self.s[int_start] == b'0') {
            return Err(self.err("malformed number"));
        }
        if self.eat(b".") && digits(self) == 0 {
            return Err(self.err("malformed fraction"));
        }
        if matches!(self.s.get(self.i), Some(b'e' | b'E')) {
            self.i += 1;
            if !self.eat(b"+") {
                self.eat(b"-");
            }
            if digits(self) == 0 {
                return Err(self.err("malformed exponent"));
            }
        }
        let text = std::str::from_utf8(&self.s[start..self.i]).unwrap_or("x");
        // Correctly rounded, as JavaScript's; out-of-range literals become infinities there and
        // here, and infinities have no JSON form to write back.
        let x: f64 = text.parse().map_err(|_| self.err("malformed number"))?;
        if !x.is_finite() {
            return Err(self.err("number out of range"));
        }
        Ok(number(x))
    }

    fn hex4(&mut self) -> Result<u32> {
        let chunk = self
            .s
            .get(self.i..self.i + 4)
            .ok_or_else(|| self.err("short \\u escape"))?;
        let text = std::str::from_utf8(chunk).map_err(|_| self.err("bad \\u escape"))?;
        if !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(self.err("bad \\u escape"));
        }
        self.i += 4;
        u32::from_str_radix(text, 16).map_err(|_| self.err("bad \\u escape"))
    }

    fn string(&mut self) -> Result<String> {
        self.i += 1; // the opening quote
        let mut out = Vec::new();
        loop {
            let Some(&b) = self.s.get(self.i) else {
                return Err(self.err("unterminated string"));
            };
            self.i += 1;
            match b {
                b'"' => break,
                b'\\' => {
                    let Some(&e) = self.s.get(self.i) else {
                        return Err(self.err("unterminated escape"));
                    };
                    self.i += 1;
                    let c = match e {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => {
                            let hi = self.hex4()?;
                            let code = if (0xd800..0xdc00).contains(&hi) && self.eat(b"\\u") {
                                let lo = self.hex4()?;
                                if !(0xdc00..0xe000).contains(&lo) {
                                    return Err(self.err("unpaired surrogate"));
                                }
                                0x10000 + ((hi - 0xd800) << 10) + (lo - 0xdc00)
                            } else {
                                hi
                            };
                            // Lone surrogates are legal in JavaScript strings but not in Rust's.
                            char::from_u32(code).ok_or_else(|| self.err("unpaired surrogate"))?
                        }
                        _ => return Err(self.err("unknown escape")),
                    };
                    let mut buf = [0u8; 4];
                    out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                }
                b if b < 0x20 => return Err(self.err("control character in string")),
                b => out.push(b),
            }
        }
        // The input was a &str and escapes add whole characters, so this is UTF-8.
        String::from_utf8(out).map_err(|_| self.err("invalid UTF-8"))
    }
}

#[cfg(test)]
mod tests;
