//! EDM build + validate benchmark: how many evidence requests and responses per second Varti
//! builds from plain data ([`varti_oots::flow`]) and checks the way a provider checks what
//! it receives (own model with the code lists, official XSD, official Schematron files).
//!
//! ```text
//! cargo run --release -p varti-oots --example edm_bench            # 5 s per figure
//! cargo run --release -p varti-oots --example edm_bench -- --secs 10
//! ```
//!
//! The official artefacts are read in place from `$VARTI_SPECS` (default
//! `../shared/specs` beside the repository): `oots-edm-v1/{codelists,xsd,sch}`. They
//! describe EDM 1.0, so the XSD and Schematron figures are for EDM 1.0 documents; EDM 2.0
//! documents are measured against the model (with the code lists) only.
//!
//! Each figure is the number of operations done in `--secs` seconds on one thread (after
//! one warm-up second), divided by the elapsed time; the mean time per operation is its
//! inverse. "Build" is building the document and serialising it to XML; each validation
//! step parses the XML bytes itself, as it does on a received message. At the end the
//! markdown rows of `docs/benchmarks.md` are printed.
//!
//! For the EDM 1.0 request and response it also runs Saxon (PyPI `saxonche`, the test
//! oracle: `tests/schematron_oracle.py --bench`) on the very same bytes with the same rule
//! files, and prints `schematron vs saxon: varti X/s saxon Y/s` (the response's line says
//! `(response)`). Both sides compile the rules once and time parse + validate only; Saxon
//! reports the failed assertions, Varti its full findings with messages. Without python3
//! and saxonche the line says `SAXON MISSING`.

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use varti_oots::edm::{EdmDocument, EdmVersion};
use varti_oots::flow::{self, EvidenceData, RequestData};
use varti_oots::validate::codelist::CodeLists;
use varti_oots::validate::model::ModelValidator;
use varti_oots::validate::schematron::{DocumentKind, RuleDir};
use varti_oots::validate::xsd::XsdValidator;
use varti_oots::validate::{has_fatal, Finding};

/// The request data a portal sends (a natural person, one requirement, a PDF asked for),
/// with the identifier forms the EDM 1.0 rules demand (a DSD UUID, Semantic Repository
/// URLs on `sr.oots.tech.europa.eu`, an eIDAS identifier with nine characters after the
/// countries).
fn request_data(version: EdmVersion) -> RequestData {
    let sr = if version.is_v1() {
        "https://sr.oots.tech.europa.eu"
    } else {
        "https://sr.oots.tech.ec.europa.eu"
    };
    serde_json::from_value(serde_json::json!({
        "edm_version": version.identifier(),
        "procedure": "T1",
        "requirements": [{"identifier": format!("{sr}/requirements/315cfd75-6605-49c4-b0fe-799833b41099"), "name": "Proof of birth"}],
        "evidence_type": {
            "identifier": "0a6c1d9e-4b8f-4e27-9d35-7c2f8e1b6a40",
            "classification": format!("{sr}/evidencetypeclassifications/LV/9a1e7f3c-0d6b-4e59-b8f5-0d8f6c1e2a33"),
            "title": "Certificate of Birth",
            "format": "application/pdf"
        },
        "requester": {"identifier": {"scheme": "urn:cef.eu:names:identifier:EAS:0096", "value": "DK22233223"}, "name": "Danish portal", "country": "DK"},
        "provider": {"identifier": {"scheme": "urn:cef.eu:names:identifier:EAS:9939", "value": "LV90000011588"}, "name": "Latvian register", "country": "LV"},
        "natural_person": {"identifier": "DK/LV/0101901234", "family_name": "Jensen", "given_name": "Ida", "date_of_birth": "1990-01-01"}
    }))
    .expect("the bench's request data is valid")
}

fn build_request_xml(version: EdmVersion) -> String {
    let r = flow::build_request(&request_data(version)).expect("the request builds");
    EdmDocument::Request(r).to_xml()
}

fn build_response_xml(version: EdmVersion) -> String {
    let r = flow::build_request(&request_data(version)).expect("the request builds");
    let provider = r
        .evidence_provider()
        .expect("the request names its provider");
    let resp = flow::build_response(
        &r,
        &provider,
        &[EvidenceData {
            content_id: "ev1@varti".into(),
            mime_type: "application/pdf".into(),
            title: Some("Birth certificate".into()),
            issuing_date: Some("2001-02-03".into()),
        }],
    );
    EdmDocument::Response(resp).to_xml()
}

/// The validators of a provider: the model always, XSD and Schematron for EDM 1.0.
struct Validators {
    model: ModelValidator,
    xsd: XsdValidator,
    rules: RuleDir,
}

impl Validators {
    fn model(&self, xml: &str) -> Vec<Finding> {
        self.model.validate_bytes(xml.as_bytes())
    }

    fn full(&mut self, xml: &str) -> Vec<Finding> {
        let mut f = self.model(xml);
        f.extend(self.xsd.validate(xml.as_bytes()));
        f.extend(self.rules.validate(xml).expect("the rules run"));
        f
    }
}

/// Runs `op` for `secs` seconds (after one warm-up second): operations per second, and
/// the process CPU milliseconds per operation (where `/proc` tells).
fn rate(secs: u64, mut op: impl FnMut()) -> (f64, Option<f64>) {
    let warm = Instant::now();
    while warm.elapsed() < Duration::from_secs(1) {
        op();
    }
    let cpu = process_cpu_seconds();
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < Duration::from_secs(secs) {
        op();
        n += 1;
    }
    let per_sec = n as f64 / start.elapsed().as_secs_f64();
    let cpu_ms = cpu
        .zip(process_cpu_seconds())
        .map(|(a, b)| 1000.0 * (b - a) / n as f64);
    (per_sec, cpu_ms)
}

fn specs() -> PathBuf {
    let dir = std::env::var_os("VARTI_SPECS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/specs"));
    assert!(
        dir.join("oots-edm-v1/sch").is_dir(),
        "the OOTS specs are not at {}: set VARTI_SPECS to the directory holding oots-edm-v1/",
        dir.display()
    );
    dir
}

fn main() {
    let mut secs = 5u64;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--secs" => {
                secs = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--secs wants a number of seconds")
            }
            other => panic!(
                "unknown option '{other}' (see the top of crates/oots/examples/edm_bench.rs)"
            ),
        }
    }
    let specs = specs();
    let edm = specs.join("oots-edm-v1");
    let mut v = Validators {
        model: ModelValidator::new(
            CodeLists::load_dir(&edm.join("codelists")).expect("the code lists load"),
        ),
        xsd: XsdValidator::load(&edm.join("xsd")).expect("the schemas compile"),
        rules: RuleDir::load(&edm.join("sch")).expect("the rule files compile"),
    };
    println!(
        "{} cores, {}; {secs} s per figure, one thread",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_model()
    );

    let mut rows = Vec::new();
    type Build = fn(EdmVersion) -> String;
    let docs: [(&str, Build); 2] = [
        ("request", build_request_xml),
        ("response", build_response_xml),
    ];
    for version in [EdmVersion::V1_0, EdmVersion::V2_0] {
        for (what, build) in docs {
            let sample = build(version);
            // The bench measures the acceptance path: what is built must pass.
            let findings = if version.is_v1() {
                v.full(&sample)
            } else {
                v.model(&sample)
            };
            assert!(
                !has_fatal(&findings),
                "the built {what} ({}) does not pass: {findings:?}",
                version.identifier()
            );
            let (built, _) = rate(secs, || {
                black_box(build(version));
            });
            let (model, _) = rate(secs, || {
                black_box(v.model(&sample));
            });
            let full = if version.is_v1() {
                let (xsd, _) = rate(secs, || {
                    black_box(v.xsd.validate(sample.as_bytes()));
                });
                let (sch, cpu_ms) = rate(secs, || {
                    black_box(v.rules.validate(&sample).unwrap());
                });
                println!(
                    "{}",
                    saxon_line(&edm.join("sch"), &v.rules, what, &sample, secs, sch, cpu_ms)
                );
                let (both, _) = rate(secs, || {
                    let xml = build(version);
                    black_box(v.full(&xml));
                });
                Some((xsd, sch, both))
            } else {
                None
            };
            let (built_model, _) = rate(secs, || {
                let xml = build(version);
                black_box(v.model(&xml));
            });
            let row = Row {
                what,
                version: version.identifier(),
                bytes: sample.len(),
                built,
                model,
                full,
                built_model,
            };
            println!("{row:?}");
            rows.push(row);
        }
    }

    println!("\n---- markdown ----\n");
    println!("| Document | EDM | bytes | build /s | model /s | XSD /s | Schematron /s | build + model /s | build + model + XSD + Schematron /s (ms each) |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for r in &rows {
        let (xsd, sch, full) = match r.full {
            Some((x, s, f)) => (
                format!("{x:.0}"),
                format!("{s:.0}"),
                format!("{f:.0} ({:.2})", 1000.0 / f),
            ),
            None => (
                "n/a".into(),
                "n/a".into(),
                "n/a (no official 2.0 artefacts)".into(),
            ),
        };
        println!(
            "| {} | {} | {} | {:.0} | {:.0} | {xsd} | {sch} | {:.0} | {full} |",
            r.what, r.version, r.bytes, r.built, r.model, r.built_model
        );
    }
}

#[derive(Debug)]
struct Row {
    what: &'static str,
    version: &'static str,
    bytes: usize,
    built: f64,
    model: f64,
    /// (XSD, Schematron, build + all three) per second, EDM 1.0 only.
    full: Option<(f64, f64, f64)>,
    built_model: f64,
}

/// Runs Saxon on the same document with the same rule files (see the module comment) and
/// words the comparison line.
fn saxon_line(
    sch_dir: &Path,
    rules: &RuleDir,
    what: &str,
    xml: &str,
    secs: u64,
    varti: f64,
    varti_cpu_ms: Option<f64>,
) -> String {
    let label = if what == "request" {
        "schematron vs saxon:".to_string()
    } else {
        format!("schematron vs saxon ({what}):")
    };
    let kind = DocumentKind::detect(xml).expect("the built document has a known kind");
    let files: Vec<PathBuf> = rules
        .applicable(kind)
        .iter()
        .map(|s| sch_dir.join(format!("{}.sch", s.name())))
        .collect();
    let doc = std::env::temp_dir().join(format!("edm_bench-{}-{what}.xml", std::process::id()));
    std::fs::write(&doc, xml).expect("writing the document for Saxon");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/schematron_oracle.py");
    let out = Command::new("python3")
        .arg(script)
        .arg("--bench")
        .arg(secs.to_string())
        .arg(&doc)
        .args(&files)
        .output();
    let _ = std::fs::remove_file(&doc);
    let cpu = |ms: Option<f64>| ms.map_or("?".into(), |m| format!("{m:.2}"));
    let saxon = match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).into_owned(),
        Ok(o) => {
            let err = String::from_utf8_lossy(&o.stderr);
            let why = if err.contains("saxonche") {
                "python3 has no saxonche (pip install saxonche)".to_string()
            } else {
                format!("Saxon failed: {}", err.lines().last().unwrap_or(""))
            };
            return format!("{label} varti {varti:.0}/s saxon SAXON MISSING ({why})");
        }
        Err(e) => {
            return format!("{label} varti {varti:.0}/s saxon SAXON MISSING (no python3: {e})")
        }
    };
    let field = |k: &str| {
        saxon
            .split_whitespace()
            .find_map(|f| f.strip_prefix(k))
            .and_then(|v| v.parse::<f64>().ok())
    };
    let Some(rate) = field("rate=") else {
        return format!(
            "{label} varti {varti:.0}/s saxon SAXON MISSING (unexpected output {saxon:?})"
        );
    };
    format!(
        "{label} varti {varti:.0}/s saxon {rate:.0}/s ({} bytes, {} rule files; CPU ms each: \
         varti {}, saxon {})",
        xml.len(),
        files.len(),
        cpu(varti_cpu_ms),
        cpu(field("cpu_ms="))
    )
}

/// The process's CPU time (user + system) so far, from `/proc/self/stat`; `None`
/// elsewhere.
fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The fields after the command name, which is in parentheses.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    // USER_HZ is 100 on every Linux platform Varti runs on.
    Some(ticks / 100.0)
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_else(|| "unknown CPU".into())
}
