//! The MIME reader and the dump reader against third-party vectors, read in place.
//!
//! Expected part contents are computed here independently of the streaming parser: the
//! raw file is split on its boundary with plain slice operations, and the digests are
//! taken over those slices.

mod common;

use std::path::Path;

use openssl::sha::sha256;
use varti_as4::compress::{gunzip, part_compression};
use varti_as4::message::dump::{read_dump, read_dump_file};
use varti_as4::message::mime::{hex, MimeLimits, TransferEncoding};
use varti_as4::ErrorCode;

/// A part as found by naive splitting: header text and content bytes.
struct NaivePart {
    headers: String,
    content: Vec<u8>,
}

/// Splits a raw multipart body on `boundary` (no streaming, no limits: test oracle only).
fn naive_split(body: &[u8], boundary: &str) -> Vec<NaivePart> {
    let eol: &[u8] = if body.windows(2).any(|w| w == b"\r\n") {
        b"\r\n"
    } else {
        b"\n"
    };
    let dash = format!("--{boundary}");
    let mut delim = eol.to_vec();
    delim.extend_from_slice(dash.as_bytes());
    // Prepend a line ending so the first boundary matches the same pattern.
    let mut text = eol.to_vec();
    text.extend_from_slice(body);
    let mut pieces = Vec::new();
    let mut rest = &text[..];
    while let Some(i) = find(rest, &delim) {
        pieces.push(&rest[..i]);
        rest = &rest[i + delim.len()..];
        if rest.starts_with(b"--") {
            break;
        }
    }
    pieces
        .into_iter()
        .skip(1) // preamble
        .map(|p| {
            let p = p.strip_prefix(eol).expect("boundary line ends");
            let mut blank = eol.to_vec();
            blank.extend_from_slice(eol);
            let h = find(p, &blank).expect("header block ends");
            NaivePart {
                headers: String::from_utf8_lossy(&p[..h]).into_owned(),
                content: p[h + blank.len()..].to_vec(),
            }
        })
        .collect()
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The body of an HTTP-style dump: everything after the first blank line.
fn naive_body(raw: &[u8]) -> &[u8] {
    if let Some(i) = find(raw, b"\r\n\r\n") {
        if find(raw, b"\n\n").is_none_or(|j| j > i) {
            return &raw[i + 4..];
        }
    }
    &raw[find(raw, b"\n\n").unwrap() + 2..]
}

fn hrefs(xml: &str) -> Vec<String> {
    xml.match_indices("href=\"")
        .map(|(i, m)| {
            let s = &xml[i + m.len()..];
            s[..s.find('"').unwrap()].to_string()
        })
        .collect()
}

fn vectors() -> Option<std::path::PathBuf> {
    common::vectors()
}

#[test]
fn pyas4_request_without_start_uses_first_part_as_root() {
    let Some(dir) = vectors() else { return };
    let path = dir.join("pyas4/oneway-1/request.http");
    let raw = std::fs::read(&path).unwrap();
    let dump = read_dump_file(&path, &MimeLimits::default()).unwrap();
    assert_eq!(dump.start_line, None);
    assert_eq!(dump.headers.get("mime-version"), Some("1.0"));
    let ct = dump.package.content_type();
    assert_eq!(ct.mime_type, "multipart/related");
    assert_eq!(ct.boundary(), Some("7097122c4d22fbedc8f8c1f833fc130c"));
    assert_eq!(ct.start(), None);

    let parts = naive_split(naive_body(&raw), "7097122c4d22fbedc8f8c1f833fc130c");
    assert_eq!(parts.len(), 2);

    let root = dump.package.root();
    assert_eq!(root.content_id, None);
    assert_eq!(root.content_type, "application/soap+xml; charset=UTF-8");
    assert_eq!(root.content, parts[0].content);
    let xml = String::from_utf8(root.content.clone()).unwrap();
    assert!(
        xml.contains("<eb:MessageId>bd6cb980-bd06-46c9-955b-2b5637ca9dd4@as4</eb:MessageId>")
            || xml.contains("MessageId>bd6cb980-bd06-46c9-955b-2b5637ca9dd4@as4<")
    );

    let atts = dump.package.attachments();
    assert_eq!(atts.len(), 1);
    let a = &atts[0];
    assert_eq!(
        a.content_id(),
        Some("as4-att-4ef51c40-1068-4c59-bd34-d364d66ebfde@cid")
    );
    assert_eq!(a.content_type(), "application/octet-stream");
    assert_eq!(a.transfer_encoding(), TransferEncoding::Binary);
    assert_eq!(a.len(), parts[1].content.len() as u64);
    assert_eq!(a.sha256().unwrap(), sha256(&parts[1].content));
    assert!(parts[1].headers.contains(a.content_id().unwrap()));

    // The ebMS header's PartInfo href resolves to that part.
    let refs = hrefs(&xml);
    assert_eq!(
        refs,
        ["cid:as4-att-4ef51c40-1068-4c59-bd34-d364d66ebfde@cid"]
    );
    let by_href = dump.package.attachment_by_href(&refs[0]).unwrap();
    assert_eq!(by_href.sha256_hex().unwrap(), a.sha256_hex().unwrap());
    let mut body = Vec::new();
    by_href.body().unwrap().read_to_end(&mut body).unwrap();
    assert_eq!(body, parts[1].content);
}

use std::io::Read;

#[test]
fn pyas4_receipt_is_a_bare_soap_body() {
    let Some(dir) = vectors() else { return };
    let path = dir.join("pyas4/oneway-1/receipt.http");
    let raw = std::fs::read(&path).unwrap();
    let dump = read_dump_file(&path, &MimeLimits::default()).unwrap();
    assert_eq!(
        dump.headers.get("Content-Type"),
        Some("application/soap+xml;charset=utf-8")
    );
    assert!(dump.package.attachments().is_empty());
    assert_eq!(dump.package.root().content, naive_body(&raw));
    let xml = String::from_utf8(dump.package.root().content.clone()).unwrap();
    assert!(xml.contains("RefToMessageId>bd6cb980-bd06-46c9-955b-2b5637ca9dd4@as4<"));
}

#[test]
fn phase4_outgoing_dump_with_binary_attachment() {
    let Some(dir) = vectors() else { return };
    let path = dir.join("phase4/receipts/phase4-outgoing-dump.as4out");
    let raw = std::fs::read(&path).unwrap();
    let dump = read_dump_file(&path, &MimeLimits::default()).unwrap();
    assert_eq!(
        dump.headers.get("Message-Id"),
        Some("<1260012504.1.1769701144011@[192.168.0.96]>")
    );
    let boundary = "----=_Part_0_1950117092.1769701143986";
    assert_eq!(dump.package.content_type().boundary(), Some(boundary));
    let parts = naive_split(naive_body(&raw), boundary);
    assert_eq!(parts.len(), 2);

    let root = dump.package.root();
    assert_eq!(root.content, parts[0].content);
    assert_eq!(root.content_type, "application/soap+xml;charset=UTF-8");
    let xml = String::from_utf8(root.content.clone()).unwrap();
    assert!(xml.starts_with("<?xml"));
    assert!(xml.contains("MessageId>17a7c374-efe3-41e2-ac0d-8a8f47529e47@phase4<"));

    let a = &dump.package.attachments()[0];
    assert_eq!(dump.package.attachments().len(), 1);
    assert_eq!(
        a.content_id(),
        Some("phase4-att-ff0f8ad5-f982-48ba-b8e2-26997600f496@cid")
    );
    assert_eq!(a.headers().get("content-description"), Some("Attachment"));
    assert_eq!(a.len(), parts[1].content.len() as u64);
    assert!(a.len() > 1000, "the binary payload is about 1.5 KB");
    assert_eq!(a.sha256().unwrap(), sha256(&parts[1].content));
    let refs = hrefs(&xml);
    assert_eq!(refs.len(), 1);
    assert!(dump.package.attachment_by_href(&refs[0]).is_some());
}

#[test]
fn phase4_wrong_compression_part_is_refused_with_0303() {
    let Some(dir) = vectors() else { return };
    let path = dir.join("phase4/negative/WrongCompression.mime");
    let raw = std::fs::read(&path).unwrap();
    // LF line endings, a folded Content-Type header, a Content-ID without angle brackets.
    let dump = read_dump_file(&path, &MimeLimits::default()).unwrap();
    let boundary = "----=_Part_0_581318631.1482314477236";
    assert_eq!(dump.package.content_type().boundary(), Some(boundary));
    let parts = naive_split(naive_body(&raw), boundary);
    let xml = String::from_utf8(dump.package.root().content.clone()).unwrap();
    assert_eq!(dump.package.root().content, parts[0].content);

    let refs = hrefs(&xml);
    assert_eq!(refs, ["cid:ph-as4-0026b807-e599-40e2-af67-22f2e6fe4ddd"]);
    let a = dump.package.attachment_by_href(&refs[0]).unwrap();
    assert_eq!(a.transfer_encoding(), TransferEncoding::Base64);
    assert_eq!(a.content_type(), "application/xml");
    // Independently decode the base64 text.
    use base64::Engine as _;
    let b64: Vec<u8> = parts[1]
        .content
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(&b64)
        .unwrap();
    assert_eq!(a.len(), decoded.len() as u64);
    assert_eq!(a.sha256().unwrap(), sha256(&decoded));

    // The PartProperties, read from the envelope.
    let props = part_properties(&xml);
    assert_eq!(
        props,
        [
            ("MimeType".to_string(), "application/xml".to_string()),
            ("CompressionType".to_string(), "application/rar".to_string())
        ]
    );
    let pairs: Vec<(&str, &str)> = props
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    let err = part_compression(&pairs).unwrap_err();
    assert_eq!(err.code, ErrorCode::DecompressionFailure);
    assert_eq!(err.code.code(), "EBMS:0303");
    assert!(err.detail.contains("application/rar"), "{}", err.detail);

    // The payload bytes themselves are gzip (the wrong claim is the property), and the
    // size cap still guards decompressing them.
    let mut out = Vec::new();
    let n = gunzip(a.body().unwrap(), &mut out, 1 << 20).unwrap();
    assert_eq!(n, out.len() as u64);
    assert!(out.starts_with(b"<!--"));
    let capped = gunzip(a.body().unwrap(), std::io::sink(), 100).unwrap_err();
    assert_eq!(capped.code, ErrorCode::DecompressionFailure);
}

/// `eb:Property` name/value pairs inside `eb:PartProperties`, via quick-xml.
fn part_properties(xml: &str) -> Vec<(String, String)> {
    use quick_xml::events::Event;
    let mut r = quick_xml::Reader::from_str(xml);
    let mut out = Vec::new();
    let mut in_pp = false;
    let mut name = None;
    loop {
        match r.read_event().unwrap() {
            Event::Start(e) if e.local_name().as_ref() == b"PartProperties" => in_pp = true,
            Event::End(e) if e.local_name().as_ref() == b"PartProperties" => in_pp = false,
            Event::Start(e) if in_pp && e.local_name().as_ref() == b"Property" => {
                let a = e.try_get_attribute("name").unwrap().unwrap();
                name = Some(String::from_utf8(a.value.to_vec()).unwrap());
            }
            Event::Text(t) if name.is_some() => {
                out.push((name.take().unwrap(), t.unescape().unwrap().into_owned()));
            }
            Event::Eof => break,
            _ => {}
        }
    }
    out
}

fn check_receipt(rel: &str, ref_to: &str) {
    let Some(dir) = vectors() else { return };
    let path = dir.join(rel);
    let raw = std::fs::read(&path).unwrap();
    let dump = read_dump_file(&path, &MimeLimits::default()).unwrap();
    // Transfer-Encoding says chunked, but the captured body is not chunked.
    assert_eq!(dump.headers.get("transfer-encoding"), Some("chunked"));
    assert!(dump.package.attachments().is_empty());
    let root = &dump.package.root().content;
    assert_eq!(&root[..], naive_body(&raw));
    let xml = std::str::from_utf8(root).unwrap();
    assert!(xml.contains(&format!("RefToMessageId>{ref_to}<")), "{rel}");
    assert!(xml.trim_end().ends_with("Envelope>"));
}

#[test]
fn governikus_receipt_bare_envelope_despite_chunked_header() {
    check_receipt(
        "phase4/receipts/governikus.as4in",
        "6b52b4c0-de6a-46b8-8286-27bac7d1a463@phase4",
    );
}

#[test]
fn helger_receipt_bare_envelope() {
    check_receipt(
        "phase4/receipts/helger.as4in",
        "3b3775c9-e88d-47f9-be5a-8e045ca2bc07@phase4",
    );
}

#[test]
fn bare_xml_vectors_with_licence_comment() {
    let Some(dir) = vectors() else { return };
    for rel in [
        "holodeck/from-holodeck-1.xml",
        "phase4/negative/TestReceipt12.xml",
        "phase4/negative/ErrorMessage.xml",
    ] {
        let path = dir.join(rel);
        let raw = std::fs::read(&path).unwrap();
        let dump = read_dump(&raw[..], &MimeLimits::default()).unwrap();
        assert!(dump.headers.is_empty(), "{rel}");
        let root = &dump.package.root().content;
        assert!(
            root.starts_with(b"<?xml") || root.starts_with(b"<S") || root.starts_with(b"<s"),
            "{rel}: {:?}",
            String::from_utf8_lossy(&root[..20.min(root.len())])
        );
        // Only the prefix was removed: the root is a suffix of the file.
        assert!(raw.ends_with(root), "{rel}");
        assert!(!String::from_utf8_lossy(root)
            .trim_start()
            .starts_with("<!--"));
    }
    assert!(Path::new(&dir).is_dir());
}

#[test]
fn hex_is_lowercase() {
    assert_eq!(hex(&[0xAB, 0x01]), "ab01");
}
