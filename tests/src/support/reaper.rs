//! Orphan protection: a watchdog process kills every server this process started when it dies
//! without running destructors.

use std::{
    io::Write,
    os::unix::process::CommandExt,
    process::{ChildStdin, Command, Stdio},
    sync::{LazyLock, Mutex},
};

use super::lock;

/// Drop only runs when the test process unwinds. If it is killed instead (Ctrl-C, a harness
/// timeout, `panic = "abort"`), the servers would be orphaned. So every server PID is reported to
/// a tiny shell watchdog over a pipe (`+pid` on spawn, `-pid` once we have killed it); when the
/// pipe reaches EOF, i.e. when this process is gone however it died, the watchdog SIGKILLs every
/// PID still registered. It ignores terminal signals and runs in its own process group so a
/// Ctrl-C cannot take it down before it has done its job.
const REAPER_SCRIPT: &str = r#"
trap '' INT TERM HUP PIPE
live=' '
while IFS= read -r line; do
  case "$line" in
    +*) live="$live${line#+} " ;;
    -*) pid="${line#-}"
        case "$live" in *" $pid "*) live="${live%%" $pid "*} ${live#*" $pid "}" ;; esac ;;
  esac
done
for pid in $live; do kill -9 "$pid" 2>/dev/null; done
"#;

/// `None` if the watchdog could not be started; servers are then protected by Drop alone.
static REAPER: LazyLock<Mutex<Option<ChildStdin>>> = LazyLock::new(|| {
    let stdin = Command::new("sh")
        .arg("-c")
        .arg(REAPER_SCRIPT)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .ok()
        .and_then(|mut child| child.stdin.take());
    Mutex::new(stdin)
});

pub(super) fn reaper_note(sign: char, pid: u32) {
    let mut reaper = lock(&REAPER);
    if let Some(stdin) = reaper.as_mut() {
        if writeln!(stdin, "{sign}{pid}").is_err() {
            *reaper = None;
        }
    }
}
