//! Varti's gzip, with each member's size in an extra field of its header, read by gzip
//! readers that are not Varti's: Java's `GZIPInputStream` (what Domibus and phase4
//! decompress AS4 parts with), CPython's `gzip` module and GNU gzip. Each must inflate the
//! whole multi-member stream to the original bytes, skipping the extra fields.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use varti_as4::compress::{gunzip, gzip, MEMBER_SIZE, SIZE_SUBFIELD};

/// Compressible text of `len` bytes with some variety in it.
fn text(len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    let mut i = 0u32;
    while out.len() < len {
        out.extend_from_slice(
            format!("<record n=\"{i}\">value {}</record>\n", i * 7919 % 1000).as_bytes(),
        );
        i += 1;
    }
    out.truncate(len);
    out
}

/// Runs `program args` with `input` on stdin; its stdout, or a panic naming the reader.
fn inflate_with(program: &str, args: &[&str], input: &[u8]) -> Vec<u8> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start `{program}` ({e}); it must be installed"));
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let feeder = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().unwrap();
    feeder.join().unwrap().unwrap();
    assert!(
        out.status.success(),
        "`{program}` failed to read Varti's gzip: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

#[test]
fn other_gzip_readers_inflate_members_that_give_their_size() {
    // Three and a half members.
    let data = text(3 * MEMBER_SIZE + MEMBER_SIZE / 2);
    let mut gz = Vec::new();
    gzip(&data[..], &mut gz).unwrap();
    // The stream really carries the field: FEXTRA set and the subfield first.
    assert_eq!(gz[3] & 0x04, 0x04, "FEXTRA flag");
    assert_eq!(gz[12..14], SIZE_SUBFIELD);
    let mut ours = Vec::new();
    gunzip(&gz[..], &mut ours, data.len() as u64).unwrap();
    assert_eq!(ours, data);

    let java = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/compress_readers/Gunzip.java");
    let python =
        "import gzip, sys; sys.stdout.buffer.write(gzip.decompress(sys.stdin.buffer.read()))";
    for (program, args) in [
        ("java", vec![java.to_str().unwrap()]),
        ("python3", vec!["-c", python]),
        ("gzip", vec!["-dc"]),
    ] {
        let out = inflate_with(program, &args, &gz);
        assert_eq!(out.len(), data.len(), "{program}");
        assert!(out == data, "{program} inflated other bytes");
    }
}
