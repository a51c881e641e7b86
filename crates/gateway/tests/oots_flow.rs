//! The OOTS evidence exchange end to end: two real `varti serve` processes (varti-a the
//! requester state, varti-b the provider state) over AS4 with TLS and the test PKI, and a
//! fake national register (a small real HTTP server: the test double at the far edge).
//!
//! A portal POSTs the request's data to a's backend API; a builds the EDM request and sends
//! it on the OOTS PMode; b validates it, calls its data service connector for the evidence
//! type, and answers over AS4; the portal GETs the outcome from a and downloads the
//! evidence. Named after the member-state test events where one fits (TC01 basic request,
//! TC02 no match, TC03 base-registry error or timeout).

mod oots_support;
mod pair_support;
mod serve_support;

use std::time::{Duration, Instant};

use oots_support::{
    expect_error, get_request, pdf, post_request, request_body, settled, start, Register,
};
use serde_json::json;

/// TC01 and the error cases, one pair of processes for all (each start costs seconds on a
/// two-core machine): evidence with a PDF attachment; no match (TC02); the register refusing;
/// an invalid request; an evidence type no connector serves; a register that times out and
/// one that is down (TC03); a request whose answer comes too late.
#[test]
fn evidence_request_response_and_every_error_over_as4() {
    let register = Register::start();
    let (_root, a, b) = start(&register);

    // TC01: evidence → response with the PDF, downloadable by the portal.
    let created = post_request(&a, &request_body("EV-OK", "DK/LV/010190-1234"));
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(created["state"], "sent");
    let v = settled(&a, &b, &id, Duration::from_secs(60));
    assert_eq!(v["state"], "answered", "{v:#}");
    assert_eq!(v["conversation_id"], id.as_str());
    let evidences = v["evidences"].as_array().unwrap();
    assert_eq!(evidences.len(), 1, "{v:#}");
    assert_eq!(evidences[0]["mime_type"], "application/pdf");
    assert_eq!(evidences[0]["title"], "Birth certificate");
    assert_eq!(evidences[0]["classification"], "MainEvidence");
    let href = evidences[0]["href"].as_str().unwrap();
    let file = a.api("GET", href, None, b"");
    assert_eq!(file.status, 200, "{}", file.body);
    assert!(
        file.head
            .to_lowercase()
            .contains("content-type: application/pdf"),
        "{}",
        file.head
    );
    assert!(
        file.bytes == pdf(),
        "the evidence differs from the register's file"
    );
    // The register got the person and evidence type from the EDM request.
    let calls = register.calls("/ok");
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0]["request_id"], format!("urn:uuid:{id}"));
    assert_eq!(
        calls[0]["natural_person"]["identifier"],
        "DK/LV/010190-1234"
    );
    assert_eq!(calls[0]["natural_person"]["family_name"], "Jensen");
    assert_eq!(calls[0]["evidence_type"]["identifier"], "EV-OK");
    assert_eq!(calls[0]["requester"]["identifier"], "DK22233223");
    // The answer is an AS4 message on the request's conversation, referring to it.
    let response_id = v["response_message_id"].as_str().unwrap();
    assert_ne!(response_id, v["request_message_id"].as_str().unwrap());

    // Another portal's id, a made-up id and a missing evidence index are 404.
    let r = a.api(
        "GET",
        "/api/v1/oots/requests/00000000-0000-4000-8000-000000000000",
        None,
        b"",
    );
    assert_eq!(r.status, 404);
    let r = a.api(
        "GET",
        &format!("/api/v1/oots/requests/{id}/evidence/1"),
        None,
        b"",
    );
    assert_eq!(r.status, 404);
    // And a request without a person is refused before anything is sent.
    let mut bad = request_body("EV-OK", "DK/LV/1");
    bad.as_object_mut().unwrap().remove("natural_person");
    let r = a.api(
        "POST",
        "/api/v1/oots/requests",
        Some("application/json"),
        bad.to_string().as_bytes(),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("natural_person"), "{}", r.body);

    // Start every error case at once, then check each.
    let cases = [
        (
            "EV-NONE",
            "DK/LV/010190-1234",
            "EDM:ERR:0004",
            "ObjectNotFoundExceptionType",
            "no person matches",
        ),
        (
            "EV-REFUSE",
            "DK/LV/010190-1234",
            "EDM:ERR:0003",
            "InvalidRequestExceptionType",
            "date of birth",
        ),
        // Not an eIDAS identifier: b's model validation refuses it (rule VARTI-EDM-REQ-015).
        (
            "EV-OK",
            "not-an-eidas-id",
            "EDM:ERR:0003",
            "InvalidRequestExceptionType",
            "VARTI-EDM-REQ-015",
        ),
        (
            "EV-UNKNOWN",
            "DK/LV/010190-1234",
            "EDM:ERR:0007",
            "UnsupportedCapabilityExceptionType",
            "EV-UNKNOWN",
        ),
        (
            "EV-SLOW",
            "DK/LV/010190-1234",
            "EDM:ERR:0005",
            "TimeoutExceptionType",
            "did not answer within 1s",
        ),
        (
            "EV-DOWN",
            "DK/LV/010190-1234",
            "EDM:ERR:0008",
            "QueryExceptionType",
            "cannot reach",
        ),
    ];
    let ids: Vec<String> = cases
        .iter()
        .map(|(et, eidas, ..)| {
            post_request(&a, &request_body(et, eidas))["id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    // The answer that comes too late: the request waits 2 s, the register takes 8 s.
    let mut late = request_body("EV-SLOWER", "DK/LV/010190-1234");
    late["timeout_secs"] = json!(2);
    let late_id = post_request(&a, &late)["id"].as_str().unwrap().to_owned();

    for ((et, _, code, ty, detail), id) in cases.iter().zip(&ids) {
        let v = settled(&a, &b, id, Duration::from_secs(60));
        expect_error(&v, code, ty);
        let d = v["error"]["detail"].as_str().unwrap_or_default();
        assert!(d.contains(detail), "{et}: detail {d:?} lacks {detail:?}");
    }
    // The slow register was tried twice (one retry), each attempt cut after its timeout.
    assert_eq!(register.calls("/slow").len(), 2);
    // The invalid request never reached the register.
    assert_eq!(register.calls("/ok").len(), 1);

    let v = settled(&a, &b, &late_id, Duration::from_secs(30));
    assert_eq!(v["state"], "timed_out", "{v:#}");
    // The late answer (ERR:0004 from the register's 404) arrives and changes nothing.
    let start = Instant::now();
    while !a.served.log_text().contains("already settled") {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the late answer never reached a:\n{}",
            a.served.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(register.calls("/slower").len(), 1);
    let v = get_request(&a, &late_id);
    assert_eq!(v["state"], "timed_out", "{v:#}");
    assert!(v["response_message_id"].is_null(), "{v:#}");
}
