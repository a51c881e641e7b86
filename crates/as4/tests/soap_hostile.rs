//! Hostile envelopes: each is refused with a clear EBMS:0009, without panicking and
//! without the memory or time an attacker hoped to cost us.

use std::time::{Duration, Instant};

use varti_as4::error::ErrorCode;
use varti_as4::message::soap::{parse_envelope, parse_envelope_with_limits, ParseLimits};

const HEAD: &str =
    "<S12:Envelope xmlns:S12=\"http://www.w3.org/2003/05/soap-envelope\"><S12:Header>\
<eb:Messaging xmlns:eb=\"http://docs.oasis-open.org/ebxml-msg/ebms/v3.0/ns/core/200704/\">\
<eb:SignalMessage><eb:MessageInfo><eb:Timestamp>2024-01-01T00:00:00Z</eb:Timestamp>";
const TAIL: &str = "</eb:MessageInfo><eb:PullRequest/></eb:SignalMessage></eb:Messaging>\
</S12:Header><S12:Body/></S12:Envelope>";

fn envelope(message_id_content: &str) -> String {
    format!("{HEAD}<eb:MessageId>{message_id_content}</eb:MessageId>{TAIL}")
}

/// Parses and asserts a quick refusal with InvalidHeader mentioning `needle`.
fn refused(xml: &[u8], needle: &str) {
    let started = Instant::now();
    let err = parse_envelope(xml).expect_err("hostile input accepted");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(err.code, ErrorCode::InvalidHeader, "{err}");
    assert!(
        err.detail.contains(needle),
        "detail {:?} does not mention {needle:?}",
        err.detail
    );
}

#[test]
fn a_plain_envelope_is_accepted() {
    // The control case: the hostile variants below differ only in their attack.
    let env = parse_envelope(envelope("ok@x").as_bytes()).unwrap();
    assert_eq!(env.messaging.signals[0].message_info.message_id, "ok@x");
}

#[test]
fn external_entity_is_refused() {
    let xml = format!(
        "<?xml version=\"1.0\"?><!DOCTYPE S12:Envelope [<!ENTITY xxe SYSTEM \"file:///etc/passwd\">]>{}",
        envelope("&xxe;")
    );
    refused(xml.as_bytes(), "DOCTYPE");
}

#[test]
fn billion_laughs_is_refused() {
    let mut dtd = String::from("<!DOCTYPE lolz [<!ENTITY lol \"lol\">");
    for i in 1..10 {
        let prev = if i == 1 {
            "lol".to_owned()
        } else {
            format!("lol{}", i - 1)
        };
        dtd.push_str(&format!(
            "<!ENTITY lol{i} \"{}\">",
            format!("&{prev};").repeat(10)
        ));
    }
    dtd.push_str("]>");
    let xml = format!("{dtd}{}", envelope("&lol9;"));
    refused(xml.as_bytes(), "DOCTYPE");
}

#[test]
fn undeclared_entity_reference_is_never_expanded() {
    // Without a DTD only the five predefined entities exist.
    refused(envelope("&lol9;").as_bytes(), "entity");
    refused(envelope("&#0;").as_bytes(), "reference");
}

#[test]
fn ten_thousand_deep_nesting_is_refused() {
    for (open, close) in [("<a>", "</a>"), ("<eb:X>", "</eb:X>")] {
        let deep = format!("{}{}", open.repeat(10_000), close.repeat(10_000));
        // In the header...
        refused(
            format!("{HEAD}<eb:MessageId>x</eb:MessageId>{deep}{TAIL}").as_bytes(),
            "nested deeper than 64",
        );
    }
    // ...and in the Body.
    let deep = format!("{}{}", "<a>".repeat(10_000), "</a>".repeat(10_000));
    let xml = envelope("x").replace("<S12:Body/>", &format!("<S12:Body>{deep}</S12:Body>"));
    refused(xml.as_bytes(), "nested deeper than 64");
}

#[test]
fn too_many_elements_are_refused() {
    let many = "<a/>".repeat(30_000);
    let xml = envelope("x").replace("<S12:Body/>", &format!("<S12:Body>{many}</S12:Body>"));
    refused(xml.as_bytes(), "more than 20000 elements");
}

#[test]
fn huge_text_and_attributes_in_the_header_are_refused() {
    let huge = "A".repeat(2 * 1024 * 1024);
    refused(envelope(&huge).as_bytes(), "SOAP Header is larger");
    let xml = envelope("x").replace(
        "<eb:PullRequest/>",
        &format!("<eb:PullRequest mpc=\"{huge}\"/>"),
    );
    refused(xml.as_bytes(), "SOAP Header is larger");
}

#[test]
fn envelope_size_is_bounded() {
    let limits = ParseLimits {
        max_envelope_bytes: 1000,
        ..ParseLimits::default()
    };
    let big = envelope("x").replace(
        "<S12:Body/>",
        &format!("<S12:Body>{}</S12:Body>", "b".repeat(2000)),
    );
    let err = parse_envelope_with_limits(big.as_bytes(), &limits).unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidHeader);
    assert!(err.detail.contains("max_envelope_bytes"), "{}", err.detail);
}

#[test]
fn malformed_and_truncated_xml_is_refused() {
    let full = envelope("x");
    // Every truncation point: never a panic, always an InvalidHeader.
    for cut in 0..full.len() {
        if !full.is_char_boundary(cut) {
            continue;
        }
        let err = parse_envelope(&full.as_bytes()[..cut]).expect_err("truncated accepted");
        assert_eq!(err.code, ErrorCode::InvalidHeader, "cut at {cut}: {err}");
    }
    refused(b"\xff\xfe<\x00", "UTF-16");
    refused(envelope("\u{1}").as_bytes(), "not allowed in XML");
    refused(
        &[HEAD.as_bytes(), b"\xC3\x28", TAIL.as_bytes()].concat(),
        "UTF-8",
    );
    refused(
        envelope("x")
            .replace("<eb:PullRequest/>", "<zz:PullRequest/>")
            .as_bytes(),
        "not declared",
    );
    refused(
        format!("{}<S12:Envelope/>", envelope("x")).as_bytes(),
        "more than one root",
    );
    refused(
        envelope("x").replace("<S12:Body/>", "").as_bytes(),
        "has no Body",
    );
    refused(
        envelope("x")
            .replace("<?xml", "")
            .replacen("<S12:Header>", "<S12:Header>stray text", 1)
            .as_bytes(),
        "text directly",
    );
    refused(
        envelope("x")
            .replace("UTF-8", "ISO-8859-1")
            .replacen(
                "<S12:Envelope",
                "<?xml version=\"1.0\" encoding=\"ISO-8859-1\"?><S12:Envelope",
                1,
            )
            .as_bytes(),
        "encoding",
    );
}

#[test]
fn schema_violations_in_the_header_are_refused() {
    let two_infos = envelope("x").replace(
        "<eb:PullRequest/>",
        "<eb:PullRequest/><eb:Receipt><x:y xmlns:x=\"urn:x\"/></eb:Receipt>",
    );
    refused(two_infos.as_bytes(), "mixes PullRequest");
    let unknown = envelope("x").replace("<eb:PullRequest/>", "<eb:PullRequest/><eb:Bogus/>");
    refused(unknown.as_bytes(), "eb:Bogus");
    let two_messaging = envelope("x").replace(
        "</S12:Header>",
        "<eb:Messaging xmlns:eb=\"http://docs.oasis-open.org/ebxml-msg/ebms/v3.0/ns/core/200704/\"/></S12:Header>",
    );
    refused(two_messaging.as_bytes(), "two eb:Messaging");
    refused(
        envelope("x</eb:MessageId><eb:MessageId>y").as_bytes(),
        "more than one MessageId",
    );
    refused(envelope("").as_bytes(), "MessageId is empty");
    refused(
        envelope("x")
            .replace("2024-01-01T00:00:00Z", "2011-02-30T00:00:00Z")
            .as_bytes(),
        "no such day",
    );
}

#[test]
fn many_attributes_cost_little() {
    // Attribute-heavy elements are a classic quadratic trap (duplicate checks).
    let attrs: String = (0..100_000).map(|i| format!(" a{i}=\"\"")).collect();
    let in_body =
        envelope("x").replace("<S12:Body/>", &format!("<S12:Body><b{attrs}/></S12:Body>"));
    refused(in_body.as_bytes(), "more than 128 attributes");
    let in_header =
        envelope("x").replace("<eb:PullRequest/>", &format!("<eb:PullRequest{attrs}/>"));
    refused(in_header.as_bytes(), "more than 128 attributes");
    let xmlns: String = (0..50_000)
        .map(|i| format!(" xmlns:p{i}=\"urn:{i}\""))
        .collect();
    let decls = envelope("x").replace("<S12:Body/>", &format!("<S12:Body><b{xmlns}/></S12:Body>"));
    refused(decls.as_bytes(), "more than 128 attributes");
    // Just under the limit is fine.
    let ok: String = (0..128).map(|i| format!(" a{i}=\"v\"")).collect();
    let fine = envelope("x@test").replace("<eb:PullRequest/>", &format!("<eb:PullRequest{ok}/>"));
    assert!(parse_envelope(fine.as_bytes()).is_ok());
}
