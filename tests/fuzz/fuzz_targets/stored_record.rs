#![no_main]
//! Arbitrary bytes as a stored session record (meta and value fields).
libfuzzer_sys::fuzz_target!(|data: &[u8]| tessera_tests::fuzzing::stored_record(data));
