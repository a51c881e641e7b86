//! `varti serve` (as varti-a, the repository's PModes and test PKI) receiving messages that
//! the test seals as varti-b with the library: what is acknowledged, what is refused with
//! which ebMS error, and that refusals store nothing.

mod serve_support;

use std::net::TcpStream;
use std::time::Duration;

use openssl::pkey::PKey;
use openssl::x509::X509;
use serve_support::*;
use varti_as4::message::model::{
    CollaborationInfo, MessageInfo, Party, PartyId, PartyInfo, Property, Service, UserMessage,
};
use varti_as4::outbound::{send, OutgoingPayload, SendPolicy};
use varti_as4::security::profile::AS4_1_15;
use varti_as4::security::token::TokenReference;
use varti_store::{ListFilter, Store};

const PARTY_TYPE: &str = "urn:oasis:names:tc:ebcore:partyid-type:unregistered";
const ROLE_INIT: &str = "http://docs.oasis-open.org/ebxml-msg/ebms/v3.0/ns/core/200704/initiator";
const ROLE_RESP: &str = "http://docs.oasis-open.org/ebxml-msg/ebms/v3.0/ns/core/200704/responder";
const TEST_SERVICE: &str = "http://docs.oasis-open.org/ebxml-msg/ebms/v3.0/ns/core/200704/service";
const TEST_ACTION: &str = "http://docs.oasis-open.org/ebxml-msg/ebms/v3.0/ns/core/200704/test";

fn cert(rel: &str) -> X509 {
    X509::from_pem(&std::fs::read(repo().join(rel)).unwrap()).unwrap()
}

fn key(rel: &str) -> PKey<openssl::pkey::Private> {
    PKey::private_key_from_pem(&std::fs::read(repo().join(rel)).unwrap()).unwrap()
}

struct Msg<'a> {
    id: String,
    from: &'a str,
    from_role: &'a str,
    to: &'a str,
    to_role: &'a str,
    service: &'a str,
    service_type: Option<&'a str>,
    action: &'a str,
    properties: Vec<Property>,
    payloads: Vec<(&'a str, Vec<u8>)>,
    /// Signing key and certificate (paths under the repository).
    signer: (&'a str, &'a str),
    encrypt: bool,
    /// The payloads are gzip already: sent as they are, with the compression properties.
    precompressed: bool,
}

impl<'a> Msg<'a> {
    fn test_service(id: &str) -> Msg<'a> {
        Msg {
            id: id.to_owned(),
            from: "varti-b",
            from_role: ROLE_INIT,
            to: "varti-a",
            to_role: ROLE_RESP,
            service: TEST_SERVICE,
            service_type: None,
            action: TEST_ACTION,
            properties: Vec::new(),
            payloads: Vec::new(),
            signer: ("certs/varti-b/sign.key.pem", "certs/varti-b/sign.cert.pem"),
            encrypt: true,
            precompressed: false,
        }
    }

    /// Seals into (Content-Type, body).
    fn seal(&self) -> (String, Vec<u8>) {
        let party = |id: &str, role: &str| Party {
            party_ids: vec![PartyId {
                value: id.to_owned(),
                type_: Some(PARTY_TYPE.to_owned()),
            }],
            role: role.to_owned(),
        };
        let um = UserMessage {
            mpc: None,
            message_info: MessageInfo::new(self.id.clone()),
            party_info: PartyInfo {
                from: party(self.from, self.from_role),
                to: party(self.to, self.to_role),
            },
            collaboration_info: CollaborationInfo {
                agreement_ref: None,
                service: Service {
                    value: self.service.to_owned(),
                    type_: self.service_type.map(str::to_owned),
                },
                action: self.action.to_owned(),
                conversation_id: "conv-1".into(),
            },
            properties: self.properties.clone(),
            parts: Vec::new(),
        };
        let sign_key = key(self.signer.0);
        let sign_cert = cert(self.signer.1);
        let enc = cert("certs/varti-a/enc.cert.pem");
        let mut policy = SendPolicy::new(
            &AS4_1_15,
            TokenReference::BinarySecurityToken,
            &sign_key,
            &sign_cert,
            self.encrypt.then_some(&*enc),
            !self.precompressed,
        );
        policy.already_gzip = self.precompressed;
        let mut contents: Vec<&[u8]> = self.payloads.iter().map(|(_, b)| b.as_slice()).collect();
        let payloads = self
            .payloads
            .iter()
            .zip(contents.iter_mut())
            .enumerate()
            .map(|(i, ((mime, _), c))| OutgoingPayload {
                content_id: format!("part{i}@test"),
                mime_type: (*mime).to_owned(),
                properties: Vec::new(),
                content: c as &mut dyn std::io::Read,
                content_is_gzip: false,
                reopen: None,
                sha256: None,
            })
            .collect();
        let mut body = Vec::new();
        let sent = send(&um, payloads, &policy, &mut body).unwrap();
        (sent.content_type, body)
    }
}

fn post(served: &Served, (ct, body): &(String, Vec<u8>)) -> HttpResponse {
    let mut tcp = TcpStream::connect(served.msh).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    http_request(
        &mut tcp,
        "POST",
        "/msh",
        &format!("Content-Type: {ct}\r\n"),
        body,
    )
    .unwrap()
}

fn assert_error(r: &HttpResponse, code: &str, what: &str) {
    // A WS-Security failure (EBMS:0101-0103) comes with a SOAP Fault and HTTP 500, as
    // Domibus answers (CP_TA35/37); other errors are a plain error signal with HTTP 200.
    let security = matches!(code, "EBMS:0101" | "EBMS:0102" | "EBMS:0103");
    let status = if security { 500 } else { 200 };
    assert_eq!(r.status, status, "{what}: {}{}", r.head, r.body);
    assert_eq!(
        r.body.contains(":Fault>"),
        security,
        "{what}: a SOAP Fault iff a security failure: {}",
        r.body
    );
    if security {
        assert!(
            r.body.contains(">wsse:"),
            "{what}: the WS-Security subcode: {}",
            r.body
        );
    }
    assert!(
        r.body.contains(&format!("errorCode=\"{code}\"")),
        "{what}: expected {code}, got {}",
        r.body
    );
    assert!(
        !r.body.contains("Receipt"),
        "{what}: acknowledged: {}",
        r.body
    );
}

#[test]
fn receiver_acknowledges_and_refuses_by_pmode_and_security() {
    let dir = tempfile::tempdir().unwrap();
    let served = spawn_serve(
        dir.path(),
        &plain_config("[server]\nlisten = \"127.0.0.1:0\"\n[ops]\nlisten = \"127.0.0.1:0\"\n"),
        &["--insecure-http"],
    );

    // The ebMS test service: acknowledged (signed NRR receipt), never delivered.
    let ping = Msg::test_service("ping-1@test");
    let r = post(&served, &ping.seal());
    assert_eq!(r.status, 200, "{}", r.head);
    assert!(r.body.contains("NonRepudiationInformation"), "{}", r.body);

    // OOTS request without the four-corner properties the leg requires: EBMS:0010.
    let mut oots = Msg::test_service("oots-1@test");
    oots.service = "QueryManager";
    oots.service_type = Some("urn:oasis:names:tc:ebcore:ebrs:ebms:binding:1.0");
    oots.action = "ExecuteQueryRequest";
    oots.from_role = "http://sdg.europa.eu/edelivery/gateway";
    oots.to_role = "http://sdg.europa.eu/edelivery/gateway";
    oots.payloads = vec![("application/x-ebrs+xml", b"<query/>".to_vec())];
    let r = post(&served, &oots.seal());
    assert_error(&r, "EBMS:0010", "missing required properties");
    assert!(r.body.contains("originalSender"), "{}", r.body);

    // With the properties it is accepted.
    oots.id = "oots-2@test".into();
    oots.properties = vec![
        Property {
            name: "originalSender".into(),
            type_: Some("urn:oasis:names:tc:ebcore:partyid-type:unregistered:C1".into()),
            value: "sender".into(),
        },
        Property {
            name: "finalRecipient".into(),
            type_: Some("urn:oasis:names:tc:ebcore:partyid-type:unregistered:C4".into()),
            value: "recipient".into(),
        },
    ];
    let r = post(&served, &oots.seal());
    assert!(
        r.body.contains("Receipt"),
        "{}\n{}",
        r.body,
        served.log_text()
    );

    // A payload the profile does not allow (wrong MIME type for the EDM part): EBMS:0010.
    let mut wrong = Msg {
        id: "oots-3@test".into(),
        ..oots
    };
    wrong.payloads = vec![("text/plain", b"hello".to_vec())];
    let r = post(&served, &wrong.seal());
    assert_error(&r, "EBMS:0010", "payload profile");

    // Addressed to another party: EBMS:0010.
    let mut elsewhere = Msg::test_service("else-1@test");
    elsewhere.to = "varti-b";
    let r = post(&served, &elsewhere.seal());
    assert_error(&r, "EBMS:0010", "not for us");

    // Signed with varti-a's key while claiming to be varti-b: the signer is not the
    // sender's PMode certificate → authentication failure.
    let mut forged = Msg::test_service("forged-1@test");
    forged.signer = ("certs/varti-a/sign.key.pem", "certs/varti-a/sign.cert.pem");
    let r = post(&served, &forged.seal());
    assert!(
        r.body.contains("EBMS:0101") || r.body.contains("EBMS:0103"),
        "a message signed by the wrong party was not refused: {}",
        r.body
    );

    // Unencrypted on a leg that requires encryption: policy error.
    let mut plain = Msg::test_service("plain-1@test");
    plain.payloads = vec![("text/plain", b"x".to_vec())];
    plain.encrypt = false;
    let r = post(&served, &plain.seal());
    assert_error(&r, "EBMS:0103", "unencrypted payload");

    // A MessageId outside the RFC 2822 syntax (a path, no '@'): EBMS:0009, and the
    // error signal does not echo it. The library refuses to build such a message, so a
    // sealed one is edited (the header is read before the signature is checked).
    let placeholder = "id-to-replace-9f1c@test";
    let (ct, body) = Msg::test_service(placeholder).seal();
    let at = body
        .windows(placeholder.len())
        .position(|w| w == placeholder.as_bytes())
        .expect("the id is in the envelope");
    let mut path_like = body[..at].to_vec();
    path_like.extend_from_slice(b"../x");
    path_like.extend_from_slice(&body[at + placeholder.len()..]);
    let r = post(&served, &(ct, path_like));
    assert_error(&r, "EBMS:0009", "a path as MessageId");
    assert!(
        !r.body.contains("refToMessageInError=\"../x\""),
        "{}",
        r.body
    );

    let mut served = served;
    assert_eq!(served.terminate(Duration::from_secs(15)).code(), Some(0));
    // Only the two acknowledged messages are stored; the test message has no owner a
    // backend could have.
    let store = varti_store::SledStore::open(dir.path().join("data/store")).unwrap();
    let mut ids: Vec<(String, String)> = store
        .list(&ListFilter::default())
        .unwrap()
        .records
        .into_iter()
        .map(|r| (r.meta.message_id, r.meta.owner))
        .collect();
    ids.sort();
    assert_eq!(
        ids,
        [
            ("oots-2@test".to_owned(), "default".to_owned()),
            ("ping-1@test".to_owned(), "varti:test-service".to_owned())
        ]
    );
}

/// The OOTS request leg's four-corner properties.
fn four_corner() -> Vec<Property> {
    vec![
        Property {
            name: "originalSender".into(),
            type_: Some("urn:oasis:names:tc:ebcore:partyid-type:unregistered:C1".into()),
            value: "sender".into(),
        },
        Property {
            name: "finalRecipient".into(),
            type_: Some("urn:oasis:names:tc:ebcore:partyid-type:unregistered:C4".into()),
            value: "recipient".into(),
        },
    ]
}

/// An OOTS request as varti-b would seal it, with these payloads.
fn oots_request<'a>(id: &str, payloads: Vec<(&'a str, Vec<u8>)>) -> Msg<'a> {
    let mut m = Msg::test_service(id);
    m.service = "QueryManager";
    m.service_type = Some("urn:oasis:names:tc:ebcore:ebrs:ebms:binding:1.0");
    m.action = "ExecuteQueryRequest";
    m.from_role = "http://sdg.europa.eu/edelivery/gateway";
    m.to_role = "http://sdg.europa.eu/edelivery/gateway";
    m.properties = four_corner();
    m.payloads = payloads;
    m
}

/// CP_TA06 and CP_TA08 on a running receiver. The OOTS payload profile's business document
/// (the EDM, application/x-ebrs+xml) must be the first part: the same two parts with the
/// evidence first are refused with EBMS:0010, in order they are acknowledged. A payload in
/// the SOAP Body (PartInfo `#id`, or no href) on this leg, which carries attachments, gets
/// a synchronous ebMS error. Only the acknowledged message is stored.
#[test]
fn business_document_first_and_no_payload_in_the_soap_body() {
    let dir = tempfile::tempdir().unwrap();
    let served = spawn_serve(
        dir.path(),
        &plain_config("[server]\nlisten = \"127.0.0.1:0\"\n[ops]\nlisten = \"127.0.0.1:0\"\n"),
        &["--insecure-http"],
    );
    let edm = ("application/x-ebrs+xml", b"<query:QueryRequest/>".to_vec());
    let pdf = ("application/pdf", b"%PDF-1.7 evidence".to_vec());

    // CP_TA06: evidence first, business document second. Each part fits a rule of the
    // profile, so only the order is wrong.
    let swapped = oots_request("order-1@test", vec![pdf.clone(), edm.clone()]);
    let r = post(&served, &swapped.seal());
    assert_error(&r, "EBMS:0010", "business document second");
    assert!(r.body.contains("first payload"), "{}", r.body);
    assert!(r.body.contains("business document `edm`"), "{}", r.body);

    // The same parts in order: acknowledged.
    let in_order = oots_request("order-2@test", vec![edm.clone(), pdf.clone()]);
    let r = post(&served, &in_order.seal());
    assert!(
        r.body.contains("Receipt"),
        "{}\n{}",
        r.body,
        served.log_text()
    );

    // CP_TA08: the business document moved from its attachment into the SOAP Body, the
    // PartInfo pointing at it there (`#id`), then with no href (the Body itself).
    let (ct, body) = oots_request("body-1@test", vec![edm.clone()]).seal();
    let text = String::from_utf8_lossy(&body).into_owned();
    assert!(text.contains("href=\"cid:part0@test\""), "{text}");
    let body_start = text.find("<S12:Body").expect("a SOAP 1.2 Body");
    let body_end = body_start + text[body_start..].find('>').unwrap();
    assert!(
        text[..=body_end].ends_with("/>"),
        "an empty Body: {}",
        &text[body_start..=body_end]
    );
    let in_body = |href_attr: &str| {
        let moved = format!(
            "{}><query:QueryRequest xmlns:query=\"urn:oasis:names:tc:ebxml-regrep:xsd:query:4.0\" \
             xmlns:wsu=\"http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd\" \
             wsu:Id=\"edm-in-body\"/></S12:Body>{}",
            &text[..body_end - 1],
            &text[body_end + 1..]
        );
        moved
            .replace("href=\"cid:part0@test\"", href_attr)
            .into_bytes()
    };
    for (href_attr, placed) in [
        ("href=\"#edm-in-body\"", "puts the payload in the SOAP Body"),
        ("", "makes the SOAP Body the payload"),
    ] {
        let r = post(&served, &(ct.clone(), in_body(href_attr)));
        assert_error(&r, "EBMS:0010", placed);
        assert!(r.body.contains(placed), "{}", r.body);
        assert!(r.body.contains("MIME attachments"), "{}", r.body);
        assert!(
            r.body.contains("severity=\"failure\""),
            "refused, not warned: {}",
            r.body
        );
    }

    let mut served = served;
    assert_eq!(served.terminate(Duration::from_secs(15)).code(), Some(0));
    let store = varti_store::SledStore::open(dir.path().join("data/store")).unwrap();
    let ids: Vec<String> = store
        .list(&ListFilter::default())
        .unwrap()
        .records
        .into_iter()
        .map(|r| r.meta.message_id)
        .collect();
    assert_eq!(ids, ["order-2@test"]);
}

/// A gzip member that inflates to `1 + 258 × (1 + 8n)` zero bytes in a few percent of
/// that: one fixed-Huffman deflate block of a literal zero followed by back-references
/// (length 258, distance 1). Written by hand because compressing gigabytes with a real
/// compressor would take the test a minute. The CRC in the trailer is left 0: a receiver
/// must stop at its cap long before it would check it.
fn gzip_bomb(n: usize) -> Vec<u8> {
    /// Bits packed least significant first; Huffman codes go most significant bit first.
    #[derive(Default)]
    struct Bits {
        out: Vec<u8>,
        acc: u32,
        n: u32,
    }
    impl Bits {
        fn put(&mut self, value: u32, count: u32) {
            self.acc |= value << self.n;
            self.n += count;
            while self.n >= 8 {
                self.out.push(self.acc as u8);
                self.acc >>= 8;
                self.n -= 8;
            }
        }
        fn code(&mut self, code: u32, len: u32) {
            self.put(code.reverse_bits() >> (32 - len), len);
        }
        /// Length 258 (symbol 285, 8 bits) at distance 1 (code 0, 5 bits).
        fn repeat(&mut self) {
            self.code(0xC5, 8);
            self.code(0, 5);
        }
    }
    // BFINAL, BTYPE = fixed Huffman, literal 0, one repeat: 24 bits, byte-aligned.
    let mut head = Bits::default();
    head.put(1, 1);
    head.put(1, 2);
    head.code(0x30, 8);
    head.repeat();
    assert_eq!(head.n, 0);
    // Eight repeats are 104 bits: 13 bytes that repeat as they are.
    let mut eight = Bits::default();
    (0..8).for_each(|_| eight.repeat());
    assert_eq!((eight.n, eight.out.len()), (0, 13));
    let mut end = Bits::default();
    end.code(0, 7); // end of block
    end.put(0, 1); // pad to a byte
    let inflated = 1 + 258 * (1 + 8 * n as u64);
    let mut gz = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
    gz.extend_from_slice(&head.out);
    gz.extend(std::iter::repeat_n(eight.out.as_slice(), n).flatten());
    gz.extend_from_slice(&end.out);
    gz.extend_from_slice(&0u32.to_le_bytes());
    gz.extend_from_slice(&(inflated as u32).to_le_bytes());
    gz
}

#[test]
fn a_small_bomb_inflates_to_its_size() {
    use std::io::Read;
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(&gzip_bomb(1000)[..])
        .read_to_end(&mut out)
        .unwrap_err(); // the CRC is left 0 …
    assert_eq!(out.len(), 1 + 258 * 8001, "… after every byte was inflated");
    assert!(out.iter().all(|b| *b == 0));
}

/// Issue 13: three 4 GiB gzip bombs at once, on a leg whose parts may inflate to 1 GiB,
/// with a 384 MiB spool budget: each is refused with EBMS:0303, the spool directory never
/// holds more than the budget, and nothing is left or stored afterwards.
///
/// The budget leaves room for the three at once: a bomb's first pass writes at most 32
/// times its compressed size (3.2 MiB here, so 103 MiB), beside its received and decrypted
/// copies. With less, a bomb still being decrypted while the other two fill the spool is
/// answered 503 (no room now, send again later), which is right but depends on how the
/// three interleave; a spool budget running out is tested in `as4/tests/receive_accept.rs`
/// (`the_spool_budget_bounds_disk_use_and_bombs_are_still_refused`).
#[test]
fn three_gzip_bombs_in_parallel_stay_within_the_spool_budget() {
    const BUDGET: u64 = 384 << 20;
    let dir = tempfile::tempdir().unwrap();
    let served = spawn_serve(
        dir.path(),
        &plain_config(&format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[ops]\nlisten = \"127.0.0.1:0\"\n\
             [limits]\nspool_budget_bytes = {BUDGET}\n"
        )),
        &["--insecure-http"],
    );
    let bomb = gzip_bomb((4usize << 30) / (258 * 8));
    let sealed: Vec<_> = (0..3)
        .map(|i| {
            let mut m = Msg::test_service(&format!("bomb-{i}@test"));
            m.payloads = vec![("application/xml", bomb.clone())];
            m.precompressed = true;
            m.seal()
        })
        .collect();
    drop(bomb);
    let spool = dir.path().join("data/spool");
    let done = std::sync::atomic::AtomicBool::new(false);
    let (answers, most) = std::thread::scope(|s| {
        let watch = s.spawn(|| {
            let mut most = 0u64;
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                most = most.max(dir_bytes(&spool));
                std::thread::sleep(Duration::from_millis(5));
            }
            most
        });
        let posts: Vec<_> = sealed
            .iter()
            .map(|m| s.spawn(|| post(&served, m)))
            .collect();
        let answers: Vec<HttpResponse> = posts.into_iter().map(|p| p.join().unwrap()).collect();
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        (answers, watch.join().unwrap())
    });
    for r in &answers {
        assert_error(r, "EBMS:0303", "a 4 GiB bomb on a 1 GiB cap");
        assert!(
            r.body.contains("larger than the limit of 1073741824 bytes"),
            "refused at the cap: {}",
            r.body
        );
    }
    assert!(
        most <= BUDGET,
        "the spool held {most} bytes, over the {BUDGET}-byte budget"
    );
    assert!(most > 0, "the watcher saw the spool in use");
    assert_eq!(dir_bytes(&spool), 0, "nothing left in the spool");
    assert_eq!(
        dir_bytes(&dir.path().join("data/store/payloads")),
        0,
        "nothing stored"
    );
}

/// Bytes of the regular files under `dir` (0 when it does not exist).
fn dir_bytes(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// The arrival in the history names the sending party and the peer: the TCP peer, or the
/// client a trusted proxy (`server.trusted_proxies`) names in `X-Forwarded-For` (its
/// rightmost entry, the one the proxy added); from anyone else that header is ignored.
#[test]
fn arrival_records_the_peer_and_believes_x_forwarded_for_only_from_a_trusted_proxy() {
    let arrival = |trusted: &str, id: &str, forwarded: Option<&str>| -> String {
        let dir = tempfile::tempdir().unwrap();
        let mut served = spawn_serve(
            dir.path(),
            &plain_config(&format!(
                "[server]\nlisten = \"127.0.0.1:0\"\ntrusted_proxies = [{trusted}]\n\
                 [ops]\nlisten = \"127.0.0.1:0\"\n"
            )),
            &["--insecure-http"],
        );
        let (ct, body) = Msg::test_service(id).seal();
        let mut tcp = TcpStream::connect(served.msh).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut headers = format!("Content-Type: {ct}\r\n");
        if let Some(f) = forwarded {
            headers.push_str(&format!("X-Forwarded-For: {f}\r\n"));
        }
        let r = http_request(&mut tcp, "POST", "/msh", &headers, &body).unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(r.body.contains("NonRepudiationInformation"), "{}", r.body);
        assert_eq!(served.terminate(Duration::from_secs(15)).code(), Some(0));
        let store = varti_store::SledStore::open(dir.path().join("data/store")).unwrap();
        let record = store.get(id).unwrap().expect("stored");
        let first = &record.history[0];
        assert_eq!(first.event, varti_store::Event::Receive);
        assert!(
            first
                .note
                .as_deref()
                .unwrap()
                .starts_with(&format!("from {} via ", record.meta.from_party)),
            "{first:?}"
        );
        first.note.clone().unwrap()
    };
    let forwarded = Some("198.51.100.9, 203.0.113.7");
    // Not a trusted proxy: the TCP peer, whatever the header says.
    let note = arrival("", "peer-1@test", forwarded);
    assert!(note.contains("via 127.0.0.1:"), "{note}");
    assert!(
        !note.contains("203.0.113.7") && !note.contains("198.51.100.9"),
        "{note}"
    );
    let note = arrival("\"127.0.0.2\"", "peer-2@test", forwarded);
    assert!(!note.contains("203.0.113.7"), "{note}");
    // From a trusted proxy: the address it added, and the proxy.
    let note = arrival("\"127.0.0.1\"", "peer-3@test", forwarded);
    assert!(
        note.contains("via 203.0.113.7 (via proxy 127.0.0.1:"),
        "{note}"
    );
    // A trusted proxy without the header: the TCP peer.
    let note = arrival("\"127.0.0.1\"", "peer-4@test", None);
    assert!(note.contains("via 127.0.0.1:"), "{note}");
}
