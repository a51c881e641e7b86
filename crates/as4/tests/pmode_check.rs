//! Loading and checking PMode directories: the shipped examples pass; a deliberately
//! broken set reports each problem at the right file:line:column.

use std::path::{Path, PathBuf};

use openssl::asn1::Asn1Time;
use openssl::bn::BigNum;
use openssl::hash::MessageDigest;
use openssl::pkey::PKey;
use openssl::rsa::Rsa;
use openssl::x509::extension::KeyUsage;
use openssl::x509::{X509Builder, X509NameBuilder};
use varti_as4::pmode::{
    load_dir, load_dir_with, Diagnostic, DiagnosticSeverity, LoadOptions, Mep, RetrySchedule,
    SecurityProfileKind, TokenReference,
};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// (line, column) of the first occurrence of `needle` in `text`, counted from 1.
fn pos(text: &str, needle: &str) -> (usize, usize) {
    let at = text
        .find(needle)
        .unwrap_or_else(|| panic!("{needle} not in text"));
    let before = &text[..at];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().unwrap().chars().count() + 1;
    (line, col)
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A self-signed certificate valid between the two Unix times; with `signing_only`, its
/// keyUsage is digitalSignature alone.
fn make_cert(path: &Path, from: i64, to: i64, signing_only: bool) {
    let key = PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap();
    let mut name = X509NameBuilder::new().unwrap();
    name.append_entry_by_text("CN", "broken-test").unwrap();
    let name = name.build();
    let mut b = X509Builder::new().unwrap();
    b.set_version(2).unwrap();
    b.set_serial_number(&BigNum::from_u32(7).unwrap().to_asn1_integer().unwrap())
        .unwrap();
    b.set_subject_name(&name).unwrap();
    b.set_issuer_name(&name).unwrap();
    b.set_pubkey(&key).unwrap();
    b.set_not_before(&Asn1Time::from_unix(from as _).unwrap())
        .unwrap();
    b.set_not_after(&Asn1Time::from_unix(to as _).unwrap())
        .unwrap();
    if signing_only {
        let ku = KeyUsage::new()
            .critical()
            .digital_signature()
            .build()
            .unwrap();
        b.append_extension(ku).unwrap();
    }
    b.sign(&key, MessageDigest::sha256()).unwrap();
    std::fs::write(path, b.build().to_pem().unwrap()).unwrap();
}

fn errors(diags: &[Diagnostic]) -> Vec<&Diagnostic> {
    diags.iter().filter(|d| d.is_error()).collect()
}

#[test]
fn shipped_pmodes_pass_the_check() {
    let (set, diags) = load_dir(&repo().join("pmodes"));
    assert!(
        diags.is_empty(),
        "pmodes/ should be clean: {}",
        diags
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(set.parties.len(), 2);
    assert_eq!(set.legs.len(), 5);
    assert_eq!(set.process_count(), 3);
    let a = set.party("varti-a").unwrap();
    assert_eq!(a.ids.len(), 2);
    assert!(a.signing_cert.as_ref().unwrap().is_file());
    let tls = a.tls.as_ref().unwrap();
    assert!(tls.client_auth);

    let req = set
        .legs
        .iter()
        .find(|l| l.name == "request")
        .expect("OOTS request leg");
    assert_eq!(req.service.value, "QueryManager");
    assert_eq!(req.from.role, "http://sdg.europa.eu/edelivery/gateway");
    assert_eq!(req.mep, Mep::OneWay);
    assert_eq!(req.security.profile, SecurityProfileKind::As4v1_15);
    assert_eq!(req.security.token_reference, TokenReference::Bst);
    assert_eq!(req.compression.max_decompressed_size, 200 << 20);
    assert_eq!(
        req.reception.retry.intervals(),
        vec![std::time::Duration::from_secs(180); 4]
    );
    assert!(matches!(req.reception.retry, RetrySchedule::Spread { .. }));
    let props: Vec<(&str, bool)> = req
        .properties
        .iter()
        .map(|p| (p.name.as_str(), p.required))
        .collect();
    assert!(props.contains(&("originalSender", true)));
    assert!(props.contains(&("finalRecipient", true)));
    let payload = req.payload.as_ref().unwrap();
    assert_eq!(payload.parts[0].mime_types, vec!["application/x-ebrs+xml"]);

    let conn = set.legs.iter().find(|l| l.name == "submit").unwrap();
    assert_eq!(conn.service.service_type.as_deref(), Some("edelivery"));
    assert!(!conn.compression.compress);
}

#[test]
fn broken_set_reports_every_problem_where_it_is() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let certs = repo().join("certs");
    let now = now();
    make_cert(
        &d.join("expired.pem"),
        now - 400 * 86_400,
        now - 86_400,
        false,
    );
    make_cert(&d.join("soon.pem"), now - 86_400, now + 10 * 86_400, true);
    let parties = format!(
        r#"[[party]]
name = "good"
ids = [{{ value = "good", type = "urn:t" }}]
endpoint = "https://good.example/as4"
signing_cert = "{sign}"
encryption_cert = "{enc}"

[[party]]
name = "other"
ids = [{{ value = "other", type = "urn:t" }}]
endpoint = "https://other.example/as4"
signing_cert = "expired.pem"
encryption_cert = "{sign}"

[[party]]
name = "third"
ids = [{{ value = "third", type = "urn:t" }}]
endpoint = "https://third.example/as4"
signing_cert = "missing.pem"
encryption_cert = "{enc}"

[[party]]
name = "fourth"
ids = [{{ value = "fourth", type = "urn:t" }}]
signing_cert = "soon.pem"
encryption_cert = "{enc}"
"#,
        sign = certs.join("varti-a/sign.cert.pem").display(),
        enc = certs.join("varti-a/enc.cert.pem").display(),
    );
    std::fs::write(d.join("parties.toml"), &parties).unwrap();

    let process = r#"[[process]]
name = "p"
mep = "oneWay"
binding = "push"
initiator = { parties = ["good", "ghost"] }
responder = { parties = ["other"] }

[[process.leg]]
name = "one"
service = "S"
action = "A"
colour = "blue"

[[process]]
name = "q"
mep = "threeWay"
binding = "push"
initiator = { parties = ["good"] }
responder = { parties = ["other", "third"] }

[[process.leg]]
name = "two"
service = "S"
action = "A"
"#;
    std::fs::write(d.join("process.toml"), process).unwrap();
    let syntax = "[[party]]\nname = \"unterminated\nids = []\n";
    std::fs::write(d.join("syntax.toml"), syntax).unwrap();

    let (set, diags) = load_dir(d);
    let text: Vec<String> = diags.iter().map(|d| d.to_string()).collect();
    let text = text.join("\n");
    let find = |file: &str, needle_msg: &str| -> &Diagnostic {
        diags
            .iter()
            .find(|x| x.location.file == d.join(file) && x.message.contains(needle_msg))
            .unwrap_or_else(|| panic!("no diagnostic '{needle_msg}' in {file}:\n{text}"))
    };
    let at = |diag: &Diagnostic| (diag.location.line, diag.location.column);

    // Unknown party, at the party name in the list.
    let ghost = find("process.toml", "unknown party 'ghost'");
    assert_eq!(at(ghost), pos(process, "\"ghost\""));
    assert_eq!(at(ghost), (5, 34));
    // Unknown key, at the key; the rest of the file is still read.
    let colour = find("process.toml", "unknown key `colour`");
    assert_eq!(at(colour), pos(process, "colour"));
    assert!(colour.hint.contains("service"), "{}", colour.hint);
    // Unknown MEP.
    let mep = find("process.toml", "unknown MEP 'threeWay'");
    assert_eq!(at(mep), pos(process, "\"threeWay\""));
    assert!(mep.hint.contains("oneWay"));
    // Two legs matching the same message: reported at the second.
    let dup = find("process.toml", "matches the same inbound messages");
    assert_eq!(at(dup), pos(process, "\"two\""));
    assert!(dup.message.contains("leg 'one'"), "{}", dup.message);
    // Certificates: expired, missing, wrong key usage, expiring soon (a warning).
    let expired = find("parties.toml", "expired on");
    assert_eq!(at(expired), pos(&parties, "\"expired.pem\""));
    let missing = find("parties.toml", "'missing.pem'");
    assert!(missing.message.contains("not found"));
    assert_eq!(at(missing), pos(&parties, "\"missing.pem\""));
    let usage = find("parties.toml", "cannot be used as encryption_cert");
    let enc_line = pos(&parties, "name = \"other\"").0 + 4;
    assert_eq!(usage.location.line, enc_line);
    assert!(
        usage.message.contains("digitalSignature"),
        "{}",
        usage.message
    );
    let soon = find("parties.toml", "expires on");
    assert_eq!(soon.severity, DiagnosticSeverity::Warning);
    assert_eq!(at(soon), pos(&parties, "\"soon.pem\""));
    // TOML syntax error.
    let syn = find("syntax.toml", "TOML syntax error");
    assert_eq!(syn.location.line, 2);

    assert_eq!(errors(&diags).len(), 8, "{text}");
    // What could be read is still there.
    assert_eq!(set.parties.len(), 4);
    assert_eq!(set.legs.len(), 2);
    // Display form: file:line:column: error: … and an indented hint.
    let shown = ghost.to_string();
    assert!(
        shown.starts_with(&format!(
            "{}:5:34: error: unknown party 'ghost'\n  hint: ",
            d.join("process.toml").display()
        )),
        "{shown}"
    );
}

#[test]
fn check_time_can_be_moved() {
    let pmodes = repo().join("pmodes");
    let (_, later) = load_dir_with(&pmodes, &LoadOptions::at("2040-01-01").unwrap());
    let expired: Vec<_> = later
        .iter()
        .filter(|d| d.is_error() && d.message.contains("expired"))
        .collect();
    // Six end-entity certificates and the CA are named by the two partner files.
    assert_eq!(expired.len(), 8, "{later:?}");
    assert!(LoadOptions::at("next tuesday").is_err());
    assert!(LoadOptions::at("2025-06-01T12:00:00+02:00").is_ok());
}

#[test]
fn unknown_profile_and_bad_values_are_each_reported() {
    let dir = tempfile::tempdir().unwrap();
    let text = r#"[security.default]
profile = "as4-3.0"
token_reference = "thumbprint"

[reception.default]
retry_intervals = ["1m", "soon"]

[[party]]
name = "x"
ids = [{ value = "x" }]

[[process]]
name = "p"
mep = "oneWay"
binding = "pushAndPush"
initiator = { parties = ["x"] }
responder = { parties = ["x"] }

[[process.leg]]
name = "l"
service = "S"
action = "A"
security = "default"
payload = "nope"
"#;
    std::fs::write(dir.path().join("a.toml"), text).unwrap();
    let (_, diags) = load_dir(dir.path());
    let msgs: Vec<(String, (usize, usize))> = diags
        .iter()
        .filter(|d| d.is_error())
        .map(|d| (d.message.clone(), (d.location.line, d.location.column)))
        .collect();
    let expect = [
        (
            "unknown security profile 'as4-3.0'",
            pos(text, "\"as4-3.0\""),
        ),
        (
            "unknown token reference 'thumbprint'",
            pos(text, "\"thumbprint\""),
        ),
        ("'soon' is not a duration", pos(text, "\"soon\"")),
        (
            "binding 'pushAndPush' does not go with MEP 'oneWay'",
            pos(text, "\"pushAndPush\""),
        ),
        ("unknown payload profile 'nope'", pos(text, "\"nope\"")),
    ];
    for (m, p) in expect {
        assert!(
            msgs.iter().any(|(mm, pp)| mm == m && *pp == p),
            "missing {m} at {p:?} in {msgs:?}"
        );
    }
    assert_eq!(msgs.len(), expect.len(), "{msgs:?}");
}

#[test]
fn certificate_key_type_must_fit_the_security_profile() {
    let dir = tempfile::tempdir().unwrap();
    let certs = repo().join("certs");
    let text = format!(
        r#"[[party]]
name = "a"
ids = [{{ value = "a" }}]
signing_cert = "{sign}"
encryption_cert = "{enc}"

[security.default]
profile = "as4-2.0-eddsa"

[[process]]
name = "p"
mep = "oneWay"
binding = "push"
initiator = {{ parties = ["a"] }}
responder = {{ parties = ["a"] }}

[[process.leg]]
name = "l"
service = "S"
action = "A"
"#,
        sign = certs.join("varti-a/sign.cert.pem").display(),
        enc = certs.join("varti-a/enc.cert.pem").display(),
    );
    std::fs::write(dir.path().join("a.toml"), &text).unwrap();
    let (_, diags) = load_dir(dir.path());
    let errs = errors(&diags);
    assert_eq!(errs.len(), 2, "{diags:?}");
    assert!(errs[0]
        .message
        .contains("signing_cert of party 'a' has a RSA key"));
    assert!(
        errs[0].message.contains("needs an Ed25519 key"),
        "{}",
        errs[0].message
    );
    assert_eq!(errs[0].location.line, pos(&text, "signing_cert").0);
    assert!(
        errs[1].message.contains("needs an X25519 key"),
        "{}",
        errs[1].message
    );
}
