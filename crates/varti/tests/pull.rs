//! One-way/pull: varti-a holds messages on the pull leg `urn:varti:test:pull` (MPC
//! `urn:varti:test:mpc:pull`), varti-b pulls them.
//!
//! * `pull_in_process`: both access points in this process, the exchange driven step by
//!   step through their real MSH handlers (authorisation of the puller, empty MPC, a lost
//!   receipt and the re-pull after the lease, the push sender never pushing a pull-leg
//!   message).
//! * `two_processes_pull`: two real `varti serve` processes over TLS, the message
//!   submitted through the backend API and pulled by varti-b's puller task.
//! * `sender_retries_on_the_clock`: the push sender's retry schedule, driven by moving the
//!   access point's manual clock instead of waiting minutes.
//! * `a_large_message_is_written_into_its_request_chunked_unless_configured_not_to`: how
//!   the push sender frames its requests, seen by a stand-in for varti-b; and
//!   `a_large_message_to_an_unreachable_partner_waits_for_a_retry`.

mod chaos_support;
mod pair_support;
mod serve_support;

use std::io::Read;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, StatusCode};
use pair_support::{noise, repo, Pair};
use time::OffsetDateTime;
use varti::config::Config;
use varti_access_point::client::OutboundResponse;
use varti_access_point::ops::Metrics;
use varti_access_point::pull::{self, Pulled};
use varti_access_point::receiver::Receiver;
use varti_access_point::server::{BodyReader, MshHandler, MshRequest, MshResponseBody, PeerInfo};
use varti_access_point::submit::{leg_key, submit, Submission};
use varti_access_point::{sender, AccessPoint, Clock, MessageEvent, Snapshot};
use varti_as4::error::{EbmsError, ErrorCode};
use varti_as4::inbound::{self, ReceivePolicy};
use varti_as4::message::mime::{MimeLimits, MimePackage};
use varti_as4::message::model::{MessageInfo, PullRequest, SignalKind, SignalMessage, Timestamp};
use varti_as4::message::soap;
use varti_as4::outbound::{build_error_signal, build_pull_request, build_receipt, build_signal};
use varti_as4::security::profile::AS4_1_15;
use varti_as4::security::sign::SigningIdentity;
use varti_as4::security::token::TokenReference;
use varti_store::postgres::testing::TestSchema;
use varti_store::{MessageMeta, NewOutbound, PayloadEntry, SledStore, State};

const MPC: &str = "urn:varti:test:mpc:pull";
const SOAP12: &str = "application/soap+xml; charset=UTF-8";

/// An access point of the pair, opened in this process over its own sled store, reading
/// `clock`.
fn open(pair: &Pair, node: &str, lease_secs: u64, clock: &Clock) -> Arc<AccessPoint> {
    open_with(pair, node, clock, |config| {
        config.sender.lease_secs = lease_secs
    })
}

/// As [`open`], with the configuration changed by `tweak` first.
fn open_with(
    pair: &Pair,
    node: &str,
    clock: &Clock,
    tweak: impl FnOnce(&mut Config),
) -> Arc<AccessPoint> {
    let dir = pair.root.path().join(node);
    let mut config = Config::load(&dir.join("varti.toml")).unwrap();
    tweak(&mut config);
    let store = SledStore::open(config.store_path()).unwrap();
    Arc::new(
        AccessPoint::open(
            config.access_point_settings(),
            Arc::new(store),
            Arc::new(Metrics::new()),
            false,
        )
        .unwrap_or_else(|e| panic!("opening {node}: {e}"))
        .with_clock(clock.clone()),
    )
}

/// A second instance of `ap`'s access point over the same store, as the other half of a
/// pair would be.
fn twin(pair: &Pair, ap: &Arc<AccessPoint>, node: &str, clock: &Clock) -> Arc<AccessPoint> {
    let dir = pair.root.path().join(node);
    let mut config = Config::load(&dir.join("varti.toml")).unwrap();
    config.sender.lease_secs = ap.settings.sender.lease_secs;
    config.sender.instance = Some(format!("{}-twin", ap.instance));
    Arc::new(
        AccessPoint::open(
            config.access_point_settings(),
            ap.store.clone(),
            Arc::new(Metrics::new()),
            false,
        )
        .unwrap_or_else(|e| panic!("opening the twin of {node}: {e}"))
        .with_clock(clock.clone()),
    )
}

/// The answer of `ap`'s MSH handler to a request, body read.
fn post(
    ap: &Arc<AccessPoint>,
    content_type: &str,
    body: Vec<u8>,
) -> (StatusCode, HeaderMap, Bytes) {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(content_type).unwrap(),
    );
    let request = MshRequest {
        headers,
        body: BodyReader::from_bytes(body),
        peer: PeerInfo {
            remote_addr: SocketAddr::from(([127, 0, 0, 1], 1)),
            tls: true,
            client_certificates: Vec::new(),
        },
    };
    let response = Receiver::new(ap.clone()).handle(request);
    let body = match response.body {
        MshResponseBody::Empty => Bytes::new(),
        MshResponseBody::Bytes(b) => b,
        MshResponseBody::Reader(mut r) => {
            let mut out = Vec::new();
            r.read_to_end(&mut out).unwrap();
            Bytes::from(out)
        }
    };
    (response.status, response.headers, body)
}

/// A pull request for `mpc` signed with `ap`'s signing key.
fn pull_request(ap: &AccessPoint, mpc: &str) -> Vec<u8> {
    build_pull_request(Some(mpc), Some(&signer(&ap.current())))
        .unwrap()
        .into_bytes()
}

/// `ap`'s signing identity as the pull leg uses it.
fn signer(snap: &Snapshot) -> SigningIdentity<'_> {
    SigningIdentity {
        profile: &AS4_1_15,
        key: &snap.identity.signing_key,
        certificate: &snap.identity.signing_cert,
        token_reference: TokenReference::BinarySecurityToken,
    }
}

/// A PullRequest for `mpc` signed by `ap` with the given MessageId and timestamp.
fn pull_request_as(
    signer: &SigningIdentity<'_>,
    mpc: &str,
    id: &str,
    at: OffsetDateTime,
) -> Vec<u8> {
    let signal = SignalMessage {
        message_info: MessageInfo {
            timestamp: Timestamp::from_datetime(at),
            message_id: id.to_owned(),
            ref_to_message_id: None,
        },
        kind: SignalKind::PullRequest(PullRequest {
            mpc: Some(mpc.to_owned()),
        }),
    };
    build_signal(signal, Some(signer)).unwrap().into_bytes()
}

/// The ebMS error codes of an error-signal body (empty: not an error signal).
fn error_codes(body: &[u8]) -> Vec<(Option<ErrorCode>, String)> {
    let env = soap::parse_envelope(body).unwrap_or_else(|e| {
        panic!(
            "not a SOAP envelope ({}): {}",
            e.detail,
            String::from_utf8_lossy(body)
        )
    });
    env.messaging
        .signals
        .iter()
        .filter_map(|s| match &s.kind {
            SignalKind::Errors(e) => Some(e),
            _ => None,
        })
        .flatten()
        .map(|e| {
            let text = e.description.as_ref().map(|d| d.text.clone());
            (e.code, text.unwrap_or_default())
        })
        .collect()
}

/// Submits a message of `content` (of `mime_type`) from `ap` to varti-b for `service`
/// and `action`, at `at`.
fn submit_one(
    ap: &AccessPoint,
    (service, action): (&str, &str),
    mime_type: &str,
    content: &[u8],
    at: OffsetDateTime,
) -> String {
    let stored = ap.store.payloads().put(&mut &content[..]).unwrap();
    submit(
        ap,
        Submission {
            owner: "portal".into(),
            to_party: "varti-b".into(),
            service: service.into(),
            action: action.into(),
            payloads: vec![PayloadEntry {
                content_id: "cid:document@varti.test".into(),
                mime_type: mime_type.into(),
                stored,
                properties: Vec::new(),
            }],
            ..Submission::default()
        },
        at,
    )
    .unwrap()
}

/// Submits a message with one payload on the pull leg.
fn submit_pull(ap: &AccessPoint, content: &[u8]) -> String {
    let leg = ("urn:varti:test:pull", "Pull");
    submit_one(ap, leg, "application/xml", content, ap.clock.now())
}

fn state(ap: &AccessPoint, id: &str) -> State {
    ap.store.get(id).unwrap().unwrap().state
}

/// The inbound message `id` as varti-b stored it, with its first payload.
fn received(ap: &AccessPoint, id: &str) -> (State, Vec<u8>) {
    let r = ap
        .store
        .get(id)
        .unwrap()
        .unwrap_or_else(|| panic!("{id} not received"));
    let mut bytes = Vec::new();
    ap.store
        .payloads()
        .open(&r.meta.payloads[0].stored)
        .unwrap()
        .read_to_end(&mut bytes)
        .unwrap();
    (r.state, bytes)
}

/// varti-b pulls once through varti-a's handler: the response as the puller's client
/// would hand it over.
fn pull_from_a(a: &Arc<AccessPoint>, b: &Arc<AccessPoint>) -> (StatusCode, OutboundResponse) {
    let (status, headers, body) = post(a, SOAP12, pull_request(b, MPC));
    (
        status,
        OutboundResponse {
            status,
            headers,
            body,
        },
    )
}

#[test]
fn pull_in_process() {
    let pair = Pair::new();
    // Both read one manual clock: the lease below expires when the test moves it.
    let clock = Clock::manual(OffsetDateTime::now_utc());
    let a = open(&pair, "a", 2, &clock);
    let b = open(&pair, "b", 30, &clock);
    let mut events = a.subscribe();
    let leg = a
        .current()
        .pmodes
        .legs
        .iter()
        .find(|l| l.mpc == MPC)
        .expect("the pull leg")
        .clone();

    // Submitted on a pull leg: parked for the push sender, which never claims it.
    let first = submit_pull(&a, b"<first/>");
    let record = a.store.get(&first).unwrap().unwrap();
    assert_eq!(record.state, State::Submitted);
    assert!(
        record.next_attempt_at.unwrap()
            > OffsetDateTime::now_utc() + time::Duration::days(365 * 50),
        "a pull-leg message is not due for the push sender: {:?}",
        record.next_attempt_at
    );
    assert!(a
        .store
        .claim_due(
            "someone",
            Duration::from_secs(5),
            10,
            OffsetDateTime::now_utc()
        )
        .unwrap()
        .is_empty());

    // The puller must be the leg's responder: a pull request signed by varti-a itself (the
    // initiator, not a responder) is refused, and nothing is handed out.
    let (status, _, body) = post(&a, SOAP12, pull_request(&a, MPC));
    // A WS-Security failure: error signal + SOAP Fault, HTTP 500.
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    let codes = error_codes(&body);
    assert_eq!(codes.len(), 1, "{codes:?}");
    assert_eq!(
        codes[0].0,
        Some(ErrorCode::FailedAuthentication),
        "{codes:?}"
    );
    assert!(
        codes[0].1.contains("not the signing certificate"),
        "{codes:?}"
    );
    assert_eq!(state(&a, &first), State::Submitted);
    // An unsigned pull request is refused as well.
    let unsigned = build_pull_request(Some(MPC), None).unwrap().into_bytes();
    let (_, _, body) = post(&a, SOAP12, unsigned);
    assert_eq!(
        error_codes(&body)[0].0,
        Some(ErrorCode::PolicyNoncompliance)
    );
    assert_eq!(state(&a, &first), State::Submitted);
    // An MPC varti-a holds nothing on: EBMS:0010.
    let (_, _, body) = post(&a, SOAP12, pull_request(&b, "urn:varti:test:mpc:other"));
    assert_eq!(
        error_codes(&body)[0].0,
        Some(ErrorCode::ProcessingModeMismatch)
    );

    // varti-b pulls: it gets the message, stores it, and answers with its receipt.
    let (status, response) = pull_from_a(&a, &b);
    assert_eq!(status, StatusCode::OK);
    let content_type = response.headers[header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        content_type.starts_with("multipart/related"),
        "{content_type}"
    );
    let record = a.store.get(&first).unwrap().unwrap();
    assert_eq!((record.state, record.attempts), (State::Sending, 1));
    // The same message pushed to varti-b's /msh instead: its leg is a pull leg, so it is
    // refused (EBMS:0010 naming the binding) and not stored.
    let (_, _, body) = post(&b, &content_type, response.body.to_vec());
    let codes = error_codes(&body);
    assert_eq!(
        codes[0].0,
        Some(ErrorCode::ProcessingModeMismatch),
        "{codes:?}"
    );
    assert!(codes[0].1.contains("pushed"), "{codes:?}");
    assert!(b.store.get(&first).unwrap().is_none());
    let (pulled, answer) = pull::receive_pulled(&b, response);
    assert_eq!(pulled, Pulled::Message(first.clone()));
    assert_eq!(
        received(&b, &first),
        (State::Received, b"<first/>".to_vec())
    );
    let (receipt_type, receipt) = answer.expect("a receipt to push back");
    // While the receipt is on its way, the message is leased: nothing else waits.
    let (_, _, body) = post(&a, SOAP12, pull_request(&b, MPC));
    assert_eq!(
        error_codes(&body)[0].0,
        Some(ErrorCode::EmptyMessagePartitionChannel)
    );
    // The receipt, pushed to varti-a, acknowledges the message.
    let (status, _, body) = post(&a, &receipt_type, receipt.to_vec());
    assert_eq!(
        status,
        StatusCode::ACCEPTED,
        "{}",
        String::from_utf8_lossy(&body)
    );
    let record = a.store.get(&first).unwrap().unwrap();
    assert_eq!(record.state, State::Acknowledged);
    assert_eq!(record.receipt.as_deref(), Some(&receipt[..]));
    assert_eq!(
        events.try_recv().unwrap(),
        MessageEvent::Sent {
            message_id: first.clone(),
            owner: "portal".into()
        }
    );
    // Nothing left: EBMS:0006, a warning.
    let (_, response) = pull_from_a(&a, &b);
    assert_eq!(pull::receive_pulled(&b, response), (Pulled::Empty, None));

    // A receipt that is lost: the lease expires and the message is pulled again; varti-b
    // recognises the duplicate and answers with its original receipt, which still proves
    // the first transmission to varti-a.
    let second = submit_pull(&a, b"<second/>");
    // An answer about a message that was never pulled changes nothing and is refused (not
    // 202): here a signed, fatal error signal that would otherwise fail it.
    let error = EbmsError::new(ErrorCode::Other, "never received");
    let signal = build_error_signal(&error, Some(&second), Some(&signer(&b.current()))).unwrap();
    let (status, _, body) = post(&a, SOAP12, signal.into_bytes());
    assert_ne!(status, StatusCode::ACCEPTED);
    let codes = error_codes(&body);
    assert_eq!(codes[0].0, Some(ErrorCode::InvalidReceipt), "{codes:?}");
    assert!(codes[0].1.contains("not pulled"), "{codes:?}");
    assert_eq!(state(&a, &second), State::Submitted);
    let (_, response) = pull_from_a(&a, &b);
    let (pulled, lost) = pull::receive_pulled(&b, response);
    assert_eq!(pulled, Pulled::Message(second.clone()));
    let (_, lost) = lost.unwrap();
    let (_, response) = pull_from_a(&a, &b);
    assert_eq!(
        pull::receive_pulled(&b, response).0,
        Pulled::Empty,
        "leased"
    );
    clock.advance(Duration::from_millis(1900));
    let (_, response) = pull_from_a(&a, &b);
    assert_eq!(
        pull::receive_pulled(&b, response).0,
        Pulled::Empty,
        "still leased 1.9 s into the 2 s lease"
    );
    clock.advance(Duration::from_millis(200));
    let (_, response) = pull_from_a(&a, &b);
    let record = a.store.get(&second).unwrap().unwrap();
    assert_eq!((record.state, record.attempts), (State::Sending, 2));
    let (pulled, again) = pull::receive_pulled(&b, response);
    assert_eq!(pulled, Pulled::Message(second.clone()));
    let (receipt_type, again) = again.unwrap();
    assert_eq!(again, lost, "the duplicate gets the original receipt");
    assert_eq!(b.store.get(&second).unwrap().unwrap().duplicates, 1);
    let (status, _, body) = post(&a, &receipt_type, again.to_vec());
    assert_eq!(
        status,
        StatusCode::ACCEPTED,
        "{}",
        String::from_utf8_lossy(&body)
    );
    assert_eq!(state(&a, &second), State::Acknowledged);

    // A receipt signed by someone other than the puller (here: varti-a's own key, which
    // the shared CA vouches for) is refused.
    let third = submit_pull(&a, b"<third/>");
    let (_, response) = pull_from_a(&a, &b);
    let forged = receipt_signed_by(&a, &b, &response);
    let (_, answer) = pull::receive_pulled(&b, response);
    let (receipt_type, receipt) = answer.unwrap();
    let (_, _, body) = post(&a, SOAP12, forged.into_bytes());
    let codes = error_codes(&body);
    assert_eq!(
        codes[0].0,
        Some(ErrorCode::FailedAuthentication),
        "{codes:?}"
    );
    // Refused by the receive policy (the signer must be the sending party's PMode
    // certificate) before the pull-specific check (the party who pulled) is reached.
    assert!(
        codes[0].1.contains("who pulled the message")
            || codes[0]
                .1
                .contains("not with the sending party's certificate"),
        "{codes:?}"
    );
    assert_eq!(state(&a, &third), State::Sending);
    let (status, _, _) = post(&a, &receipt_type, receipt.to_vec());
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(state(&a, &third), State::Acknowledged);

    // A pull-leg message made due (as a resend does) is never pushed: the sender parks it
    // again for pulling.
    let now = OffsetDateTime::now_utc();
    let parked = "resent-pull@varti.test";
    a.store
        .insert_outbound(
            NewOutbound {
                meta: MessageMeta {
                    message_id: parked.into(),
                    owner: "portal".into(),
                    from_party: "varti-a".into(),
                    to_party: "varti-b".into(),
                    service: "urn:varti:test:pull".into(),
                    action: "Pull".into(),
                    conversation_id: "c-1".into(),
                    ref_to_message_id: None,
                    pmode_id: leg_key(&leg),
                    payloads: Vec::new(),
                    properties: Vec::new(),
                },
                not_before: now,
            },
            now,
        )
        .unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let token = tokio_util::sync::CancellationToken::new();
        let task = tokio::spawn(sender::run(
            a.clone(),
            token.clone(),
            Duration::from_secs(5),
        ));
        let start = Instant::now();
        loop {
            let r = a.store.get(parked).unwrap().unwrap();
            if r.state == State::WaitingForRetry {
                assert!(r.next_attempt_at.unwrap() > now + time::Duration::days(365 * 50));
                assert!(
                    r.last_error
                        .as_deref()
                        .unwrap()
                        .contains("waiting to be pulled on MPC"),
                    "{:?}",
                    r.last_error
                );
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "the sender did not park {parked}: {r:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        token.cancel();
        task.await.unwrap();
    });
    assert!(
        b.store.get(parked).unwrap().is_none(),
        "never pushed to varti-b"
    );
    // … and is still pullable.
    let (_, response) = pull_from_a(&a, &b);
    assert_eq!(
        pull::receive_pulled(&b, response).0,
        Pulled::Message(parked.into())
    );

    // varti-b's puller pulls from varti-a on the one MPC.
    let channels = pull::pull_channels(&b.current());
    assert_eq!(channels.len(), 1, "{channels:?}");
    assert_eq!(
        (channels[0].mpc.as_str(), channels[0].partner.as_str()),
        (MPC, "varti-a")
    );
    assert!(
        pull::pull_channels(&a.current()).is_empty(),
        "varti-a pulls from nobody"
    );
}

/// A well-formed NRR receipt for the pulled message in `response`, but signed with
/// `signer`'s key instead of the puller's (`puller` decrypts the message).
fn receipt_signed_by(
    signer: &AccessPoint,
    puller: &AccessPoint,
    response: &OutboundResponse,
) -> String {
    let ct = response.headers[header::CONTENT_TYPE].to_str().unwrap();
    let package =
        MimePackage::read_http_body(&response.body[..], ct, &MimeLimits::default()).unwrap();
    let mut policy = ReceivePolicy::strict(&AS4_1_15);
    policy.decryption = Some((
        puller.current().identity.encryption_key.clone(),
        puller.current().identity.encryption_cert.clone(),
    ));
    let signer = signer.current();
    policy.trust_anchors = vec![signer.identity.signing_cert.clone()];
    let received = inbound::receive(&package, &policy).unwrap();
    let identity = SigningIdentity {
        profile: &AS4_1_15,
        key: &signer.identity.signing_key,
        certificate: &signer.identity.signing_cert,
        token_reference: TokenReference::BinarySecurityToken,
    };
    build_receipt(&received, Some(&identity)).unwrap()
}

/// Two `varti serve` processes: varti-b's puller fetches what the portal submitted to
/// varti-a; a pull request signed by a party that is not the leg's responder gets an
/// error and no message.
#[test]
fn two_processes_pull() {
    let pair = Pair::new();
    let a = pair.start("a");
    // varti-b is not running yet: the message waits at varti-a.
    let document = b"<document>pulled across</document>";
    let id = a.submit(
        serde_json::json!({
            "to_party": "varti-b",
            "service": "urn:varti:test:pull",
            "action": "Pull",
        }),
        &[("document", "application/xml", document)],
    );
    // And one past the receiver's spill threshold: pulled, its encrypted part is decrypted
    // as the answer is read.
    let large = noise(2_000_000, 5);
    let large_id = a.submit(
        serde_json::json!({
            "to_party": "varti-b",
            "service": "urn:varti:test:pull",
            "action": "Pull",
        }),
        &[("data", "application/octet-stream", &large)],
    );
    // Parked for the puller: due only in the far future, so no push sender ever claims it
    // (asserted on the schedule itself, not by waiting and seeing nothing happen).
    let parked = a.message(&id).unwrap();
    assert_eq!(parked["state"], "submitted", "not pushed");
    let due = time::OffsetDateTime::parse(
        parked["next_attempt_at"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    assert!(
        due - time::OffsetDateTime::now_utc() > time::Duration::days(365 * 50),
        "a pull message is parked, not scheduled: {due}"
    );

    // A pull request signed by varti-a's key (the initiator, not the responder), over TLS
    // with varti-b's client certificate: refused, nothing handed out.
    let certs = repo().join("certs");
    let key = openssl::pkey::PKey::private_key_from_pem(
        &std::fs::read(certs.join("varti-a/sign.key.pem")).unwrap(),
    )
    .unwrap();
    let cert =
        openssl::x509::X509::from_pem(&std::fs::read(certs.join("varti-a/sign.cert.pem")).unwrap())
            .unwrap();
    let identity = SigningIdentity {
        profile: &AS4_1_15,
        key: &key,
        certificate: &cert,
        token_reference: TokenReference::BinarySecurityToken,
    };
    let request = build_pull_request(Some(MPC), Some(&identity)).unwrap();
    let r = post_as_varti_b(a.served.msh, request.as_bytes());
    // An authentication failure: the error signal with a WS-Security fault, HTTP 500.
    assert_eq!(r.status, 500, "{} {}", r.head, r.body);
    assert!(r.body.contains("wsse:FailedCheck"), "{}", r.body);
    let codes = error_codes(r.body.as_bytes());
    assert_eq!(codes.len(), 1, "{}", r.body);
    assert_eq!(
        codes[0].0,
        Some(ErrorCode::FailedAuthentication),
        "{}",
        r.body
    );
    assert_eq!(a.message(&id).unwrap()["state"], "submitted");

    // varti-b starts, pulls the message and sends its receipt back.
    let b = pair.start("b");
    a.wait_state(&id, "acknowledged", Duration::from_secs(60));
    let inbound = b.inbound();
    assert!(
        inbound.iter().any(|m| m["message_id"] == id.as_str()),
        "varti-b has the message: {inbound:#?}\nlog:\n{}",
        b.served.log_text()
    );
    assert_eq!(b.payload(&id, 0), document.to_vec());
    a.wait_state(&large_id, "acknowledged", Duration::from_secs(60));
    assert!(
        b.payload(&large_id, 0) == large,
        "the large payload arrived unchanged"
    );
    // Its arrival names the pull it came with.
    let pulled = b.message(&id).unwrap();
    let arrival = pulled["history"][0]["note"].as_str().unwrap_or_default();
    assert!(arrival.contains("via a pull from http"), "{pulled:#}");
    let log = a.served.log_text();
    assert!(log.contains("message pulled"), "{log}");
}

/// Submits a test message with one small payload to varti-b (a push leg) at `at`.
fn submit_ping(ap: &Arc<AccessPoint>, at: OffsetDateTime) -> String {
    let test_service = (
        "http://docs.oasis-open.org/ebxml-msg/ebms/v3.0/ns/core/200704/service",
        "http://docs.oasis-open.org/ebxml-msg/ebms/v3.0/ns/core/200704/test",
    );
    submit_one(ap, test_service, "application/xml", b"<ping/>", at)
}

/// The sender's retry schedule runs on the access point's clock: with varti-b down, each
/// failed attempt schedules the next one exactly one interval of the leg's
/// `retry_intervals` (1 m, 2 m, 5 m) later, and the attempt after the last interval fails
/// the message with EBMS:0301. The test moves a manual clock through eight minutes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sender_retries_on_the_clock() {
    let pair = Pair::new();
    let clock = Clock::manual(OffsetDateTime::now_utc());
    // Only varti-a runs: varti-b's port is closed, so every push is refused at once.
    let a = open(&pair, "a", 30, &clock);
    let id = submit_ping(&a, clock.now());
    let token = tokio_util::sync::CancellationToken::new();
    let run = tokio::spawn(sender::run(
        a.clone(),
        token.clone(),
        Duration::from_secs(5),
    ));

    // Waits until the message has had `attempts` attempts and settled after the last one.
    let settled = |attempts: u32| {
        let a = a.clone();
        let id = id.clone();
        async move {
            let start = Instant::now();
            loop {
                let r = a.store.get(&id).unwrap().unwrap();
                if r.attempts == attempts && r.state != State::Sending {
                    return r;
                }
                assert!(
                    start.elapsed() < Duration::from_secs(10),
                    "attempt {attempts} never settled: {:?} after {} attempt(s)",
                    r.state,
                    r.attempts
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    let mut at = clock.now();
    for (attempt, wait) in [(1, 60), (2, 120), (3, 300)] {
        let r = settled(attempt).await;
        assert_eq!(r.state, State::WaitingForRetry, "after attempt {attempt}");
        assert_eq!(
            r.next_attempt_at,
            Some(at + Duration::from_secs(wait)),
            "attempt {attempt} schedules the next one {wait} s later"
        );
        clock.advance(Duration::from_secs(wait));
        at = clock.now();
        a.wake_sender.notify_one();
    }
    let r = settled(4).await;
    assert_eq!(r.state, State::Failed);
    assert!(
        r.last_error.as_deref().unwrap_or("").contains("EBMS:0301"),
        "{:?}",
        r.last_error
    );
    token.cancel();
    run.await.unwrap();
}

/// Shutdown does not wait out a send to a partner that never answers: with varti-b's port
/// taken by a TLS server that reads the request and stays silent (the request timeout is
/// 20 s), the sender stops within its shutdown wait, and the message stays claimed, to be
/// sent again once its lease runs out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sender_stops_within_its_shutdown_wait_with_a_send_in_flight() {
    let pair = Pair::new();
    let silent = tokio::net::TcpListener::bind(pair.layout.b.msh())
        .await
        .unwrap();
    // Says when a request's first bytes arrived over TLS; never answers it.
    let (arrived, mut arrivals) = tokio::sync::mpsc::unbounded_channel();
    let acceptor = pair_support::tls_acceptor();
    tokio::spawn(async move {
        while let Ok((stream, _)) = silent.accept().await {
            let (acceptor, arrived) = (acceptor.clone(), arrived.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(stream).await else {
                    return;
                };
                let mut sink = [0u8; 4096];
                while matches!(tokio::io::AsyncReadExt::read(&mut tls, &mut sink).await, Ok(n) if n > 0)
                {
                    let _ = arrived.send(());
                }
            });
        }
    });
    let a = open(&pair, "a", 30, &Clock::system());
    assert!(a.settings.client.request_timeout_secs >= 10);
    let id = submit_ping(&a, OffsetDateTime::now_utc());
    let token = tokio_util::sync::CancellationToken::new();
    let run = tokio::spawn(sender::run(
        a.clone(),
        token.clone(),
        Duration::from_millis(300),
    ));
    tokio::time::timeout(Duration::from_secs(10), arrivals.recv())
        .await
        .expect("the sender's request arrives within 10 s");
    let stopping = Instant::now();
    token.cancel();
    tokio::time::timeout(Duration::from_secs(5), run)
        .await
        .expect("the sender stops within its shutdown wait, not the request timeout")
        .unwrap();
    assert!(stopping.elapsed() >= Duration::from_millis(300));
    assert_eq!(
        a.store.get(&id).unwrap().unwrap().state,
        State::Sending,
        "still claimed: its lease runs out and it is sent again"
    );
}

/// One request as the partner stand-in saw it.
struct Seen {
    headers: HeaderMap,
    body: Bytes,
}

/// A TLS server on varti-b's MSH address that reads each request whole (hyper undoes the
/// chunked encoding), hands it over and answers 503, so the sender schedules a retry.
async fn stand_in_for_b(pair: &Pair) -> tokio::sync::mpsc::UnboundedReceiver<Seen> {
    use http_body_util::BodyExt as _;
    let listener = tokio::net::TcpListener::bind(pair.layout.b.msh())
        .await
        .unwrap();
    let (seen, requests) = tokio::sync::mpsc::unbounded_channel();
    let acceptor = pair_support::tls_acceptor();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (acceptor, seen) = (acceptor.clone(), seen.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let service =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let seen = seen.clone();
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body.collect().await?.to_bytes();
                            let _ = seen.send(Seen {
                                headers: parts.headers,
                                body,
                            });
                            let mut answer =
                                http::Response::new(http_body_util::Empty::<Bytes>::new());
                            *answer.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                            Ok::<_, hyper::Error>(answer)
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    requests
}

/// Submits a message of `content` on the one-way exchange leg to varti-b.
fn submit_exchange(ap: &AccessPoint, content: &[u8]) -> String {
    let leg = ("urn:varti:test:exchange", "Deliver");
    submit_one(ap, leg, "application/octet-stream", content, ap.clock.now())
}

/// A message past 64 KiB of payloads is written into its request as the request goes
/// out, chunked (no sealed copy on disk); a small one goes with its `Content-Length`, and
/// with `client.chunked = false` so does a large one. Each request is the whole message:
/// varti-b's MSH, handed the bytes the stand-in read, accepts it and stores the payload
/// as it was submitted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_message_is_written_into_its_request_chunked_unless_configured_not_to() {
    let pair = Pair::new();
    let mut requests = stand_in_for_b(&pair).await;
    // A manual clock: each message gets its first attempt and, answered 503, waits a minute
    // that never passes.
    let clock = Clock::manual(OffsetDateTime::now_utc());
    let b = open(&pair, "b", 30, &clock);
    let large = noise(300_000, 3);
    let header = |seen: &Seen, name: header::HeaderName| {
        seen.headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    };
    // What varti-b's MSH makes of a request: the message it stored, payload and all.
    let deliver = |seen: &Seen, id: &str, content: &[u8]| {
        let content_type = header(seen, header::CONTENT_TYPE).unwrap();
        let (status, _, answer) = post(&b, &content_type, seen.body.to_vec());
        assert_eq!(
            status,
            StatusCode::OK,
            "{}",
            String::from_utf8_lossy(&answer)
        );
        let (_, stored) = received(&b, id);
        assert!(
            stored == content,
            "varti-b stored other bytes than were sent"
        );
    };

    for chunked in [true, false] {
        let a = open_with(&pair, "a", &clock, |c| c.client.chunked = chunked);
        let small = submit_exchange(&a, b"<small/>");
        let big = submit_exchange(&a, &large);
        let token = tokio_util::sync::CancellationToken::new();
        let run = tokio::spawn(sender::run(
            a.clone(),
            token.clone(),
            Duration::from_secs(5),
        ));
        let mut seen = Vec::new();
        for _ in 0..2 {
            let request = tokio::time::timeout(Duration::from_secs(20), requests.recv())
                .await
                .expect("the sender's requests arrive within 20 s")
                .unwrap();
            seen.push(request);
        }
        // The sender runs both at once: tell them apart by size.
        seen.sort_by_key(|s| s.body.len());
        let (small_seen, big_seen) = (&seen[0], &seen[1]);
        assert_eq!(
            header(small_seen, header::CONTENT_LENGTH),
            Some(small_seen.body.len().to_string()),
            "a small message goes with its length"
        );
        if chunked {
            assert_eq!(
                header(big_seen, header::TRANSFER_ENCODING).as_deref(),
                Some("chunked")
            );
            assert_eq!(header(big_seen, header::CONTENT_LENGTH), None);
        } else {
            assert_eq!(header(big_seen, header::TRANSFER_ENCODING), None);
            assert_eq!(
                header(big_seen, header::CONTENT_LENGTH),
                Some(big_seen.body.len().to_string())
            );
        }
        assert!(big_seen.body.len() > large.len());
        // The MSH handler reads its body blocking, as it does on the blocking pool.
        tokio::task::block_in_place(|| {
            deliver(small_seen, &small, b"<small/>");
            deliver(big_seen, &big, &large);
        });
        token.cancel();
        run.await.unwrap();
        for id in [&small, &big] {
            assert_eq!(state(&a, id), State::WaitingForRetry, "answered 503");
        }
        drop(a);
    }
}

/// A large message to a partner that cannot be reached is an unreachable partner (a
/// retry follows), however far its writer got before the request failed: the writer's
/// broken pipe is not taken for a message that cannot be built (which would fail it for
/// good). One attempt, driven directly (`sender::exchange_once`, as `varti ping` does).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_message_to_an_unreachable_partner_waits_for_a_retry() {
    use varti_access_point::sender::ExchangeFailure;
    let pair = Pair::new();
    // varti-b's port is closed.
    let a = open(&pair, "a", 30, &Clock::system());
    // More than the request body's channel holds: its writer is still writing when the
    // connection is refused.
    let id = submit_exchange(&a, &noise(2_000_000, 4));
    let record = a.store.get(&id).unwrap().unwrap();
    match sender::exchange_once(&a, &record).await {
        Err(ExchangeFailure::Unreachable(_)) => {}
        other => panic!("expected the partner to be unreachable, got {other:?}"),
    }
}

/// A signed PullRequest is answered once, by either instance of a pair: the same bytes
/// again (to the other instance too, and after the lease of what it took expired), the
/// same MessageId re-signed, and a request with a stale timestamp all hand out nothing.
/// In process, two instances over one store, on the injected clock (the lease and the
/// freshness window are moved through, not waited out).
#[test]
fn pull_request_replay_in_process_on_the_clock() {
    let pair = Pair::new();
    let clock = Clock::manual(OffsetDateTime::now_utc());
    let a1 = open(&pair, "a", 30, &clock);
    let a2 = twin(&pair, &a1, "a", &clock);
    let b = open(&pair, "b", 30, &clock);
    // Submitted a second apart: the oldest is handed out first.
    let waiting: Vec<String> = (0..3)
        .map(|i| {
            clock.advance(Duration::from_secs(1));
            submit_pull(&a1, format!("<m{i}/>").as_bytes())
        })
        .collect();
    let states = || -> Vec<State> { waiting.iter().map(|id| state(&a1, id)).collect() };

    let request = pull_request(&b, MPC);
    let id = soap::parse_envelope(&request).unwrap().messaging.signals[0]
        .message_info
        .message_id
        .clone();
    let (status, _, _) = post(&a1, SOAP12, request.clone());
    assert_eq!(status, StatusCode::OK, "the first request is answered");
    assert_eq!(
        states(),
        [State::Sending, State::Submitted, State::Submitted]
    );

    let refused = |ap: &Arc<AccessPoint>, body: Vec<u8>, why: &str| {
        let (_, _, answer) = post(ap, SOAP12, body);
        let codes = error_codes(&answer);
        assert_eq!(codes.len(), 1, "{why}: {codes:?}");
        assert_eq!(codes[0].0, Some(ErrorCode::FailedAuthentication), "{why}");
        codes[0].1.clone()
    };
    for ap in [&a1, &a2] {
        let text = refused(ap, request.clone(), "the same bytes");
        assert!(text.contains("already answered"), "{text}");
    }
    // Once the lease of the message it took is over, a replay still takes nothing.
    clock.advance(Duration::from_secs(31));
    refused(&a2, request.clone(), "the same bytes after the lease");
    // The same MessageId signed anew.
    let resigned = pull_request_as(&signer(&b.current()), MPC, &id, clock.now());
    let text = refused(&a1, resigned, "re-signed with the same MessageId");
    assert!(text.contains("already answered"), "{text}");
    // A new MessageId with a timestamp from six minutes ago.
    let stale = pull_request_as(
        &signer(&b.current()),
        MPC,
        "stale-pull@varti.test",
        clock.now() - Duration::from_secs(360),
    );
    let text = refused(&a2, stale, "a stale timestamp");
    assert!(text.contains("eb:Timestamp"), "{text}");
    // So far, nothing more was handed out.
    assert_eq!(states()[1..], [State::Submitted, State::Submitted]);

    // A fresh request is answered as usual, by either instance.
    let (status, _, _) = post(&a2, SOAP12, pull_request(&b, MPC));
    assert_eq!(status, StatusCode::OK);
}

/// Issue 21, through real processes: two `varti serve` instances of varti-a on one
/// PostgreSQL store hold three messages for varti-b; the test, as varti-b, signs one
/// PullRequest and sends it over mutual TLS. The first answer hands out a message; the same
/// bytes again to either instance, the same MessageId signed anew, and a fresh id with a
/// six-minute-old timestamp are each refused with EBMS:0101 and hand out nothing.
#[test]
fn pull_request_replay_is_refused() {
    let schema = TestSchema::migrated();
    let pair = Pair::new();
    let config = format!(
        "[client]\nrequest_timeout_secs = 20\n[sender]\npoll_interval_ms = 100\nlease_secs = 30\n{}",
        chaos_support::postgres_store_config(schema.url(), schema.name())
    );
    pair.layout.rewrite_config(&pair.layout.a, &config).unwrap();
    let a2 = pair
        .layout
        .add_instance(&pair.layout.a, "a2", &config)
        .unwrap();
    let a1 = pair.start("a");
    let a2 = pair_support::Node {
        served: serve_support::spawn_serve_in(&a2.dir, &["--config", "varti.toml"]),
        backend: a2.backend(),
        token: a2.token.clone(),
        dir: a2.dir.clone(),
    };
    let waiting: Vec<String> = (0..3)
        .map(|i| {
            a1.submit(
                serde_json::json!({"to_party": "varti-b", "service": "urn:varti:test:pull", "action": "Pull"}),
                &[("document", "application/xml", format!("<m{i}/>").as_bytes())],
            )
        })
        .collect();
    let states = || -> Vec<String> {
        waiting
            .iter()
            .map(|id| {
                a1.message(id).unwrap()["state"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect()
    };

    let certs = repo().join("certs");
    let read = |f: &str| std::fs::read(certs.join(f)).unwrap();
    let key = openssl::pkey::PKey::private_key_from_pem(&read("varti-b/sign.key.pem")).unwrap();
    let cert = openssl::x509::X509::from_pem(&read("varti-b/sign.cert.pem")).unwrap();
    let b = SigningIdentity {
        profile: &AS4_1_15,
        key: &key,
        certificate: &cert,
        token_reference: TokenReference::BinarySecurityToken,
    };
    let signed = |id: &str, at: OffsetDateTime| pull_request_as(&b, MPC, id, at);
    let post_to = |node: &pair_support::Node, body: &[u8]| post_as_varti_b(node.served.msh, body);
    let refused = |node: &pair_support::Node, body: &[u8], why: &str| -> String {
        let r = post_to(node, body);
        let codes = error_codes(r.body.as_bytes());
        assert_eq!(codes.len(), 1, "{why}: {} {}", r.head, r.body);
        assert_eq!(
            codes[0].0,
            Some(ErrorCode::FailedAuthentication),
            "{why}: {}",
            r.body
        );
        codes[0].1.clone()
    };

    let request = signed("replayed-pull@varti.test", OffsetDateTime::now_utc());
    let r = post_to(&a1, &request);
    assert_eq!(r.status, 200, "the first request is answered: {}", r.head);
    assert!(
        r.head.to_ascii_lowercase().contains("multipart/related"),
        "{}",
        r.head
    );
    assert_eq!(states().iter().filter(|s| *s == "sending").count(), 1);

    for (node, name) in [(&a1, "a"), (&a2, "a2")] {
        let text = refused(node, &request, &format!("the same bytes to {name}"));
        assert!(text.contains("already answered"), "{text}");
    }
    let text = refused(
        &a2,
        &signed("replayed-pull@varti.test", OffsetDateTime::now_utc()),
        "the same MessageId re-signed",
    );
    assert!(text.contains("already answered"), "{text}");
    let text = refused(
        &a1,
        &signed(
            "stale-pull@varti.test",
            OffsetDateTime::now_utc() - Duration::from_secs(360),
        ),
        "a six-minute-old timestamp",
    );
    assert!(text.contains("eb:Timestamp"), "{text}");
    assert_eq!(
        states().iter().filter(|s| *s == "sending").count(),
        1,
        "nothing more handed out: {:?}",
        states()
    );
    drop(a2);
    drop(a1);
}

/// POSTs a SOAP message to the `/msh` at `msh` over TLS as varti-b (its TLS client
/// certificate): the answer.
fn post_as_varti_b(msh: SocketAddr, body: &[u8]) -> serve_support::HttpResponse {
    let certs = repo().join("certs");
    let mut tls = serve_support::openssl_connect(
        msh,
        openssl::ssl::SslVersion::TLS1_2,
        &certs.join("ca.cert.pem"),
        Some((
            &certs.join("varti-b/tls.cert.pem"),
            &certs.join("varti-b/tls.key.pem"),
        )),
    )
    .unwrap();
    serve_support::http_request(
        &mut tls,
        "POST",
        "/msh",
        &format!("Content-Type: {SOAP12}\r\n"),
        body,
    )
    .unwrap()
}
