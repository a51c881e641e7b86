//! The common-services client against the real stand-in process over HTTP: typed
//! answers, the recorded EC signatures verified end to end, caching (counted at the
//! stand-in), the DSD:ERR:0005 two-step flow with a stand-in signing with its own key,
//! signature refusal, a timeout against a server that never answers, `varti oots
//! lookup`; discovery by DNS NAPTR against a local DNS server (a far-edge double answering
//! over UDP); and the look-up API of a running `varti serve` against the stand-in.

mod common;
mod dns_support;
mod serve_support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use dns_support::DnsServer;
use hickory_resolver::proto::rr::rdata::NAPTR;
use hickory_resolver::proto::rr::Name;
use openssl::x509::X509;
use time::OffsetDateTime;
use varti_oots::common_services::client::Clock;
use varti_oots::common_services::signature::SignatureError;
use varti_oots::common_services::{
    Client, ClientConfig, CsError, DataServicesQuery, TransportError, TrustAnchors,
};
use varti_oots_gateway::common_services::discovery::{DiscoveryError, NaptrDiscovery};
use varti_oots_gateway::common_services::HttpsTransport;

fn dirs() -> Option<(PathBuf, PathBuf)> {
    Some((common::vectors()?, common::oots_specs()?))
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A running `varti oots standin`, killed on drop.
struct StandIn {
    _process: serve_support::KillOnDrop,
    base: String,
}

fn spawn_standin(vectors: &Path, specs: &Path, extra: &[&str]) -> StandIn {
    let mut child = Command::new(env!("CARGO_BIN_EXE_varti"))
        .args(["oots", "standin", "--listen", "127.0.0.1:0"])
        .arg("--vectors")
        .arg(vectors)
        .arg("--specs")
        .arg(specs)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start varti oots standin");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let base = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .to_owned();
    StandIn {
        _process: serve_support::KillOnDrop(child),
        base,
    }
}

/// A stand-in signing its answers with varti-b's key (under the test CA).
fn spawn_signing_standin(vectors: &Path, specs: &Path) -> StandIn {
    let certs = repo().join("certs/varti-b");
    let key = certs.join("sign.key.pem");
    let cert = certs.join("sign.cert.pem");
    let extra = [
        "--sign-key",
        key.to_str().unwrap(),
        "--sign-cert",
        cert.to_str().unwrap(),
    ];
    spawn_standin(vectors, specs, &extra)
}

/// The test CA as the trust anchors of common-services signatures.
fn test_ca_anchors() -> TrustAnchors {
    TrustAnchors::from_pem(&std::fs::read(repo().join("certs/ca.cert.pem")).unwrap()).unwrap()
}

/// A data-services query for an evidence type classification in a country.
fn query(classification: &str, country: &str) -> DataServicesQuery {
    DataServicesQuery {
        evidence_type_classification: classification.into(),
        country_code: country.into(),
        ..Default::default()
    }
}

impl StandIn {
    /// Queries answered so far, as the stand-in counts them.
    async fn queries(&self) -> u64 {
        let t = transport();
        let reply = varti_oots::common_services::Transport::get(
            &t,
            &format!("{}/standin/requests", self.base),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        String::from_utf8(reply.body)
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }
}

fn transport() -> HttpsTransport {
    HttpsTransport::from_ca_file(&repo().join("certs/ca.cert.pem"), true).unwrap()
}

/// The EC test root from a recorded answer's x5c chain, as a deployment would configure.
fn ec_test_root(vectors: &Path) -> TrustAnchors {
    let text = std::fs::read_to_string(
        vectors.join("oots-france/common_services/eb_requirements_fr.headers"),
    )
    .unwrap();
    let jws = text
        .lines()
        .find_map(|l| l.strip_prefix("oots-response-sig: "))
        .unwrap();
    let header: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(jws.split('.').next().unwrap())
            .unwrap(),
    )
    .unwrap();
    let der = base64::engine::general_purpose::STANDARD
        .decode(header["x5c"][2].as_str().unwrap())
        .unwrap();
    TrustAnchors::new(vec![X509::from_der(&der).unwrap()])
}

fn at(s: &str) -> OffsetDateTime {
    OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).unwrap()
}

fn client(base: &str, trust: Option<TrustAnchors>, clock: Clock) -> Client {
    let mut cfg = ClientConfig::new(base, base);
    cfg.trust = trust;
    cfg.freshness = Duration::from_secs(60);
    cfg.timeout = Duration::from_secs(10);
    Client::new(cfg, Arc::new(transport())).with_clock(clock)
}

const FI_PDF: &str = "https://sr.acc.oots.tech.ec.europa.eu/evidencetypeclassifications/FI/19f0783e-7cdc-4146-9ff9-e331514ffb74";
const DE_BIRTH: &str = "https://sr.oots.tech.europa.eu/evidencetypeclassifications/DE/ca8afed6-2dc0-422a-a931-d21c3d8d370e";

#[tokio::test]
async fn signed_answers_over_http_and_the_cache_spares_the_server() {
    let Some((v, s)) = dirs() else { return };
    let standin = spawn_standin(&v, &s, &[]);
    // Fixed times inside the EC test certificate's validity (2025-10-23 … 2027-10-23).
    let now = Arc::new(Mutex::new(at("2026-08-01T00:00:00Z")));
    let n = now.clone();
    let c = client(
        &standin.base,
        Some(ec_test_root(&v)),
        Arc::new(move || *n.lock().unwrap()),
    );

    let fetched = c.data_services(query(FI_PDF, "FI")).await.unwrap();
    assert!(!fetched.from_cache);
    let sig = fetched.signature.as_ref().expect("verified");
    assert!(sig.signer.contains("EC-OOTS-CS-ACC"), "{}", sig.signer);
    let t = &fetched.answer.items[0];
    assert_eq!(t.identifier, "41170824-15d9-4c16-984e-63b75b937b8c");
    let d = t.data_services().next().unwrap();
    assert_eq!(d.access_point.value, "AP_FI_03");
    assert_eq!(d.provider.value, "FIKEHA02");
    assert_eq!(standin.queries().await, 1);

    // Within the freshness: from the cache, the stand-in is not asked again.
    *now.lock().unwrap() = at("2026-08-01T00:00:59Z");
    let again = c.data_services(query(FI_PDF, "FI")).await.unwrap();
    assert!(again.from_cache);
    assert_eq!(again.answer, fetched.answer);
    assert_eq!(standin.queries().await, 1);

    // An EB query is another URL.
    let reqs = c.requirements("00", "FR").await.unwrap();
    assert_eq!(
        reqs.answer.items[0].identifier,
        "https://sr.acc.oots.tech.ec.europa.eu/requirements/00000000-0000-0000-0000-000000000000"
    );
    assert_eq!(standin.queries().await, 2);

    // Past the freshness: asked again.
    *now.lock().unwrap() = at("2026-08-01T00:01:01Z");
    let third = c.data_services(query(FI_PDF, "FI")).await.unwrap();
    assert!(!third.from_cache);
    assert_eq!(standin.queries().await, 3);

    // An unknown query: the recorded empty answer, verified, read as nothing found.
    let none = c
        .data_services(query("https://sr.example/unknown", "LV"))
        .await
        .unwrap();
    assert!(none.answer.items.is_empty());
    assert!(none.signature.is_some());
}

#[tokio::test]
async fn signatures_are_refused_when_untrusted_or_missing() {
    let Some((v, s)) = dirs() else { return };
    let standin = spawn_standin(&v, &s, &[]);
    let ours = test_ca_anchors();
    let when = at("2026-08-01T00:00:00Z");
    let c = client(&standin.base, Some(ours), Arc::new(move || when));
    match c.requirements("00", "FR").await {
        Err(CsError::Signature {
            source: SignatureError::Untrusted(_),
            ..
        }) => {}
        other => panic!("{other:?}"),
    }
    // An EDM 1.0 sample has no recorded signature: refused when signatures are required …
    let c = client(
        &standin.base,
        Some(ec_test_root(&v)),
        Arc::new(move || when),
    );
    match c.requirements("R1", "DE").await {
        Err(CsError::Signature {
            source: SignatureError::Missing,
            ..
        }) => {}
        other => panic!("{other:?}"),
    }
    // … and read when they are not.
    let c = client(&standin.base, None, Arc::new(move || when));
    let r = c.requirements("R1", "DE").await.unwrap();
    assert_eq!(
        r.answer.items[0].identifier,
        "https://sr.oots.tech.europa.eu/requirements/315cfd75-6605-49c4-b0fe-799833b41099"
    );
    assert!(r.signature.is_none());
}

/// TC05-style additional DSD conversation, with the stand-in signing by its own key; once
/// asking for access services of EDM 1.0 and once of EDM 2.0 (the DSD `specification`).
#[tokio::test]
async fn dsd_user_input_flow_with_a_stand_in_signing_key() {
    let Some((v, s)) = dirs() else { return };
    let standin = spawn_signing_standin(&v, &s);
    let anchors = test_ca_anchors();
    let c = client(
        &standin.base,
        Some(anchors),
        Arc::new(OffsetDateTime::now_utc),
    );
    for spec in ["oots-edm:v1.0", "oots-edm:v2.0"] {
        let query = |classification: &str, country: &str| DataServicesQuery {
            specification: Some(spec.to_owned()),
            ..query(classification, country)
        };
        let first = c.data_services(query(DE_BIRTH, "DE")).await.unwrap_err();
        let e = first.exception().expect("an exception answer");
        assert!(e.needs_user_input(), "{e}");
        let input = e.additional_input.as_ref().unwrap();
        let second = c
            .data_services(DataServicesQuery {
                evidence_type_id: Some(input.evidence_type.as_ref().unwrap().identifier.clone()),
                jurisdiction_context_id: Some(
                    input.jurisdiction.as_ref().unwrap().context_id.clone(),
                ),
                jurisdiction_admin_l3: Some("11000000".into()),
                classifications: vec![(
                    input.classifications[0].identifier.clone(),
                    "ApplicantHasBeenResidentInGermany".into(),
                )],
                ..query(DE_BIRTH, "DE")
            })
            .await
            .unwrap();
        assert!(second
            .signature
            .as_ref()
            .unwrap()
            .signer
            .contains("varti-b"));
        let providers: Vec<String> = second.answer.items[0]
            .data_services()
            .map(|d| d.provider.value.clone())
            .collect();
        assert_eq!(providers, ["DE73524311", "02-CivilRegistration-66"]);
    }
}

#[tokio::test]
async fn a_server_that_never_answers_times_out() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    // Accept and hold connections without ever writing.
    let held = Arc::new(Mutex::new(Vec::new()));
    let h = held.clone();
    std::thread::spawn(move || {
        for s in listener.incoming().flatten() {
            h.lock().unwrap().push(s);
        }
    });
    let mut cfg = ClientConfig::new(format!("http://{addr}"), format!("http://{addr}"));
    cfg.timeout = Duration::from_millis(500);
    let c = Client::new(cfg, Arc::new(transport()));
    let started = Instant::now();
    match c.requirements("R1", "DE").await {
        Err(CsError::Transport {
            source: TransportError::Timeout(d),
            ..
        }) => assert_eq!(d, Duration::from_millis(500)),
        other => panic!("{other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(
        !held.lock().unwrap().is_empty(),
        "the request reached the server"
    );
}

#[tokio::test]
async fn lookup_cli_against_the_stand_in() {
    let Some((v, s)) = dirs() else { return };
    let standin = spawn_standin(&v, &s, &[]);
    let base = standin.base.clone();
    let run = move |args: Vec<String>| {
        Command::new(env!("CARGO_BIN_EXE_varti"))
            .args([
                "oots",
                "lookup",
                "--base",
                &base,
                "--insecure-http",
                "--tls-ca",
            ])
            .arg(repo().join("certs/ca.cert.pem"))
            .args(args)
            .output()
            .unwrap()
    };
    let out = tokio::task::spawn_blocking({
        let run = run.clone();
        move || {
            run(vec![
                "--json".into(),
                "data-services".into(),
                "--evidence-type".into(),
                FI_PDF.into(),
                "--country".into(),
                "FI".into(),
            ])
        }
    })
    .await
    .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        json["items"][0]["data_services"][0]["access_point"]["id"],
        "AP_FI_03"
    );
    assert_eq!(json["items"][0]["formats"][0], "application/pdf");

    let out = tokio::task::spawn_blocking(move || {
        run(vec![
            "data-services".into(),
            "--evidence-type".into(),
            DE_BIRTH.into(),
            "--country".into(),
            "DE".into(),
        ])
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("DSD:ERR:0005"), "{err}");
    assert!(
        err.contains("--evidence-type-id 2af27699-f131-4411-8fdb-9e8cd4e8bded"),
        "{err}"
    );
}

/// A NAPTR record for the DNS stand-in (`dns_support`), preference 10, no service.
fn naptr(order: u16, flags: &str, regexp: &str, replacement: &str) -> NAPTR {
    NAPTR::new(
        order,
        10,
        flags.as_bytes().into(),
        b"".as_slice().into(),
        regexp.as_bytes().into(),
        Name::from_ascii(replacement).unwrap(),
    )
}

#[tokio::test]
async fn naptr_discovery_against_a_local_dns_server() {
    const LV_DSD: &str = "lv.dsd.v2.cs.acc.oots.tech.ec.europa.eu";
    const FI_EB: &str = "fi.eb.v2.cs.acc.oots.tech.ec.europa.eu";
    let dns = DnsServer::start(vec![
        (
            LV_DSD,
            vec![
                // Not for this application (an SRV pointer), first in order: skipped.
                naptr(50, "S", "", "_cs._tcp.example.test."),
                naptr(
                    100,
                    "U",
                    "!^.*$!https://query.cs.acc.oots.tech.ec.europa.eu/!",
                    ".",
                ),
                naptr(200, "U", "!^.*$!https://backup.example.test/!", "."),
            ],
        ),
        // A delegation to another name, whose regexp rewrites the original name.
        (FI_EB, vec![naptr(10, "", "", "cs.fi.example.test.")]),
        (
            "cs.fi.example.test",
            vec![naptr(
                10,
                "u",
                r"!^([a-z]{2})\.(eb)\..*$!https://\2-\1.example.test/cs!",
                ".",
            )],
        ),
    ]);
    let discovery = NaptrDiscovery::new(Some(dns.addr), Duration::from_secs(2)).unwrap();
    assert_eq!(
        discovery.discover(LV_DSD).await.unwrap(),
        "https://query.cs.acc.oots.tech.ec.europa.eu/"
    );
    assert_eq!(
        discovery.discover(FI_EB).await.unwrap(),
        "https://eb-fi.example.test/cs"
    );
    // No record: a clear error naming the name and what to check.
    let missing = "xx.dsd.v2.cs.acc.oots.tech.ec.europa.eu";
    let e = discovery.discover(missing).await.unwrap_err();
    assert!(matches!(e, DiscoveryError::NotFound { .. }), "{e:?}");
    let text = e.to_string();
    assert!(
        text.contains(missing) && text.contains("oots.common_services"),
        "{text}"
    );
    let asked = dns.questions.lock().unwrap().clone();
    assert!(
        asked.iter().any(|q| q.starts_with("cs.fi.example.test")),
        "{asked:?}"
    );
    assert!(asked.iter().any(|q| q.starts_with(missing)), "{asked:?}");

    // A server that does not answer: a DNS error, not "not found".
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let quiet = NaptrDiscovery::new(
        Some(silent.local_addr().unwrap()),
        Duration::from_millis(300),
    )
    .unwrap();
    let e = quiet.discover(LV_DSD).await.unwrap_err();
    assert!(matches!(e, DiscoveryError::Dns { .. }), "{e:?}");
}

const PORTAL_TOKEN: &str = "portal-lookup-token";

/// A `varti serve` requester whose look-ups go to `cs_url`, signatures checked against
/// `trust`; returns it with its backend address.
fn serve_requester(
    dir: &Path,
    cs_url: &str,
    trust: &Path,
) -> (serve_support::Served, std::net::SocketAddr) {
    let ca = repo().join("certs/ca.cert.pem");
    let tables = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[ops]\nlisten = \"127.0.0.1:0\"\n\
         [oots]\nrole = \"requester\"\n\
         [oots.common_services]\nurl = \"{cs_url}\"\nallow_http = true\n\
         trust = [\"{trust}\"]\ntls_ca = \"{ca}\"\ntimeout_secs = 5\n\
         [[backend.clients]]\nname = \"portal\"\ntoken_sha256 = \"{hash}\"\n",
        trust = trust.display(),
        ca = ca.display(),
        hash = varti::pair::token_sha256(PORTAL_TOKEN),
    );
    let served = serve_support::spawn_serve(
        dir,
        &serve_support::plain_config(&tables),
        &["--insecure-http"],
    );
    let ready: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("ready.json")).unwrap()).unwrap();
    let backend = ready["backend"].as_str().unwrap().parse().unwrap();
    (served, backend)
}

fn api_get(backend: std::net::SocketAddr, path: &str) -> (u16, serde_json::Value) {
    let mut tcp = std::net::TcpStream::connect(backend).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let r = serve_support::http_request(
        &mut tcp,
        "GET",
        path,
        &format!("Authorization: Bearer {PORTAL_TOKEN}\r\n"),
        b"",
    )
    .unwrap();
    let json = serde_json::from_str(&r.body)
        .unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {} {}", r.head, r.body));
    (r.status, json)
}

/// `GET /api/v1/oots/lookup/data-services` for `evidence_type` in `country`.
fn data_services(
    backend: std::net::SocketAddr,
    evidence_type: &str,
    country: &str,
) -> (u16, serde_json::Value) {
    let query = format!("evidence_type={}&country={country}", enc(evidence_type));
    api_get(
        backend,
        &format!("/api/v1/oots/lookup/data-services?{query}"),
    )
}

fn enc(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

#[test]
fn lookup_api_through_varti_serve_with_signatures_checked() {
    let Some((v, s)) = dirs() else { return };
    // The stand-in signs with its own key (varti-b's, under the test CA) …
    let signing = spawn_signing_standin(&v, &s);
    let dir = tempfile::tempdir().unwrap();
    let ca = repo().join("certs/ca.cert.pem");
    let (_served, backend) = serve_requester(dir.path(), &signing.base, &ca);

    // DSD: the data service, with the fields of POST /oots/requests filled in.
    let (status, body) = data_services(backend, FI_PDF, "fi");
    assert_eq!(status, 200, "{body}");
    assert!(
        body["signed_by"].as_str().unwrap().contains("varti-b"),
        "{body}"
    );
    assert_eq!(body["from_cache"], false);
    let request = &body["items"][0]["data_services"][0]["request"];
    assert_eq!(request["provider_party"], "AP_FI_03", "{body}");
    assert_eq!(request["provider"]["identifier"]["value"], "FIKEHA02");
    assert_eq!(request["provider"]["country"], "FI");
    assert_eq!(
        request["evidence_type"]["identifier"],
        "41170824-15d9-4c16-984e-63b75b937b8c"
    );
    assert_eq!(request["evidence_type"]["classification"], FI_PDF);
    assert!(
        request["edm_version"]
            .as_str()
            .unwrap()
            .starts_with("oots-edm:"),
        "{body}"
    );
    // Asked again: from the gateway's cache, the stand-in is not asked twice.
    let (_, again) = data_services(backend, FI_PDF, "FI");
    assert_eq!(again["from_cache"], true);
    assert_eq!(again["items"], body["items"]);

    // EB: requirements of a procedure, evidence types of a requirement.
    let (status, reqs) = api_get(
        backend,
        "/api/v1/oots/lookup/requirements?procedure=00&country=FR",
    );
    assert_eq!(status, 200, "{reqs}");
    let requirement = reqs["items"][0]["identifier"].as_str().unwrap().to_owned();
    assert_eq!(
        requirement,
        "https://sr.acc.oots.tech.ec.europa.eu/requirements/00000000-0000-0000-0000-000000000000"
    );
    let (status, types) = api_get(
        backend,
        &format!(
            "/api/v1/oots/lookup/evidence-types?requirement={}&country=FR",
            enc(&requirement)
        ),
    );
    assert_eq!(status, 200, "{types}");
    assert!(types["items"].is_array(), "{types}");

    // DSD:ERR:0005: 422 with what to ask the user.
    let (status, more) = data_services(backend, DE_BIRTH, "DE");
    assert_eq!(status, 422, "{more}");
    assert_eq!(
        more["exception"]["evidence_type_id"],
        "2af27699-f131-4411-8fdb-9e8cd4e8bded"
    );
    assert!(more["hint"].as_str().unwrap().contains("evidence_type_id"));

    // A portal's mistake is 400 and says which parameter.
    let (status, bad) = api_get(backend, "/api/v1/oots/lookup/requirements?country=LV");
    assert_eq!(status, 400);
    assert!(
        bad["error"].as_str().unwrap().contains("procedure"),
        "{bad}"
    );

    // … a stand-in replaying the EC's recorded signatures is not trusted by this
    // deployment's trust anchors: refused, 502 saying so.
    let replaying = spawn_standin(&v, &s, &[]);
    let dir2 = tempfile::tempdir().unwrap();
    let (_served2, backend2) = serve_requester(dir2.path(), &replaying.base, &ca);
    let (status, refused) = data_services(backend2, FI_PDF, "FI");
    assert_eq!(status, 502, "{refused}");
    assert!(
        refused["error"].as_str().unwrap().contains("signature"),
        "{refused}"
    );
    assert!(refused["hint"]
        .as_str()
        .unwrap()
        .contains("oots.common_services.trust"));
    assert!(refused.get("items").is_none());
}
