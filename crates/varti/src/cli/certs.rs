//! `varti certs …`: list and check every certificate the access point uses.
//!
//! Two sources: the configuration (our own certificates: `identity.signing_cert`,
//! `identity.encryption_cert`, `tls.cert`, and the CAs we trust: `identity.trust_anchors`,
//! `tls.client_ca`) and the PModes (every party's `signing_cert`, `encryption_cert`,
//! `tls.cert` and `tls.trusted_ca`). `list` prints one line per certificate; `check`
//! reports what would break a message exchange: expiry, a chain that does not reach the
//! trust anchors, a keyUsage unfit for the role, a key below the key-strength policy
//! (`varti_as4::security::keys`), a private key that is not the certificate's.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use varti_as4::security::pkcs11::is_pkcs11_uri;

use clap::{Args, Subcommand};
use openssl::asn1::{Asn1Time, Asn1TimeRef};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::Id;
use openssl::stack::Stack;
use openssl::x509::store::X509StoreBuilder;
use openssl::x509::verify::{X509VerifyFlags, X509VerifyParam};
use openssl::x509::{X509KeyUsage, X509Ref, X509StoreContext, X509};
use serde_json::json;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use varti::config::{ClientAuth, Config};
use varti_as4::pmode::check::{self, CertRole, Validity};
use varti_as4::pmode::{LoadOptions, PModeSet};
use varti_as4::security::keys;
use varti_as4::security::token::distinguished_name_string;

use super::{exit_cannot_run, exit_problems};

const LIST_EXAMPLES: &str = "\
Examples:
  varti certs list                                  # embedded defaults: ./certs, ./pmodes
  varti certs list --config /etc/varti/varti.toml
  varti certs list --pmodes /etc/varti/pmodes.next  # another PMode directory
  varti certs list --json | jq -r '.certificates[] | [.owner, .role, .not_after] | @tsv'";

const CHECK_EXAMPLES: &str = "\
What is checked:
  validity    expired or not yet valid: error; expiring within --warn-days: warning
  chain       our signing and encryption certificates and the partners' must chain to
              identity.trust_anchors (not checked when it is empty: certificates are
              pinned); a party's tls.cert to its tls.trusted_ca, else to tls.client_ca;
              our tls.cert to tls.client_ca
  keyUsage    signing: digitalSignature or nonRepudiation; encryption: keyEncipherment or
              keyAgreement; tls: digitalSignature, keyEncipherment or keyAgreement; CA
              files (tls.client_ca, tls.trusted_ca): keyCertSign
  strength    RSA of at least 2048 bits, EC P-256/P-384/P-521, Ed25519 or X25519; no
              SHA-1 or MD5 certificate signatures (self-signed ones excepted): error,
              a warning for a party with allow_weak_keys = \"reason\" in its PMode (our
              own certificates: our party's)
  keys        identity.signing_key, identity.encryption_key and tls.key must be the
              private keys of their certificates

Exit status: 0 no errors (warnings allowed), 1 errors found, 2 could not run.

Examples:
  varti certs check --config /etc/varti/varti.toml
  varti certs check --warn-days 60                   # warn two months ahead
  varti certs check --at 2027-06-01T00:00:00Z        # will everything still be valid then?
  varti certs check --json | jq '.problems[] | select(.severity == \"error\")'";

/// The `certs` command group.
#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// List every certificate in use, one line each: role, owner (`ours` or the party),
    /// subject, issuer, serial, expiry, days left, key type and file.
    #[command(after_help = LIST_EXAMPLES)]
    List(ListArgs),
    /// Check every certificate in use: validity, chain to the trust anchors, keyUsage for
    /// its role, key strength, and that our private keys match our certificates (exit 1
    /// on an error).
    #[command(after_help = CHECK_EXAMPLES)]
    Check(CheckArgs),
}

/// Where the certificates come from, and when they are judged.
#[derive(Debug, Args)]
pub struct Sources {
    /// Configuration file (TOML, see deploy/varti.example.toml); without it the embedded
    /// defaults apply (paths relative to the working directory).
    #[arg(long, short = 'c', value_name = "FILE")]
    config: Option<PathBuf>,
    /// PMode directory (overrides `pmodes_dir` of the configuration).
    #[arg(long, value_name = "DIR")]
    pmodes: Option<PathBuf>,
    /// Judge the certificates at this time instead of now: RFC 3339
    /// (2027-06-01T00:00:00Z) or a date (2027-06-01, midnight UTC).
    #[arg(long, value_name = "TIME")]
    at: Option<String>,
    /// Print JSON on stdout.
    #[arg(long)]
    json: bool,
}

/// Arguments of `varti certs list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    sources: Sources,
}

/// Arguments of `varti certs check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    sources: Sources,
    /// Warn about certificates that expire within this many days.
    #[arg(long, value_name = "DAYS", default_value_t = 30)]
    warn_days: u32,
}

/// Runs a `certs` command.
pub fn run(cmd: CertsCommand) -> anyhow::Result<ExitCode> {
    let (sources, warn_days, is_check) = match &cmd {
        CertsCommand::List(a) => (&a.sources, 30, false),
        CertsCommand::Check(a) => (&a.sources, a.warn_days, true),
    };
    let inventory = match Inventory::gather(sources) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(exit_cannot_run());
        }
    };
    if is_check {
        check(&inventory, warn_days, sources.json)
    } else {
        list(&inventory, sources.json)
    }
}

// ---------------------------------------------------------------------------------
// What is in use.

/// What a certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Signing,
    Encryption,
    Tls,
    /// A CA that TLS peers must chain to (`tls.client_ca`, a party's `tls.trusted_ca`).
    TlsCa,
    /// One of `identity.trust_anchors` (a CA, or a pinned certificate).
    TrustAnchor,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::Signing => "signing",
            Role::Encryption => "encryption",
            Role::Tls => "tls",
            Role::TlsCa => "tls-ca",
            Role::TrustAnchor => "trust-anchor",
        }
    }

    /// The keyUsage rule; trust anchors have none, since a pinned end-entity
    /// certificate is a valid anchor.
    fn key_usage_role(self) -> Option<CertRole> {
        match self {
            Role::Signing => Some(CertRole::Signing),
            Role::Encryption => Some(CertRole::Encryption),
            Role::Tls => Some(CertRole::Tls),
            Role::TlsCa => Some(CertRole::Ca),
            Role::TrustAnchor => None,
        }
    }

    /// Whether the file's first certificate is an end entity followed by intermediates
    /// (rather than a list of CAs, each one on its own).
    fn is_leaf(self) -> bool {
        matches!(self, Role::Signing | Role::Encryption | Role::Tls)
    }
}

/// What a certificate must chain to.
#[derive(Debug, Clone)]
enum ChainTo {
    /// Nothing: it is an anchor itself.
    Nothing,
    /// Not checked, and why.
    Unchecked(String),
    /// One of the certificates in these files; `source` names the setting.
    Anchors { source: String, files: Vec<PathBuf> },
}

/// One place a certificate file is named.
#[derive(Debug, Clone)]
struct Use {
    role: Role,
    /// `ours` (the configuration) or the PMode party's name.
    owner: String,
    /// The setting that names it: `identity.signing_cert`, `signing_cert of party 'x'
    /// (pmodes/x.toml:4:1)`.
    source: String,
    file: PathBuf,
    chain_to: ChainTo,
    /// The private key that belongs to it (our own certificates): setting and file.
    key: Option<(&'static str, PathBuf)>,
}

/// A use with its file read.
struct Loaded {
    used: Use,
    /// The certificates of the file, or why there are none.
    certs: Result<Vec<X509>, String>,
}

/// Everything gathered from the configuration and the PModes.
struct Inventory {
    at_unix: i64,
    at: Asn1Time,
    our_party: String,
    entries: Vec<Loaded>,
    /// `allow_weak_keys` reasons by owner (`ours` takes our party's).
    weak_key_exceptions: HashMap<String, String>,
    /// The PModes' errors (`FILE:LINE:COLUMN: message`): `serve` refuses to start on any.
    pmode_errors: Vec<String>,
    /// The PMode directory.
    pmodes_dir: PathBuf,
}

impl Inventory {
    fn gather(sources: &Sources) -> Result<Inventory, String> {
        let at_unix = match &sources.at {
            Some(when) => LoadOptions::at(when)
                .map_err(|e| e.to_string())?
                .at_unix
                .expect("LoadOptions::at sets the time"),
            None => OffsetDateTime::now_utc().unix_timestamp(),
        };
        let at = Asn1Time::from_unix(at_unix as _).map_err(|_| {
            "the --at time is out of range: give a date between 1970 and 9999".to_owned()
        })?;
        let config = match &sources.config {
            Some(path) => Config::load(path).map_err(|e| e.to_string())?,
            None => Config::default(),
        };
        // Keys named by pkcs11: URIs are opened in the configured module.
        varti_as4::security::pkcs11::set_default_module(config.pkcs11.module.clone());
        let dir = sources.pmodes.clone().unwrap_or(config.pmodes_dir.clone());
        Self::of(&config, dir, at_unix, at, true)
    }

    /// The inventory of `config` with the PModes in `dir`, judged at `at_unix` (`at`).
    /// `note` prints a note about PMode errors on stderr (the commands do; a reload
    /// reports them itself).
    fn of(
        config: &Config,
        dir: PathBuf,
        at_unix: i64,
        at: Asn1Time,
        note: bool,
    ) -> Result<Inventory, String> {
        if !dir.is_dir() {
            return Err(format!(
                "the PMode directory {} does not exist; give it with --pmodes DIR or set pmodes_dir in the configuration (--config FILE)",
                dir.display()
            ));
        }
        let options = LoadOptions {
            at_unix: Some(at_unix),
            ..LoadOptions::default()
        };
        let (set, diags) = varti_as4::pmode::load_dir_with(&dir, &options);
        let errors = diags.iter().filter(|d| d.is_error()).count();
        if errors > 0 && note {
            eprintln!(
                "note: the PModes in {} have {errors} error(s), see `varti pmode check {}`; the certificates of the parties that could be read are listed here",
                dir.display(),
                dir.display()
            );
        }
        let mut cache: HashMap<PathBuf, Result<Vec<X509>, String>> = HashMap::new();
        let entries = uses(config, &set)
            .into_iter()
            .map(|used| {
                let certs = cache
                    .entry(used.file.clone())
                    .or_insert_with(|| read_certs(&used.file))
                    .clone();
                Loaded { used, certs }
            })
            .collect();
        let mut weak_key_exceptions = HashMap::new();
        for party in &set.parties {
            if let Some(reason) = &party.allow_weak_keys {
                weak_key_exceptions.insert(party.name.clone(), reason.clone());
                if party.name == config.identity.party {
                    weak_key_exceptions.insert("ours".to_owned(), reason.clone());
                }
            }
        }
        let pmode_errors = diags
            .iter()
            .filter(|d| d.is_error())
            .map(|d| {
                format!(
                    "{}:{}:{}: {}",
                    d.location.file.display(),
                    d.location.line,
                    d.location.column,
                    d.message
                )
            })
            .collect();
        Ok(Inventory {
            at_unix,
            at,
            our_party: config.identity.party.clone(),
            entries,
            weak_key_exceptions,
            pmode_errors,
            pmodes_dir: dir,
        })
    }

    /// The readable certificates of `files`, for chain checks.
    fn anchors(&self, files: &[PathBuf]) -> Vec<X509> {
        let mut out = Vec::new();
        for f in files {
            if let Some(Ok(certs)) = self
                .entries
                .iter()
                .find(|e| &e.used.file == f)
                .map(|e| &e.certs)
            {
                out.extend(certs.iter().cloned());
            } else if let Ok(certs) = read_certs(f) {
                out.extend(certs);
            }
        }
        out
    }
}

/// Every certificate file named by the configuration and the PModes, ours first.
fn uses(config: &Config, set: &PModeSet) -> Vec<Use> {
    let id = &config.identity;
    let partner_anchors = if id.trust_anchors.is_empty() {
        ChainTo::Unchecked(
            "identity.trust_anchors is empty: partners' certificates are pinned".to_owned(),
        )
    } else {
        ChainTo::Anchors {
            source: "identity.trust_anchors".to_owned(),
            files: id.trust_anchors.clone(),
        }
    };
    let client_ca = (config.tls.client_auth != ClientAuth::Off).then(|| ChainTo::Anchors {
        source: "tls.client_ca".to_owned(),
        files: vec![config.tls.client_ca.clone()],
    });
    let ours = |role, source: &str, file: &Path, chain_to: ChainTo, key| Use {
        role,
        owner: "ours".to_owned(),
        source: source.to_owned(),
        file: file.to_owned(),
        chain_to,
        key,
    };
    let mut out = vec![
        ours(
            Role::Signing,
            "identity.signing_cert",
            &id.signing_cert,
            partner_anchors.clone(),
            Some(("identity.signing_key", id.signing_key.clone())),
        ),
        ours(
            Role::Encryption,
            "identity.encryption_cert",
            &id.encryption_cert,
            partner_anchors.clone(),
            Some(("identity.encryption_key", id.encryption_key.clone())),
        ),
        ours(
            Role::Tls,
            "tls.cert",
            &config.tls.cert,
            client_ca.clone().unwrap_or_else(|| {
                ChainTo::Unchecked("tls.client_auth is off: no tls.client_ca".to_owned())
            }),
            Some(("tls.key", config.tls.key.clone())),
        ),
    ];
    if client_ca.is_some() {
        out.push(ours(
            Role::TlsCa,
            "tls.client_ca",
            &config.tls.client_ca,
            ChainTo::Nothing,
            None,
        ));
    }
    for anchor in &id.trust_anchors {
        out.push(ours(
            Role::TrustAnchor,
            "identity.trust_anchors",
            anchor,
            ChainTo::Nothing,
            None,
        ));
    }

    for party in &set.parties {
        let of_party = |field: &str| {
            format!(
                "{field} of party '{}' (defined at {})",
                party.name, party.location
            )
        };
        let theirs = |role, field: &str, file: &PathBuf, chain_to: ChainTo| Use {
            role,
            owner: party.name.clone(),
            source: of_party(field),
            file: file.clone(),
            chain_to,
            key: None,
        };
        if let Some(f) = &party.signing_cert {
            out.push(theirs(
                Role::Signing,
                "signing_cert",
                f,
                partner_anchors.clone(),
            ));
        }
        if let Some(f) = &party.encryption_cert {
            out.push(theirs(
                Role::Encryption,
                "encryption_cert",
                f,
                partner_anchors.clone(),
            ));
        }
        let Some(tls) = &party.tls else { continue };
        if let Some(f) = &tls.cert {
            let chain_to = match &tls.trusted_ca {
                Some(ca) => ChainTo::Anchors {
                    source: of_party("tls.trusted_ca"),
                    files: vec![ca.clone()],
                },
                None => client_ca.clone().unwrap_or_else(|| {
                    ChainTo::Unchecked(
                        "the party has no tls.trusted_ca and tls.client_auth is off".to_owned(),
                    )
                }),
            };
            out.push(theirs(Role::Tls, "tls.cert", f, chain_to));
        }
        if let Some(f) = &tls.trusted_ca {
            out.push(theirs(Role::TlsCa, "tls.trusted_ca", f, ChainTo::Nothing));
        }
    }
    out
}

fn read_certs(file: &Path) -> Result<Vec<X509>, String> {
    let bytes = std::fs::read(file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    let certs = check::parse_certificates(&bytes);
    if certs.is_empty() {
        return Err(format!(
            "{} holds no X.509 certificate (PEM or DER)",
            file.display()
        ));
    }
    Ok(certs)
}

// ---------------------------------------------------------------------------------
// Describing a certificate.

/// The facts `list` shows of one certificate.
struct Facts {
    subject: String,
    issuer: String,
    serial: String,
    not_before: String,
    not_after: String,
    days_left: i64,
    key_type: String,
    sha256: String,
}

fn facts(cert: &X509Ref, at: &Asn1TimeRef) -> Facts {
    let serial = cert
        .serial_number()
        .to_bn()
        .and_then(|b| b.to_hex_str().map(|s| s.to_string()))
        .unwrap_or_else(|_| "?".to_owned());
    let sha256 = cert
        .digest(MessageDigest::sha256())
        .map(|d| d.iter().map(|b| format!("{b:02x}")).collect())
        .unwrap_or_default();
    Facts {
        subject: distinguished_name_string(cert.subject_name()),
        issuer: distinguished_name_string(cert.issuer_name()),
        serial,
        not_before: rfc3339(cert.not_before()),
        not_after: rfc3339(cert.not_after()),
        days_left: at
            .diff(cert.not_after())
            .map(|d| i64::from(d.days))
            .unwrap_or(0),
        key_type: key_type(cert),
        sha256,
    }
}

/// An ASN.1 time as RFC 3339 UTC.
fn rfc3339(t: &Asn1TimeRef) -> String {
    let unix = Asn1Time::from_unix(0)
        .and_then(|epoch| epoch.diff(t))
        .map(|d| i64::from(d.days) * 86_400 + i64::from(d.secs));
    unix.ok()
        .and_then(|u| OffsetDateTime::from_unix_timestamp(u).ok())
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| t.to_string())
}

fn unix_rfc3339(unix: i64) -> String {
    OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| unix.to_string())
}

/// `RSA 3072`, `EC P-256`, `Ed25519` …
fn key_type(cert: &X509Ref) -> String {
    let Ok(key) = cert.public_key() else {
        return "unreadable key".to_owned();
    };
    match key.id() {
        Id::RSA => format!("RSA {}", key.bits()),
        Id::DSA => format!("DSA {}", key.bits()),
        Id::EC => {
            let curve = key.ec_key().ok().and_then(|k| k.group().curve_name());
            match curve {
                Some(Nid::X9_62_PRIME256V1) => "EC P-256".to_owned(),
                Some(Nid::SECP384R1) => "EC P-384".to_owned(),
                Some(Nid::SECP521R1) => "EC P-521".to_owned(),
                Some(n) => format!("EC {}", n.short_name().unwrap_or("?")),
                None => "EC".to_owned(),
            }
        }
        Id::ED25519 => "Ed25519".to_owned(),
        Id::X25519 => "X25519".to_owned(),
        Id::ED448 => "Ed448".to_owned(),
        Id::X448 => "X448".to_owned(),
        _ => "other".to_owned(),
    }
}

fn certificate_json(used: &Use, index: usize, f: &Facts) -> serde_json::Value {
    json!({
        "role": used.role.name(),
        "owner": used.owner,
        "source": used.source,
        "file": used.file.display().to_string(),
        "index": index,
        "subject": f.subject,
        "issuer": f.issuer,
        "serial": f.serial,
        "not_before": f.not_before,
        "not_after": f.not_after,
        "days_left": f.days_left,
        "key_type": f.key_type,
        "sha256": f.sha256,
    })
}

fn unreadable_json(used: &Use, error: &str) -> serde_json::Value {
    json!({
        "role": used.role.name(),
        "owner": used.owner,
        "source": used.source,
        "file": used.file.display().to_string(),
        "error": error,
    })
}

/// The file, with `#n` (1-based) when it holds several certificates.
fn file_label(used: &Use, index: usize, count: usize) -> String {
    if count > 1 {
        format!("{}#{}", used.file.display(), index + 1)
    } else {
        used.file.display().to_string()
    }
}

// ---------------------------------------------------------------------------------
// list

/// Where a private-key setting points: the file, or the token URI without its PIN.
fn key_location(key: &Path) -> String {
    let text = key.to_string_lossy();
    if is_pkcs11_uri(&text) {
        varti_as4::security::pkcs11::Pkcs11Uri::parse(&text)
            .map(|u| u.redacted())
            .unwrap_or_else(|e| format!("pkcs11: (unparsable: {e})"))
    } else {
        key.display().to_string()
    }
}

fn list(inv: &Inventory, as_json: bool) -> anyhow::Result<ExitCode> {
    let mut rows: Vec<[String; 9]> = Vec::new();
    let mut json_certs = Vec::new();
    let mut unreadable = 0;
    for e in &inv.entries {
        match &e.certs {
            Ok(certs) => {
                for (i, c) in certs.iter().enumerate() {
                    let f = facts(c, &inv.at);
                    let mut cj = certificate_json(&e.used, i, &f);
                    if let Some((_, key)) = e.used.key.as_ref().filter(|_| i == 0) {
                        cj["private_key"] = json!(key_location(key));
                    }
                    json_certs.push(cj);
                    rows.push([
                        e.used.role.name().to_owned(),
                        e.used.owner.clone(),
                        f.subject,
                        f.issuer,
                        f.serial,
                        f.not_after,
                        f.days_left.to_string(),
                        f.key_type,
                        match e.used.key.as_ref().filter(|_| i == 0) {
                            Some((_, key)) if is_pkcs11_uri(&key.to_string_lossy()) => format!(
                                "{} (key in {})",
                                file_label(&e.used, i, certs.len()),
                                key_location(key)
                            ),
                            _ => file_label(&e.used, i, certs.len()),
                        },
                    ]);
                }
            }
            Err(err) => {
                unreadable += 1;
                json_certs.push(unreadable_json(&e.used, err));
                rows.push([
                    e.used.role.name().to_owned(),
                    e.used.owner.clone(),
                    format!("({err})"),
                    String::new(),
                    String::new(),
                    String::new(),
                    String::new(),
                    String::new(),
                    e.used.file.display().to_string(),
                ]);
            }
        }
    }
    if as_json {
        let out = json!({
            "at": unix_rfc3339(inv.at_unix),
            "our_party": inv.our_party,
            "certificates": json_certs,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        let header = [
            "ROLE",
            "OWNER",
            "SUBJECT",
            "ISSUER",
            "SERIAL",
            "NOT AFTER",
            "DAYS",
            "KEY",
            "FILE",
        ]
        .map(str::to_owned);
        print_table(&header, &rows);
        if unreadable > 0 {
            eprintln!(
                "{unreadable} certificate file(s) could not be read; fix the paths named above"
            );
        }
    }
    Ok(if unreadable > 0 {
        exit_problems()
    } else {
        ExitCode::SUCCESS
    })
}

fn print_table(header: &[String; 9], rows: &[[String; 9]]) {
    let mut widths = header.clone().map(|h| h.chars().count());
    for r in rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    for r in std::iter::once(header).chain(rows) {
        let mut line = String::new();
        for (i, cell) in r.iter().enumerate() {
            if i + 1 == r.len() {
                line.push_str(cell);
            } else if i == 6 {
                // Days left: right-aligned.
                line.push_str(&format!("{cell:>w$}  ", w = widths[i]));
            } else {
                line.push_str(&format!("{cell:<w$}  ", w = widths[i]));
            }
        }
        println!("{}", line.trim_end());
    }
}

// ---------------------------------------------------------------------------------
// check

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Severity {
    Error,
    Warning,
}

/// One thing wrong.
struct Problem {
    severity: Severity,
    /// `unreadable`, `expired`, `not_yet_valid`, `expiring`, `chain`, `key_usage`,
    /// `weak_key`, `key_unreadable`, `key_mismatch`, `differs_from_pmode`.
    kind: &'static str,
    role: Role,
    owner: String,
    source: String,
    file: PathBuf,
    /// Position of the certificate in its file (0: the first).
    index: usize,
    subject: Option<String>,
    key_file: Option<PathBuf>,
    message: String,
    hint: String,
}

impl Problem {
    fn new(
        severity: Severity,
        kind: &'static str,
        used: &Use,
        message: String,
        hint: impl Into<String>,
    ) -> Problem {
        Problem {
            severity,
            kind,
            role: used.role,
            owner: used.owner.clone(),
            source: used.source.clone(),
            file: used.file.clone(),
            index: 0,
            subject: None,
            key_file: None,
            message,
            hint: hint.into(),
        }
    }

    fn about(mut self, index: usize, cert: &X509Ref) -> Problem {
        self.index = index;
        self.subject = Some(distinguished_name_string(cert.subject_name()));
        self
    }

    fn to_json(&self) -> serde_json::Value {
        json!({
            "severity": match self.severity { Severity::Error => "error", Severity::Warning => "warning" },
            "kind": self.kind,
            "role": self.role.name(),
            "owner": self.owner,
            "source": self.source,
            "file": self.file.display().to_string(),
            "index": self.index,
            "subject": self.subject,
            "key_file": self.key_file.as_ref().map(|p| p.display().to_string()),
            "message": self.message,
            "hint": self.hint,
        })
    }
}

/// Who should act: our own certificates are renewed by us, the partners' by them.
fn renew_hint(used: &Use) -> String {
    if used.owner == "ours" {
        format!(
            "renew the certificate and replace {} ({}); tell the partners, who hold a copy in their PModes",
            used.file.display(),
            used.source
        )
    } else {
        format!(
            "get the renewed certificate from '{}' and replace {}",
            used.owner,
            used.file.display()
        )
    }
}

/// What `varti certs check` finds wrong that makes it fail (exit 1) with `config`, judged
/// now: its errors, then the PModes' errors, one line each. Empty when the check passes.
/// `serve` runs this before it puts a reloaded set in force.
pub(crate) fn errors_of(config: &Config) -> Vec<String> {
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let Ok(at) = Asn1Time::from_unix(now as _) else {
        return vec!["the system clock is out of range".to_owned()];
    };
    let inv = match Inventory::of(config, config.pmodes_dir.clone(), now, at, false) {
        Ok(inv) => inv,
        Err(e) => return vec![e],
    };
    let (problems, _, _) = problems(&inv, 30);
    problems
        .iter()
        .filter(|p| p.severity == Severity::Error)
        .map(|p| format!("{}: {}", p.file.display(), p.message))
        .chain(inv.pmode_errors.iter().cloned())
        .collect()
}

/// Every problem found, the certificates as JSON and how many were checked.
fn problems(inv: &Inventory, warn_days: u32) -> (Vec<Problem>, Vec<serde_json::Value>, usize) {
    let mut problems = Vec::new();
    let mut json_certs = Vec::new();
    let mut count = 0;
    for e in &inv.entries {
        let used = &e.used;
        let certs = match &e.certs {
            Ok(c) => c,
            Err(err) => {
                json_certs.push(unreadable_json(used, err));
                problems.push(Problem::new(
                    Severity::Error,
                    "unreadable",
                    used,
                    format!("{} certificate of {}: {err}", used.role.name(), used.owner),
                    format!(
                        "put the PEM certificate there or fix the path ({})",
                        used.source
                    ),
                ));
                continue;
            }
        };
        count += certs.len();
        let first_json = json_certs.len();
        for (i, cert) in certs.iter().enumerate() {
            json_certs.push(certificate_json(used, i, &facts(cert, &inv.at)));
            check_validity(used, i, cert, inv, warn_days, &mut problems);
            check_strength(used, i, cert, inv, &mut problems);
            let key_usage_applies = i == 0 || !used.role.is_leaf();
            if let (true, Some(role)) = (key_usage_applies, used.role.key_usage_role()) {
                if let Some(have) = check::key_usage_unfit(cert, role) {
                    problems.push(key_usage_problem(used, role, have).about(i, cert));
                }
            }
        }
        let Some(leaf) = certs.first() else { continue };
        let chain = match &used.chain_to {
            ChainTo::Nothing => serde_json::Value::Null,
            ChainTo::Unchecked(why) => json!(format!("not checked: {why}")),
            ChainTo::Anchors { source, files } => {
                let anchors = inv.anchors(files);
                if anchors.is_empty() {
                    // The unreadable anchor file is reported at its own entry.
                    json!(format!("not checked: {source} cannot be read"))
                } else if let Err(why) = verify_chain(leaf, &certs[1..], &anchors) {
                    problems.push(chain_problem(used, leaf, source, &why));
                    json!(format!("fails: {why}"))
                } else {
                    json!(format!("ok: chains to {source}"))
                }
            }
        };
        json_certs[first_json]["chain"] = chain;
        if let Some((setting, key_file)) = &used.key {
            check_key(used, leaf, setting, key_file, &mut problems);
        }
    }
    compare_with_pmode(inv, &mut problems);
    (problems, json_certs, count)
}

fn check(inv: &Inventory, warn_days: u32, as_json: bool) -> anyhow::Result<ExitCode> {
    let (problems, json_certs, count) = problems(inv, warn_days);
    let errors = problems
        .iter()
        .filter(|p| p.severity == Severity::Error)
        .count();
    let warnings = problems.len() - errors;
    if as_json {
        let out = json!({
            "ok": errors == 0 && inv.pmode_errors.is_empty(),
            "at": unix_rfc3339(inv.at_unix),
            "warn_days": warn_days,
            "our_party": inv.our_party,
            "errors": errors,
            "warnings": warnings,
            "pmode_errors": inv.pmode_errors,
            "problems": problems.iter().map(Problem::to_json).collect::<Vec<_>>(),
            "certificates": json_certs,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        for p in &problems {
            let severity = match p.severity {
                Severity::Error => "error",
                Severity::Warning => "warning",
            };
            println!("{severity}: {}: {}", p.file.display(), p.message);
            if let Some(key) = &p.key_file {
                println!("  key: {}", key.display());
            }
            println!("  hint: {}", p.hint);
        }
        if !inv.pmode_errors.is_empty() {
            // Often the same defect as a certificate error above, as the PMode loader
            // judges the certificates it reads: listed apart, not counted twice.
            println!(
                "error: the PModes in {} have {} error(s); varti serve refuses to start on them (`varti pmode check {}`):",
                inv.pmodes_dir.display(),
                inv.pmode_errors.len(),
                inv.pmodes_dir.display()
            );
            for e in &inv.pmode_errors {
                println!("  {e}");
            }
        }
        println!(
            "{count} certificate(s) in {} file use(s) checked at {}: {errors} error(s), {warnings} warning(s)",
            inv.entries.len(),
            unix_rfc3339(inv.at_unix)
        );
    }
    // `serve` refuses to start on PMode errors (a weak partner key among them): so does
    // this check fail, or it would pass keys the access point will not run with.
    Ok(if errors > 0 || !inv.pmode_errors.is_empty() {
        exit_problems()
    } else {
        ExitCode::SUCCESS
    })
}

/// How a problem names certificate `index` of a use's file: the certificate of a role,
/// or an intermediate in its file.
fn describe(used: &Use, index: usize) -> String {
    if index == 0 || !used.role.is_leaf() {
        format!("{} certificate of {}", used.role.name(), used.owner)
    } else {
        format!(
            "intermediate #{} in the {} certificate file of {}",
            index + 1,
            used.role.name(),
            used.owner
        )
    }
}

fn check_validity(
    used: &Use,
    index: usize,
    cert: &X509Ref,
    inv: &Inventory,
    warn_days: u32,
    problems: &mut Vec<Problem>,
) {
    let what = describe(used, index);
    let at = unix_rfc3339(inv.at_unix);
    let problem = match check::validity_at(cert, &inv.at, warn_days) {
        Validity::Valid { .. } => return,
        Validity::Expired => Problem::new(
            Severity::Error,
            "expired",
            used,
            format!(
                "{what} expired on {} (judged at {at})",
                rfc3339(cert.not_after())
            ),
            renew_hint(used),
        ),
        Validity::NotYetValid => Problem::new(
            Severity::Error,
            "not_yet_valid",
            used,
            format!(
                "{what} is not valid before {} (judged at {at})",
                rfc3339(cert.not_before())
            ),
            "check the system clock, or keep the current certificate until this one becomes valid",
        ),
        Validity::ExpiresSoon { days } => Problem::new(
            Severity::Warning,
            "expiring",
            used,
            format!(
                "{what} expires on {}, in {days} day(s)",
                rfc3339(cert.not_after())
            ),
            renew_hint(used),
        ),
    };
    problems.push(problem.about(index, cert));
}

/// The key-strength policy; a party's `allow_weak_keys` makes it a warning.
fn check_strength(
    used: &Use,
    index: usize,
    cert: &X509Ref,
    inv: &Inventory,
    problems: &mut Vec<Problem>,
) {
    let Err(weak) = keys::check_certificate(cert) else {
        return;
    };
    let what = describe(used, index);
    let party = if used.owner == "ours" {
        inv.our_party.as_str()
    } else {
        used.owner.as_str()
    };
    let problem = match inv.weak_key_exceptions.get(&used.owner) {
        Some(reason) => Problem::new(
            Severity::Warning,
            "weak_key",
            used,
            format!(
                "{what} has {weak}; accepted because party '{party}' has allow_weak_keys = \"{reason}\""
            ),
            format!("{} (then remove allow_weak_keys)", weak.hint()),
        ),
        None => Problem::new(
            Severity::Error,
            "weak_key",
            used,
            format!("{what} has {weak}"),
            format!(
                "{}; to accept it for a while anyway, add allow_weak_keys = \"why, until when\" to party '{party}' in the PModes",
                weak.hint()
            ),
        ),
    };
    problems.push(problem.about(index, cert));
}

fn key_usage_problem(used: &Use, role: CertRole, have: X509KeyUsage) -> Problem {
    let hint = if used.role == Role::TlsCa {
        format!(
            "{} must name the CA certificate that issued the TLS certificates (keyUsage keyCertSign), not an end-entity certificate",
            used.source
        )
    } else {
        format!(
            "{} names the wrong certificate (an encryption certificate cannot sign, a signing one cannot encrypt): name the {} certificate",
            used.source,
            used.role.name()
        )
    };
    Problem::new(
        Severity::Error,
        "key_usage",
        used,
        format!(
            "{} certificate of {} cannot serve this role: its keyUsage is {}, the role needs {}",
            used.role.name(),
            used.owner,
            check::usage_names(have),
            check::usage_names(role.key_usage()).replace(", ", " or ")
        ),
        hint,
    )
}

fn chain_problem(used: &Use, leaf: &X509Ref, source: &str, why: &str) -> Problem {
    Problem::new(
        Severity::Error,
        "chain",
        used,
        format!(
            "{} certificate of {} (issuer {}) does not chain to {source}: {why}",
            used.role.name(),
            used.owner,
            distinguished_name_string(leaf.issuer_name()),
        ),
        format!(
            "it was issued by a CA that is not trusted here: get a certificate from the CA in {source}, add the issuing CA there, or append the missing intermediates to {}",
            used.file.display()
        ),
    )
    .about(0, leaf)
}

/// Verifies that `leaf` chains to one of `anchors` (OpenSSL's X509Store; an anchor need
/// not be self-signed, so a pinned certificate or an intermediate CA works). Validity
/// periods are not judged here: they are reported per certificate.
fn verify_chain(leaf: &X509Ref, intermediates: &[X509], anchors: &[X509]) -> Result<(), String> {
    let internal = |e: openssl::error::ErrorStack| format!("OpenSSL failed: {e}");
    let mut builder = X509StoreBuilder::new().map_err(internal)?;
    for a in anchors {
        builder.add_cert(a.clone()).map_err(internal)?;
    }
    let mut param = X509VerifyParam::new().map_err(internal)?;
    param
        .set_flags(X509VerifyFlags::PARTIAL_CHAIN | X509VerifyFlags::NO_CHECK_TIME)
        .map_err(internal)?;
    builder.set_param(&param).map_err(internal)?;
    let store = builder.build();
    let mut chain = Stack::new().map_err(internal)?;
    for c in intermediates {
        chain.push(c.clone()).map_err(internal)?;
    }
    let mut ctx = X509StoreContext::new().map_err(internal)?;
    let (ok, err) = ctx
        .init(&store, leaf, &chain, |c| Ok((c.verify_cert()?, c.error())))
        .map_err(internal)?;
    if ok {
        Ok(())
    } else {
        Err(err.error_string().to_owned())
    }
}

/// Our private key must be the certificate's: otherwise partners cannot verify our
/// signatures, cannot encrypt to us, or the TLS handshake fails.
fn check_key(
    used: &Use,
    cert: &X509Ref,
    setting: &str,
    key_file: &Path,
    problems: &mut Vec<Problem>,
) {
    // A file key or a token key; either way it must prove it is the certificate's by
    // signing (or agreeing a key), which a token does without revealing the key.
    let key = varti_as4::security::private_key::load(key_file, None, Some(cert))
        .map_err(|e| e.to_string());
    let mut problem = match key {
        Err(why) => Problem::new(
            Severity::Error,
            "key_unreadable",
            used,
            format!(
                "the private key of the {} certificate ({setting}) cannot be read: {why}",
                used.role.name()
            ),
            format!("fix {setting} or the file (PEM: PKCS#8, PKCS#1 or SEC1, unencrypted)"),
        ),
        Ok(key) => {
            let matches = cert
                .public_key()
                .ok()
                .and_then(|public| {
                    varti_as4::security::private_key::proves_possession(&key, &public).ok()
                })
                .unwrap_or(false);
            if matches {
                return;
            }
            Problem::new(
                Severity::Error,
                "key_mismatch",
                used,
                format!(
                    "the private key in {setting} does not belong to the {} certificate ({})",
                    used.role.name(),
                    used.source
                ),
                format!(
                    "{setting} and {} must be a pair: after a renewal, replace both files together",
                    used.source
                ),
            )
        }
    }
    .about(0, cert);
    problem.key_file = Some(key_file.to_owned());
    problems.push(problem);
}

/// Our own party in the PModes is what partners are given; when its signing or
/// encryption certificate is not the one we use, they will reject our messages or encrypt
/// to a key we do not hold.
fn compare_with_pmode(inv: &Inventory, problems: &mut Vec<Problem>) {
    let first_der = |e: &Loaded| -> Option<Vec<u8>> {
        e.certs.as_ref().ok()?.first().and_then(|c| c.to_der().ok())
    };
    for role in [Role::Signing, Role::Encryption] {
        let mine = inv
            .entries
            .iter()
            .find(|e| e.used.owner == "ours" && e.used.role == role);
        let published = inv
            .entries
            .iter()
            .find(|e| e.used.owner == inv.our_party && e.used.role == role);
        let (Some(mine), Some(published)) = (mine, published) else {
            continue;
        };
        let (Some(a), Some(b)) = (first_der(mine), first_der(published)) else {
            continue;
        };
        if a != b {
            problems.push(Problem::new(
                Severity::Warning,
                "differs_from_pmode",
                &published.used,
                format!(
                    "the {} certificate of our party '{}' in the PModes is not the one in {} ({})",
                    role.name(),
                    inv.our_party,
                    mine.used.source,
                    mine.used.file.display()
                ),
                "partners use the PMode copy: put the certificate we use there (or fix the configuration), and send it to the partners",
            ));
        }
    }
}
