//! The OOTS test setup shared by the OOTS end-to-end tests: two real `varti serve`
//! processes (varti-a the requester state, varti-b the provider state) with the OOTS
//! gateway on, a fake national register (a small real HTTP server: the test double at the
//! far edge), and the portal's calls to a's backend API.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::pair_support::{self, repo, Node};
use super::serve_support;

use super::register_support::Register;

/// Fast sending for tests.
pub const FAST: &str = "[client]\nconnect_timeout_secs = 2\nrequest_timeout_secs = 20\n\
    [sender]\npoll_interval_ms = 100\nlease_secs = 30\n";

/// Starts both nodes with the OOTS gateway on (both roles) and b's connectors pointing at
/// the register (`EV-DOWN` at a closed port).
pub fn start(register: &Register) -> (tempfile::TempDir, Node, Node) {
    start_with(register, "")
}

/// Like [`start`], with `b_extra` appended to b's configuration (more connectors, the
/// preview space).
pub fn start_with(register: &Register, b_extra: &str) -> (tempfile::TempDir, Node, Node) {
    start_full(register, "", b_extra)
}

/// Like [`start_with`], with `portal_lines` first in a's extra configuration (they belong
/// to a's backend client `portal`, e.g. its webhook).
pub fn start_full(
    register: &Register,
    portal_lines: &str,
    b_extra: &str,
) -> (tempfile::TempDir, Node, Node) {
    start_full_via(register, portal_lines, b_extra, None, None)
}

/// Edits b's configuration text before b starts (e.g. another key).
pub type ConfigEdit = fn(String) -> String;

/// Like [`start_full`]; with `via` = (port in a's PModes, b's own port), a proxy or tap
/// listening on the first forwards to b on the second; `edit_b` changes b's
/// configuration file before it starts.
pub fn start_full_via(
    register: &Register,
    portal_lines: &str,
    b_extra: &str,
    via: Option<(u16, u16)>,
    edit_b: Option<ConfigEdit>,
) -> (tempfile::TempDir, Node, Node) {
    let extra = gateway_lines(register);
    start_pair_via(
        &format!("{portal_lines}{extra}"),
        &format!("{extra}{b_extra}"),
        via,
        edit_b,
    )
}

/// The configuration lines both gateways of the OOTS tests share: fast sending, the OOTS
/// gateway in both roles, and b's connectors pointing at `register` (`EV-DOWN` at a
/// closed port).
pub fn gateway_lines(register: &Register) -> String {
    let closed = pair_support::free_port();
    format!(
        "{FAST}\
         [oots]\nrole = \"both\"\nrequest_timeout_secs = 60\n\
         codelists = \"{codelists}\"\n\
         [[oots.connectors]]\nevidence_type = \"EV-OK\"\nurl = \"{ok}\"\ntimeout_secs = 10\n\
         [[oots.connectors]]\nevidence_type = \"EV-NONE\"\nurl = \"{none}\"\n\
         [[oots.connectors]]\nevidence_type = \"EV-REFUSE\"\nurl = \"{refuse}\"\n\
         [[oots.connectors]]\nevidence_type = \"EV-SLOW\"\nurl = \"{slow}\"\ntimeout_secs = 1\nretries = 1\nretry_delay_ms = 100\n\
         [[oots.connectors]]\nevidence_type = \"EV-SLOWER\"\nurl = \"{slower}\"\ntimeout_secs = 20\nretries = 0\n\
         [[oots.connectors]]\nevidence_type = \"EV-DOWN\"\nurl = \"http://127.0.0.1:{closed}/x\"\ntimeout_secs = 2\nretries = 1\nretry_delay_ms = 100\n",
        codelists = codelists_dir(),
        ok = register.url("/ok"),
        none = register.url("/none"),
        refuse = register.url("/refuse"),
        slow = register.url("/slow"),
        slower = register.url("/slower"),
    )
}

/// varti-b's preview space on `listen`, TLS, with links under `https://localhost:{front}`
/// (its own port, or a front door before several instances: a link must work whichever
/// instance answers it), the
/// built-in test identity provider, and the connector `EV-PREVIEW` that needs the
/// citizen's preview. Every instance holds the same evidence key.
pub fn preview_lines(register: &Register, listen: std::net::SocketAddr, front: u16) -> String {
    format!(
        "[[oots.connectors]]\nevidence_type = \"EV-PREVIEW\"\nurl = \"{ok}\"\npreview = true\n{space}",
        ok = register.url("/ok"),
        space = preview_section(listen, front, ""),
    )
}

/// The `[preview]` section of [`preview_lines`] alone, with `extra` lines (keys of
/// `[preview]`, such as `link_ttl_secs`) after its own keys.
pub fn preview_section(listen: std::net::SocketAddr, front: u16, extra: &str) -> String {
    format!(
        r#"[preview]
enabled = true
evidence_key_file = "{key}"
listen = "{listen}"
public_url = "https://localhost:{front}"
tls = true
{extra}[preview.oidc]
ca_file = "../certs/ca.cert.pem"
[preview.test_idp]
enabled = true
[[preview.test_idp.persons]]
identifier = "DK/LV/010190-1234"
given_name = "Ida"
family_name = "Jensen"
birth_date = "1990-01-01"
"#,
        key = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/oots_support/preview-evidence.key"
        ),
    )
}

/// Starts varti-a and varti-b with these lines appended to their configurations (right
/// after their backend client `portal`, so leading keys belong to that client).
pub fn start_pair(extra_a: &str, extra_b: &str) -> (tempfile::TempDir, Node, Node) {
    start_pair_via(extra_a, extra_b, None, None)
}

/// Like [`start_pair`], with b behind a proxy as [`start_full_via`] says.
pub fn start_pair_via(
    extra_a: &str,
    extra_b: &str,
    via: Option<(u16, u16)>,
    edit_b: Option<ConfigEdit>,
) -> (tempfile::TempDir, Node, Node) {
    let root = tempfile::tempdir().unwrap();
    let options = varti::pair::PairOptions {
        extra_pmodes: Vec::new(),
        b_endpoint_port: via.map(|(endpoint, _)| endpoint),
        extra_config: extra_a.to_owned(),
    };
    let mut layout = varti::pair::PairLayout::create(root.path(), &repo(), &options).unwrap();
    if let Some((_, own)) = via {
        layout.b.ports.msh = own;
    }
    layout.rewrite_config(&layout.b, extra_b).unwrap();
    if let Some(edit) = edit_b {
        let file = layout.b.dir.join("varti.toml");
        let text = std::fs::read_to_string(&file).unwrap();
        std::fs::write(&file, edit(text)).unwrap();
    }
    let node = |l: &varti::pair::NodeLayout| Node {
        served: serve_support::spawn_serve_in(&l.dir, &["--config", "varti.toml"]),
        backend: l.backend(),
        token: l.token.clone(),
        dir: l.dir.clone(),
    };
    let a = node(&layout.a);
    let b = node(&layout.b);
    (root, a, b)
}

/// A directory of the official EDM 1.0 artefacts (`codelists`, `sch`), read in place from
/// the shared specs (`VARTI_SPECS`); a loud warning when missing, a failure under CI.
pub fn edm_dir(sub: &str) -> std::path::PathBuf {
    let specs = std::env::var("VARTI_SPECS")
        .unwrap_or_else(|_| repo().join("../shared/specs").display().to_string());
    let dir = std::path::Path::new(&specs).join("oots-edm-v1").join(sub);
    if !dir.is_dir() {
        assert!(
            std::env::var_os("CI").is_none(),
            "OOTS {sub} missing at {}",
            dir.display()
        );
        eprintln!(
            "\n!!!!!!!! WARNING: no OOTS {sub} at {}; not checked !!!!!!!!\n",
            dir.display()
        );
    }
    dir
}

/// The OOTS code lists.
pub fn codelists_dir() -> String {
    edm_dir("codelists").display().to_string()
}

/// The portal's request data for evidence type `evidence_type`.
pub fn request_body(evidence_type: &str, eidas_id: &str) -> Value {
    json!({
        "provider_party": "varti-b",
        "procedure": "T1",
        "requirements": [{"identifier": "https://sr.oots.tech.ec.europa.eu/requirements/315cfd75-6605-49c4-b0fe-799833b41099", "name": "Proof of birth"}],
        "evidence_type": {
            "identifier": evidence_type,
            "classification": "https://sr.oots.tech.ec.europa.eu/evidencetypeclassifications/LV/9a1e7f3c-0d6b-4e59-b8f5-0d8f6c1e2a33",
            "title": "Certificate of Birth",
            "format": "application/pdf"
        },
        "requester": {"identifier": {"scheme": "urn:cef.eu:names:identifier:EAS:0096", "value": "DK22233223"}, "name": "Danish portal", "country": "DK"},
        "provider": {"identifier": {"scheme": "urn:cef.eu:names:identifier:EAS:9939", "value": "LV90000011588"}, "name": "Latvian register", "country": "LV"},
        "natural_person": {"identifier": eidas_id, "family_name": "Jensen", "given_name": "Ida", "date_of_birth": "1990-01-01", "level_of_assurance": "High"},
        "preview": false
    })
}

pub fn post_request(a: &Node, body: &Value) -> Value {
    let r = a.api(
        "POST",
        "/api/v1/oots/requests",
        Some("application/json"),
        body.to_string().as_bytes(),
    );
    assert_eq!(r.status, 202, "{} {}", r.head, r.body);
    serde_json::from_str(&r.body).unwrap()
}

pub fn get_request(a: &Node, id: &str) -> Value {
    get_request_as(a, &a.token, id)
}

pub fn get_request_as(a: &Node, token: &str, id: &str) -> Value {
    let r = a.api_as(
        token,
        "GET",
        &format!("/api/v1/oots/requests/{id}"),
        None,
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.body);
    serde_json::from_str(&r.body).unwrap()
}

/// Waits until the request leaves `sent`.
pub fn settled(a: &Node, b: &Node, id: &str, within: Duration) -> Value {
    settled_as(a, b, &a.token, id, within)
}

pub fn settled_as(a: &Node, b: &Node, token: &str, id: &str, within: Duration) -> Value {
    let start = Instant::now();
    loop {
        let v = get_request_as(a, token, id);
        if v["state"] != "sent" {
            return v;
        }
        assert!(
            start.elapsed() < within,
            "request {id} still sent after {within:?}: {v:#}\n--- a:\n{}\n--- b:\n{}",
            a.served.log_text(),
            b.served.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn expect_error(v: &Value, code: &str, exception_type: &str) {
    assert_eq!(v["state"], "error", "{v:#}");
    assert_eq!(v["error"]["code"], code, "{v:#}");
    assert_eq!(v["error"]["exception_type"], exception_type, "{v:#}");
    assert!(v["evidences"].as_array().unwrap().is_empty(), "{v:#}");
}
