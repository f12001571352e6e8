//! The seed's JSON codec's unit tests.

use super::*;

fn num(x: f64) -> String {
    let mut s = String::new();
    write_number(&mut s, x);
    s
}

#[test]
fn numbers_format_as_javascript_does() {
    for (x, js) in [
        (1.0, "1"),
        (-0.0, "0"),
        (0.1, "0.1"),
        (1.5e-7, "1.5e-7"),
        (1e-6, "0.000001"),
        (123456.789, "123456.789"),
        (1e21, "1e+21"),
        (1e20, "100000000000000000000"),
        (1.7976931348623157e308, "1.7976931348623157e+308"),
        (5e-324, "5e-324"),
        (-2.5, "-2.5"),
        (0.30000000000000004, "0.30000000000000004"),
        (1833589637483807.2, "1833589637483807.2"),
    ] {
        assert_eq!(num(x), js, "{x:e}");
    }
}

#[test]
fn strings_escape_as_javascript_does() {
    let mut s = String::new();
    write_string(&mut s, "a\"b\\c\n\u{1}\u{1f}\u{7f}é\u{2028}😀/");
    assert_eq!(s, "\"a\\\"b\\\\c\\n\\u0001\\u001f\u{7f}é\u{2028}😀/\"");
}

#[test]
fn integer_keys_come_first_in_ascending_order() {
    let v = parse(r#"{"b":1,"10":2,"a":3,"2":4,"01":5,"4294967295":6,"4294967294":7}"#).unwrap();
    assert_eq!(
        stringify(&v),
        r#"{"2":4,"10":2,"4294967294":7,"b":1,"a":3,"01":5,"4294967295":6}"#
    );
}

#[test]
fn repeated_keys_keep_the_first_position_and_the_last_value() {
    let v = parse(r#"{"a":1,"b":2,"a":3}"#).unwrap();
    assert_eq!(stringify(&v), r#"{"a":3,"b":2}"#);
}

#[test]
fn parse_follows_json_parse() {
    assert_eq!(
        parse(" [1.0, -0, 2e3, \"\\ud83d\\ude00\\u00e9\"] ").unwrap(),
        JsValue::Arr(vec![
            JsValue::Int(1),
            JsValue::Int(0),
            JsValue::Int(2000),
            JsValue::Str("😀é".into())
        ])
    );
    assert_eq!(
        parse("9007199254740993").unwrap(),
        JsValue::Num(9007199254740992.0)
    );
    for bad in [
        "",
        "{",
        "[1,]",
        "01",
        "1.",
        "1e",
        "{\"a\" 1}",
        "\"\u{1}\"",
        "\"\\ud800\"",
        "tru",
        "{} x",
        "1e999",
        "NaN",
        "'a'",
    ] {
        assert!(parse(bad).unwrap_err().is_decode(), "{bad:?}");
    }
    let deep = "[".repeat(10_000);
    assert!(parse(&deep).unwrap_err().is_decode());
}
