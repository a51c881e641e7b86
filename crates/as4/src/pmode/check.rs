//! Checks that span files: certificates and the legs that use them (validity, key usage,
//! key strength per [`crate::security::keys`]), party ids used twice, and legs that would
//! match the same inbound message.
//!
//! [`super::load_dir`] runs them; they are public so that a caller holding a
//! [`PModeSet`] can ask `ambiguous_pairs` directly, and the certificate helpers
//! ([`parse_certificates`], [`validity_at`], [`key_usage_unfit`]) serve `varti certs`.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;

use openssl::asn1::{Asn1Time, Asn1TimeRef};
use openssl::nid::Nid;
use openssl::pkey::Id;
use openssl::x509::{X509KeyUsage, X509Ref, X509};

use super::files::{CertRef, CrlRef, Diagnostic, LoadOptions};
use super::model::*;
use crate::security::keys;
use crate::security::revocation::Crl;

/// What a certificate is used for; each role needs its own key usage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CertRole {
    /// Signing messages (keyUsage digitalSignature or nonRepudiation).
    Signing,
    /// Receiving encrypted payloads (keyUsage keyEncipherment or keyAgreement).
    Encryption,
    /// A TLS end-entity certificate.
    Tls,
    /// A CA certificate trusted for TLS.
    Ca,
}

impl CertRole {
    /// The keyUsage bits of which a certificate in this role needs at least one.
    pub fn key_usage(self) -> X509KeyUsage {
        match self {
            CertRole::Signing => X509KeyUsage::DIGITAL_SIGNATURE | X509KeyUsage::NON_REPUDIATION,
            CertRole::Encryption => X509KeyUsage::KEY_ENCIPHERMENT | X509KeyUsage::KEY_AGREEMENT,
            CertRole::Tls => {
                X509KeyUsage::DIGITAL_SIGNATURE
                    | X509KeyUsage::KEY_ENCIPHERMENT
                    | X509KeyUsage::KEY_AGREEMENT
            }
            CertRole::Ca => X509KeyUsage::KEY_CERT_SIGN,
        }
    }

    fn field(self) -> &'static str {
        match self {
            CertRole::Signing => "signing_cert",
            CertRole::Encryption => "encryption_cert",
            CertRole::Tls => "tls.cert",
            CertRole::Ca => "tls.trusted_ca",
        }
    }
}

/// What was learnt of a certificate that could be read.
struct LoadedCert {
    key: Id,
    ec_p256: bool,
}

/// Checks every certificate file the parties name (missing, unreadable, expired, not yet
/// valid, expiring soon, wrong key usage), then that each leg's parties have the
/// certificates its security profile needs, with keys of the right algorithm.
pub(crate) fn check_certificates(
    set: &PModeSet,
    refs: &[CertRef],
    options: &LoadOptions,
    diags: &mut Vec<Diagnostic>,
) {
    let at_unix = options.at_unix.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0)
    });
    let Ok(at) = Asn1Time::from_unix(at_unix as _) else {
        diags.push(Diagnostic::error(
            Location::file_start(std::path::Path::new(".")),
            "the time to check certificates at is out of range",
            "give a date between 1970 and 9999",
        ));
        return;
    };
    let mut loaded: HashMap<(PathBuf, CertRole), LoadedCert> = HashMap::new();
    let mut exceptions_used: HashSet<&str> = HashSet::new();
    for r in refs {
        let allow = set
            .party(&r.party)
            .and_then(|p| p.allow_weak_keys.as_deref());
        let mut used = false;
        if let Some(cert) = check_one(r, &at, options.expiry_warning_days, allow, &mut used, diags)
        {
            loaded.insert((r.path.clone(), r.role), cert);
        }
        if used {
            exceptions_used.insert(r.party.as_str());
        }
    }
    // An exception no longer needed (the partner renewed its keys) should go.
    for party in &set.parties {
        if party.allow_weak_keys.is_some() && !exceptions_used.contains(party.name.as_str()) {
            diags.push(Diagnostic::warning(
                party.location.clone(),
                format!(
                    "party '{}' has allow_weak_keys, but none of its certificates is weak",
                    party.name
                ),
                "remove allow_weak_keys so that a weak key given later is refused",
            ));
        }
    }

    // Each leg: the sender's signing key and the receiver's encryption key must exist and
    // fit the profile. Reported once per party and field, at the leg that first needs it.
    let mut reported: HashSet<(String, CertRole, &'static str)> = HashSet::new();
    for leg in &set.legs {
        let sec = &leg.security;
        let needs = [
            (sec.sign, &leg.from.parties, CertRole::Signing),
            (sec.encrypt, &leg.to.parties, CertRole::Encryption),
        ];
        for (needed, parties, role) in needs {
            if !needed {
                continue;
            }
            for name in parties {
                let Some(party) = set.party(name) else {
                    continue;
                };
                let path = match role {
                    CertRole::Signing => &party.signing_cert,
                    _ => &party.encryption_cert,
                };
                let Some(path) = path else {
                    if reported.insert((name.clone(), role, "missing")) {
                        diags.push(Diagnostic::warning(
                            leg.location.clone(),
                            format!(
                                "leg '{}' {} messages {} party '{}', which has no {}",
                                leg.name,
                                if role == CertRole::Signing { "signs" } else { "encrypts" },
                                if role == CertRole::Signing { "from" } else { "for" },
                                name,
                                role.field()
                            ),
                            format!(
                                "add {} = \"path/to/cert.pem\" to party '{}' (defined at {}); until then these messages fail with EBMS:0101/EBMS:0102",
                                role.field(),
                                name,
                                party.location
                            ),
                        ));
                    }
                    continue;
                };
                let Some(cert) = loaded.get(&(path.clone(), role)) else {
                    continue; // already reported by check_one
                };
                let (ok, wanted) = key_fits(sec.profile, role, cert);
                if !ok && reported.insert((name.clone(), role, profile_name(sec.profile))) {
                    let at = refs
                        .iter()
                        .find(|r| r.party == *name && r.role == role)
                        .map(|r| r.location.clone())
                        .unwrap_or_else(|| party.location.clone());
                    diags.push(Diagnostic::error(
                        at,
                        format!(
                            "the {} of party '{}' has a {} key, but {} (at {}) uses security profile {} which needs {}",
                            role.field(),
                            name,
                            key_name(cert),
                            leg.label(),
                            leg.location,
                            profile_name(sec.profile),
                            wanted
                        ),
                        "give the party a certificate for that profile, or change the leg's security profile",
                    ));
                }
            }
        }
    }
}

/// Checks one certificate file; `allow` is the party's `allow_weak_keys` reason, and
/// `exception_used` is set when it turned a weak key into a warning.
fn check_one(
    r: &CertRef,
    at: &Asn1Time,
    warn_days: u32,
    allow: Option<&str>,
    exception_used: &mut bool,
    diags: &mut Vec<Diagnostic>,
) -> Option<LoadedCert> {
    let what = format!("{} of party '{}'", r.role.field(), r.party);
    let bytes = match std::fs::read(&r.path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            diags.push(Diagnostic::error(
                r.location.clone(),
                format!("certificate file '{}' ({what}) not found", r.written),
                format!(
                    "the path is relative to the PMode file (here {}); put the certificate (PEM) there or fix the path",
                    r.path.display()
                ),
            ));
            return None;
        }
        Err(e) => {
            diags.push(Diagnostic::error(
                r.location.clone(),
                format!("cannot read certificate file '{}' ({what}): {e}", r.written),
                "make the file readable by the user running varti",
            ));
            return None;
        }
    };
    let certs = parse_certificates(&bytes);
    let Some(cert) = certs.first() else {
        diags.push(Diagnostic::error(
            r.location.clone(),
            format!(
                "'{}' ({what}) holds no X.509 certificate",
                r.written
            ),
            "give a PEM (-----BEGIN CERTIFICATE-----) or DER certificate file; a private key or keystore will not do",
        ));
        return None;
    };
    let mut usable = true;
    for c in &certs {
        usable &= check_validity(r, &what, c, at, warn_days, diags);
    }
    for (i, c) in certs.iter().enumerate() {
        if let Err(weak) = keys::check_certificate(c) {
            let which = if i == 0 {
                format!("certificate '{}' ({what}, {})", r.written, subject_cn(c))
            } else {
                format!(
                    "certificate #{} in '{}' ({what}, {})",
                    i + 1,
                    r.written,
                    subject_cn(c)
                )
            };
            let message = format!("{which} has {weak}");
            diags.push(match allow {
                Some(reason) => {
                    *exception_used = true;
                    Diagnostic::warning(
                        r.location.clone(),
                        format!(
                            "{message}; accepted because party '{}' has allow_weak_keys = \"{reason}\"",
                            r.party
                        ),
                        format!("{} (then remove allow_weak_keys)", weak.hint()),
                    )
                }
                None => Diagnostic::error(
                    r.location.clone(),
                    message,
                    format!(
                        "{}; to accept it for a while anyway, add allow_weak_keys = \"why, until when\" to party '{}'",
                        weak.hint(),
                        r.party
                    ),
                ),
            });
        }
    }
    if let Some(ku) = key_usage_unfit(cert, r.role) {
        usable = false;
        diags.push(Diagnostic::error(
            r.location.clone(),
            format!(
                "certificate '{}' cannot be used as {what}: its keyUsage is {} but this role needs {}",
                r.written,
                usage_names(ku),
                usage_names(r.role.key_usage()).replace(", ", " or ")
            ),
            match r.role {
                CertRole::Signing => "use the party's signing certificate here (keyUsage digitalSignature/nonRepudiation); an encryption certificate will not verify signatures",
                CertRole::Encryption => "use the party's encryption certificate here (keyUsage keyEncipherment/keyAgreement)",
                CertRole::Tls => "use the party's TLS certificate here",
                CertRole::Ca => "give the CA certificate that issued the party's TLS certificate",
            },
        ));
    }
    if !usable {
        return None;
    }
    let key = cert.public_key().ok()?;
    let ec_p256 = key
        .ec_key()
        .ok()
        .and_then(|k| k.group().curve_name())
        .is_some_and(|n| n == Nid::X9_62_PRIME256V1);
    Some(LoadedCert {
        key: key.id(),
        ec_p256,
    })
}

fn check_validity(
    r: &CertRef,
    what: &str,
    cert: &X509,
    at: &Asn1Time,
    warn_days: u32,
    diags: &mut Vec<Diagnostic>,
) -> bool {
    let subject = subject_cn(cert);
    match validity_at(cert, at, warn_days) {
        Validity::Valid { .. } => true,
        Validity::Expired => {
            diags.push(Diagnostic::error(
                r.location.clone(),
                format!(
                    "certificate '{}' ({what}, {subject}) expired on {}",
                    r.written,
                    cert.not_after()
                ),
                "get the partner's renewed certificate and replace the file (or check with --at to judge it at another time)",
            ));
            false
        }
        Validity::NotYetValid => {
            diags.push(Diagnostic::error(
                r.location.clone(),
                format!(
                    "certificate '{}' ({what}, {subject}) is not valid before {}",
                    r.written,
                    cert.not_before()
                ),
                "check the clock, or wait until the certificate becomes valid",
            ));
            false
        }
        Validity::ExpiresSoon { days } => {
            diags.push(Diagnostic::warning(
                r.location.clone(),
                format!(
                    "certificate '{}' ({what}, {subject}) expires on {}, in {days} days",
                    r.written,
                    cert.not_after(),
                ),
                "ask the partner for its renewed certificate now",
            ));
            true
        }
    }
}

/// Where a certificate stands at some instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validity {
    /// Its notAfter is at or before the instant.
    Expired,
    /// Its notBefore is after the instant.
    NotYetValid,
    /// Valid, but it expires within the warning period: in `days` whole days.
    ExpiresSoon {
        /// Whole days left.
        days: i32,
    },
    /// Valid for `days` more whole days, beyond the warning period.
    Valid {
        /// Whole days left.
        days: i32,
    },
}

/// Judges `cert`'s validity period at `at`; [`Validity::ExpiresSoon`] when fewer than
/// `warn_days` whole days are left.
pub fn validity_at(cert: &X509Ref, at: &Asn1TimeRef, warn_days: u32) -> Validity {
    use std::cmp::Ordering;
    if cert.not_after().compare(at).ok() != Some(Ordering::Greater) {
        return Validity::Expired;
    }
    if cert.not_before().compare(at).ok() == Some(Ordering::Greater) {
        return Validity::NotYetValid;
    }
    let days = at
        .diff(cert.not_after())
        .map(|d| d.days)
        .unwrap_or(i32::MAX);
    if i64::from(days) < i64::from(warn_days) {
        Validity::ExpiresSoon { days }
    } else {
        Validity::Valid { days }
    }
}

/// The certificates of a file's bytes: every PEM `CERTIFICATE` block, or one DER
/// certificate. Empty when there is none (a key, a keystore, garbage).
pub fn parse_certificates(bytes: &[u8]) -> Vec<X509> {
    if bytes.starts_with(b"-----") || bytes.windows(11).any(|w| w == b"-----BEGIN ") {
        X509::stack_from_pem(bytes).unwrap_or_default()
    } else {
        X509::from_der(bytes).map(|c| vec![c]).unwrap_or_default()
    }
}

/// `Some(its keyUsage)` when `cert` has a keyUsage extension without any of the bits
/// `role` needs ([`CertRole::key_usage`]); `None` when it fits. A certificate without
/// the extension fits every role (RFC 5280 §4.2.1.3: no restriction).
pub fn key_usage_unfit(cert: &X509Ref, role: CertRole) -> Option<X509KeyUsage> {
    cert.key_usage()
        .filter(|ku| !ku.intersects(role.key_usage()))
}

/// `CN=…` of the subject, or `no CN`.
pub(crate) fn subject_cn(cert: &X509Ref) -> String {
    cert.subject_name()
        .entries_by_nid(Nid::COMMONNAME)
        .next()
        .and_then(|e| e.data().to_string().ok())
        .map(|s| format!("CN={s}"))
        .unwrap_or_else(|| "no CN".to_owned())
}

/// The keyUsage bits by their RFC 5280 names, comma-separated (`empty` for none).
pub fn usage_names(ku: X509KeyUsage) -> String {
    let names = [
        (X509KeyUsage::DIGITAL_SIGNATURE, "digitalSignature"),
        (X509KeyUsage::NON_REPUDIATION, "nonRepudiation"),
        (X509KeyUsage::KEY_ENCIPHERMENT, "keyEncipherment"),
        (X509KeyUsage::DATA_ENCIPHERMENT, "dataEncipherment"),
        (X509KeyUsage::KEY_AGREEMENT, "keyAgreement"),
        (X509KeyUsage::KEY_CERT_SIGN, "keyCertSign"),
        (X509KeyUsage::CRL_SIGN, "cRLSign"),
    ];
    let v: Vec<&str> = names
        .iter()
        .filter(|(f, _)| ku.contains(*f))
        .map(|(_, n)| *n)
        .collect();
    if v.is_empty() {
        "empty".to_owned()
    } else {
        v.join(", ")
    }
}

fn profile_name(p: SecurityProfileKind) -> &'static str {
    match p {
        SecurityProfileKind::As4v1_15 => "as4-1.15",
        SecurityProfileKind::As4v2Eddsa => "as4-2.0-eddsa",
        SecurityProfileKind::As4v2Ecdsa => "as4-2.0-ecdsa",
    }
}

fn key_name(c: &LoadedCert) -> &'static str {
    match c.key {
        Id::RSA => "RSA",
        Id::EC if c.ec_p256 => "EC P-256",
        Id::EC => "EC (not P-256)",
        Id::ED25519 => "Ed25519",
        Id::X25519 => "X25519",
        Id::ED448 => "Ed448",
        Id::X448 => "X448",
        _ => "unsupported",
    }
}

/// Whether the key suits the profile and role, and what the profile wants.
fn key_fits(p: SecurityProfileKind, role: CertRole, c: &LoadedCert) -> (bool, &'static str) {
    match (p, role) {
        (SecurityProfileKind::As4v1_15, _) => (c.key == Id::RSA, "an RSA key"),
        (SecurityProfileKind::As4v2Eddsa, CertRole::Signing) => {
            (c.key == Id::ED25519, "an Ed25519 key")
        }
        (SecurityProfileKind::As4v2Eddsa, _) => (c.key == Id::X25519, "an X25519 key"),
        (SecurityProfileKind::As4v2Ecdsa, _) => (c.ec_p256, "an EC P-256 key"),
    }
}

/// Checks legs against each other: party ids claimed by two parties, and pairs of legs
/// that would both match one inbound message.
pub(crate) fn check_legs(set: &PModeSet, diags: &mut Vec<Diagnostic>) {
    let mut owners: HashMap<&PartyId, &Party> = HashMap::new();
    for party in &set.parties {
        for id in &party.ids {
            if let Some(first) = owners.get(id) {
                if first.name != party.name {
                    diags.push(Diagnostic::error(
                        party.location.clone(),
                        format!(
                            "party id {id} is used by party '{}' and party '{}'",
                            first.name, party.name
                        ),
                        format!(
                            "a message naming it could not tell them apart; merge the two parties or remove the id from one (the other is at {})",
                            first.location
                        ),
                    ));
                }
            } else {
                owners.insert(id, party);
            }
        }
    }
    for (a, b) in ambiguous_pairs(set) {
        let (first, second) = (&set.legs[a], &set.legs[b]);
        diags.push(Diagnostic::error(
            second.location.clone(),
            format!(
                "{} matches the same inbound messages as {} (at {})",
                second.label(),
                first.label(),
                first.location
            ),
            "two legs with the same parties, roles, service, action, agreement and MPC make routing ambiguous; change one of these, or remove one leg",
        ));
    }
}

/// Pairs of leg indexes `(earlier, later)` that both match some inbound message: same
/// roles, service and type, action, agreement and type and MPC, and a party id in common
/// on each side.
pub(crate) fn ambiguous_pairs(set: &PModeSet) -> Vec<(usize, usize)> {
    let ids = |names: &[String]| -> HashSet<PartyId> {
        names
            .iter()
            .filter_map(|n| set.party(n))
            .flat_map(|p| p.ids.iter().cloned())
            .collect()
    };
    let sides: Vec<(HashSet<PartyId>, HashSet<PartyId>)> = set
        .legs
        .iter()
        .map(|l| (ids(&l.from.parties), ids(&l.to.parties)))
        .collect();
    let mut pairs = Vec::new();
    for (i, a) in set.legs.iter().enumerate() {
        for (j, b) in set.legs.iter().enumerate().skip(i + 1) {
            let same = a.from.role == b.from.role
                && a.to.role == b.to.role
                && a.service == b.service
                && a.action == b.action
                && a.agreement == b.agreement
                && a.mpc == b.mpc;
            if same && !sides[i].0.is_disjoint(&sides[j].0) && !sides[i].1.is_disjoint(&sides[j].1)
            {
                pairs.push((i, j));
            }
        }
    }
    pairs
}

/// Checks every CRL file the parties name: missing or unparsable is an error (messages
/// from the party would be refused); a CRL past its nextUpdate at the check time is a
/// warning, since it is only refused once the time comes and the file may be refreshed
/// before then.
pub(crate) fn check_crls(refs: &[CrlRef], options: &LoadOptions, diags: &mut Vec<Diagnostic>) {
    let at = match options.at_unix {
        Some(t) => time::OffsetDateTime::from_unix_timestamp(t)
            .unwrap_or_else(|_| time::OffsetDateTime::now_utc()),
        None => time::OffsetDateTime::now_utc(),
    };
    for r in refs {
        match Crl::load(&r.path) {
            Err(why) => diags.push(Diagnostic::error(
                r.location.clone(),
                format!("CRL '{}' of party '{}': {why}", r.written, r.party),
                format!(
                    "the path is relative to the PMode file (here {}); until it is fixed every \
                     signed message from '{}' is refused with EBMS:0101",
                    r.path.display(),
                    r.party
                ),
            )),
            Ok(crls) => {
                for crl in crls.iter().filter(|c| c.is_stale(at)) {
                    diags.push(Diagnostic::warning(
                        r.location.clone(),
                        format!(
                            "CRL '{}' of party '{}' (from '{}') is out of date: its nextUpdate was {}",
                            r.written,
                            r.party,
                            crl.issuer(),
                            crl.next_update().unwrap_or_default()
                        ),
                        "download the CA's current CRL (the URL is in the certificates' CRL Distribution Points) and replace the file; until then messages from this party are refused with EBMS:0101",
                    ));
                }
            }
        }
    }
}
