//! Build → parse → equal, for random packages, fed to the parser in random chunk sizes
//! and with random spill thresholds (so both memory and file storage are exercised).

use std::io::Read;

use openssl::sha::sha256;
use proptest::prelude::*;
use varti_as4::message::mime::{ContentType, MimeLimits, MimePackage, MimeParser, MimeWriter};

#[derive(Debug, Clone)]
struct Part {
    id: String,
    content_type: String,
    extra: Vec<(String, String)>,
    body: Vec<u8>,
}

/// Bytes that look like MIME framing, to be spliced into bodies.
fn tricky_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..300),
        Just(b"\r\n--MIMEBoundary_".to_vec()),
        Just(b"\r\n--".to_vec()),
        Just(b"--MIMEBoundary_\r\n\r\n".to_vec()),
        Just(b"\n--".to_vec()),
        Just(b"\r".to_vec()),
        Just(b"\r\n\r\n".to_vec()),
    ]
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(Vec::new()),
        proptest::collection::vec(tricky_bytes(), 0..12).prop_map(|v| v.concat()),
    ]
}

fn text_value() -> impl Strategy<Value = String> {
    // Non-ASCII letters, spaces and quotes; no control characters.
    "[a-zA-Z0-9 žluťoučký_Ελληνικά日本語\"\\\\.-]{0,20}"
}

fn part(i: usize) -> impl Strategy<Value = Part> {
    (text_value(), text_value(), body()).prop_map(move |(param, extra, body)| {
        let ct = ContentType {
            mime_type: "application/octet-stream".into(),
            params: vec![("name".into(), param)],
        };
        Part {
            id: format!("part-{i}@varti.test"),
            content_type: ct.to_string(),
            extra: vec![("X-Note".into(), extra.trim().to_string())],
            body,
        }
    })
}

fn parts() -> impl Strategy<Value = Vec<Part>> {
    (0usize..5).prop_flat_map(|n| (0..n).map(part).collect::<Vec<_>>())
}

fn build(root: &[u8], parts: &[Part]) -> (String, Vec<u8>) {
    let mut w = MimeWriter::new(Vec::new());
    let ct = w.content_type();
    w.write_root(root).unwrap();
    for p in parts {
        let extra: Vec<(&str, &str)> = p
            .extra
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        let n = w
            .write_attachment(&p.id, &p.content_type, &extra, &mut &p.body[..])
            .unwrap();
        assert_eq!(n, p.body.len() as u64);
    }
    (ct, w.finish().unwrap())
}

fn parse_chunked(ct: &str, wire: &[u8], chunk: usize, spill: usize) -> MimePackage {
    let limits = MimeLimits {
        spill_threshold: spill,
        ..MimeLimits::default()
    };
    let mut p = MimeParser::new(&ContentType::parse(ct).unwrap(), limits).unwrap();
    for c in wire.chunks(chunk) {
        p.feed(c).unwrap();
    }
    p.finish().unwrap()
}

fn assert_same(pkg: &MimePackage, root: &[u8], parts: &[Part]) {
    assert_eq!(pkg.root().content, root);
    assert_eq!(
        pkg.root().content_type,
        "application/soap+xml; charset=UTF-8"
    );
    assert_eq!(pkg.attachments().len(), parts.len());
    for (a, p) in pkg.attachments().iter().zip(parts) {
        assert_eq!(a.content_id(), Some(p.id.as_str()));
        assert_eq!(a.content_type(), p.content_type);
        assert_eq!(
            ContentType::parse(a.content_type()).unwrap().param("name"),
            ContentType::parse(&p.content_type).unwrap().param("name")
        );
        assert_eq!(a.headers().get("X-Note"), Some(p.extra[0].1.as_str()));
        assert_eq!(a.len(), p.body.len() as u64);
        assert_eq!(a.sha256().unwrap(), sha256(&p.body));
        let mut got = Vec::new();
        a.body().unwrap().read_to_end(&mut got).unwrap();
        assert_eq!(got, p.body);
        let href = format!("cid:{}", p.id.replace('@', "%40"));
        assert_eq!(
            pkg.attachment_by_href(&href).map(|x| x.content_id()),
            Some(Some(p.id.as_str()))
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn build_then_parse_is_identity(
        root in "[ -~žΩ]{0,200}",
        parts in parts(),
        chunk in prop_oneof![1usize..8, 8usize..200, Just(65536usize)],
        spill in prop_oneof![Just(0usize), 1usize..100, Just(1usize << 20)],
    ) {
        let root = format!("<S12:Envelope>{root}</S12:Envelope>");
        let (ct, wire) = build(root.as_bytes(), &parts);
        let parsed = ContentType::parse(&ct).unwrap();
        prop_assert_eq!(parsed.root_type(), Some("application/soap+xml"));
        prop_assert!(parsed.start().is_some());
        let pkg = parse_chunked(&ct, &wire, chunk, spill);
        assert_same(&pkg, root.as_bytes(), &parts);
        prop_assert_eq!(pkg.root().content_id.as_deref(), parsed.start().map(|s| s.trim_matches(['<', '>'])));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4))]

    /// Multi-megabyte random parts, spilled to files.
    #[test]
    fn multi_megabyte_parts_round_trip(seed in any::<u64>(), mib in 2usize..5) {
        let mut x = seed | 1;
        let big: Vec<u8> = (0..mib << 20)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect();
        let parts = vec![
            Part { id: "big@t".into(), content_type: "application/octet-stream".into(), extra: vec![("X-Note".into(), "big".into())], body: big },
            Part { id: "empty@t".into(), content_type: "text/plain; charset=UTF-8".into(), extra: vec![("X-Note".into(), String::new())], body: Vec::new() },
        ];
        let (ct, wire) = build(b"<e/>", &parts);
        let pkg = parse_chunked(&ct, &wire, 65536, 1 << 20);
        prop_assert!(pkg.attachments()[0].is_spilled());
        prop_assert!(!pkg.attachments()[1].is_spilled());
        assert_same(&pkg, b"<e/>", &parts);
    }
}

#[test]
fn writer_refuses_header_injection_and_misuse() {
    let mut w = MimeWriter::new(Vec::new());
    assert!(w
        .write_attachment("a@x", "text/plain", &[], &mut &b""[..])
        .is_err());
    w.write_root(b"<e/>").unwrap();
    assert!(w.write_root(b"<e/>").is_err());
    assert!(w
        .write_attachment("a@x", "text/plain\r\nX-Evil: 1", &[], &mut &b""[..])
        .is_err());
    assert!(w
        .write_attachment("a@x", "text/plain", &[("X", "v\n")], &mut &b""[..])
        .is_err());
    w.write_attachment("<a@x>", "text/plain", &[], &mut &b"1"[..])
        .unwrap();
    assert!(w
        .write_attachment("a@x", "text/plain", &[], &mut &b"2"[..])
        .is_err());
    let ct = w.content_type();
    let wire = w.finish().unwrap();
    let pkg = MimePackage::parse(&wire[..], &ct, &MimeLimits::default()).unwrap();
    assert_eq!(pkg.attachments().len(), 1);
    assert_eq!(pkg.attachments()[0].content_id(), Some("a@x"));
}

#[test]
fn two_writers_use_different_boundaries() {
    let a = MimeWriter::new(Vec::new());
    let b = MimeWriter::new(Vec::new());
    assert_ne!(a.boundary(), b.boundary());
    assert!(a.boundary().len() <= 70);
}
