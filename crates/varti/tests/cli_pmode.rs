//! `varti pmode …` from the command line: exit codes, text and JSON output.

mod common;

use common::vectors;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn varti(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_varti"))
        .args(args)
        .output()
        .expect("running varti")
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn check_passes_on_the_shipped_pmodes() {
    let dir = repo().join("pmodes");
    let out = varti(&["pmode", "check", dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert!(
        stdout(&out).contains("2 parties, 5 legs; 0 error(s), 0 warning(s)"),
        "{}",
        stdout(&out)
    );

    let out = varti(&["pmode", "check", "--json", dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert_eq!(v["ok"], true);
    assert_eq!(v["parties"], 2);
    assert_eq!(v["legs"], 5);
    assert_eq!(v["diagnostics"].as_array().unwrap().len(), 0);

    let out = varti(&["pmode", "show", dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        stdout(&out).contains("oots.toml process 'evidence-exchange' leg 'request'"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn problems_exit_1_with_locations_in_text_and_json() {
    let dir = tempfile::tempdir().unwrap();
    let text = "[[party]]\nname = \"a\"\nids = [{ value = \"a\" }]\nsigning_cert = \"nowhere.pem\"\nflavour = \"x\"\n";
    std::fs::write(dir.path().join("a.toml"), text).unwrap();
    let d = dir.path().to_str().unwrap();

    let out = varti(&["pmode", "check", d]);
    assert_eq!(out.status.code(), Some(1));
    let s = stdout(&out);
    let file = dir.path().join("a.toml");
    assert!(
        s.contains(&format!(
            "{}:5:1: error: unknown key `flavour`\n  hint: ",
            file.display()
        )),
        "{s}"
    );
    assert!(
        s.contains(&format!(
            "{}:4:16: error: certificate file 'nowhere.pem'",
            file.display()
        )),
        "{s}"
    );
    assert!(s.contains("2 error(s)"), "{s}");

    let out = varti(&["pmode", "check", d, "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], false);
    assert_eq!(v["errors"], 2);
    let diags = v["diagnostics"].as_array().unwrap();
    let key = diags
        .iter()
        .find(|x| x["message"] == "unknown key `flavour`")
        .unwrap();
    assert_eq!(
        (key["line"].as_u64(), key["column"].as_u64()),
        (Some(5), Some(1))
    );
    assert_eq!(key["severity"], "error");
    assert!(key["hint"].as_str().unwrap().contains("remove it"));
}

#[test]
fn cannot_run_exits_2() {
    let out = varti(&["pmode", "check", "/nonexistent/pmodes"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a directory"));
    let dir = repo().join("pmodes");
    let out = varti(&["pmode", "check", dir.to_str().unwrap(), "--at", "someday"]);
    assert_eq!(out.status.code(), Some(2));
    let out = varti(&[
        "pmode",
        "import-domibus",
        "/nonexistent.xml",
        "--out",
        "/tmp/x",
    ]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn import_domibus_then_check() {
    let Some(vectors) = vectors() else { return };
    let out_dir = tempfile::tempdir().unwrap();
    let o = out_dir.path().to_str().unwrap();
    std::fs::create_dir(out_dir.path().join("certs")).unwrap();
    for p in ["blue_gw", "red_gw"] {
        std::fs::copy(
            vectors.join(format!("domibus-pmodes/{p}.cert.pem")),
            out_dir.path().join(format!("certs/{p}.cert.pem")),
        )
        .unwrap();
    }
    let xml = vectors.join("domibus-pmodes/domibus-gw-sample-pmode-red.xml");
    let out = varti(&["pmode", "import-domibus", xml.to_str().unwrap(), "--out", o]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout(&out).contains("5 parties, 30 legs"),
        "{}",
        stdout(&out)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("warning: legConfiguration 'pushTestcase33tc33Action': splitting"),
        "{stderr}"
    );

    // A second import into the same directory refuses to overwrite.
    let again = varti(&["pmode", "import-domibus", xml.to_str().unwrap(), "--out", o]);
    assert_eq!(again.status.code(), Some(2));

    // The sample certificates expired on 2025-12-01: an error now, fine before.
    let now = varti(&["pmode", "check", o]);
    assert_eq!(now.status.code(), Some(1));
    assert!(
        stdout(&now).contains("expired on Dec  1"),
        "{}",
        stdout(&now)
    );
    let before = varti(&["pmode", "check", o, "--at", "2025-06-01T00:00:00Z"]);
    assert_eq!(before.status.code(), Some(0), "{}", stdout(&before));

    // A DOCTYPE is refused (exit 1: the input was read and found wrong).
    let evil = out_dir.path().join("evil.xml");
    std::fs::write(
        &evil,
        "<!DOCTYPE x [<!ENTITY e SYSTEM \"file:///etc/passwd\">]><x>&e;</x>",
    )
    .unwrap();
    let out = varti(&[
        "pmode",
        "import-domibus",
        evil.to_str().unwrap(),
        "--out",
        o,
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("DOCTYPE"));
}

/// Every `[kind.name]` profile table header of the files in `dir`, with the file it is in.
fn profile_headers(dir: &Path) -> Vec<(String, String)> {
    let kinds = [
        "security",
        "receipt",
        "reception",
        "errors",
        "compression",
        "payload",
        "properties",
    ];
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let file = path.file_name().unwrap().to_string_lossy().into_owned();
            for line in std::fs::read_to_string(&path).unwrap().lines() {
                let header = line.trim_start_matches('[').split(']').next().unwrap_or("");
                if line.starts_with('[')
                    && !line.starts_with("[[")
                    && kinds.iter().any(|k| header.starts_with(&format!("{k}.")))
                {
                    found.push((header.to_owned(), file.clone()));
                }
            }
        }
    }
    found
}

fn import_with_keystore(xml: &Path, out: &Path, keystore: &Path, pass: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_varti"))
        .args(["pmode", "import-domibus"])
        .arg(xml)
        .arg("--out")
        .arg(out)
        .arg("--keystore")
        .arg(keystore)
        .env("VARTI_STOREPASS", pass)
        .output()
        .expect("running varti")
}

#[test]
fn import_domibus_writes_each_profile_once_and_exports_the_truststore() {
    let Some(vectors) = vectors() else { return };
    let samples = vectors.join("domibus-pmodes");
    for colour in ["blue", "red"] {
        let out_dir = tempfile::tempdir().unwrap();
        let xml = samples.join(format!("domibus-gw-sample-pmode-{colour}.xml"));
        let truststore = samples.join(format!("{colour}_gateway_truststore.jks"));

        // A wrong password is named as such, and nothing is written.
        let wrong = import_with_keystore(&xml, out_dir.path(), &truststore, "nope");
        let err = String::from_utf8_lossy(&wrong.stderr);
        assert_eq!(wrong.status.code(), Some(1), "{err}");
        assert!(err.contains("wrong --storepass"), "{err}");
        assert_eq!(std::fs::read_dir(out_dir.path()).unwrap().count(), 0);

        let out = import_with_keystore(&xml, out_dir.path(), &truststore, "test123");
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        for party in ["blue_gw", "red_gw"] {
            assert!(
                stdout(&out).contains(&format!("exported '{party}'")),
                "{}",
                stdout(&out)
            );
            let pem = std::fs::read(out_dir.path().join(format!("certs/{party}.cert.pem")))
                .expect("the certificate is exported");
            let want = std::fs::read(samples.join(format!("{party}.cert.pem"))).unwrap();
            let (got, want) = (
                openssl::x509::X509::from_pem(&pem).unwrap(),
                openssl::x509::X509::from_pem(&want).unwrap(),
            );
            assert_eq!(got.to_der().unwrap(), want.to_der().unwrap());
        }

        // Each profile is defined exactly once, in the shared file.
        let headers = profile_headers(out_dir.path());
        assert!(headers.len() > 5, "{headers:?}");
        let mut names: Vec<&String> = headers.iter().map(|(h, _)| h).collect();
        names.sort();
        let total = names.len();
        names.dedup();
        assert_eq!(
            names.len(),
            total,
            "a profile is written twice: {headers:?}"
        );
        assert!(
            headers.iter().all(|(_, f)| f == "profiles.toml"),
            "{headers:?}"
        );

        // The exported certificates are referenced: the set checks clean at a time when
        // the sample certificates were valid.
        let o = out_dir.path().to_str().unwrap();
        let check = varti(&["pmode", "check", o, "--at", "2025-06-01T00:00:00Z"]);
        assert_eq!(check.status.code(), Some(0), "{}", stdout(&check));
        let party = std::fs::read_to_string(out_dir.path().join("party-red_gw.toml")).unwrap();
        assert!(
            party.contains("\nsigning_cert = \"certs/red_gw.cert.pem\""),
            "{party}"
        );
    }

    // A PKCS#12 keystore works too; its key entry gives its own certificate only.
    let out_dir = tempfile::tempdir().unwrap();
    let out = import_with_keystore(
        &samples.join("domibus-gw-sample-pmode-blue.xml"),
        out_dir.path(),
        &samples.join("blue_gateway_keystore.p12"),
        "test123",
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out_dir.path().join("certs/blue_gw.cert.pem").is_file());
    assert!(!out_dir.path().join("certs/red_gw.cert.pem").exists());
    let certs: Vec<_> = std::fs::read_dir(out_dir.path().join("certs"))
        .unwrap()
        .collect();
    assert_eq!(certs.len(), 1, "no private key is written");
}

/// A throw-away RSA-1024 certificate signed with SHA-1 by another throw-away key (so the
/// SHA-1 signature is judged too).
fn weak_certificate(path: &Path) {
    use openssl::asn1::Asn1Time;
    use openssl::hash::MessageDigest;
    use openssl::pkey::PKey;
    use openssl::rsa::Rsa;
    use openssl::x509::{X509Name, X509};
    let key = PKey::from_rsa(Rsa::generate(1024).unwrap()).unwrap();
    let issuer_key = PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap();
    let name = |cn: &str| {
        let mut n = X509Name::builder().unwrap();
        n.append_entry_by_text("CN", cn).unwrap();
        n.build()
    };
    let mut b = X509::builder().unwrap();
    b.set_version(2).unwrap();
    b.set_subject_name(&name("weak-partner")).unwrap();
    b.set_issuer_name(&name("old-ca")).unwrap();
    b.set_pubkey(&key).unwrap();
    b.set_not_before(&Asn1Time::days_from_now(0).unwrap())
        .unwrap();
    b.set_not_after(&Asn1Time::days_from_now(365).unwrap())
        .unwrap();
    b.sign(&issuer_key, MessageDigest::sha1()).unwrap();
    std::fs::write(path, b.build().to_pem().unwrap()).unwrap();
}

#[test]
fn a_partner_certificate_with_an_rsa_1024_key_is_an_error_unless_excepted() {
    let dir = tempfile::tempdir().unwrap();
    weak_certificate(&dir.path().join("weak.pem"));
    let file = dir.path().join("partner.toml");
    let party =
        "[[party]]\nname = \"weak\"\nids = [{ value = \"weak\" }]\nsigning_cert = \"weak.pem\"\n";
    std::fs::write(&file, party).unwrap();
    let d = dir.path().to_str().unwrap();

    let out = varti(&["pmode", "check", d]);
    let s = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{s}");
    let line = s
        .lines()
        .find(|l| l.contains("1024 bits"))
        .unwrap_or_else(|| panic!("the key size is named: {s}"));
    assert!(
        line.starts_with(&format!("{}:4:16: error: ", file.display())),
        "the PMode file and the place the certificate is named: {line}"
    );
    assert!(
        line.contains("'weak.pem'") && line.contains("RSA key of 1024 bits"),
        "{line}"
    );
    assert!(
        s.contains("at least 2048 bits") && s.contains("allow_weak_keys"),
        "the fix, and the exception, are in the hint: {s}"
    );

    // The exception, with its reason: warnings (key and SHA-1 signature), exit 0.
    std::fs::write(
        &file,
        format!("{party}allow_weak_keys = \"partner renews by 2027-03\"\n"),
    )
    .unwrap();
    let out = varti(&["pmode", "check", "--json", d]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let diags = v["diagnostics"].as_array().unwrap();
    let weak: Vec<_> = diags
        .iter()
        .filter(|d| d["message"].as_str().unwrap().contains("allow_weak_keys"))
        .collect();
    assert_eq!(weak.len(), 1, "{diags:#?}");
    assert_eq!(weak[0]["severity"], "warning");
    assert!(
        weak[0]["message"]
            .as_str()
            .unwrap()
            .contains("partner renews by 2027-03"),
        "{:#}",
        weak[0]
    );

    // An empty reason is not an exception.
    std::fs::write(&file, format!("{party}allow_weak_keys = \" \"\n")).unwrap();
    let out = varti(&["pmode", "check", d]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(stdout(&out).contains("gives no reason"), "{}", stdout(&out));
}
