#![no_main]
//! Arbitrary bytes as `Cookie` headers through the session-cookie lookup and verifier.
libfuzzer_sys::fuzz_target!(|data: &[u8]| tessera_tests::fuzzing::cookie_header(data));
