//! `varti message inspect` against the third-party vectors, through the real binary.

mod common;

use common::varti;

fn inspect_json(rel: &str) -> Option<serde_json::Value> {
    let dir = common::vectors()?;
    let path = dir.join(rel);
    let (code, out, err) = varti(&["message", "inspect", path.to_str().unwrap(), "--json"]);
    assert_eq!(code, 0, "inspect {rel} failed: {err}{out}");
    Some(serde_json::from_str(&out).expect("inspect --json prints JSON"))
}

#[test]
fn inspect_pyas4_request_shows_header_parts_and_security() {
    let Some(v) = inspect_json("pyas4/oneway-1/request.http") else {
        return;
    };
    let u = &v["header"]["user_message"];
    assert_eq!(u["message_id"], "bd6cb980-bd06-46c9-955b-2b5637ca9dd4@as4");
    assert_eq!(u["from"]["ids"][0]["id"], "PTE000001");
    assert_eq!(u["to"]["ids"][0]["id"], "PTE000002");
    assert_eq!(u["properties"][0]["name"], "originalSender");
    let parts = v["parts"].as_array().unwrap();
    assert_eq!(parts.len(), 2, "root + one attachment");
    // The attachment's size and hash are of the bytes as carried: check them against
    // the raw file independently of the parser.
    let raw = common::read("pyas4/oneway-1/request.http").unwrap();
    let cid = parts[1]["content_id"].as_str().unwrap();
    assert_eq!(cid, "as4-att-4ef51c40-1068-4c59-bd34-d364d66ebfde@cid");
    let size = parts[1]["size"].as_u64().unwrap() as usize;
    let marker = format!("<{cid}>");
    let hdr = raw
        .windows(marker.len())
        .position(|w| w == marker.as_bytes())
        .unwrap();
    let body_start = hdr
        + raw[hdr..]
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap()
        + 4;
    let body = &raw[body_start..body_start + size];
    assert_eq!(&raw[body_start + size..body_start + size + 4], b"\r\n--");
    assert_eq!(parts[1]["sha256"], varti_hex(&openssl::sha::sha256(body)));
    let sec = &v["security"];
    assert_eq!(sec["present"], true);
    let refs = sec["signatures"][0]["references"].as_array().unwrap();
    assert_eq!(refs.len(), 3);
    assert_eq!(refs[0]["target"], "/Envelope/Header/Messaging");
    assert_eq!(refs[1]["target"], "/Envelope/Body");
    assert_eq!(
        sec["signatures"][0]["signature_method"],
        "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256"
    );
    assert_eq!(
        sec["encrypted_data"][0]["algorithm"],
        "http://www.w3.org/2009/xmlenc11#aes128-gcm"
    );
    assert_eq!(
        sec["encrypted_data"][0]["cipher_reference"],
        format!("cid:{cid}")
    );
    assert!(sec["certificates"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["subject"].as_str().unwrap().contains("CN=PTE000001")));
}

fn varti_hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn inspect_governikus_receipt_shows_the_receipt_and_signer() {
    let Some(v) = inspect_json("phase4/receipts/governikus.as4in") else {
        return;
    };
    let sig = &v["header"]["signals"][0];
    assert_eq!(sig["kind"], "receipt");
    assert_eq!(
        sig["ref_to_message_id"],
        "6b52b4c0-de6a-46b8-8286-27bac7d1a463@phase4"
    );
    assert_eq!(
        sig["detail"]["non_repudiation"].as_array().unwrap().len(),
        3
    );
    let cert = &v["security"]["certificates"][0];
    assert!(
        cert["subject"].as_str().unwrap().contains("POP000260"),
        "{cert}"
    );
    assert!(cert["not_after"].as_str().unwrap().contains("2022"));
}

#[test]
fn inspect_text_output_names_the_message() {
    let Some(dir) = common::vectors() else { return };
    let p = dir.join("phase4/ebms/UserMessage12.xml");
    let (code, out, _) = varti(&["message", "inspect", p.to_str().unwrap()]);
    assert_eq!(code, 0);
    assert!(
        out.contains("UserMessage 2011-921@5209999001264.example.com"),
        "{out}"
    );
    assert!(
        out.contains("Security: empty wsse:Security header"),
        "{out}"
    );
}

#[test]
fn inspect_refuses_a_malformed_header_with_its_ebms_code() {
    let Some(dir) = common::vectors() else { return };
    for (file, code) in [
        ("phase4/ebms/MessageInfoMissing.xml", "EBMS:0009"),
        ("phase4/ebms/NoMessaging.xml", "EBMS:0009"),
        ("phase4/negative/TwoUserMessages.xml", "EBMS:0009"),
    ] {
        let p = dir.join(file);
        let (status, out, _) = varti(&["message", "inspect", p.to_str().unwrap(), "--json"]);
        assert_eq!(status, 1, "{file} must be refused");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["error"]["code"], code, "{file}");
        assert!(!v["error"]["detail"].as_str().unwrap().is_empty());
    }
}

#[test]
fn inspect_a_missing_file_exits_2_with_a_hint() {
    let (status, _, err) = varti(&["message", "inspect", "/nonexistent/message.http"]);
    assert_eq!(status, 2);
    assert!(err.contains("not a readable file"), "{err}");
}
