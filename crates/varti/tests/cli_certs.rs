//! `varti certs list|check` from the command line: the shipped test PKI passes, and each
//! kind of broken certificate (expired, another CA, wrong keyUsage, a key that is not the
//! certificate's) is reported with exit 1 and the right JSON fields.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use openssl::asn1::{Asn1Integer, Asn1Time};
use openssl::bn::BigNum;
use openssl::hash::MessageDigest;
use openssl::pkey::{PKey, Private};
use openssl::rsa::Rsa;
use openssl::x509::extension::{BasicConstraints, KeyUsage};
use openssl::x509::{X509Name, X509};
use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Runs `varti` in `cwd` (the embedded defaults are relative to the working directory).
fn varti(cwd: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_varti"))
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("running varti")
}

fn text(o: &Output) -> String {
    format!(
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn json(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("JSON on stdout ({e}): {}", text(o)))
}

/// The certificate uses of the shipped setup: ours (signing, encryption, tls, tls-ca,
/// trust-anchor) and, per party varti-a and varti-b, signing, encryption, tls, tls-ca.
const SHIPPED_CERTS: usize = 5 + 2 * 4;

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// A copy of the repository's certs/ and pmodes/, to break.
fn setup() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&repo().join("certs"), &dir.path().join("certs"));
    copy_dir(&repo().join("pmodes"), &dir.path().join("pmodes"));
    dir
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn key() -> PKey<Private> {
    PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap()
}

fn name(cn: &str, ou: &str) -> X509Name {
    let mut n = X509Name::builder().unwrap();
    n.append_entry_by_text("C", "EU").unwrap();
    n.append_entry_by_text("O", "Varti TEST ONLY").unwrap();
    n.append_entry_by_text("OU", ou).unwrap();
    n.append_entry_by_text("CN", cn).unwrap();
    n.build()
}

/// A certificate for `key`, valid from `now + from_days` to `now + until_days`, issued by
/// `issuer` (certificate and key) or self-signed (a CA) when `None`.
fn issue(
    subject: X509Name,
    key: &PKey<Private>,
    usage: KeyUsage,
    from_days: i64,
    until_days: i64,
    issuer: Option<(&X509, &PKey<Private>)>,
) -> X509 {
    let mut b = X509::builder().unwrap();
    b.set_version(2).unwrap();
    let serial = BigNum::from_u32(rand_serial()).unwrap();
    b.set_serial_number(&Asn1Integer::from_bn(&serial).unwrap())
        .unwrap();
    b.set_subject_name(&subject).unwrap();
    match issuer {
        Some((ca, _)) => b.set_issuer_name(ca.subject_name()).unwrap(),
        None => b.set_issuer_name(&subject).unwrap(),
    }
    b.set_pubkey(key).unwrap();
    b.set_not_before(&Asn1Time::from_unix(now() + from_days * 86_400).unwrap())
        .unwrap();
    b.set_not_after(&Asn1Time::from_unix(now() + until_days * 86_400).unwrap())
        .unwrap();
    let mut usage = usage;
    b.append_extension(usage.critical().build().unwrap())
        .unwrap();
    let constraints = if issuer.is_none() {
        BasicConstraints::new().critical().ca().build().unwrap()
    } else {
        BasicConstraints::new().critical().build().unwrap()
    };
    b.append_extension(constraints).unwrap();
    let signer = issuer.map(|(_, k)| k).unwrap_or(key);
    b.sign(signer, MessageDigest::sha256()).unwrap();
    b.build()
}

fn rand_serial() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(50_000);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// The shipped test CA (certificate and key).
fn test_ca(dir: &Path) -> (X509, PKey<Private>) {
    let cert = X509::from_pem(&std::fs::read(dir.join("certs/ca.cert.pem")).unwrap()).unwrap();
    let key =
        PKey::private_key_from_pem(&std::fs::read(dir.join("certs/ca.key.pem")).unwrap()).unwrap();
    (cert, key)
}

fn signing_usage() -> KeyUsage {
    let mut u = KeyUsage::new();
    u.digital_signature().non_repudiation();
    u
}

fn encryption_usage() -> KeyUsage {
    let mut u = KeyUsage::new();
    u.key_encipherment().data_encipherment();
    u
}

fn write_pem(path: &Path, cert: &X509) {
    std::fs::write(path, cert.to_pem().unwrap()).unwrap();
}

fn problems(v: &Value) -> &Vec<Value> {
    v["problems"].as_array().expect("problems array")
}

/// The only error of a `check --json` output (asserting there is exactly one).
fn single_error(v: &Value) -> &Value {
    let errors: Vec<&Value> = problems(v)
        .iter()
        .filter(|p| p["severity"] == "error")
        .collect();
    assert_eq!(errors.len(), 1, "{:#}", v["problems"]);
    assert_eq!(v["errors"], 1);
    assert_eq!(v["ok"], false);
    errors[0]
}

/// The only error of a `check --json` output, asserted to be of `kind`, for `owner`'s
/// certificate for `role`.
fn the_error<'v>(v: &'v Value, kind: &str, owner: &str, role: &str) -> &'v Value {
    let p = single_error(v);
    assert_eq!(p["kind"], kind, "{p:#}");
    assert_eq!(p["owner"], owner, "{p:#}");
    assert_eq!(p["role"], role, "{p:#}");
    p
}

/// `varti ARGS` in `dir`, asserted to exit with `code`: its JSON output.
fn json_exit(dir: &Path, args: &[&str], code: i32) -> Value {
    let out = varti(dir, args);
    assert_eq!(out.status.code(), Some(code), "{}", text(&out));
    json(&out)
}

const CHECK_JSON: &[&str] = &["certs", "check", "--json"];

/// A signing certificate CN=`cn`, OU=`ou` for `key` from the shipped test CA in `dir`,
/// valid from `days.0` to `days.1` days from now.
fn from_test_ca(dir: &Path, (cn, ou): (&str, &str), key: &PKey<Private>, days: (i64, i64)) -> X509 {
    let (ca, ca_key) = test_ca(dir);
    let (from, until) = days;
    issue(
        name(cn, ou),
        key,
        signing_usage(),
        from,
        until,
        Some((&ca, &ca_key)),
    )
}

fn ends_with(v: &Value, suffix: &str) -> bool {
    v.as_str().is_some_and(|s| s.ends_with(suffix))
}

#[test]
fn shipped_certs_and_pmodes_pass() {
    let out = varti(&repo(), &["certs", "check"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!(
            "{SHIPPED_CERTS} certificate(s) in {SHIPPED_CERTS} file use(s) checked at "
        )),
        "{}",
        text(&out)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(": 0 error(s), 0 warning(s)"),
        "{}",
        text(&out)
    );

    let v = json(&varti(&repo(), &["certs", "check", "--json"]));
    assert_eq!(v["ok"], true);
    assert_eq!(v["errors"], 0);
    assert_eq!(v["warnings"], 0);
    assert_eq!(problems(&v).len(), 0, "{:#}", v["problems"]);
    assert_eq!(v["certificates"].as_array().unwrap().len(), SHIPPED_CERTS);

    let out = varti(&repo(), &["certs", "list"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let listing = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(listing.lines().count(), 1 + SHIPPED_CERTS, "{listing}");
    assert!(listing.starts_with("ROLE "), "{listing}");
    let ours_signing = listing
        .lines()
        .find(|l| l.starts_with("signing ") && l.contains(" ours "))
        .expect("our signing certificate is listed");
    for part in [
        "CN=varti-a,OU=sign,O=Varti TEST ONLY,C=EU",
        "CN=Varti Test CA,O=Varti TEST ONLY,C=EU",
        "03E9",
        "RSA 3072",
        "certs/varti-a/sign.cert.pem",
    ] {
        assert!(ours_signing.contains(part), "{part} in {ours_signing}");
    }

    let v = json(&varti(&repo(), &["certs", "list", "--json"]));
    let certs = v["certificates"].as_array().unwrap();
    assert_eq!(certs.len(), SHIPPED_CERTS);
    let b_tls = certs
        .iter()
        .find(|c| c["owner"] == "varti-b" && c["role"] == "tls")
        .expect("varti-b's TLS certificate is listed");
    assert_eq!(b_tls["subject"], "CN=varti-b,OU=tls,O=Varti TEST ONLY,C=EU");
    assert_eq!(b_tls["serial"], "03EE");
    assert_eq!(b_tls["key_type"], "RSA 3072");
    assert_eq!(b_tls["not_after"], "2036-11-22T16:40:48Z");
    assert!(b_tls["days_left"].as_i64().unwrap() > 30);
    assert!(ends_with(&b_tls["file"], "certs/varti-b/tls.cert.pem"));
    for role in ["signing", "encryption", "tls", "tls-ca", "trust-anchor"] {
        assert!(
            certs
                .iter()
                .any(|c| c["owner"] == "ours" && c["role"] == role),
            "ours {role}"
        );
    }
}

#[test]
fn expired_partner_certificate_is_an_error() {
    let dir = setup();
    let cert = from_test_ca(dir.path(), ("varti-b", "sign"), &key(), (-400, -10));
    write_pem(&dir.path().join("certs/varti-b/sign.cert.pem"), &cert);

    let out = varti(dir.path(), &["certs", "check"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("error: "),
        "{}",
        text(&out)
    );

    let v = json_exit(dir.path(), CHECK_JSON, 1);
    let p = the_error(&v, "expired", "varti-b", "signing");
    assert_eq!(p["subject"], "CN=varti-b,OU=sign,O=Varti TEST ONLY,C=EU");
    assert!(
        ends_with(&p["file"], "certs/varti-b/sign.cert.pem"),
        "{p:#}"
    );
    assert!(p["hint"].as_str().unwrap().contains("varti-b"), "{p:#}");
    // Listed with its negative days left.
    let v = json(&varti(dir.path(), &["certs", "list", "--json"]));
    let listed = v["certificates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["owner"] == "varti-b" && c["role"] == "signing")
        .unwrap();
    assert!(listed["days_left"].as_i64().unwrap() <= -9, "{listed:#}");
}

#[test]
fn key_that_is_not_the_certificates_is_an_error() {
    let dir = setup();
    std::fs::write(
        dir.path().join("certs/varti-a/sign.key.pem"),
        key().private_key_to_pem_pkcs8().unwrap(),
    )
    .unwrap();

    let v = json_exit(dir.path(), CHECK_JSON, 1);
    let p = the_error(&v, "key_mismatch", "ours", "signing");
    assert!(
        ends_with(&p["file"], "certs/varti-a/sign.cert.pem"),
        "{p:#}"
    );
    assert!(
        ends_with(&p["key_file"], "certs/varti-a/sign.key.pem"),
        "{p:#}"
    );
    assert!(
        p["message"]
            .as_str()
            .unwrap()
            .contains("identity.signing_key"),
        "{p:#}"
    );
}

#[test]
fn certificate_from_another_ca_breaks_the_chain() {
    let dir = setup();
    let other_key = key();
    let other_ca = issue(
        name("Someone Else CA", "ca"),
        &other_key,
        {
            let mut u = KeyUsage::new();
            u.key_cert_sign().crl_sign();
            u
        },
        -1,
        365,
        None,
    );
    let cert = issue(
        name("varti-b", "enc"),
        &key(),
        encryption_usage(),
        -1,
        365,
        Some((&other_ca, &other_key)),
    );
    write_pem(&dir.path().join("certs/varti-b/enc.cert.pem"), &cert);

    let v = json_exit(dir.path(), CHECK_JSON, 1);
    let p = the_error(&v, "chain", "varti-b", "encryption");
    assert!(ends_with(&p["file"], "certs/varti-b/enc.cert.pem"), "{p:#}");
    let message = p["message"].as_str().unwrap();
    assert!(message.contains("CN=Someone Else CA"), "{message}");
    assert!(message.contains("identity.trust_anchors"), "{message}");
}

#[test]
fn encryption_certificate_used_for_signing_has_the_wrong_key_usage() {
    let dir = setup();
    std::fs::copy(
        dir.path().join("certs/varti-b/enc.cert.pem"),
        dir.path().join("certs/varti-b/sign.cert.pem"),
    )
    .unwrap();
    let v = json_exit(dir.path(), CHECK_JSON, 1);
    let p = the_error(&v, "key_usage", "varti-b", "signing");
    let message = p["message"].as_str().unwrap();
    assert!(
        message.contains("keyEncipherment, dataEncipherment")
            && message.contains("digitalSignature or nonRepudiation"),
        "{message}"
    );
}

#[test]
fn expiring_soon_is_a_warning_within_warn_days() {
    let dir = setup();
    let cert = from_test_ca(dir.path(), ("varti-b", "sign"), &key(), (-300, 10));
    write_pem(&dir.path().join("certs/varti-b/sign.cert.pem"), &cert);

    // Warnings only.
    let v = json_exit(dir.path(), CHECK_JSON, 0);
    assert_eq!(v["ok"], true);
    assert_eq!(v["warnings"], 1, "{:#}", v["problems"]);
    let p = &problems(&v)[0];
    assert_eq!(p["severity"], "warning");
    assert_eq!(p["kind"], "expiring");
    assert_eq!(p["owner"], "varti-b");
    assert_eq!(p["role"], "signing");

    let v = json(&varti(
        dir.path(),
        &["certs", "check", "--json", "--warn-days", "5"],
    ));
    assert_eq!(v["warnings"], 0, "{:#}", v["problems"]);
}

#[test]
fn our_pmode_party_with_another_certificate_is_a_warning() {
    let dir = setup();
    let other = from_test_ca(dir.path(), ("varti-a", "sign"), &key(), (-1, 3000));
    write_pem(&dir.path().join("certs/varti-a/sign-old.cert.pem"), &other);
    let pmode = dir.path().join("pmodes/varti-a.toml");
    let text_before = std::fs::read_to_string(&pmode).unwrap();
    let changed = text_before.replace(
        "signing_cert = \"../certs/varti-a/sign.cert.pem\"",
        "signing_cert = \"../certs/varti-a/sign-old.cert.pem\"",
    );
    assert_ne!(
        changed, text_before,
        "the PMode names varti-a's signing cert"
    );
    std::fs::write(&pmode, changed).unwrap();

    let v = json_exit(dir.path(), CHECK_JSON, 0);
    assert_eq!(v["warnings"], 1, "{:#}", v["problems"]);
    let p = &problems(&v)[0];
    assert_eq!(p["kind"], "differs_from_pmode");
    assert_eq!(p["owner"], "varti-a");
    assert_eq!(p["role"], "signing");
}

#[test]
fn at_2100_everything_is_expired() {
    let at_2100 = ["--json", "--at", "2100-01-01T00:00:00Z"];
    let v = json_exit(&repo(), &[&["certs", "check"][..], &at_2100].concat(), 1);
    assert_eq!(v["at"], "2100-01-01T00:00:00Z");
    let expired: Vec<&Value> = problems(&v)
        .iter()
        .filter(|p| p["kind"] == "expired" && p["severity"] == "error")
        .collect();
    assert_eq!(expired.len(), SHIPPED_CERTS, "{:#}", v["problems"]);
    assert_eq!(v["errors"], SHIPPED_CERTS);
    // Only expiry: the chain check does not judge time, so it adds nothing.
    assert!(problems(&v).iter().all(|p| p["kind"] == "expired"));

    let v = json(&varti(
        &repo(),
        &[&["certs", "list"][..], &at_2100].concat(),
    ));
    assert!(v["certificates"]
        .as_array()
        .unwrap()
        .iter()
        .all(|c| c["days_left"].as_i64().unwrap() < 0));
}

#[test]
fn config_file_and_pmodes_option_are_followed() {
    let dir = setup();
    let etc = dir.path().join("etc");
    std::fs::create_dir(&etc).unwrap();
    // Paths in a configuration file are relative to the file.
    std::fs::write(
        etc.join("varti.toml"),
        "pmodes_dir = \"../nowhere\"\n\
         [tls]\ncert = \"../certs/varti-b/tls.cert.pem\"\nkey = \"../certs/varti-b/tls.key.pem\"\nclient_ca = \"../certs/ca.cert.pem\"\n\
         [identity]\nparty = \"varti-b\"\n\
         signing_key = \"../certs/varti-b/sign.key.pem\"\nsigning_cert = \"../certs/varti-b/sign.cert.pem\"\n\
         encryption_key = \"../certs/varti-b/enc.key.pem\"\nencryption_cert = \"../certs/varti-b/enc.cert.pem\"\n\
         trust_anchors = [\"../certs/ca.cert.pem\"]\n",
    )
    .unwrap();
    let config = etc.join("varti.toml");
    let config = config.to_str().unwrap();
    let pmodes = dir.path().join("pmodes");
    let pmodes = pmodes.to_str().unwrap();

    // pmodes_dir of the file does not exist: cannot run, and the message says how to fix.
    let out = varti(dir.path(), &["certs", "check", "--config", config]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--pmodes"),
        "{}",
        text(&out)
    );

    let options = ["--json", "--config", config, "--pmodes", pmodes];
    let v = json_exit(dir.path(), &[&["certs", "list"][..], &options].concat(), 0);
    assert_eq!(v["our_party"], "varti-b");
    let ours_tls = v["certificates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["owner"] == "ours" && c["role"] == "tls")
        .unwrap();
    assert_eq!(
        ours_tls["subject"],
        "CN=varti-b,OU=tls,O=Varti TEST ONLY,C=EU"
    );

    // Our key for varti-b's certificate comes from the file: a wrong one is found.
    std::fs::copy(
        dir.path().join("certs/varti-a/enc.key.pem"),
        dir.path().join("certs/varti-b/enc.key.pem"),
    )
    .unwrap();
    let v = json_exit(dir.path(), &[&["certs", "check"][..], &options].concat(), 1);
    let p = single_error(&v);
    assert_eq!(p["kind"], "key_mismatch");
    assert_eq!(p["role"], "encryption");
    assert!(
        ends_with(&p["key_file"], "certs/varti-b/enc.key.pem"),
        "{p:#}"
    );
}

#[test]
fn missing_certificate_file_is_reported() {
    let dir = setup();
    std::fs::remove_file(dir.path().join("certs/varti-a/tls.cert.pem")).unwrap();
    let v = json_exit(dir.path(), CHECK_JSON, 1);
    // Named by the configuration (ours) and by varti-a's PMode party.
    let unreadable: Vec<&Value> = problems(&v)
        .iter()
        .filter(|p| p["kind"] == "unreadable")
        .collect();
    assert_eq!(unreadable.len(), 2, "{:#}", v["problems"]);
    assert!(unreadable.iter().any(|p| p["owner"] == "ours"));
    assert!(unreadable.iter().any(|p| p["owner"] == "varti-a"));
    assert!(unreadable.iter().all(|p| p["role"] == "tls"));

    let out = varti(dir.path(), &["certs", "list"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
}

#[test]
fn cannot_run_exits_2() {
    let out = varti(
        &repo(),
        &["certs", "check", "--config", "/nonexistent/varti.toml"],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("/nonexistent/varti.toml"),
        "{}",
        text(&out)
    );
    let out = varti(&repo(), &["certs", "list", "--at", "next tuesday"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("RFC 3339"),
        "{}",
        text(&out)
    );
    let empty = tempfile::tempdir().unwrap();
    let out = varti(empty.path(), &["certs", "check"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
}

#[test]
fn help_explains_with_examples() {
    let out = varti(&repo(), &["certs", "check", "--help"]);
    assert_eq!(out.status.code(), Some(0));
    let help = String::from_utf8_lossy(&out.stdout);
    for part in [
        "--warn-days",
        "--at",
        "--json",
        "--config",
        "--pmodes",
        "Examples:",
        "Exit status",
    ] {
        assert!(help.contains(part), "{part} in {help}");
    }
    let out = varti(&repo(), &["certs", "list", "--help"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("Examples:"));
}

#[test]
fn partner_certificate_with_an_rsa_1024_key_signed_with_sha1_is_an_error() {
    let dir = setup();
    let (ca, ca_key) = test_ca(dir.path());
    let weak = PKey::from_rsa(Rsa::generate(1024).unwrap()).unwrap();
    let mut b = X509::builder().unwrap();
    b.set_version(2).unwrap();
    b.set_serial_number(&Asn1Integer::from_bn(&BigNum::from_u32(rand_serial()).unwrap()).unwrap())
        .unwrap();
    b.set_subject_name(&name("varti-b", "sign")).unwrap();
    b.set_issuer_name(ca.subject_name()).unwrap();
    b.set_pubkey(&weak).unwrap();
    b.set_not_before(&Asn1Time::from_unix(now() - 86_400).unwrap())
        .unwrap();
    b.set_not_after(&Asn1Time::from_unix(now() + 365 * 86_400).unwrap())
        .unwrap();
    b.append_extension(signing_usage().critical().build().unwrap())
        .unwrap();
    b.sign(&ca_key, MessageDigest::sha1()).unwrap();
    write_pem(&dir.path().join("certs/varti-b/sign.cert.pem"), &b.build());

    let v = json_exit(dir.path(), CHECK_JSON, 1);
    let p = the_error(&v, "weak_key", "varti-b", "signing");
    assert!(
        p["message"]
            .as_str()
            .unwrap()
            .contains("an RSA key of 1024 bits"),
        "{p:#}"
    );
    assert!(
        ends_with(&p["file"], "certs/varti-b/sign.cert.pem"),
        "{p:#}"
    );
    assert!(
        p["hint"].as_str().unwrap().contains("allow_weak_keys"),
        "{p:#}"
    );
}

#[test]
fn our_weak_key_is_an_error_and_a_warning_with_our_partys_exception() {
    let dir = setup();
    let weak = PKey::from_rsa(Rsa::generate(1024).unwrap()).unwrap();
    let cert = from_test_ca(dir.path(), ("varti-a", "sign"), &weak, (-1, 365));
    write_pem(&dir.path().join("certs/varti-a/sign.cert.pem"), &cert);
    std::fs::write(
        dir.path().join("certs/varti-a/sign.key.pem"),
        weak.private_key_to_pem_pkcs8().unwrap(),
    )
    .unwrap();

    let v = json(&varti(dir.path(), CHECK_JSON));
    let weak_ones: Vec<&Value> = problems(&v)
        .iter()
        .filter(|p| p["kind"] == "weak_key")
        .collect();
    // Ours (identity.signing_cert) and the copy our PMode party publishes.
    let owners: Vec<&str> = weak_ones
        .iter()
        .map(|p| p["owner"].as_str().unwrap())
        .collect();
    assert_eq!(owners, ["ours", "varti-a"], "{:#}", v["problems"]);
    assert!(weak_ones.iter().all(|p| p["severity"] == "error"));
    assert_eq!(v["ok"], false);

    let pmode = dir.path().join("pmodes/varti-a.toml");
    let toml = std::fs::read_to_string(&pmode).unwrap().replacen(
        "encryption_cert = \"../certs/varti-a/enc.cert.pem\"\n",
        "encryption_cert = \"../certs/varti-a/enc.cert.pem\"\nallow_weak_keys = \"test key, replaced next week\"\n",
        1,
    );
    assert!(toml.contains("allow_weak_keys"));
    std::fs::write(&pmode, toml).unwrap();
    let v = json_exit(dir.path(), CHECK_JSON, 0);
    let weak_ones: Vec<&Value> = problems(&v)
        .iter()
        .filter(|p| p["kind"] == "weak_key")
        .collect();
    assert_eq!(weak_ones.len(), 2, "{:#}", v["problems"]);
    for p in weak_ones {
        assert_eq!(p["severity"], "warning", "{p:#}");
        assert!(
            p["message"]
                .as_str()
                .unwrap()
                .contains("test key, replaced next week"),
            "{p:#}"
        );
    }
}

/// `certs check` fails wherever `varti serve` would refuse to start: a PMode error that is
/// not about a certificate (here a leg naming a party no file defines) makes it exit 1,
/// listed with the command that explains it, and `ok` false in JSON.
#[test]
fn a_pmode_error_fails_the_check_as_it_fails_serve() {
    let dir = setup();
    std::fs::write(
        dir.path().join("pmodes/broken.toml"),
        "[[process]]\nname = \"broken\"\nmep = \"oneWay\"\nbinding = \"push\"\n\
         initiator = { parties = [\"varti-a\"] }\nresponder = { parties = [\"nobody\"] }\n\
         [[process.leg]]\nname = \"leg\"\nservice = \"urn:x\"\naction = \"A\"\n",
    )
    .unwrap();
    let out = varti(dir.path(), &["certs", "check"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("varti serve refuses to start"), "{stdout}");
    assert!(stdout.contains("broken.toml"), "{stdout}");
    let v = json_exit(dir.path(), &["certs", "check", "--json"], 1);
    assert_eq!(v["ok"], false);
    assert_eq!(v["errors"], 0, "no certificate is wrong: {v:#}");
    assert!(!v["pmode_errors"].as_array().unwrap().is_empty(), "{v:#}");
}
