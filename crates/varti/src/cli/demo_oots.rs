//! The OOTS scene of `varti demo`: a French procedure portal behind varti-a asks a Finnish
//! evidence provider behind varti-b for a PDF evidence.
//!
//! 6. the common-services stand-in starts (`varti oots standin`, the recorded French
//!    answers);
//! 7. the portal's look-ups: requirements of the procedure in France → evidence types
//!    proving it in Finland → the data service delivering it (`varti oots lookup`);
//! 8. the portal sends the evidence request through varti-a (`varti oots request send`):
//!    EDM over AS4 to varti-b, whose data service connector calls a small fake register
//!    (this module), and the response comes back with the PDF as an attachment;
//! 9. the portal downloads the evidence (`varti oots request evidence`).
//!
//! With `--preview` the provider needs the citizen's preview first: its first answer is
//! PreviewRequired with a link to varti-b's preview space; the portal sends the second
//! request (`varti oots request preview-return`) and the citizen logs in at the built-in
//! test identity provider and approves in a browser; only then does the evidence come.
//!
//! The stand-in needs the published sample answers (`--vectors`, `--specs`); without them
//! the scene says so and is left out.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};
use varti::pair::{NodeLayout, PairLayout};

use super::demo::{path, step, with_api};

/// The requirement, evidence type and country the recorded French answers lead to.
const PROCEDURE: &str = "00";
const PORTAL_COUNTRY: &str = "FR";
const PROVIDER_COUNTRY: &str = "FI";
/// The evidence type classification the stand-in's Finnish answers name; varti-b's
/// connector serves it.
pub const EVIDENCE_CLASSIFICATION: &str =
    "https://sr.acc.oots.tech.ec.europa.eu/evidencetypeclassifications/FI/19f0783e-7cdc-4146-9ff9-e331514ffb74";

/// Where the scene's inputs are.
#[derive(Debug, Clone)]
pub struct SceneInputs {
    /// The interop vectors (France's recorded common-services answers).
    pub vectors: PathBuf,
    /// The specs (EDM 1.0 examples, code lists).
    pub specs: PathBuf,
}

impl SceneInputs {
    /// The inputs when both directories are there, else why not.
    pub fn find(vectors: &Path, specs: &Path) -> Result<SceneInputs, String> {
        for (dir, marker, what) in [
            (
                vectors,
                "oots-france/common_services",
                "--vectors / VARTI_VECTORS",
            ),
            (specs, "oots-edm-v1", "--specs / VARTI_SPECS"),
        ] {
            if !dir.join(marker).is_dir() {
                return Err(format!(
                    "{} has no {marker}; point {what} at the shared directory",
                    dir.display()
                ));
            }
        }
        Ok(SceneInputs {
            vectors: vectors.to_owned(),
            specs: specs.to_owned(),
        })
    }

    /// The `[oots]` configuration both access points get: both roles, varti-b's
    /// connector for the Finnish evidence type at `register_url`.
    pub fn config(&self, register_url: &str) -> String {
        self.config_with(register_url, false)
    }

    /// As [`SceneInputs::config`]; `preview`: the connector needs the citizen's preview.
    pub fn config_with(&self, register_url: &str, preview: bool) -> String {
        format!(
            "[oots]\nrole = \"both\"\nrequest_timeout_secs = 120\ncodelists = \"{}\"\n\
             [[oots.connectors]]\nevidence_type = \"{EVIDENCE_CLASSIFICATION}\"\nurl = \"{register_url}\"\n\
             timeout_secs = 10\npreview = {preview}\n",
            self.specs.join("oots-edm-v1/codelists").display()
        )
    }
}

/// The citizen of the scene (the test identity provider's only person).
const CITIZEN: (&str, &str, &str, &str) = ("FR/FI/123456789", "Camille", "Martin", "1995-04-12");

/// varti-b's preview space for `--preview`: HTTPS on `port` with the test PKI, the test
/// identity provider knowing the scene's citizen, and the evidence type's connector
/// needing preview.
pub fn preview_config(port: u16, ca: &Path, key: &Path) -> String {
    let (id, given, family, birth) = CITIZEN;
    format!(
        "[preview]\nenabled = true\nevidence_key_file = \"{key}\"\nlisten = \"127.0.0.1:{port}\"\npublic_url = \"https://localhost:{port}\"\ntls = true\n\
         [preview.oidc]\nca_file = \"{ca}\"\n\
         [preview.test_idp]\nenabled = true\n\
         [[preview.test_idp.persons]]\nidentifier = \"{id}\"\ngiven_name = \"{given}\"\nfamily_name = \"{family}\"\nbirth_date = \"{birth}\"\n",
        ca = ca.display(),
        key = key.display()
    )
}

/// The fake national register: answers every connector call with one PDF evidence and
/// remembers whom it was asked about.
pub struct FakeRegister {
    /// `http://127.0.0.1:PORT/register`.
    pub url: String,
    asked: Arc<Mutex<Vec<Value>>>,
}

impl FakeRegister {
    /// Starts it on a free loopback port (a thread per call; it lives as long as the demo).
    pub fn start() -> std::io::Result<FakeRegister> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let url = format!("http://{}/register", listener.local_addr()?);
        let asked = Arc::new(Mutex::new(Vec::new()));
        let log = asked.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let log = log.clone();
                std::thread::spawn(move || {
                    if let Some(request) = answer(conn) {
                        log.lock().unwrap_or_else(|p| p.into_inner()).push(request);
                    }
                });
            }
        });
        Ok(FakeRegister { url, asked })
    }

    /// The connector requests it has answered.
    pub fn asked(&self) -> Vec<Value> {
        self.asked.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Reads one connector request (JSON) and answers with the evidence.
fn answer(mut conn: TcpStream) -> Option<Value> {
    let _ = conn.set_read_timeout(Some(std::time::Duration::from_secs(10)));
    let mut reader = BufReader::new(conn.try_clone().ok()?);
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().ok()?;
            }
        }
    }
    let mut body = vec![0u8; length.min(1 << 20)];
    reader.read_exact(&mut body).ok()?;
    let request: Value = serde_json::from_slice(&body).ok()?;
    let boundary = "varti-demo-register";
    let mut out = Vec::new();
    out.extend_from_slice(format!("--{boundary}\r\nContent-Disposition: form-data; name=\"metadata\"\r\nContent-Type: application/json\r\n\r\n").as_bytes());
    out.extend_from_slice(
        json!({"evidences": [{"part": "diploma", "title": "Diploma (demo)", "issuing_date": "2024-06-14"}]})
            .to_string()
            .as_bytes(),
    );
    out.extend_from_slice(format!("\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"diploma\"; filename=\"diploma.pdf\"\r\nContent-Type: application/pdf\r\n\r\n").as_bytes());
    out.extend_from_slice(&evidence_pdf());
    out.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        out.len()
    );
    conn.write_all(head.as_bytes()).ok()?;
    conn.write_all(&out).ok()?;
    Some(request)
}

/// A one-page PDF saying what it is (viewable in any PDF reader).
pub fn evidence_pdf() -> Vec<u8> {
    let text =
        "BT /F1 18 Tf 72 720 Td (Varti demo evidence: a diploma from the fake register) Tj ET";
    let objects = [
        "<< /Type /Catalog /Pages 2 0 R >>".to_owned(),
        "<< /Type /Pages /Kids [3 0 R] /Count 1 >>".to_owned(),
        "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R /Resources << /Font << /F1 5 0 R >> >> >>".to_owned(),
        format!("<< /Length {} >>\nstream\n{text}\nendstream", text.len()),
        "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>".to_owned(),
    ];
    let mut pdf = b"%PDF-1.4\n".to_vec();
    let mut offsets = Vec::new();
    for (n, o) in objects.iter().enumerate() {
        offsets.push(pdf.len());
        pdf.extend_from_slice(format!("{} 0 obj\n{o}\nendobj\n", n + 1).as_bytes());
    }
    let xref = pdf.len();
    pdf.extend_from_slice(
        format!("xref\n0 {}\n0000000000 65535 f \n", objects.len() + 1).as_bytes(),
    );
    for off in offsets {
        pdf.extend_from_slice(format!("{off:010} 00000 n \n").as_bytes());
    }
    pdf.extend_from_slice(
        format!(
            "trailer\n<< /Size {} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n",
            objects.len() + 1
        )
        .as_bytes(),
    );
    pdf
}

/// The common-services stand-in, stopped when dropped.
struct StandIn {
    child: Child,
    base: String,
}

impl Drop for StandIn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_standin(binary: &Path, inputs: &SceneInputs) -> Result<StandIn, String> {
    println!(
        "\n6. start the common-services stand-in (a test double replaying the EC's recorded answers)\n  $ varti oots standin --listen 127.0.0.1:0"
    );
    let mut child = Command::new(binary)
        .args(["oots", "standin", "--listen", "127.0.0.1:0", "--vectors"])
        .arg(&inputs.vectors)
        .arg("--specs")
        .arg(&inputs.specs)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("cannot start the stand-in: {e}"))?;
    let mut first = String::new();
    let read = child
        .stdout
        .take()
        .map(|out| BufReader::new(out).read_line(&mut first));
    let base = first
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .map(str::to_owned);
    match (read, base) {
        (Some(Ok(_)), Some(base)) => {
            println!("    {}", first.trim_end());
            Ok(StandIn { child, base })
        }
        _ => {
            let _ = child.kill();
            let _ = child.wait();
            Err("6. the stand-in did not start (see above)".into())
        }
    }
}

/// Runs `varti oots lookup … --json` as a step and returns its answer.
fn lookup(
    binary: &Path,
    cwd: &Path,
    title: &str,
    base: &str,
    query: &[&str],
) -> Result<Value, String> {
    let mut args = vec![
        "oots",
        "lookup",
        "--base",
        base,
        "--insecure-http",
        "--json",
    ];
    args.extend_from_slice(query);
    let out = step(title, binary, cwd, &args)?;
    serde_json::from_str(out.trim()).map_err(|e| format!("{title}: not JSON ({e})"))
}

/// The scene; `Err` names the step that failed.
pub fn run(
    binary: &Path,
    layout: &PairLayout,
    inputs: &SceneInputs,
    register: &FakeRegister,
    preview_port: Option<u16>,
) -> Result<(), String> {
    let a = &layout.a;
    println!("\n--- OOTS: a French procedure portal (behind varti-a) asks a Finnish evidence provider (behind varti-b) ---");
    let standin = start_standin(binary, inputs)?;
    let requirements = lookup(
        binary,
        &a.dir,
        "7a. the portal asks the Evidence Broker which requirements the procedure has in France",
        &standin.base,
        &[
            "requirements",
            "--procedure",
            PROCEDURE,
            "--country",
            PORTAL_COUNTRY,
        ],
    )?;
    let requirement = requirements["items"][0]["identifier"]
        .as_str()
        .ok_or("7a. the Evidence Broker named no requirement")?
        .to_owned();
    let types = lookup(
        binary,
        &a.dir,
        "7b. … which evidence types prove that requirement in Finland",
        &standin.base,
        &[
            "evidence-types",
            "--requirement",
            &requirement,
            "--country",
            PROVIDER_COUNTRY,
        ],
    )?;
    let classification = types["items"][0]["evidence_types"][0]["classification"]
        .as_str()
        .ok_or("7b. the Evidence Broker named no evidence type")?
        .to_owned();
    let services = lookup(
        binary,
        &a.dir,
        "7c. the portal asks the Data Service Directory who delivers that evidence type",
        &standin.base,
        &[
            "data-services",
            "--evidence-type",
            &classification,
            "--country",
            PROVIDER_COUNTRY,
        ],
    )?;
    let service = &services["items"][0];
    let provider = &service["data_services"][0]["provider"];
    if classification != EVIDENCE_CLASSIFICATION || provider.is_null() {
        return Err(format!(
            "7c. the look-ups led to {classification}, not the evidence type varti-b serves"
        ));
    }
    println!(
        "    → {} from {} ({}); in this demo varti-b is its access point",
        service["title"].as_str().unwrap_or_default(),
        provider["name"].as_str().unwrap_or_default(),
        provider["id"].as_str().unwrap_or_default()
    );

    let request = json!({
        "provider_party": "varti-b",
        "procedure": "T1",
        "requirements": [{"identifier": requirement, "name": requirements["items"][0]["name"]}],
        "evidence_type": {
            "identifier": service["identifier"],
            "classification": classification,
            "title": service["title"],
            "format": "application/pdf"
        },
        "requester": {"identifier": {"scheme": "urn:cef.eu:names:identifier:EAS:0009", "value": "13000201100010"}, "name": "Portail démarches (demo)", "country": PORTAL_COUNTRY},
        "provider": {"identifier": {"scheme": "urn:cef.eu:names:identifier:EAS:0037", "value": "0245437-2"}, "name": provider["name"], "country": PROVIDER_COUNTRY},
        "natural_person": {"identifier": CITIZEN.0, "given_name": CITIZEN.1, "family_name": CITIZEN.2, "date_of_birth": CITIZEN.3, "level_of_assurance": "High"},
        "preview": preview_port.is_some()
    });
    let files = layout.root.join("files");
    std::fs::create_dir_all(&files).map_err(|e| e.to_string())?;
    let request_file = files.join("portal-request.json");
    std::fs::write(
        &request_file,
        serde_json::to_string_pretty(&request).unwrap_or_default(),
    )
    .map_err(|e| e.to_string())?;
    let sent = request_step(
        "8. the portal sends the evidence request through varti-a (EDM over AS4 to varti-b, whose connector asks the fake register)",
        binary,
        a,
        &["oots", "request", "send", path(&request_file), "--wait", "90"],
    )?;
    let id = sent["id"].as_str().ok_or("8. no request id")?.to_owned();
    let sent = match preview_port {
        Some(_) => preview(binary, a, &sent, &id)?,
        None => sent,
    };
    if sent["state"] != "answered" || sent["evidences"].as_array().is_none_or(Vec::is_empty) {
        return Err(format!(
            "8. the request ended `{}` without evidence",
            sent["state"]
        ));
    }
    if register.asked().is_empty() {
        return Err("8. the fake register was never asked".into());
    }
    let evidence = files.join("evidence.pdf");
    step(
        "9. the portal downloads the evidence from varti-a",
        binary,
        &a.dir,
        &with_api(
            a,
            &[
                "oots",
                "request",
                "evidence",
                &id,
                "0",
                "--out",
                path(&evidence),
            ],
        ),
    )?;
    let got = std::fs::read(&evidence).map_err(|e| format!("9. {e}"))?;
    if got != evidence_pdf() {
        return Err("9. the downloaded evidence is not the register's PDF".into());
    }
    Ok(())
}

/// The preview steps: the provider answered PreviewRequired; the portal sends the second
/// request, the citizen decides in the browser, and the answer comes.
fn preview(binary: &Path, a: &NodeLayout, first: &Value, id: &str) -> Result<Value, String> {
    let link = match (first["state"].as_str(), first["preview_location"].as_str()) {
        (Some("preview_required"), Some(link)) => link.to_owned(),
        _ => {
            return Err(format!(
                "8. the provider did not ask for preview: the request is `{}`",
                first["state"]
            ))
        }
    };
    request_step(
        "8b. the portal sends the citizen to the preview, and the second request of the exchange through varti-a",
        binary,
        a,
        &["oots", "request", "preview-return", id],
    )?;
    let (_, given, family, _) = CITIZEN;
    println!(
        "\n8c. the citizen previews the evidence in varti-b's preview space. Open\n\n      {link}\n\n    in a browser (its certificate is from the demo's test CA: accept it), log in at the\n    test identity provider as {given} {family}, and approve (or cancel). Waiting up to 10 minutes…"
    );
    request_step(
        "8d. the provider answers the second request after the citizen's decision",
        binary,
        a,
        &["oots", "request", "show", id, "--wait", "600"],
    )
}

/// Runs an `oots request` command with `--json` as a step and returns its answer.
fn request_step(
    title: &str,
    binary: &Path,
    node: &NodeLayout,
    args: &[&str],
) -> Result<Value, String> {
    let mut args = with_api(node, args);
    args.push("--json".into());
    let out = step(title, binary, &node.dir, &args)?;
    serde_json::from_str(out.trim()).map_err(|e| format!("{title}: not JSON ({e})"))
}
