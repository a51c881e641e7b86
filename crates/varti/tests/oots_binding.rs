//! Every OOTS exchange bound to its parties (issue 21), through real `varti serve`
//! processes: varti-a is the OOTS gateway under test; varti-b and, where a third party is
//! needed, varti-c are access points with the gateway off, whose backend API the test
//! drives to play a provider's gateway, a third gateway or a requester — forged answers and
//! requests included. Each is a real AS4 partner (TLS, signed and encrypted messages, the
//! shipped OOTS PMode), so every refusal is the one a partner would meet.
//!
//! * An answer settles its request only from the gateway the request went to (or one
//!   `[[oots.answer_gateways]]` names for the provider), with `originalSender` and the EDM
//!   naming the provider the request named; anything else is refused with EBMS:0003 before
//!   anything of it is stored.
//! * The provider refuses a request whose `originalSender` is not its EvidenceRequester (or
//!   whose intermediary platform is not the one configured for the sending gateway) with
//!   EDM:ERR:0003, and never calls the register for it.
//! * Unsolicited and late answers leave none of their bytes on the requester's disk.
//! * `oots.max_received_evidence_bytes` caps what an answer may carry.
//!
//! Each test starts only the processes it needs; every wait is for a positive signal (a
//! message's state at the sender, the requester's record, a metric), never a sleep.

mod oots_support;
mod pair_support;
mod register_support;
mod serve_support;

use std::time::{Duration, Instant};

use oots_support::{codelists_dir, get_request, post_request, request_body, settled, FAST};
use pair_support::Node;
use register_support::Register;
use serde_json::{json, Value};
use varti_oots::edm::error::EdmErrorKind;
use varti_oots::edm::sdg::{Agent, Identifier, LangText};
use varti_oots::edm::{EdmDocument, EdmVersion, EvidenceRequest};
use varti_oots::flow::{self, EvidenceData, RequestData};

/// The provider the portal asks (`request_body`), and another one.
const P1: &str = "LV90000011588";
const P2: &str = "LV40003000001";
const P_SCHEME: &str = "urn:cef.eu:names:identifier:EAS:9939";
/// The admin client on varti-a (it sees the gateway's own messages).
const ADMIN: &str = "token-ops";
const SERVICE_TYPE: &str = "urn:oasis:names:tc:ebcore:ebrs:ebms:binding:1.0";
const EDM_MIME: &str = "application/x-ebrs+xml";
const WAIT: Duration = Duration::from_secs(60);

/// The running gateways of one test; dropped, they are stopped.
struct Gateways {
    _root: tempfile::TempDir,
    /// varti-a: the OOTS gateway under test.
    a: Node,
    /// varti-b: the gateway requests go to (OOTS off: the test answers for it).
    b: Node,
    /// varti-c: a third gateway trusted by the OOTS PMode, when the test needs one.
    c: Option<Node>,
}

/// Starts varti-a with `a_oots` (its `[oots]` table and what follows), varti-b and, with
/// `third`, varti-c (the OOTS gateway off on both; the shipped OOTS PMode names all three).
fn start(a_oots: &str, third: bool) -> Gateways {
    let root = tempfile::tempdir().unwrap();
    let extra_a = format!(
        "[[backend.clients]]\nname = \"ops\"\ntoken_sha256 = \"{}\"\nadmin = true\n{FAST}{a_oots}",
        varti::pair::token_sha256(ADMIN)
    );
    let options = varti::pair::PairOptions {
        extra_pmodes: Vec::new(),
        b_endpoint_port: None,
        extra_config: extra_a,
    };
    let layout =
        varti::pair::PairLayout::create(root.path(), &pair_support::repo(), &options).unwrap();
    layout.rewrite_config(&layout.b, FAST).unwrap();
    let c_layout = third.then(|| {
        let c = varti::pair::NodeLayout {
            name: "c",
            party: "varti-c",
            dir: root.path().join("c"),
            host: std::net::Ipv4Addr::LOCALHOST.into(),
            ports: varti::pair::Ports::pick().unwrap(),
            token: "token-c".into(),
        };
        std::fs::create_dir_all(&c.dir).unwrap();
        layout.rewrite_config(&c, FAST).unwrap();
        // varti-c as a partner of the others, and a party of the OOTS agreement.
        let pmodes = root.path().join("pmodes");
        std::fs::write(
            pmodes.join("varti-c.toml"),
            format!(
                "[[party]]\nname = \"varti-c\"\nids = [\n\
                 {{ value = \"varti-c\", type = \"urn:oasis:names:tc:ebcore:partyid-type:unregistered\" }},\n\
                 {{ value = \"varti-c\", type = \"urn:oasis:names:tc:ebcore:partyid-type:unregistered:oots\" }},\n]\n\
                 endpoint = \"https://localhost:{}/msh\"\n\
                 signing_cert = \"../certs/varti-c/sign.cert.pem\"\n\
                 encryption_cert = \"../certs/varti-c/enc.cert.pem\"\n\
                 tls = {{ min_version = \"1.2\", client_auth = true, cert = \"../certs/varti-c/tls.cert.pem\", trusted_ca = \"../certs/ca.cert.pem\" }}\n",
                c.ports.msh
            ),
        )
        .unwrap();
        let oots = pmodes.join("oots.toml");
        let text = std::fs::read_to_string(&oots).unwrap();
        let three = text.replace(
            "parties = [\"varti-a\", \"varti-b\"]",
            "parties = [\"varti-a\", \"varti-b\", \"varti-c\"]",
        );
        assert_ne!(three, text, "the OOTS PMode names its parties differently now");
        std::fs::write(&oots, three).unwrap();
        c
    });
    // Started side by side: each start is mostly waiting for the others' CPU anyway.
    let node = |l: varti::pair::NodeLayout| {
        std::thread::spawn(move || Node {
            served: serve_support::spawn_serve_in(&l.dir, &["--config", "varti.toml"]),
            backend: l.backend(),
            token: l.token.clone(),
            dir: l.dir.clone(),
        })
    };
    let (a, b) = (node(layout.a.clone()), node(layout.b.clone()));
    let c = c_layout.map(node);
    Gateways {
        a: a.join().unwrap(),
        b: b.join().unwrap(),
        c: c.map(|c| c.join().unwrap()),
        _root: root,
    }
}

/// varti-a's `[oots]` as a requester (its portal is `DK22233223`, see `request_body`).
fn requester(extra: &str) -> String {
    format!(
        "[oots]\nrole = \"requester\"\nrequest_timeout_secs = 60\ncodelists = \"{}\"\n{extra}",
        codelists_dir()
    )
}

/// Bytes no other test file uses: a PDF whose body is derived from `seed`.
fn evidence(seed: u32) -> Vec<u8> {
    let mut b = format!("%PDF-1.4\n% evidence {seed}\n").into_bytes();
    // Over the store's inline bound: a kept evidence is a payload file, where the disk
    // scans of these tests look (an inline one would sit encoded in the store's record).
    b.extend((0..120_000u32).map(|i| (i.wrapping_mul(seed) >> 3) as u8));
    b.extend_from_slice(b"\n%%EOF\n");
    b
}

/// An agent (provider or platform) with this identifier.
fn agent(id: &str, scheme: &str, classification: Option<&str>) -> Agent {
    Agent {
        identifier: Some(Identifier {
            scheme_id: Some(scheme.into()),
            value: id.into(),
        }),
        names: vec![LangText {
            lang: Some("EN".into()),
            text: format!("Organisation {id}"),
        }],
        country: Some("LV".into()),
        classification: classification.map(str::to_owned),
    }
}

/// Polls `node`'s inbox until a message `matches`, and returns it.
fn inbound_where(node: &Node, what: &str, matches: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        if let Some(m) = node.inbound().into_iter().find(|m| matches(m)) {
            return m;
        }
        assert!(
            start.elapsed() < WAIT,
            "{what}: not in the inbox after {WAIT:?}\n{}",
            node.served.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The request `id` of varti-a as varti-b received it: its message and its EDM. Four
/// corners: From/To are the access points, `originalSender` / `finalRecipient` the portal
/// and the provider it asked.
fn received_request(b: &Node, id: &str) -> (Value, EvidenceRequest) {
    let m = inbound_where(b, "the evidence request", |m| {
        m["action"] == "ExecuteQueryRequest" && m["conversation_id"] == id
    });
    assert_eq!(m["from_party"], "varti-a", "{m:#}");
    assert_eq!(m["to_party"], "varti-b", "{m:#}");
    let property = |name: &str| {
        m["properties"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .map(|p| p["value"].clone())
            .unwrap_or(Value::Null)
    };
    assert_eq!(property("originalSender"), "DK22233223", "{m:#}");
    assert!(
        property("finalRecipient") == P1 || property("finalRecipient") == P2,
        "{m:#}"
    );
    let edm = b.payload(m["message_id"].as_str().unwrap(), 0);
    let Ok(EdmDocument::Request(r)) = EdmDocument::parse(&edm) else {
        panic!("no EDM request:\n{}", String::from_utf8_lossy(&edm))
    };
    (m, r)
}

/// What an answer carries (and in whose names).
struct Answer<'a> {
    action: &'a str,
    /// The `originalSender` property's value (its type is the providers' scheme).
    original_sender: &'a str,
    edm: String,
    /// The evidence file, with the Content-ID the EDM refers to.
    evidence: Option<(&'a str, Vec<u8>)>,
}

/// An evidence response to `request` naming `provider`, for the file `cid`.
fn response_edm(request: &EvidenceRequest, provider: &str, cid: &str) -> String {
    let data = [EvidenceData {
        content_id: cid.into(),
        mime_type: "application/pdf".into(),
        title: Some("Birth certificate".into()),
        issuing_date: Some("2001-02-03".into()),
    }];
    let r = flow::build_response(request, &agent(provider, P_SCHEME, Some("EP")), &data);
    EdmDocument::Response(r).to_xml()
}

/// An error response to `request` with `kind`, from `provider`.
fn error_edm(request: &EvidenceRequest, kind: EdmErrorKind, provider: &str) -> String {
    let e = flow::build_error(
        request.id.as_deref().unwrap(),
        EdmVersion::V2_0,
        kind,
        "No evidence found",
        Some("forged"),
        &agent(provider, P_SCHEME, None),
        None,
    );
    EdmDocument::Error(e).to_xml()
}

/// `from` sends `answer` to varti-a on the request message `request` (its conversation,
/// `RefToMessageId`); returns the answer's MessageId.
fn send_answer(from: &Node, request: &Value, answer: Answer<'_>) -> String {
    let mut payloads = vec![json!({"part": "edm", "mime_type": EDM_MIME})];
    let mut files: Vec<(&str, &str, &[u8])> = vec![("edm", EDM_MIME, answer.edm.as_bytes())];
    if let Some((cid, bytes)) = &answer.evidence {
        payloads
            .push(json!({"part": "evidence", "mime_type": "application/pdf", "content_id": cid}));
        files.push(("evidence", "application/pdf", bytes));
    }
    from.submit(
        json!({
            "to_party": "varti-a",
            "service": "QueryManager",
            "service_type": SERVICE_TYPE,
            "action": answer.action,
            "conversation_id": request["conversation_id"],
            "ref_to_message_id": request["message_id"],
            "properties": [
                {"name": "originalSender", "value": answer.original_sender, "type": P_SCHEME},
                {"name": "finalRecipient", "value": "DK22233223", "type": "urn:cef.eu:names:identifier:EAS:0096"},
            ],
            "payloads": payloads,
        }),
        &files,
    )
}

/// Waits until varti-a's answer to `id` (sent by `node`) failed, and returns the error.
fn refused(node: &Node, id: &str) -> String {
    let m = node.wait_state(id, "failed", WAIT);
    m["last_error"].as_str().unwrap_or_default().to_owned()
}

/// One series of varti-a's `varti_refusals_total` for the OOTS gateway.
fn refusals(a: &Node, reason: &str) -> u64 {
    let text = serve_support::plain_get(a.served.ops, "/metrics").body;
    let series = format!("varti_refusals_total{{owner=\"varti:oots\",reason=\"{reason}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&series))
        .map_or(0, |v| v.trim().parse().unwrap())
}

/// The journal of refused answers on varti-a (every day's lines).
fn journal(a: &Node) -> Vec<Value> {
    let dir = a.dir.join("data/oots/refused");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok())
        .flat_map(|e| {
            std::fs::read_to_string(e.path())
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect::<Vec<Value>>()
        })
        .collect()
}

/// Whether some file under `dir` holds `bytes` (whole, or as a part of a larger file).
fn on_disk(dir: &std::path::Path, bytes: &[u8]) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    let probe = &bytes[bytes.len() / 2..bytes.len() / 2 + 4096];
    entries.filter_map(|e| e.ok()).any(|e| {
        let p = e.path();
        if p.is_dir() {
            on_disk(&p, bytes)
        } else {
            std::fs::read(&p).is_ok_and(|b| b.windows(probe.len()).any(|w| w == probe))
        }
    })
}

/// Whether varti-a stored the message `id` at all (its admin sees every message).
fn stored(a: &Node, id: &str) -> bool {
    let r = a.api_as(
        ADMIN,
        "GET",
        &format!("/api/v1/messages/{}", pair_support::urlencode(id)),
        None,
        b"",
    );
    match r.status {
        200 => true,
        404 => false,
        s => panic!("GET message {id}: {s} {}", r.body),
    }
}

/// The request is still waiting, and its portal sees no evidence.
fn still_sent(a: &Node, id: &str) {
    let v = get_request(a, id);
    assert_eq!(v["state"], "sent", "{v:#}");
    assert!(v["evidences"].as_array().unwrap().is_empty(), "{v:#}");
    assert!(v["response_message_id"].is_null(), "{v:#}");
    let r = a.api(
        "GET",
        &format!("/api/v1/oots/requests/{id}/evidence/0"),
        None,
        b"",
    );
    assert_eq!(r.status, 404, "{}", r.body);
}

/// The request settled `answered` with exactly `bytes` as its evidence.
fn answered_with(a: &Node, b: &Node, id: &str, bytes: &[u8]) {
    let v = settled(a, b, id, WAIT);
    assert_eq!(v["state"], "answered", "{v:#}");
    // Kept until its hand-over: where the scans for refused bytes look, this one is found.
    assert!(
        on_disk(&a.dir, bytes),
        "the stored evidence escapes the scan"
    );
    let href = v["evidences"][0]["href"].as_str().unwrap();
    let file = a.api("GET", href, None, b"");
    assert_eq!(file.status, 200, "{}", file.body);
    assert!(file.bytes == bytes, "the portal got other evidence");
}

/// Issue 21, point 1: a third gateway answers a request sent to the provider's gateway
/// (with the right conversation, `RefToMessageId`, provider and EDM): refused with
/// EBMS:0003 before anything is stored, logged with both parties, counted, journalled;
/// the request stays `sent`, its portal sees no evidence and none of the forged bytes is
/// on varti-a's disk. The asked gateway's answer still settles it, and a gateway that
/// `[[oots.answer_gateways]]` names for a provider may answer for that one.
#[test]
fn oots_answer_from_another_party_is_refused() {
    let g = start(
        &requester(&format!(
            "[[oots.answer_gateways]]\nprovider = \"{P2}\"\ngateways = [\"varti-c\"]\n"
        )),
        true,
    );
    let (a, b, c) = (&g.a, &g.b, g.c.as_ref().unwrap());
    let id = post_request(a, &request_body("EV-OK", "DK/LV/010190-1234"))["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (request, edm) = received_request(b, &id);

    // varti-c learnt the conversation (it travels in clear headers) and answers first.
    let forged = evidence(41);
    let sent = send_answer(
        c,
        &request,
        Answer {
            action: "ExecuteQueryResponse",
            original_sender: P1,
            edm: response_edm(&edm, P1, "forged@c"),
            evidence: Some(("forged@c", forged.clone())),
        },
    );
    let error = refused(c, &sent);
    assert!(
        error.contains("EBMS:0003") && error.contains("varti-c"),
        "{error}"
    );
    assert!(
        !error.contains("varti-b"),
        "the third party learns nothing of the asked one: {error}"
    );
    assert_eq!(refusals(a, "wrong_gateway"), 1);
    let log = a.served.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("OOTS answer refused") && l.contains(&sent))
        .unwrap_or_else(|| panic!("no refusal logged:\n{log}"));
    assert!(
        line.contains("varti-c") && line.contains("varti-b") && line.contains(&id),
        "{line}"
    );
    let noted = journal(a);
    assert_eq!(noted.len(), 1, "{noted:#?}");
    assert_eq!(noted[0]["message_id"], sent.as_str());
    assert_eq!(noted[0]["from_party"], "varti-c");
    assert_eq!(noted[0]["asked_gateway"], "varti-b");
    assert_eq!(noted[0]["reason"], "wrong_gateway");
    still_sent(a, &id);
    assert!(!stored(a, &sent), "the refused answer was stored");
    assert!(
        !on_disk(&a.dir, &forged),
        "the forged evidence is on a's disk"
    );

    // The asked gateway's own answer settles it.
    let real = evidence(43);
    send_answer(
        b,
        &request,
        Answer {
            action: "ExecuteQueryResponse",
            original_sender: P1,
            edm: response_edm(&edm, P1, "real@b"),
            evidence: Some(("real@b", real.clone())),
        },
    );
    answered_with(a, b, &id, &real);

    // A provider configured to answer through varti-c may.
    let mut body = request_body("EV-OK", "DK/LV/010190-1234");
    body["provider"]["identifier"]["value"] = json!(P2);
    let id2 = post_request(a, &body)["id"].as_str().unwrap().to_owned();
    let (request2, edm2) = received_request(b, &id2);
    let via = evidence(47);
    send_answer(
        c,
        &request2,
        Answer {
            action: "ExecuteQueryResponse",
            original_sender: P2,
            edm: response_edm(&edm2, P2, "via@c"),
            evidence: Some(("via@c", via.clone())),
        },
    );
    answered_with(a, b, &id2, &via);
    assert_eq!(refusals(a, "wrong_gateway"), 1);
}

/// Issue 21, point 1: the asked gateway answers in the name of another provider — in
/// `originalSender`, in the response's EvidenceProvider, in an error's ErrorProvider:
/// each refused with EBMS:0003 and counted; the request stays `sent`, none of the forged
/// evidence reaches varti-a's disk; the answer in the right names settles it.
#[test]
fn oots_answer_naming_another_provider_is_refused() {
    let g = start(&requester(""), false);
    let (a, b) = (&g.a, &g.b);
    let id = post_request(a, &request_body("EV-OK", "DK/LV/010190-1234"))["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (request, edm) = received_request(b, &id);
    let (forged1, forged2) = (evidence(53), evidence(59));
    let answers = [
        // originalSender names another provider.
        Answer {
            action: "ExecuteQueryResponse",
            original_sender: P2,
            edm: response_edm(&edm, P1, "ev1@b"),
            evidence: Some(("ev1@b", forged1.clone())),
        },
        // The response's EvidenceProvider is another provider.
        Answer {
            action: "ExecuteQueryResponse",
            original_sender: P1,
            edm: response_edm(&edm, P2, "ev2@b"),
            evidence: Some(("ev2@b", forged2.clone())),
        },
        // An error from another provider.
        Answer {
            action: "ExceptionResponse",
            original_sender: P1,
            edm: error_edm(&edm, EdmErrorKind::ObjectNotFound, P2),
            evidence: None,
        },
    ];
    let sent: Vec<String> = answers
        .into_iter()
        .map(|x| send_answer(b, &request, x))
        .collect();
    let errors: Vec<String> = sent.iter().map(|s| refused(b, s)).collect();
    assert!(
        errors[0].contains("EBMS:0003") && errors[0].contains(&format!("originalSender `{P2}`")),
        "{}",
        errors[0]
    );
    assert!(
        errors[1].contains("EBMS:0003") && errors[1].contains(&format!("EvidenceProvider `{P2}`")),
        "{}",
        errors[1]
    );
    assert!(
        errors[2].contains("EBMS:0003") && errors[2].contains(&format!("ErrorProvider `{P2}`")),
        "{}",
        errors[2]
    );
    assert_eq!(refusals(a, "wrong_original_sender"), 1);
    assert_eq!(refusals(a, "wrong_evidence_provider"), 2);
    let log = a.served.log_text();
    for s in &sent {
        let line = log
            .lines()
            .find(|l| l.contains("OOTS answer refused") && l.contains(s.as_str()))
            .unwrap_or_else(|| panic!("{s}: no refusal logged:\n{log}"));
        assert!(line.contains(P1) && line.contains(P2), "{line}");
        assert!(!stored(a, s), "{s} was stored");
    }
    assert_eq!(journal(a).len(), 3);
    still_sent(a, &id);

    let real = evidence(61);
    send_answer(
        b,
        &request,
        Answer {
            action: "ExecuteQueryResponse",
            original_sender: P1,
            edm: response_edm(&edm, P1, "real@b"),
            evidence: Some(("real@b", real.clone())),
        },
    );
    answered_with(a, b, &id, &real);
    assert!(!on_disk(&a.dir, &forged1) && !on_disk(&a.dir, &forged2));
}

/// What varti-b (playing a requester's gateway) asks varti-a's provider side.
struct Ask<'a> {
    original_sender: (&'a str, &'a str),
    /// The EDM's EvidenceRequester (`ER`).
    requester: &'a str,
    /// The EDM's intermediary platform (`IP`).
    platform: Option<&'a str>,
}

const FR_SIRET: &str = "urn:cef.eu:names:identifier:EAS:0009";
const FR_PLATFORM: &str = "urn:oasis:names:tc:ebcore:partyid-type:unregistered:FR";

/// varti-b sends varti-a an evidence request; returns its conversation id.
fn ask(b: &Node, ask: Ask<'_>) -> String {
    let mut data = request_body("EV-OK", "DK/LV/010190-1234");
    let data_obj = data.as_object_mut().unwrap();
    data_obj.remove("provider_party");
    data_obj.insert(
        "requester".into(),
        json!({"identifier": {"scheme": FR_SIRET, "value": ask.requester}, "name": "Portail", "country": "FR"}),
    );
    if let Some(p) = ask.platform {
        data_obj.insert(
            "intermediary".into(),
            json!({"identifier": {"scheme": FR_PLATFORM, "value": p}, "name": "Plateforme", "country": "FR"}),
        );
    }
    let data: RequestData = serde_json::from_value(data).unwrap();
    let conversation = flow::uuid_v4();
    let edm = flow::build_request_with_id(&data, &format!("urn:uuid:{conversation}")).unwrap();
    let xml = EdmDocument::Request(edm).to_xml();
    b.submit(
        json!({
            "to_party": "varti-a",
            "service": "QueryManager",
            "service_type": SERVICE_TYPE,
            "action": "ExecuteQueryRequest",
            "conversation_id": conversation,
            "properties": [
                {"name": "originalSender", "value": ask.original_sender.0, "type": ask.original_sender.1},
                {"name": "finalRecipient", "value": P1, "type": P_SCHEME},
            ],
            "payloads": [{"part": "edm", "mime_type": EDM_MIME}],
        }),
        &[("edm", EDM_MIME, xml.as_bytes())],
    );
    conversation
}

/// varti-a's answer on `conversation`, as varti-b received it: its action and EDM.
fn answer_to(b: &Node, conversation: &str) -> (String, EdmDocument) {
    let m = inbound_where(b, "varti-a's answer", |m| {
        m["conversation_id"] == conversation && m["action"] != "ExecuteQueryRequest"
    });
    let edm = b.payload(m["message_id"].as_str().unwrap(), 0);
    (
        m["action"].as_str().unwrap().to_owned(),
        EdmDocument::parse(&edm).unwrap(),
    )
}

/// The EDM error's code and detail.
fn edm_error(doc: &EdmDocument) -> (String, String) {
    let EdmDocument::Error(e) = doc else {
        panic!("not an EDM error: {doc:?}")
    };
    let x = e.exception().unwrap();
    (
        x.code.clone().unwrap_or_default(),
        x.detail.clone().unwrap_or_default(),
    )
}

/// Issue 21, point 2: varti-a as a provider refuses with EDM:ERR:0003, naming the
/// mismatch, a request whose `originalSender` is not the EvidenceRequester it names, and
/// one naming an intermediary platform other than the one configured for the sending
/// gateway; the register is never called for either. The configured platform speaking for
/// its portal is served.
#[test]
fn oots_original_sender_must_match_requester() {
    let register = Register::start();
    let g = start(
        &format!(
            "[oots]\nrole = \"provider\"\ncodelists = \"{}\"\n\
             [[oots.requester_platforms]]\ngateway = \"varti-b\"\nplatform = \"VARTI-FR\"\n\
             [[oots.connectors]]\nevidence_type = \"EV-OK\"\nurl = \"{}\"\n",
            codelists_dir(),
            register.url("/ok")
        ),
        false,
    );
    let (a, b) = (&g.a, &g.b);
    const REQUESTER: &str = "13000201100010";
    let evil = ask(
        b,
        Ask {
            original_sender: ("EVIL-PORTAL-1", FR_SIRET),
            requester: REQUESTER,
            platform: None,
        },
    );
    let wrong_platform = ask(
        b,
        Ask {
            original_sender: (REQUESTER, FR_SIRET),
            requester: REQUESTER,
            platform: Some("VARTI-XX"),
        },
    );
    let (action, doc) = answer_to(b, &evil);
    assert_eq!(action, "ExceptionResponse");
    let (code, detail) = edm_error(&doc);
    assert_eq!(code, "EDM:ERR:0003", "{detail}");
    assert!(
        detail.contains("originalSender `EVIL-PORTAL-1`") && detail.contains(REQUESTER),
        "{detail}"
    );
    let (action, doc) = answer_to(b, &wrong_platform);
    assert_eq!(action, "ExceptionResponse");
    let (code, detail) = edm_error(&doc);
    assert_eq!(code, "EDM:ERR:0003", "{detail}");
    assert!(
        detail.contains("VARTI-XX") && detail.contains("VARTI-FR"),
        "{detail}"
    );
    // Both were answered: had either reached the register, it would show by now.
    assert!(
        register.calls("/ok").is_empty(),
        "{:?}",
        register.calls("/ok")
    );
    assert_eq!(refusals(a, "original_sender_not_requester"), 1);
    assert_eq!(refusals(a, "wrong_platform"), 1);

    // The platform configured for varti-b may speak for its portal.
    let fine = ask(
        b,
        Ask {
            original_sender: ("VARTI-FR", FR_PLATFORM),
            requester: REQUESTER,
            platform: Some("VARTI-FR"),
        },
    );
    let (action, doc) = answer_to(b, &fine);
    assert_eq!(action, "ExecuteQueryResponse", "{doc:?}");
    let calls = register.calls("/ok");
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0]["request_id"], format!("urn:uuid:{fine}"));
}

/// Issue 21, point 3: an answer to a request varti-a never sent is refused (EBMS:0003)
/// and journalled without a byte of it; an answer from the right party that comes after
/// its request timed out is acknowledged (it is the provider's legitimate answer) and its
/// payloads are purged at once. Neither leaves any of its evidence on varti-a's disk.
#[test]
fn oots_unsolicited_answer_leaves_nothing() {
    let g = start(&requester(""), false);
    let (a, b) = (&g.a, &g.b);
    let stray = evidence(67);
    let conversation = flow::uuid_v4();
    let made_up = json!({
        "conversation_id": conversation,
        "message_id": format!("{conversation}@oots.varti"),
    });
    let request = flow::build_request_with_id(
        &serde_json::from_value::<RequestData>({
            let mut d = request_body("EV-OK", "DK/LV/010190-1234");
            d.as_object_mut().unwrap().remove("provider_party");
            d
        })
        .unwrap(),
        &format!("urn:uuid:{conversation}"),
    )
    .unwrap();
    let sent = send_answer(
        b,
        &made_up,
        Answer {
            action: "ExecuteQueryResponse",
            original_sender: P1,
            edm: response_edm(&request, P1, "stray@b"),
            evidence: Some(("stray@b", stray.clone())),
        },
    );
    let error = refused(b, &sent);
    assert!(
        error.contains("EBMS:0003") && error.contains("names no evidence request"),
        "{error}"
    );
    assert_eq!(refusals(a, "unsolicited"), 1);
    let noted = journal(a);
    assert_eq!(noted.len(), 1, "{noted:#?}");
    assert_eq!(noted[0]["message_id"], sent.as_str());
    assert_eq!(noted[0]["reason"], "unsolicited");
    assert_eq!(noted[0]["from_party"], "varti-b");
    assert!(
        noted[0]["payload_bytes"].as_u64().unwrap() > stray.len() as u64,
        "{noted:#?}"
    );
    assert!(!stored(a, &sent));
    assert!(
        !on_disk(&a.dir, &stray),
        "the stray evidence is on a's disk"
    );

    // A late answer: acknowledged, then its payloads go at once.
    let mut body = request_body("EV-OK", "DK/LV/010190-1234");
    body["timeout_secs"] = json!(1);
    let id = post_request(a, &body)["id"].as_str().unwrap().to_owned();
    let (request, edm) = received_request(b, &id);
    let v = settled(a, b, &id, WAIT);
    assert_eq!(v["state"], "timed_out", "{v:#}");
    let late = evidence(71);
    let sent = send_answer(
        b,
        &request,
        Answer {
            action: "ExecuteQueryResponse",
            original_sender: P1,
            edm: response_edm(&edm, P1, "late@b"),
            evidence: Some(("late@b", late.clone())),
        },
    );
    b.wait_state(&sent, "acknowledged", WAIT);
    let start = Instant::now();
    loop {
        let m = a.api_as(
            ADMIN,
            "GET",
            &format!("/api/v1/messages/{}", pair_support::urlencode(&sent)),
            None,
            b"",
        );
        if m.status == 200 {
            let m: Value = serde_json::from_str(&m.body).unwrap();
            if !m["payloads_purged_at"].is_null() {
                break;
            }
        }
        assert!(
            start.elapsed() < WAIT,
            "the late answer's payloads were not purged:\n{}",
            a.served.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!on_disk(&a.dir, &late), "the late evidence is on a's disk");
    assert_eq!(get_request(a, &id)["state"], "timed_out");
}

/// Issue 21, point 5: an answer whose evidence is over `oots.max_received_evidence_bytes`
/// is refused with EBMS:0010 before it is stored, and its request ends `error` with
/// EDM:ERR:0008 naming the cap; an answer under the cap (the EDM document is not counted)
/// settles as usual.
#[test]
fn oots_answer_over_the_evidence_cap_is_refused() {
    let cap = 100_000;
    let g = start(
        &requester(&format!("max_received_evidence_bytes = {cap}\n")),
        false,
    );
    let (a, b) = (&g.a, &g.b);
    let big = evidence(73);
    assert!(big.len() > cap);
    let id = post_request(a, &request_body("EV-OK", "DK/LV/010190-1234"))["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (request, edm) = received_request(b, &id);
    let sent = send_answer(
        b,
        &request,
        Answer {
            action: "ExecuteQueryResponse",
            original_sender: P1,
            edm: response_edm(&edm, P1, "big@b"),
            evidence: Some(("big@b", big.clone())),
        },
    );
    let error = refused(b, &sent);
    assert!(
        error.contains("EBMS:0010") && error.contains("max_received_evidence_bytes"),
        "{error}"
    );
    let v = settled(a, b, &id, WAIT);
    assert_eq!(v["state"], "error", "{v:#}");
    assert_eq!(v["error"]["code"], "EDM:ERR:0008", "{v:#}");
    assert_eq!(v["error"]["exception_type"], "QueryExceptionType", "{v:#}");
    assert!(
        v["error"]["detail"]
            .as_str()
            .unwrap()
            .contains(&format!("{} bytes", big.len())),
        "{v:#}"
    );
    assert!(v["evidences"].as_array().unwrap().is_empty(), "{v:#}");
    assert_eq!(refusals(a, "evidence_over_cap"), 1);
    assert!(!stored(a, &sent));
    assert!(
        !on_disk(&a.dir, &big),
        "the refused evidence is on a's disk"
    );

    let id = post_request(a, &request_body("EV-OK", "DK/LV/010190-1234"))["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (request, edm) = received_request(b, &id);
    let small = evidence(79)[..cap - 1000].to_vec();
    assert!(small.len() > varti_store::INLINE_PAYLOAD_MAX);
    send_answer(
        b,
        &request,
        Answer {
            action: "ExecuteQueryResponse",
            original_sender: P1,
            edm: response_edm(&edm, P1, "small@b"),
            evidence: Some(("small@b", small.clone())),
        },
    );
    answered_with(a, b, &id, &small);
}
