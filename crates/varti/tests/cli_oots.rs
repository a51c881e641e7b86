//! `varti oots validate`, run as the built binary against the shared EDM samples (read in
//! place; set VARTI_SPECS / VARTI_VECTORS when not beside the project).

mod common;

use std::path::PathBuf;
use std::process::{Command, Output};

use common::{oots_specs as specs, vectors};

fn varti(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_varti"))
        .args(["oots", "validate"])
        .args(args)
        .output()
        .expect("run varti")
}

fn birth_request(specs: &std::path::Path) -> PathBuf {
    specs.join("oots-edm-v1/xml/Request-Response Samples/4.5.4 - OOTS-EDM XML Examples of the Evidence Exchange/2 Example for requesting a Birth Certificate - natural person/2.1 Step 1  Evidence Request - Birth - full example.xml")
}

#[test]
fn valid_sample_exits_zero_with_schemas_and_codelists() {
    let Some(s) = specs() else { return };
    let out = varti(&[
        birth_request(&s).as_os_str(),
        "--schemas".as_ref(),
        s.join("oots-edm-v1/xsd").as_os_str(),
        "--codelists".as_ref(),
        s.join("oots-edm-v1/codelists").as_os_str(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("evidence request (oots-edm:v1.0)"),
        "{stdout}"
    );
    assert!(stdout.contains("0 fatal"), "{stdout}");
    // The malformed EC code list file is reported as a warning, not hidden.
    assert!(stdout.contains("VARTI-EDM-COM-009"), "{stdout}");
}

#[test]
fn fatal_findings_exit_one_and_are_printed() {
    let Some(s) = specs() else { return };
    let src = std::fs::read_to_string(birth_request(&s)).unwrap();
    let start = src.find("<rim:Slot name=\"Procedure\"").unwrap();
    let end = start + src[start..].find("</rim:Slot>").unwrap() + "</rim:Slot>".len();
    let mutated = format!("{}{}", &src[..start], &src[end..]);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("no-procedure.xml");
    std::fs::write(&file, mutated).unwrap();

    let out = varti(&[file.as_os_str()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("fatal   VARTI-EDM-REQ-003"), "{stdout}");
    assert!(stdout.contains("rim:Slot[@name='Procedure']"), "{stdout}");
    assert!(stdout.contains("INVALID"), "{stdout}");

    let out = varti(&[file.as_os_str(), "--json".as_ref()]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON output");
    assert_eq!(v["valid"], false);
    assert_eq!(v["kind"], "evidence request");
    let f = v["findings"].as_array().unwrap();
    assert!(
        f.iter()
            .any(|x| x["rule_id"] == "VARTI-EDM-REQ-003" && x["severity"] == "fatal"),
        "{v}"
    );
}

#[test]
fn schema_errors_are_reported_with_lines() {
    let (Some(s), Some(v)) = (specs(), vectors()) else {
        return;
    };
    // France's EDM 2.0 request against the EDM 1.0 schema.
    let out = varti(&[
        v.join("oots-france/reference/messages/requete.xml")
            .as_os_str(),
        "--schemas".as_ref(),
        s.join("oots-edm-v1/xsd").as_os_str(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("fatal   XSD") && stdout.contains("line 44"),
        "{stdout}"
    );
}

#[test]
fn warnings_alone_do_not_fail() {
    let Some(s) = specs() else { return };
    // TC02: a successful response without evidence (no match): a warning only.
    let out = varti(&[s
        .join("oots-edm-v1/test-event/TC02_Response.xml")
        .as_os_str()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("warning VARTI-EDM-RESP-007"), "{stdout}");
}

#[test]
fn official_schematron_rules_pass_the_sample_and_catch_a_wrong_code() {
    let Some(s) = specs() else { return };
    let rules = s.join("oots-edm-v1/sch");
    let sample = birth_request(&s);
    let out = varti(&[sample.as_os_str(), "--rules".as_ref(), rules.as_os_str()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("info    R-EDM-REQ-S008"), "{stdout}");

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.xml");
    let text = std::fs::read_to_string(&sample).unwrap();
    assert!(text.contains("oots-edm:v1.0"));
    std::fs::write(&bad, text.replace("oots-edm:v1.0", "oots-edm:v9")).unwrap();
    let out = varti(&[bad.as_os_str(), "--rules".as_ref(), rules.as_os_str()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("fatal   R-EDM-REQ-C001"), "{stdout}");
}

#[test]
fn cannot_run_exits_two() {
    let out = varti(&["/nonexistent/edm.xml".as_ref()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read"));

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("x.xml");
    std::fs::write(&file, "<x/>").unwrap();
    let out = varti(&[file.as_os_str(), "--rules".as_ref(), dir.path().as_os_str()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no Schematron rule files"));

    let out = varti(&[
        file.as_os_str(),
        "--schemas".as_ref(),
        dir.path().as_os_str(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not found"));
}
