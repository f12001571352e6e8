//! Replays the fuzzers' regression corpus (`tests/fuzz/corpus/`) through the same entry points,
//! so every input that ever mattered stays covered by the ordinary test run.

use std::{fs, path::Path};

fn replay(target: &str, check: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut n = 0;
    for entry in fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let data = fs::read(&path).unwrap();
        let outcome = std::panic::catch_unwind(|| check(&data));
        assert!(
            outcome.is_ok(),
            "corpus input {} broke an invariant",
            path.display()
        );
        n += 1;
    }
    assert!(n >= 10, "the {target} corpus has only {n} inputs");
    eprintln!("{target}: {n} corpus inputs replayed");
}

#[test]
fn cookie_header_corpus() {
    replay("cookie_header", tessera_tests::fuzzing::cookie_header);
}

#[test]
fn stored_record_corpus() {
    replay("stored_record", tessera_tests::fuzzing::stored_record);
}
