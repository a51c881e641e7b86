//! Acceptance: the independent Python AS4 implementation's encrypted message
//! (`pyas4/oneway-1/request.http`) opens with the receiver's key to exactly the delivered
//! payload: AES-128-GCM, key transported with xmlenc11 rsa-oaep + MGF1-SHA256, gzip inside.

mod common;

use std::io::Read;

use openssl::pkey::PKey;
use openssl::x509::X509;
use varti_as4::error::ErrorCode;
use varti_as4::security::encrypt::{decrypt_parts, DecryptionPolicy, KeyProtection};

/// A deliberately tiny multipart/related splitter for this test only (the real MIME
/// parser lives elsewhere): returns (headers, content) of each part.
fn split_multipart(http: &[u8]) -> Vec<(String, Vec<u8>)> {
    let head_end = find(http, b"\r\n\r\n").expect("HTTP header end");
    let head = String::from_utf8_lossy(&http[..head_end]).to_string();
    let body = &http[head_end + 4..];
    let ct = head
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("content-type:"))
        .expect("Content-Type");
    let b = ct.split("boundary=").nth(1).expect("boundary");
    let boundary = b
        .trim_matches(|c| c == '"' || c == ';')
        .split('"')
        .next()
        .unwrap();
    let delim = format!("--{boundary}");
    let mut parts = Vec::new();
    let mut rest = body;
    let start = find(rest, delim.as_bytes()).expect("first boundary");
    rest = &rest[start + delim.len()..];
    loop {
        if rest.starts_with(b"--") {
            break;
        }
        rest = rest.strip_prefix(b"\r\n").expect("CRLF after boundary");
        let next_delim = format!("\r\n{delim}");
        let end = find(rest, next_delim.as_bytes()).expect("closing boundary");
        let part = &rest[..end];
        let h = find(part, b"\r\n\r\n").expect("part header end");
        parts.push((
            String::from_utf8_lossy(&part[..h]).to_string(),
            part[h + 4..].to_vec(),
        ));
        rest = &rest[end + next_delim.len()..];
    }
    parts
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn content_id(headers: &str) -> Option<String> {
    headers
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("content-id:"))
        .map(|l| {
            l[11..]
                .trim()
                .trim_matches(|c| c == '<' || c == '>')
                .to_string()
        })
}

struct Vector {
    root: String,
    attachments: Vec<(String, Vec<u8>)>,
    key: PKey<openssl::pkey::Private>,
    cert: X509,
    sender_cert: X509,
    expected: Vec<u8>,
}

fn load() -> Option<Vector> {
    let http = common::read("pyas4/oneway-1/request.http")?;
    let parts = split_multipart(&http);
    assert_eq!(parts.len(), 2, "root + one payload");
    // No `start` parameter: the root is the first part (RFC 2387).
    let root = String::from_utf8(parts[0].1.clone()).unwrap();
    let attachments = parts[1..]
        .iter()
        .map(|(h, c)| (content_id(h).expect("payload Content-ID"), c.clone()))
        .collect();
    Some(Vector {
        root,
        attachments,
        key: PKey::private_key_from_pem(&common::read("pyas4/oneway-1/receiver.key.pem")?).unwrap(),
        cert: X509::from_pem(&common::read("pyas4/oneway-1/receiver.cert.pem")?).unwrap(),
        sender_cert: X509::from_pem(&common::read("pyas4/oneway-1/sender.cert.pem")?).unwrap(),
        expected: common::read("pyas4/oneway-1/delivered-part-0.bin")?,
    })
}

#[test]
fn pyas4_request_decrypts_and_gunzips_to_the_delivered_part() {
    let Some(v) = load() else { return };
    let parts = decrypt_parts(
        &v.root,
        &v.key,
        &v.cert,
        &DecryptionPolicy::as4_v1(),
        |cid| {
            v.attachments
                .iter()
                .find(|(c, _)| c == cid)
                .map(|(_, data)| data.as_slice())
        },
    )
    .expect("decrypts");
    assert_eq!(parts.len(), 1);
    let mut part = parts.into_iter().next().unwrap();
    assert_eq!(part.content_id, v.attachments[0].0);
    assert_eq!(part.mime_type.as_deref(), Some("application/gzip"));

    let mut gz = Vec::new();
    part.file.read_to_end(&mut gz).unwrap();
    assert_eq!(gz.len() as u64, part.len);
    assert_eq!(&gz[..2], &[0x1f, 0x8b], "plaintext is a gzip stream");
    let mut delivered = Vec::new();
    flate2::read::GzDecoder::new(gz.as_slice())
        .read_to_end(&mut delivered)
        .unwrap();
    assert_eq!(delivered, v.expected, "byte-exact delivered payload");
    let sha = openssl::sha::sha256(&delivered);
    let hex: String = sha.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(
        hex,
        "0471898190cf7d4624afc715a59fc68a6cf3880444211433d8e9f99a612c4821"
    );
}

#[test]
fn pyas4_request_is_refused_with_the_senders_certificate() {
    let Some(v) = load() else { return };
    // The sender's certificate is not the one the key was encrypted for; pairing it with
    // the receiver key is also a configuration error. Both must say EBMS:0102.
    let err = decrypt_parts(
        &v.root,
        &v.key,
        &v.sender_cert,
        &DecryptionPolicy::as4_v1(),
        |_| None::<&[u8]>,
    )
    .unwrap_err();
    assert_eq!(err.code, ErrorCode::FailedDecryption, "{err}");
}

#[test]
fn pyas4_request_is_refused_by_a_2_0_policy() {
    let Some(v) = load() else { return };
    let err = decrypt_parts(
        &v.root,
        &v.key,
        &v.cert,
        &DecryptionPolicy::as4_v2_common(),
        |_| None::<&[u8]>,
    )
    .unwrap_err();
    assert_eq!(err.code, ErrorCode::PolicyNoncompliance, "{err}");
    assert!(
        err.detail.contains(KeyProtection::RsaOaepSha256.describe()),
        "{err}"
    );
}

#[test]
fn pyas4_request_with_a_flipped_ciphertext_byte_fails_decryption() {
    let Some(v) = load() else { return };
    let mut data = v.attachments[0].1.clone();
    let mid = data.len() / 2;
    data[mid] ^= 0x01;
    let err = decrypt_parts(
        &v.root,
        &v.key,
        &v.cert,
        &DecryptionPolicy::as4_v1(),
        |_| Some(data.as_slice()),
    )
    .unwrap_err();
    assert_eq!(err.code, ErrorCode::FailedDecryption, "{err}");
    assert!(err.detail.contains("tag"), "{err}");
}
