//! The demo's command-line contract, checked on the built binary: `--help` is byte-for-byte the
//! recorded text (flags, environment variables, defaults), so a change to it is deliberate.

use std::process::Command;

fn demo() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_demo"));
    // The help lists current environment values; none of ours may leak into it.
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("TESSERA_") {
            command.env_remove(name);
        }
    }
    command
}

#[test]
fn help_is_the_recorded_text() {
    let out = demo().arg("--help").output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        include_str!("help.txt"),
        "`demo --help` changed; if that is intended, update tests/help.txt and the README"
    );
}

#[test]
fn an_unknown_flag_exits_with_status_2() {
    let out = demo().arg("--bogus").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("unexpected argument '--bogus'"), "{stderr}");
}
