//! The link's pure parts: tracking info, the table bound, the eviction count.

use fred::types::Value;

use super::*;

fn map(pairs: Vec<(&str, Value)>) -> Value {
    let map: fred::types::Map = pairs
        .into_iter()
        .map(|(k, v)| (fred::types::Key::from(k), v))
        .collect::<std::collections::HashMap<_, _>>()
        .try_into()
        .unwrap();
    Value::Map(map)
}

#[test]
fn evictions_between_heartbeats_are_noticed() {
    let link = Link::new(Client::default());
    // No baseline yet (tracking not enabled): nothing to compare with.
    assert!(!link.evicted_since(7));
    assert!(!link.evicted_since(7));
    assert!(link.evicted_since(8));
    assert!(!link.evicted_since(8));
    // A counter reset (a restarted server) is a change too.
    assert!(link.evicted_since(0));
    assert_eq!(
        info_number("# Stats\r\nevicted_keys:12\r\n", "evicted_keys"),
        Some(12)
    );
}

#[test]
fn a_nearly_full_tracking_table_bypasses() {
    assert!(!table_full(Some(10), 0));
    assert!(!table_full(Some(89), 100));
    assert!(table_full(Some(90), 100));
    assert!(table_full(Some(500), 10));
    assert!(!table_full(None, 10));
    let info = "# Stats\r\ntracking_total_keys:42\r\ntracking_total_items:50\r\n";
    assert_eq!(info_number(info, "tracking_total_keys"), Some(42));
    assert_eq!(info_number(info, "missing"), None);
    assert_eq!(
        config_number(&Value::Array(vec![
            "tracking-table-max-keys".into(),
            "10".into()
        ])),
        Some(10)
    );
}

#[test]
fn tracking_info_is_read_strictly() {
    let on = map(vec![
        ("flags", Value::Array(vec!["on".into(), "noloop".into()])),
        ("redirect", Value::Integer(0)),
    ]);
    assert!(tracking_on(&on));
    let off = map(vec![
        ("flags", Value::Array(vec!["off".into()])),
        ("redirect", Value::Integer(-1)),
    ]);
    assert!(!tracking_on(&off));
    let redirected = map(vec![
        ("flags", Value::Array(vec!["on".into()])),
        ("redirect", Value::Integer(7)),
    ]);
    assert!(!tracking_on(&redirected));
    assert!(!tracking_on(&Value::Null));
}
