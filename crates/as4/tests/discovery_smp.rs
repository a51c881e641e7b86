//! SMP answers in the three dialects: read, signed, verified (also by xmlsec1), and
//! refused for each reason discovery names.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use openssl::pkey::PKey;
use openssl::x509::X509;
use time::macros::datetime;
use time::OffsetDateTime;
use varti_as4::discovery::{
    read_service_metadata, service_metadata_url, sign_enveloped, DiscoveryError, Identifier,
    SmpDialect,
};

const CERTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../certs");
/// The time of use: now (the test PKI was made recently and lives ten years; the samples'
/// endpoints are active from 2024 to 2030).
fn at() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

fn pem(path: &str) -> Vec<u8> {
    std::fs::read(format!("{CERTS}/{path}")).unwrap()
}
fn cert(path: &str) -> X509 {
    X509::from_pem(&pem(path)).unwrap()
}

/// The sample with the endpoint certificate (varti-b's encryption certificate) filled in.
fn sample(name: &str) -> String {
    let text = std::fs::read_to_string(format!(
        "{}/tests/discovery/{name}.xml",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let enc = STANDARD.encode(cert("varti-b/enc.cert.pem").to_der().unwrap());
    let sign = STANDARD.encode(cert("varti-b/sign.cert.pem").to_der().unwrap());
    text.replace("SIGNCERT", &sign).replace("CERT", &enc)
}

/// Signed by "the SMP": varti-c's signing key, issued by the test CA.
fn signed(xml: &str, c14n: Option<&str>) -> Vec<u8> {
    let key = PKey::private_key_from_pem(&pem("varti-c/sign.key.pem")).unwrap();
    sign_enveloped(xml.as_bytes(), &key, &cert("varti-c/sign.cert.pem"), c14n).unwrap()
}

fn anchors() -> Vec<X509> {
    vec![cert("ca.cert.pem")]
}

fn xmlsec1_verify(xml: &[u8]) -> Result<(), String> {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("smp.pem");
    std::fs::write(&key, pem("varti-c/sign.cert.pem")).unwrap();
    let path = dir.path().join("answer.xml");
    std::fs::write(&path, xml).unwrap();
    let out = std::process::Command::new("xmlsec1")
        .args(["--verify", "--pubkey-cert-pem"])
        .arg(&key)
        .arg(&path)
        .output()
        .expect("xmlsec1 must be installed (apt-get install xmlsec1)");
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[test]
fn oasis1_answer_is_read_verified_and_its_endpoint_chosen() {
    let xml = signed(&sample("oasis1"), None);
    xmlsec1_verify(&xml).expect("xmlsec1 accepts our enveloped signature");
    let answer = read_service_metadata(&xml, Some(&anchors()), at()).unwrap();
    let signer = answer.signature.expect("signature verifies");
    assert!(signer.trusted);
    assert!(signer.subject.contains("varti-c"), "{}", signer.subject);
    let md = answer.metadata;
    assert_eq!(md.dialect, SmpDialect::Oasis1);
    md.check_answers(
        &Identifier::parse("iso6523-actorid-upis::0088:4035811991021").unwrap(),
        md.document.as_ref().unwrap(),
    )
    .unwrap();
    let process =
        Identifier::parse("cenbii-procid-ubl::urn:www.cenbii.eu:profile:bii04:ver1.0").unwrap();
    let chosen = md
        .choose(Some(&process), "bdxr-transport-ebms3-as4-v1p0", at())
        .unwrap();
    assert_eq!(chosen.endpoint.url, "https://ap.example.com/msh");
    assert_eq!(
        chosen.certificate.to_der().unwrap(),
        cert("varti-b/enc.cert.pem").to_der().unwrap()
    );
}

#[test]
fn peppol_answer_with_c14n_11_and_exclusive_c14n() {
    for c14n in [
        "http://www.w3.org/2006/12/xml-c14n11",
        "http://www.w3.org/2001/10/xml-exc-c14n#",
    ] {
        let xml = signed(&sample("peppol"), Some(c14n));
        xmlsec1_verify(&xml).expect("xmlsec1 accepts it");
        let answer = read_service_metadata(&xml, Some(&anchors()), at()).unwrap();
        answer.signature.expect("verifies");
        assert_eq!(answer.metadata.dialect, SmpDialect::Peppol);
        let chosen = answer
            .metadata
            .choose(None, "peppol-transport-as4-v2_0", at())
            .unwrap();
        assert_eq!(chosen.endpoint.url, "https://peppol-ap.example.com/as4");
    }
}

#[test]
fn oasis2_answer_takes_the_exchange_certificate_and_day_dates() {
    let xml = signed(
        &sample("oasis2"),
        Some("http://www.w3.org/2006/12/xml-c14n11"),
    );
    xmlsec1_verify(&xml).expect("xmlsec1 accepts it");
    let answer = read_service_metadata(&xml, Some(&anchors()), at()).unwrap();
    answer.signature.expect("verifies");
    let md = answer.metadata;
    assert_eq!(md.dialect, SmpDialect::Oasis2);
    let chosen = md
        .choose(None, "bdxr-transport-ebms3-as4-v2p0", at())
        .unwrap();
    assert_eq!(chosen.endpoint.url, "https://ap2.example.com/as4");
    assert_eq!(
        chosen.certificate.to_der().unwrap(),
        cert("varti-b/enc.cert.pem").to_der().unwrap(),
        "the Exchange certificate, not the Signature one"
    );
    assert_eq!(
        chosen.signing_certificate.unwrap().to_der().unwrap(),
        cert("varti-b/sign.cert.pem").to_der().unwrap()
    );
    // The expiration day is exclusive.
    match md.choose(
        None,
        "bdxr-transport-ebms3-as4-v2p0",
        datetime!(2030-01-01 0:00 UTC),
    ) {
        Err(DiscoveryError::Expired { until, .. }) => assert!(until.starts_with("2030-01-01")),
        other => panic!("{other:?}"),
    }
}

#[test]
fn every_refusal_names_its_reason() {
    let good = sample("oasis1");
    // One byte of the endpoint URL changed after signing.
    let xml = String::from_utf8(signed(&good, None)).unwrap();
    let tampered = xml.replacen(
        "https://ap.example.com/msh",
        "https://ap.example.con/msh",
        1,
    );
    let answer = read_service_metadata(tampered.as_bytes(), Some(&anchors()), at()).unwrap();
    assert_eq!(
        answer.metadata.processes[0].endpoints[0].url,
        "https://ap.example.con/msh"
    );
    match answer.signature {
        Err(DiscoveryError::BadSignature(d)) => {
            assert!(d.contains("changed after it was signed"), "{d}")
        }
        other => panic!("{other:?}"),
    }
    // Unsigned.
    let answer = read_service_metadata(good.as_bytes(), Some(&anchors()), at()).unwrap();
    assert!(matches!(answer.signature, Err(DiscoveryError::Unsigned)));
    // Signed by a key the network does not trust (anchors: another certificate, pinned).
    let answer =
        read_service_metadata(xml.as_bytes(), Some(&[cert("varti-a/sign.cert.pem")]), at())
            .unwrap();
    assert!(
        matches!(answer.signature, Err(DiscoveryError::UntrustedSmp(_))),
        "{:?}",
        answer.signature
    );
    // Without anchors (diagnosis) the cryptography still counts, the trust is not claimed.
    let answer = read_service_metadata(xml.as_bytes(), None, at()).unwrap();
    assert!(!answer.signature.unwrap().trusted);

    let md = read_service_metadata(xml.as_bytes(), None, at())
        .unwrap()
        .metadata;
    match md.choose(None, "peppol-transport-as4-v2_0", at()) {
        Err(DiscoveryError::TransportNotOffered { offered, .. }) => {
            assert_eq!(offered, "bdxr-transport-ebms3-as4-v1p0")
        }
        other => panic!("{other:?}"),
    }
    match md.choose(
        None,
        "bdxr-transport-ebms3-as4-v1p0",
        datetime!(2023-06-01 0:00 UTC),
    ) {
        Err(DiscoveryError::NotYetActive { .. }) => {}
        other => panic!("{other:?}"),
    }
    match md.choose(
        None,
        "bdxr-transport-ebms3-as4-v1p0",
        datetime!(2031-06-01 0:00 UTC),
    ) {
        Err(DiscoveryError::Expired { .. }) => {}
        other => panic!("{other:?}"),
    }
    let other_process = Identifier::parse("cenbii-procid-ubl::other").unwrap();
    match md.choose(Some(&other_process), "bdxr-transport-ebms3-as4-v1p0", at()) {
        Err(DiscoveryError::NoProcess { offered, .. }) => {
            assert!(offered.contains("bii04"), "{offered}")
        }
        other => panic!("{other:?}"),
    }
    match md.check_answers(
        &Identifier::parse("iso6523-actorid-upis::0088:1").unwrap(),
        md.document.as_ref().unwrap(),
    ) {
        Err(DiscoveryError::WrongAnswer(_)) => {}
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        read_service_metadata(b"<ServiceGroup xmlns='x'/>", None, at()),
        Err(DiscoveryError::Malformed(_))
    ));
}

#[test]
fn request_urls_per_dialect() {
    let p = Identifier::parse("iso6523-actorid-upis::0010:5798000000001").unwrap();
    let d = Identifier::parse("busdox-docid-qns::urn:x::Invoice##UBL-2.0").unwrap();
    assert_eq!(
        service_metadata_url("http://smp.example/", SmpDialect::Oasis1, &p, &d),
        "http://smp.example/iso6523-actorid-upis%3A%3A0010%3A5798000000001/services/busdox-docid-qns%3A%3Aurn%3Ax%3A%3AInvoice%23%23UBL-2.0"
    );
    assert_eq!(
        service_metadata_url("https://smp.example/base", SmpDialect::Oasis2, &p, &d),
        "https://smp.example/base/bdxr-smp-2/iso6523-actorid-upis%3A%3A0010%3A5798000000001/services/busdox-docid-qns%3A%3Aurn%3Ax%3A%3AInvoice%23%23UBL-2.0"
    );
}
