//! A command whose stdout is a closed pipe (`varti pmode show … | head`) ends quietly:
//! killed by SIGPIPE like other Unix tools, no panic and no stack trace on stderr.
#![cfg(unix)]

use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Runs `varti` with stdout connected to a pipe whose reading end is already closed, so
/// the very first write to stdout fails (no race with a reader closing late).
fn varti_into_closed_pipe(args: &[&str]) -> Output {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe(2) writes.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0, "pipe(2) failed");
    // SAFETY: pipe(2) just opened both descriptors; each is owned once, here.
    let (reader, writer) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    drop(reader);
    Command::new(env!("CARGO_BIN_EXE_varti"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::from(writer))
        .stderr(Stdio::piped())
        .output()
        .expect("running varti")
}

fn assert_quiet_sigpipe(what: &str, out: &Output) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("panicked") && !stderr.contains("Broken pipe"),
        "{what} on a closed stdout must end quietly, stderr:\n{stderr}"
    );
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGPIPE),
        "{what} should end by SIGPIPE, as `cat | head` does; status {:?}, stderr:\n{stderr}",
        out.status
    );
}

#[test]
fn pmode_show_into_a_closed_pipe_ends_quietly() {
    let pmodes = repo().join("pmodes");
    let out = varti_into_closed_pipe(&["pmode", "show", pmodes.to_str().unwrap()]);
    assert_quiet_sigpipe("pmode show", &out);
}

#[test]
fn message_seal_into_a_closed_pipe_ends_quietly() {
    let repo = repo();
    let tmp = tempfile::tempdir().unwrap();
    let payload = tmp.path().join("payload.xml");
    std::fs::write(&payload, b"<hello/>").unwrap();
    let sealed = tmp.path().join("sealed.http");
    let p = |p: &Path| p.to_str().unwrap().to_owned();
    let out = varti_into_closed_pipe(&[
        "message",
        "seal",
        "--pmodes",
        &p(&repo.join("pmodes")),
        "--leg",
        "test/test",
        "--key",
        &p(&repo.join("certs/varti-a/sign.key.pem")),
        "--out",
        &p(&sealed),
        &p(&payload),
    ]);
    assert_quiet_sigpipe("message seal", &out);
    assert!(
        sealed.is_file(),
        "the message is written before the summary is printed"
    );
}
