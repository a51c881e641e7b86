//! `varti discover` against real parts at the far edge: a DNS server on a loopback UDP
//! port serving NAPTR records, and an SMP stand-in on a loopback TCP port serving answers
//! signed at test time (OASIS SMP 1.0, Peppol, OASIS SMP 2.0; the samples in
//! crates/as4/tests/discovery). The SMP signs with varti-c's key (issued by the test CA,
//! the SMP anchor); the endpoint certificate is varti-b's (the test CA is the AP anchor).
//! Every refusal has its case, each with its reason on stderr and exit status 1.

mod common;
mod dns_support;
mod pair_support;
mod serve_support;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use dns_support::DnsServer;
use hickory_resolver::proto::rr::rdata::NAPTR;
use hickory_resolver::proto::rr::Name;
use openssl::pkey::PKey;
use openssl::x509::X509;
use varti_as4::discovery::{
    dns_name, service_metadata_url, sign_enveloped, DnsScheme, Identifier, SmpDialect,
};

const CERTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../certs");
const SAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../as4/tests/discovery");
const ZONE: &str = "bdxl.test.varti";
const OASIS_PARTICIPANT: &str = "iso6523-actorid-upis::0088:4035811991021";
const OASIS_DOC: &str =
    "busdox-docid-qns::urn:oasis:names:specification:ubl:schema:xsd:Invoice-2::Invoice##UBL-2.1";
const PEPPOL_PARTICIPANT: &str = "iso6523-actorid-upis::9915:test";
const PEPPOL_DOC: &str = "busdox-docid-qns::urn:oasis:names:specification:ubl:schema:xsd:Invoice-2::Invoice##urn:cen.eu:en16931:2017#compliant#urn:fdc:peppol.eu:2017:poacc:billing:3.0::2.1";
const SMP2_PARTICIPANT: &str = "urn:oasis:names:tc:ebcore:partyid-type:iso6523:0088::4035811991021";
const TAMPERED: &str = "iso6523-actorid-upis::0088:tampered";
const UNSIGNED: &str = "iso6523-actorid-upis::0088:unsigned";
const FUTURE: &str = "iso6523-actorid-upis::0088:future";
const REDIRECTED: &str = "iso6523-actorid-upis::0088:redirected";
const SMP2_DOC: &str =
    "bdx-docid-qns::urn:oasis:names:specification:ubl:schema:xsd:Invoice-2::Invoice##UBL-2.1";

fn pem(path: &str) -> Vec<u8> {
    std::fs::read(format!("{CERTS}/{path}")).unwrap()
}
fn cert(path: &str) -> X509 {
    X509::from_pem(&pem(path)).unwrap()
}
fn certs_path(path: &str) -> String {
    format!("{CERTS}/{path}")
}

/// A sample answer, the endpoint certificate filled in, the endpoint URL replaced.
fn sample(name: &str, endpoint: Option<&str>) -> String {
    let text = std::fs::read_to_string(format!("{SAMPLES}/{name}.xml")).unwrap();
    let enc = STANDARD.encode(cert("varti-b/enc.cert.pem").to_der().unwrap());
    let sign = STANDARD.encode(cert("varti-b/sign.cert.pem").to_der().unwrap());
    let text = text.replace("SIGNCERT", &sign).replace("CERT", &enc);
    match endpoint {
        Some(url) => text
            .replace("https://ap.example.com/msh", url)
            .replace("https://peppol-ap.example.com/as4", url)
            .replace("https://ap2.example.com/as4", url),
        None => text,
    }
}

fn signed(xml: &str) -> Vec<u8> {
    let key = PKey::private_key_from_pem(&pem("varti-c/sign.key.pem")).unwrap();
    sign_enveloped(xml.as_bytes(), &key, &cert("varti-c/sign.cert.pem"), None).unwrap()
}

/// The far-edge SMP: answers GETs from a path → body map, 404 otherwise.
struct Smp {
    addr: SocketAddr,
    scheme: &'static str,
}

impl Smp {
    /// Binds a loopback port, lets `more` add answers that name the SMP's own base URL,
    /// and serves (over TLS with `tls`).
    fn start_with(
        mut answers: HashMap<String, Vec<u8>>,
        tls: Option<Arc<rustls::ServerConfig>>,
        more: impl FnOnce(&str, &mut HashMap<String, Vec<u8>>),
    ) -> Smp {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let scheme = if tls.is_some() { "https" } else { "http" };
        more(&format!("{scheme}://{addr}/smp"), &mut answers);
        let answers = Arc::new(answers);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let answers = answers.clone();
                let tls = tls.clone();
                std::thread::spawn(move || match tls {
                    Some(config) => {
                        let conn = rustls::ServerConnection::new(config).unwrap();
                        answer(rustls::StreamOwned::new(conn, stream), &answers);
                    }
                    None => answer(stream, &answers),
                });
            }
        });
        Smp { addr, scheme }
    }

    fn base(&self) -> String {
        format!("{}://{}/smp", self.scheme, self.addr)
    }
}

/// Reads one HTTP/1.1 request and answers it from `answers` (404 for other paths).
fn answer<S: Read + Write>(stream: S, answers: &HashMap<String, Vec<u8>>) {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return; // e.g. a TLS handshake the client gave up
    }
    let path = line.split(' ').nth(1).unwrap_or("").to_owned();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
            break;
        }
    }
    let (status, body) = match answers.get(&path) {
        Some(b) => ("200 OK", b.clone()),
        None => ("404 Not Found", b"not here".to_vec()),
    };
    let stream = reader.get_mut();
    let _ = write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: text/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(&body);
    let _ = stream.flush();
}

/// The request path of the metadata of `participant` / `document` (the SMP's base path
/// is `/smp`, whatever its port).
fn smp_path(dialect: SmpDialect, participant: &str, document: &str) -> String {
    service_metadata_url(
        "/smp",
        dialect,
        &Identifier::parse(participant).unwrap(),
        &Identifier::parse(document).unwrap(),
    )
}

/// The far-edge DNS serving `zone` (see `dns_support`).
fn dns_server(zone: Vec<(String, Vec<NAPTR>)>) -> SocketAddr {
    DnsServer::start(zone).addr
}

fn smp_naptr(url: &str) -> NAPTR {
    NAPTR::new(
        100,
        10,
        b"U".as_slice().into(),
        b"Meta:SMP".as_slice().into(),
        format!("!.*!{url}!").as_bytes().into(),
        Name::root(),
    )
}

struct World {
    dns: SocketAddr,
    smp: Smp,
}

/// One DNS server and one SMP serving every case below.
fn world() -> World {
    let mut answers = HashMap::new();
    let good = signed(&sample("oasis1", None));
    answers.insert(
        smp_path(SmpDialect::Oasis1, OASIS_PARTICIPANT, OASIS_DOC),
        good.clone(),
    );
    let as_participant = |who: &str, xml: String| xml.replace("0088:4035811991021", who);
    // One byte of the endpoint URL changed after signing.
    let tampered = String::from_utf8(signed(&as_participant(
        "0088:tampered",
        sample("oasis1", None),
    )))
    .unwrap()
    .replacen(
        "https://ap.example.com/msh",
        "https://ap.example.con/msh",
        1,
    );
    answers.insert(
        smp_path(SmpDialect::Oasis1, TAMPERED, OASIS_DOC),
        tampered.into_bytes(),
    );
    // Active only from 2099.
    answers.insert(
        smp_path(SmpDialect::Oasis1, FUTURE, OASIS_DOC),
        signed(
            &as_participant("0088:future", sample("oasis1", None))
                .replace("2024-01-01T00:00:00Z", "2099-01-01T00:00:00Z")
                .replace("2030-01-01T00:00:00Z", "2100-01-01T00:00:00Z"),
        ),
    );
    // The destination of the redirect below, on "another SMP" (another base path).
    answers.insert(
        smp_path(SmpDialect::Oasis1, REDIRECTED, OASIS_DOC).replacen("/smp/", "/other/", 1),
        signed(&as_participant("0088:redirected", sample("oasis1", None))),
    );
    answers.insert(
        smp_path(SmpDialect::Oasis1, UNSIGNED, OASIS_DOC),
        sample("oasis1", None)
            .replace("0088:4035811991021", "0088:unsigned")
            .into_bytes(),
    );
    answers.insert(
        smp_path(SmpDialect::Peppol, PEPPOL_PARTICIPANT, PEPPOL_DOC),
        signed(&sample("peppol", None)),
    );
    answers.insert(
        smp_path(SmpDialect::Oasis2, SMP2_PARTICIPANT, SMP2_DOC),
        signed(&sample("oasis2", None)),
    );
    // A redirect (SMP 1.0) to the good answer, naming its signer.
    let redirect = String::from(
        r#"<?xml version="1.0" encoding="UTF-8"?><SignedServiceMetadata xmlns="http://docs.oasis-open.org/bdxr/ns/SMP/2016/05"><ServiceMetadata><Redirect href="REDIRECT"><CertificateUID>CN=varti-c,OU=sign,O=Varti TEST ONLY,C=EU</CertificateUID></Redirect></ServiceMetadata></SignedServiceMetadata>"#,
    );
    let smp = Smp::start_with(answers, None, |base, answers| {
        let target = format!(
            "{}{}",
            base.trim_end_matches("/smp"),
            smp_path(SmpDialect::Oasis1, REDIRECTED, OASIS_DOC).replacen("/smp/", "/other/", 1)
        );
        answers.insert(
            smp_path(SmpDialect::Oasis1, REDIRECTED, OASIS_DOC),
            signed(&redirect.replace("REDIRECT", &target)),
        );
    });
    let url = smp.base();
    let participants = [
        (OASIS_PARTICIPANT, DnsScheme::Bdxl),
        (TAMPERED, DnsScheme::Bdxl),
        (UNSIGNED, DnsScheme::Bdxl),
        (REDIRECTED, DnsScheme::Bdxl),
        (PEPPOL_PARTICIPANT, DnsScheme::PeppolNaptr),
    ];
    let zone = participants
        .iter()
        .map(|(p, scheme)| {
            (
                dns_name(&Identifier::parse(p).unwrap(), *scheme, ZONE),
                vec![smp_naptr(&url)],
            )
        })
        .collect();
    World {
        dns: dns_server(zone),
        smp,
    }
}

fn discover(w: &World, participant: &str, document: &str, extra: &[&str]) -> (i32, String, String) {
    let dns = w.dns.to_string();
    let ca = certs_path("ca.cert.pem");
    let mut args = vec![
        "discover",
        participant,
        "--document-type",
        document,
        "--dns-server",
        &dns,
        "--timeout",
        "5",
    ];
    // The test CA is both anchors unless the case names its own.
    for flag in ["--smp-anchor", "--ap-anchor"] {
        if !extra.contains(&flag) {
            args.extend([flag, ca.as_str()]);
        }
    }
    args.extend(extra);
    common::varti(&args)
}

#[test]
fn bdxl_naptr_and_oasis_smp1_give_the_endpoint_and_certificate() {
    let w = world();
    let (code, out, err) = discover(&w, OASIS_PARTICIPANT, OASIS_DOC, &["--sml", ZONE]);
    assert_eq!(code, 0, "{out}\n{err}");
    for expected in [
        "dns_name     LZMEDSMZXYD37YC74TZVPYCMUANFCMN667JHGBFQDDRVMSE6NYTA.iso6523-actorid-upis.bdxl.test.varti (bdxl)",
        "naptr        100 10 \"U\" \"Meta:SMP\"",
        &format!("smp_url      {}", w.smp.base()),
        "signature    verified by 'CN=varti-c",
        "endpoint     https://ap.example.com/msh (bdxr-transport-ebms3-as4-v1p0",
        "certificate  subject 'CN=varti-b,OU=enc",
    ] {
        assert!(out.contains(expected), "missing `{expected}` in:\n{out}");
    }
    // The same as JSON, the certificate included.
    let (code, out, _) = discover(&w, OASIS_PARTICIPANT, OASIS_DOC, &["--sml", ZONE, "--json"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["outcome"]["endpoint"], "https://ap.example.com/msh");
    assert_eq!(v["outcome"]["verified"], true);
    let pem = v["outcome"]["certificate"]["pem"].as_str().unwrap();
    assert_eq!(
        X509::from_pem(pem.as_bytes()).unwrap().to_der().unwrap(),
        cert("varti-b/enc.cert.pem").to_der().unwrap()
    );
    // A redirect is followed once, its target signed by the certificate it names.
    let (code, out, err) = discover(&w, REDIRECTED, OASIS_DOC, &["--sml", ZONE]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        out.contains("redirect     http://") && out.contains("/other/"),
        "{out}"
    );
    assert!(
        out.contains("endpoint     https://ap.example.com/msh"),
        "{out}"
    );
}

#[test]
fn peppol_naptr_and_smp2_dialects() {
    let w = world();
    let (code, out, err) = discover(
        &w,
        PEPPOL_PARTICIPANT,
        PEPPOL_DOC,
        &["--network", "peppol-test", "--sml", ZONE],
    );
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("(peppol-naptr)"), "{out}");
    assert!(
        out.contains("endpoint     https://peppol-ap.example.com/as4 (peppol-transport-as4-v2_0"),
        "{out}"
    );
    let smp = w.smp.base();
    let (code, out, err) = discover(
        &w,
        SMP2_PARTICIPANT,
        SMP2_DOC,
        &[
            "--network",
            "edelivery-smp2",
            "--smp",
            &smp,
            "--transport",
            "bdxr-transport-ebms3-as4-v2p0",
        ],
    );
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("request      GET http://"), "{out}");
    assert!(out.contains("/bdxr-smp-2/"), "{out}");
    assert!(
        out.contains("endpoint     https://ap2.example.com/as4"),
        "{out}"
    );
}

#[test]
fn a_tampered_answer_is_refused_and_no_verify_shows_it_with_a_warning() {
    let w = world();
    let (code, out, err) = discover(&w, TAMPERED, OASIS_DOC, &["--sml", ZONE]);
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(
        err.contains("the SMP answer's signature does not verify")
            && err.contains("changed after it was signed"),
        "{err}"
    );
    assert!(!out.contains("endpoint "), "no endpoint is given: {out}");
    let (code, out, err) = discover(&w, TAMPERED, OASIS_DOC, &["--sml", ZONE, "--no-verify"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        out.contains("endpoint     https://ap.example.con/msh"),
        "{out}"
    );
    assert!(out.contains("signature    REFUSED"), "{out}");
    assert!(err.contains("WARNING: --no-verify"), "{err}");
}

#[test]
fn every_failed_check_exits_1_with_its_reason() {
    let w = world();
    let smp = w.smp.base();
    let a_sign = certs_path("varti-a/sign.cert.pem");
    let cases: Vec<(&str, &str, Vec<&str>, &str)> = vec![
        // Not registered: NXDOMAIN for the participant's name.
        ("iso6523-actorid-upis::0088:nobody", OASIS_DOC, vec!["--sml", ZONE], "the participant is not registered: the DNS has no NAPTR record"),
        // Unsigned answer.
        (UNSIGNED, OASIS_DOC, vec!["--sml", ZONE], "not signed"),
        // Signed by a key the network does not trust (the anchor pins another certificate).
        (OASIS_PARTICIPANT, OASIS_DOC, vec!["--smp", &smp, "--smp-anchor", &a_sign], "SMP signer certificate is not trusted"),
        // The endpoint certificate does not chain to the AP anchors.
        (OASIS_PARTICIPANT, OASIS_DOC, vec!["--smp", &smp, "--ap-anchor", &a_sign], "not trusted as an access point"),
        // The transport profile is not offered.
        (OASIS_PARTICIPANT, OASIS_DOC, vec!["--smp", &smp, "--transport", "peppol-transport-as4-v2_0"], "no endpoint with transport profile peppol-transport-as4-v2_0 (offered: bdxr-transport-ebms3-as4-v1p0)"),
        // Expired (the sample's endpoint: 2024 to 2030; the test PKI lives ten years from
        // its making), and active only from 2099.
        (OASIS_PARTICIPANT, OASIS_DOC, vec!["--smp", &smp, "--at", "2031-01-01T00:00:00Z"], "expired at 2030-01-01"),
        (FUTURE, OASIS_DOC, vec!["--smp", &smp], "is not active before 2099-01-01"),
        // The process is not offered.
        (OASIS_PARTICIPANT, OASIS_DOC, vec!["--smp", &smp, "--process", "cenbii-procid-ubl::other"], "for no process cenbii-procid-ubl::other"),
        // The SMP has nothing for this document type.
        (OASIS_PARTICIPANT, "busdox-docid-qns::other", vec!["--smp", &smp], "404"),
    ];
    for (participant, document, extra, reason) in cases {
        let (code, out, err) = discover(&w, participant, document, &extra);
        assert_eq!(code, 1, "{participant} {extra:?}:\n{out}\n{err}");
        assert!(
            err.contains(reason),
            "{participant} {extra:?}: `{reason}` not in:\n{err}"
        );
    }
    // Bad arguments are exit status 2, with what to give.
    let (code, _, err) = common::varti(&[
        "discover",
        "0088:123",
        "--document-type",
        OASIS_DOC,
        "--smp",
        &smp,
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("scheme::value"), "{err}");
}

/// The cache of `Discoverer` (what `varti serve` will share): a verified answer, found or
/// refused, is reused until the network's TTL or the NAPTR records' DNS TTL (60 s here)
/// runs out, whichever is first, and forgotten on `invalidate` (a reload). Time is the
/// `now` passed in, moved by the test.
#[test]
fn answers_are_cached_within_the_dns_ttl_and_forgotten_on_invalidate() {
    use std::time::Duration;
    use time::OffsetDateTime;
    use varti_access_point::discovery::{Discoverer, Network, Query};

    let w = world();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let discoverer = Discoverer::new(Some(w.dns), Vec::new(), Duration::from_secs(5)).unwrap();
    let mut network = Network::new("test");
    network.sml_zone = Some(ZONE.into());
    network.smp_anchors = vec![cert("ca.cert.pem")];
    network.ap_anchors = vec![cert("ca.cert.pem")];
    network.cache_ttl = Duration::from_secs(3600);
    let t0 = OffsetDateTime::now_utc();
    let query = |participant: &str| Query {
        participant: Identifier::parse(participant).unwrap(),
        document: Identifier::parse(OASIS_DOC).unwrap(),
        process: None,
        at: t0,
        verify: true,
    };
    let from_cache =
        |r: &varti_access_point::discovery::Report| r.steps.iter().any(|s| s.key == "cache");
    rt.block_on(async {
        let found = discoverer
            .discover(&network, &query(OASIS_PARTICIPANT), t0)
            .await;
        assert!(!from_cache(&found));
        assert_eq!(
            found.outcome.as_ref().unwrap().url,
            "https://ap.example.com/msh"
        );
        let again = discoverer
            .discover(
                &network,
                &query(OASIS_PARTICIPANT),
                t0 + Duration::from_secs(59),
            )
            .await;
        assert!(from_cache(&again), "{:?}", again.steps);
        assert_eq!(again.outcome.unwrap().url, "https://ap.example.com/msh");
        // Past the NAPTR TTL (60 s), though well within the network's hour.
        let later = discoverer
            .discover(
                &network,
                &query(OASIS_PARTICIPANT),
                t0 + Duration::from_secs(61),
            )
            .await;
        assert!(!from_cache(&later), "{:?}", later.steps);
        // A refusal is cached too (a tampered answer), and a reload forgets both.
        let refused = discoverer.discover(&network, &query(TAMPERED), t0).await;
        assert!(refused.outcome.is_err());
        let again = discoverer
            .discover(&network, &query(TAMPERED), t0 + Duration::from_secs(1))
            .await;
        assert!(from_cache(&again) && again.outcome.is_err());
        discoverer.invalidate();
        let fresh = discoverer
            .discover(&network, &query(TAMPERED), t0 + Duration::from_secs(2))
            .await;
        assert!(!from_cache(&fresh), "{:?}", fresh.steps);
    });
}

/// The SMP over real TLS (varti-a's TLS certificate, SAN 127.0.0.1): trusted through
/// --smp-tls-ca, refused without it (the test CA is not among the system's).
#[test]
fn an_https_smp_is_reached_over_tls_with_its_ca() {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(certs_path("varti-a/tls.cert.pem"))
            .unwrap()
            .map(Result::unwrap)
            .collect();
    let key = PrivateKeyDer::from_pem_file(certs_path("varti-a/tls.key.pem")).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .unwrap();
    let answers = HashMap::from([(
        smp_path(SmpDialect::Oasis1, OASIS_PARTICIPANT, OASIS_DOC),
        signed(&sample("oasis1", None)),
    )]);
    let smp = Smp::start_with(answers, Some(Arc::new(config)), |_, _| {});
    let base = smp.base();
    assert!(base.starts_with("https://127.0.0.1:"));
    let w = World {
        dns: "127.0.0.1:9".parse().unwrap(),
        smp,
    };
    let ca = certs_path("ca.cert.pem");
    let (code, out, err) = discover(
        &w,
        OASIS_PARTICIPANT,
        OASIS_DOC,
        &["--smp", &base, "--smp-tls-ca", &ca],
    );
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        out.contains("endpoint     https://ap.example.com/msh"),
        "{out}"
    );
    let (code, out, err) = discover(&w, OASIS_PARTICIPANT, OASIS_DOC, &["--smp", &base]);
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(
        err.contains("the SMP request https://") && err.contains("certificate"),
        "{err}"
    );
}

/// The PMode file that makes varti-b a dynamic party: no endpoint, no certificates, only
/// where to look it up (BDXL zone, a loopback DNS server, OASIS SMP 2.0) and whom to trust.
fn dynamic_b(locator: &str) -> String {
    format!(
        r#"[[party]]
name = "varti-b"
ids = [{{ value = "varti-b", type = "urn:oasis:names:tc:ebcore:partyid-type:unregistered" }}]
dynamic = true
tls = {{ min_version = "1.2", client_auth = true, trusted_ca = "../certs/ca.cert.pem" }}

[party.discovery]
network = "test-bdxl"
{locator}
smp_version = "oasis-2"
smp_anchors = ["../certs/ca.cert.pem"]
ap_anchors = ["../certs/ca.cert.pem"]
transport_profile = "bdxr-transport-ebms3-as4-v2p0"
participant = "{SMP2_PARTICIPANT}"
document_type = "{SMP2_DOC}"
"#
    )
}

/// Issue 16's acceptance: `varti send` to a participant known only through BDXL + SMP
/// reaches a second `varti serve`. varti-a's PModes hold neither b's endpoint nor any of
/// its certificates: the endpoint (b's real port), the encryption certificate and the
/// signing certificate the receipt is verified against come from the signed SMP 2.0
/// answer found through the NAPTR record. Then `varti reload` puts an SMP in force whose
/// answer names another signing certificate (varti-a's, valid under the same CA): b's
/// receipt no longer verifies and the message fails with the reason. An unsigned answer
/// fails the message at once; an SMP that cannot be reached is retried, then fails.
#[test]
fn a_message_reaches_a_dynamically_discovered_access_point() {
    const ADMIN: &str = "admin-token-for-discovery";
    let config = format!(
        "[client]\nconnect_timeout_secs = 2\nrequest_timeout_secs = 20\n\
         [sender]\npoll_interval_ms = 100\nlease_secs = 30\n\
         [[backend.clients]]\nname = \"ops\"\ntoken_sha256 = \"{}\"\nadmin = true\n",
        varti::pair::token_sha256(ADMIN)
    );
    let pair = pair_support::Pair::create(
        ("exchange.toml", pair_support::exchange_pmodes()),
        None,
        &config,
    );
    let b_port = pair.layout.b.ports.msh;
    let endpoint = format!("https://localhost:{b_port}/msh");
    let mut answers = HashMap::new();
    answers.insert(
        smp_path(SmpDialect::Oasis2, SMP2_PARTICIPANT, SMP2_DOC),
        signed(&sample("oasis2", Some(&endpoint))),
    );
    let smp = Smp::start_with(answers, None, |_, _| {});
    let name = dns_name(
        &Identifier::parse(SMP2_PARTICIPANT).unwrap(),
        DnsScheme::Bdxl,
        ZONE,
    );
    let dns = dns_server(vec![(name, vec![smp_naptr(&smp.base())])]);
    let b_file = pair.layout.root.join("pmodes/varti-b.toml");
    let bdxl = format!("sml_zone = \"{ZONE}\"\ndns_scheme = \"bdxl\"\ndns_server = \"{dns}\"");
    std::fs::write(&b_file, dynamic_b(&bdxl)).unwrap();
    let a_dir = pair.layout.a.dir.clone();
    let (code, out, err) =
        common::varti(&["pmode", "check", a_dir.join("../pmodes").to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");

    let b = pair.start("b");
    let a = pair.start("a");
    let file = pair.layout.root.join("invoice.xml");
    std::fs::write(&file, "<invoice>16</invoice>").unwrap();
    let send = || {
        common::run(
            std::process::Command::new(env!("CARGO_BIN_EXE_varti"))
                .args([
                    "send",
                    "--to",
                    "varti-b",
                    "--service",
                    "urn:varti:test:exchange",
                ])
                .args([
                    "--action",
                    "Deliver",
                    "--wait",
                    "60",
                    file.to_str().unwrap(),
                ])
                .env("VARTI_API", format!("http://{}", a.backend))
                .env("VARTI_TOKEN", &a.token),
        )
    };
    let (code, out, err) = send();
    assert_eq!(
        code,
        0,
        "{out}{err}\n--- a:\n{}\n--- b:\n{}",
        a.served.log_text(),
        b.served.log_text()
    );
    let inbound = b.inbound();
    assert_eq!(inbound.len(), 1, "{inbound:?}");
    let id = inbound[0]["message_id"].as_str().unwrap();
    assert_eq!(b.payload(id, 0), b"<invoice>16</invoice>");
    let log = a.served.log_text();
    assert!(
        log.contains("partner discovered") && log.contains(&endpoint),
        "{log}"
    );

    // The same endpoint published with varti-a's signing certificate instead of b's.
    let b_sign = STANDARD.encode(cert("varti-b/sign.cert.pem").to_der().unwrap());
    let a_sign = STANDARD.encode(cert("varti-a/sign.cert.pem").to_der().unwrap());
    let wrong = sample("oasis2", Some(&endpoint)).replace(&b_sign, &a_sign);
    assert!(wrong.contains(&a_sign));
    let mut answers = HashMap::new();
    answers.insert(
        smp_path(SmpDialect::Oasis2, SMP2_PARTICIPANT, SMP2_DOC),
        signed(&wrong),
    );
    let other = Smp::start_with(answers, None, |_, _| {});
    let fixed = format!("smp_url = \"{}\"", other.base());
    std::fs::write(&b_file, dynamic_b(&fixed)).unwrap();
    let api = format!("http://{}", a.backend);
    let (code, out, err) = common::varti(&["reload", "--api", &api, "--token", ADMIN]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = send();
    assert_eq!(code, 1, "{out}{err}");
    // The signer b really used is not the one discovered: the receipt is refused.
    let all = format!("{out}{err}");
    assert!(all.contains("failed"), "{all}");
    assert!(
        all.contains("signed with the certificate of `EU, Varti TEST ONLY, sign, varti-b`")
            && all.contains("sign, varti-a"),
        "{all}"
    );

    // An SMP answering unsigned: refused by discovery, the message fails at once with the
    // reason (no retry can fix it).
    let mut answers = HashMap::new();
    answers.insert(
        smp_path(SmpDialect::Oasis2, SMP2_PARTICIPANT, SMP2_DOC),
        sample("oasis2", Some(&endpoint)).into_bytes(),
    );
    let unsigned = Smp::start_with(answers, None, |_, _| {});
    let fixed = format!("smp_url = \"{}\"", unsigned.base());
    std::fs::write(&b_file, dynamic_b(&fixed)).unwrap();
    let (code, out, err) = common::varti(&["reload", "--api", &api, "--token", ADMIN]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = send();
    let all = format!("{out}{err}");
    assert_eq!(code, 1, "{all}");
    assert!(
        all.contains("discovering urn:oasis:names:tc:ebcore"),
        "{all}"
    );
    assert!(
        all.contains("network `test-bdxl`") && all.contains("the SMP answer is not signed"),
        "{all}"
    );
    assert!(
        !all.contains("attempt(s)"),
        "failed at the first attempt: {all}"
    );

    // An SMP that cannot be reached: retried like a transport failure, then failed.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let gone = format!("http://{}/smp", closed.local_addr().unwrap());
    drop(closed);
    std::fs::write(&b_file, dynamic_b(&format!("smp_url = \"{gone}\""))).unwrap();
    let (code, out, err) = common::varti(&["reload", "--api", &api, "--token", ADMIN]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = send();
    let all = format!("{out}{err}");
    assert_eq!(code, 1, "{all}");
    assert!(
        all.contains("no receipt after 4 attempt(s)") && all.contains("discovering"),
        "{all}"
    );
}
