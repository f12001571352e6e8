//! The profile's JSON writer and cookie signatures against Node itself: generated objects (keys
//! in any insertion order, integer-like keys, any number, strings with control characters and
//! non-ASCII) are written in insertion order, read and re-written by `JSON.stringify`, and must
//! come back byte-identical to what Tessera writes; signatures must equal keygrip's.

use std::{
    io::Write,
    process::{Command, Stdio},
};

use tessera_engine::koa::{
    from_msgpack,
    json::{stringify, JsValue},
    to_msgpack,
};
use tessera_middleware::koa::Keygrip;

/// A small deterministic generator (xorshift64*), so a failure names a reproducible seed.
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn string(&mut self) -> String {
        const PALETTE: &[char] = &[
            'a', 'Z', '0', ' ', '"', '\\', '/', '\n', '\r', '\t', '\u{0}', '\u{1}', '\u{8}',
            '\u{c}', '\u{1f}', '\u{7f}', 'é', 'ß', '中', '\u{2028}', '\u{2029}', '😀', '\u{fffd}',
        ];
        (0..self.below(8))
            .map(|_| PALETTE[self.below(PALETTE.len() as u64) as usize])
            .collect()
    }

    fn key(&mut self) -> String {
        const KEYS: &[&str] = &[
            "0",
            "1",
            "2",
            "10",
            "01",
            "-1",
            "1.5",
            "4294967294",
            "4294967295",
            "9",
            "a",
            "b",
            "views",
            "",
            "__proto__x",
            "toString",
        ];
        if self.below(3) == 0 {
            self.string()
        } else {
            KEYS[self.below(KEYS.len() as u64) as usize].to_owned()
        }
    }

    fn number(&mut self) -> f64 {
        match self.below(4) {
            0 => {
                (self.below(2_000_001) as f64 - 1_000_000.0)
                    / [1.0, 10.0, 1000.0][self.below(3) as usize]
            }
            1 => f64::from_bits(self.next()),
            2 => 10f64.powi(self.below(60) as i32 - 30) * (self.below(9) + 1) as f64,
            _ => self.below(1 << 53) as f64,
        }
    }

    fn value(&mut self, depth: u32) -> JsValue {
        let pick = if depth >= 3 {
            self.below(5)
        } else {
            self.below(7)
        };
        match pick {
            0 => JsValue::Null,
            1 => JsValue::Bool(self.below(2) == 0),
            2 => {
                let x = self.number();
                if x.is_finite() {
                    tessera_engine::koa::json::number(x)
                } else {
                    JsValue::Int(0)
                }
            }
            3 | 4 => JsValue::Str(self.string()),
            5 => JsValue::Arr((0..self.below(4)).map(|_| self.value(depth + 1)).collect()),
            _ => self.object(depth + 1),
        }
    }

    fn object(&mut self, depth: u32) -> JsValue {
        let mut entries: Vec<(String, JsValue)> = Vec::new();
        for _ in 0..self.below(6) {
            let key = self.key();
            let value = self.value(depth);
            match entries.iter_mut().find(|(k, _)| *k == key) {
                Some(slot) => slot.1 = value,
                None => entries.push((key, value)),
            }
        }
        JsValue::Obj(entries)
    }
}

/// JSON in the value's own insertion order, numbers in Rust's exponent form: what Node must
/// normalise on its own (key order, number form).
fn raw(value: &JsValue, out: &mut String) {
    match value {
        JsValue::Null => out.push_str("null"),
        JsValue::Bool(b) => out.push_str(&b.to_string()),
        JsValue::Int(i) => out.push_str(&i.to_string()),
        JsValue::Num(x) => out.push_str(&format!("{x:e}")),
        JsValue::Str(s) => out.push_str(&serde_json::to_string(s).unwrap()),
        JsValue::Arr(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                raw(item, out);
            }
            out.push(']');
        }
        JsValue::Obj(entries) => {
            out.push('{');
            for (i, (k, v)) in entries.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&serde_json::to_string(k).unwrap());
                out.push(':');
                raw(v, out);
            }
            out.push('}');
        }
    }
}

/// Runs `script` under node with `input` on stdin; returns its stdout lines.
fn node(script: &str, input: &str) -> Vec<String> {
    let mut child = Command::new("node")
        .args(["-e", script])
        .current_dir(tessera_tests::koa::app_dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("node is installed (tests/run.sh installs it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "node failed");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

const EACH_LINE: &str = "let d='';process.stdin.on('data',c=>d+=c).on('end',()=>{\
    for(const l of d.split('\\n')){if(l)console.log(f(JSON.parse(l)))}});";

#[test]
fn the_writer_matches_json_stringify_on_generated_objects() {
    let mut gen = Gen(0x5eed_1234_abcd_0001);
    let values: Vec<JsValue> = (0..2000).map(|_| gen.object(0)).collect();
    let mut input = String::new();
    for v in &values {
        raw(v, &mut input);
        input.push('\n');
    }
    let script = format!("const f=o=>JSON.stringify(o);{EACH_LINE}");
    let from_node = node(&script, &input);
    assert_eq!(from_node.len(), values.len());
    for (i, (v, js)) in values.iter().zip(&from_node).enumerate() {
        let ours = stringify(v);
        assert_eq!(&ours, js, "object #{i}");
        // Through the engine's MessagePack and back: the same bytes.
        if let JsValue::Obj(entries) = v {
            for (k, field) in entries {
                let again = from_msgpack(k, &to_msgpack(field)).unwrap();
                assert_eq!(
                    stringify(&again),
                    stringify(field),
                    "object #{i} field {k:?}"
                );
            }
        }
    }
}

#[test]
fn numbers_match_javascript_on_random_bit_patterns() {
    let mut gen = Gen(0x0bad_cafe_f00d_0002);
    let xs: Vec<f64> = (0..20_000)
        .map(|_| f64::from_bits(gen.next()))
        .filter(|x| x.is_finite())
        .collect();
    let input: String = xs.iter().map(|x| format!("[{x:e}]\n")).collect();
    let script = format!("const f=o=>String(o[0]);{EACH_LINE}");
    let from_node = node(&script, &input);
    for (x, js) in xs.iter().zip(&from_node) {
        let mut ours = String::new();
        tessera_engine::koa::json::write_number(&mut ours, *x);
        assert_eq!(&ours, js, "{x:e}");
    }
}

#[test]
fn signatures_match_keygrip() {
    let mut gen = Gen(0x6b65_7967_7269_7003);
    let mut cases = Vec::new();
    let mut input = String::new();
    for _ in 0..300 {
        let key: String = (0..16 + gen.below(20))
            .map(|_| char::from(b'!' + gen.below(90) as u8))
            .collect();
        let sid: String = (0..24)
            .map(|_| char::from(b"abcdefghijklmnopqrstuvwxyz0123456789"[gen.below(36) as usize]))
            .collect();
        input.push_str(&serde_json::to_string(&[&key, &format!("koa:sess={sid}")]).unwrap());
        input.push('\n');
        cases.push((key, sid));
    }
    let script = format!("const K=require('keygrip');const f=a=>K([a[0]]).sign(a[1]);{EACH_LINE}");
    let from_node = node(&script, &input);
    assert_eq!(from_node.len(), cases.len());
    for ((key, sid), js) in cases.iter().zip(&from_node) {
        let data = format!("koa:sess={sid}");
        let keys = Keygrip::new([key.as_str()]).unwrap();
        assert_eq!(&keys.sign(data.as_bytes()), js, "key {key:?}");
        assert_eq!(keys.index(data.as_bytes(), js), Some(0));
    }
}
