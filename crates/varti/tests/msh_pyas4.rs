//! Acceptance: `varti serve` as the receiver of a third-party AS4 message.
//!
//! The pyas4 vector (an independent Python implementation) is POSTed to `/msh` exactly as
//! that implementation sent it. Varti must answer with a signed NRR receipt whose
//! references match the request, store the payload (exactly the expected bytes), answer a
//! resend with the same receipt without storing it twice, and refuse a tampered copy with
//! an error signal that leaves the store unchanged.

mod common;
mod serve_support;

use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serve_support::*;
use varti_store::{Direction, ListFilter, State, Store};

/// Splits an HTTP dump into (Content-Type, body).
fn split_http(raw: &[u8]) -> (String, Vec<u8>) {
    let pos = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| (p, 4))
        .or_else(|| raw.windows(2).position(|w| w == b"\n\n").map(|p| (p, 2)))
        .expect("header/body separator");
    let head = String::from_utf8_lossy(&raw[..pos.0]);
    let ct = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-type")
                .then(|| v.trim().to_owned())
        })
        .expect("Content-Type header");
    (ct, raw[pos.0 + pos.1..].to_vec())
}

fn post(addr: std::net::SocketAddr, content_type: &str, body: &[u8]) -> HttpResponse {
    let mut tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    http_request(
        &mut tcp,
        "POST",
        "/msh",
        &format!("Content-Type: {content_type}\r\n"),
        body,
    )
    .unwrap()
}

fn write_setup(dir: &Path, vectors: &Path) {
    let v = vectors.join("pyas4/oneway-1");
    let v = v.display();
    std::fs::create_dir_all(dir.join("pmodes")).unwrap();
    std::fs::write(
        dir.join("pmodes/pyas4.toml"),
        format!(
            r#"[[party]]
name = "pyas4-sender"
ids = [{{ value = "PTE000001", type = "urn:fdc:peppol.eu:2017:identifiers:ap" }}]
signing_cert = "{v}/sender.cert.pem"

[[party]]
name = "varti-receiver"
ids = [{{ value = "PTE000002", type = "urn:fdc:peppol.eu:2017:identifiers:ap" }}]
signing_cert = "{v}/receiver.cert.pem"
encryption_cert = "{v}/receiver.cert.pem"

[security.default]
profile = "as4-1.15"
sign = true
encrypt = true
token_reference = "bst"

[[process]]
name = "peppol-invoice"
agreement = "urn:fdc:peppol.eu:2017:agreements:tia:ap_provider"
mep = "oneWay"
binding = "push"
initiator = {{ parties = ["pyas4-sender"] }}
responder = {{ parties = ["varti-receiver"] }}

[[process.leg]]
name = "invoice"
service = "urn:fdc:peppol.eu:2017:poacc:billing:01:1.0"
service_type = "cenbii-procid-ubl"
action = "busdox-docid-qns::urn:oasis:names:specification:ubl:schema:xsd:Invoice-2::Invoice##urn:cen.eu:en16931:2017::2.1"
"#
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("varti.toml"),
        format!(
            r#"data_dir = "data"
pmodes_dir = "pmodes"
[server]
listen = "127.0.0.1:0"
shutdown_grace_secs = 5
[ops]
listen = "127.0.0.1:0"
[backend]
listen = "127.0.0.1:0"
[identity]
party = "varti-receiver"
signing_key = "{v}/receiver.key.pem"
signing_cert = "{v}/receiver.cert.pem"
encryption_key = "{v}/receiver.key.pem"
encryption_cert = "{v}/receiver.cert.pem"
# No CA: the sender's certificate from the PMode is pinned.
trust_anchors = []
"#
        ),
    )
    .unwrap();
}

#[test]
fn pyas4_request_is_received_with_a_matching_nrr_receipt() {
    let Some(vectors) = common::vectors() else {
        return;
    };
    let request = std::fs::read(vectors.join("pyas4/oneway-1/request.http")).unwrap();
    let expected: serde_json::Value = serde_json::from_slice(
        &std::fs::read(vectors.join("pyas4/oneway-1/expected.json")).unwrap(),
    )
    .unwrap();
    let (content_type, body) = split_http(&request);

    let dir = tempfile::tempdir().unwrap();
    write_setup(dir.path(), &vectors);
    let mut served = spawn_serve_in(dir.path(), &["--config", "varti.toml", "--insecure-http"]);

    // A tampered copy (one byte of the encrypted attachment changed) is refused with an
    // error signal, and nothing is stored.
    let mut tampered = body.clone();
    let at = tampered.len() - 200;
    tampered[at] ^= 0x01;
    let refused = post(served.msh, &content_type, &tampered);
    // CP_TA35: a WS-Security SOAP fault (HTTP 500, as Domibus answers) with the signal.
    assert_eq!(refused.status, 500, "{}", refused.head);
    assert!(
        refused.body.contains("wsse:FailedCheck"),
        "{}",
        refused.body
    );
    assert!(
        refused.body.contains("eb:Error") || refused.body.contains(":Error "),
        "no error signal for a tampered message: {}",
        refused.body
    );
    assert!(
        refused.body.contains("EBMS:0102") || refused.body.contains("EBMS:0101"),
        "tampering must be a decryption or authentication failure: {}",
        refused.body
    );

    // The genuine message: a signed NRR receipt.
    let first = post(served.msh, &content_type, &body);
    assert_eq!(first.status, 200, "{}\n{}", first.head, served.log_text());
    assert!(
        first.body.contains("NonRepudiationInformation"),
        "not an NRR receipt: {}",
        first.body
    );
    let receipt_path = dir.path().join("receipt.xml");
    std::fs::write(&receipt_path, &first.body).unwrap();
    let check = Command::new(env!("CARGO_BIN_EXE_varti"))
        .args(["message", "open", "--json", "--for"])
        .arg(vectors.join("pyas4/oneway-1/request.http"))
        .arg("--trust")
        .arg(vectors.join("pyas4/oneway-1/receiver.cert.pem"))
        .arg(&receipt_path)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "Varti's receipt does not verify against the request: {}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&check.stdout).unwrap();
    assert!(
        report["receipt_check"]["nrr_references_matched"]
            .as_u64()
            .unwrap_or(0)
            >= 2,
        "{report}"
    );

    // A resend gets the very same receipt.
    let again = post(served.msh, &content_type, &body);
    assert_eq!(again.status, 200);
    assert_eq!(
        again.body, first.body,
        "a duplicate must get the original receipt"
    );

    let status = served.terminate(Duration::from_secs(15));
    assert_eq!(status.code(), Some(0), "{}", served.log_text());

    // Exactly one stored message, counted duplicate once, with the expected payload.
    let store = varti_store::SledStore::open(dir.path().join("data/store")).unwrap();
    let page = store
        .list(&ListFilter {
            direction: Some(Direction::Inbound),
            ..ListFilter::default()
        })
        .unwrap();
    assert_eq!(page.records.len(), 1, "{:?}", page.records);
    let record = &page.records[0];
    assert_eq!(record.state, State::Received);
    assert_eq!(record.duplicates, 1);
    assert_eq!(record.meta.from_party, "PTE000001");
    assert_eq!(
        record
            .meta
            .properties
            .iter()
            .map(|p| p.name.as_str())
            .collect::<Vec<_>>(),
        ["originalSender", "finalRecipient"]
    );
    assert_eq!(record.meta.payloads.len(), 1);
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(
        &mut store
            .payloads()
            .open(&record.meta.payloads[0].stored)
            .unwrap(),
        &mut bytes,
    )
    .unwrap();
    let digest = openssl::sha::sha256(&bytes);
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(hex, expected["delivered_part_sha256"][0].as_str().unwrap());
}
