//! The PMode model: what a set of PMode files means once it has been read and checked.
//!
//! The file format (TOML) lives in [`super::files`]; this module holds the resolved
//! values the rest of Varti works with. Every leg carries full copies of the profiles it
//! names (security, receipts, reception awareness, …), so a caller holding a [`Leg`] has
//! everything it needs to send or receive on it.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The ebMS3 namespace prefix that MEP, binding, MPC and test-service URIs share.
pub const EBMS_NS: &str = "http://docs.oasis-open.org/ebxml-msg/ebms/v3.0/ns/core/200704";
/// The default message partition channel (ebMS3 Core §3.4.1).
pub const DEFAULT_MPC: &str =
    "http://docs.oasis-open.org/ebxml-msg/ebms/v3.0/ns/core/200704/defaultMPC";
/// The ebMS test service (ebMS3 Core §5.2.2.9).
pub const TEST_SERVICE: &str =
    "http://docs.oasis-open.org/ebxml-msg/ebms/v3.0/ns/core/200704/service";
/// The ebMS test action (ebMS3 Core §5.2.2.9).
pub const TEST_ACTION: &str = "http://docs.oasis-open.org/ebxml-msg/ebms/v3.0/ns/core/200704/test";

/// A place in a PMode file: `file:line:column` (line and column count from 1; the
/// column counts characters, not bytes).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Location {
    /// The file, as it was found (the directory given joined with the file name).
    pub file: PathBuf,
    /// Line, from 1.
    pub line: usize,
    /// Column, from 1.
    pub column: usize,
}

impl Location {
    /// The start of a file (for problems that concern the whole file).
    pub(crate) fn file_start(file: &Path) -> Location {
        Location {
            file: file.to_path_buf(),
            line: 1,
            column: 1,
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file.display(), self.line, self.column)
    }
}

/// A set of PMode files: every party and every leg found in one directory.
#[derive(Debug, Clone, Default)]
pub struct PModeSet {
    /// The parties (access points), from every file; names are unique in the set.
    pub parties: Vec<Party>,
    /// The legs of every process of every file, in file order.
    pub legs: Vec<Leg>,
}

impl PModeSet {
    /// The party with this name.
    pub fn party(&self, name: &str) -> Option<&Party> {
        self.parties.iter().find(|p| p.name == name)
    }

    /// The number of distinct processes the legs belong to.
    pub fn process_count(&self) -> usize {
        let mut seen: Vec<(&Path, &str)> = self
            .legs
            .iter()
            .map(|l| (l.file.as_path(), l.process.as_str()))
            .collect();
        seen.sort();
        seen.dedup();
        seen.len()
    }
}

/// One party identifier (`eb:PartyId` and its `type`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PartyId {
    /// The identifier.
    pub value: String,
    /// The `type` attribute (an ebCore party id type URN), when there is one.
    pub id_type: Option<String>,
}

impl fmt::Display for PartyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.id_type {
            Some(t) => write!(f, "{} (type {})", self.value, t),
            None => write!(f, "{} (no type)", self.value),
        }
    }
}

/// An access point taking part in agreements.
#[derive(Debug, Clone)]
pub struct Party {
    /// The name legs and processes refer to it by (local to Varti, never on the wire).
    pub name: String,
    /// Its identifiers; a message names one of them.
    pub ids: Vec<PartyId>,
    /// Where its AS4 endpoint listens (`https://…`), when we send to it.
    pub endpoint: Option<String>,
    /// The certificate its messages are signed with (PEM), resolved against the file.
    pub signing_cert: Option<PathBuf>,
    /// Its next signing certificate (a key rollover, PEM): while it is configured,
    /// messages and receipts signed with either certificate are accepted, each within its
    /// own validity period (so the next one from its validity start on).
    pub next_signing_cert: Option<PathBuf>,
    /// The certificate we encrypt for it with (PEM), resolved against the file.
    pub encryption_cert: Option<PathBuf>,
    /// TLS settings for talking to it.
    pub tls: Option<TlsSettings>,
    /// CRL files (PEM or DER) its signing certificate's chain is checked against on
    /// receipt, resolved against the file; empty: no revocation checking.
    pub crls: Vec<PathBuf>,
    /// Why its keys and certificates may be weaker than the policy of
    /// [`crate::security::keys`] (`allow_weak_keys = "reason"`): weak keys are then
    /// warnings instead of errors. `None`: the policy applies.
    pub allow_weak_keys: Option<String>,
    /// How its endpoint and certificate are found at run time (`dynamic = true` and a
    /// `[party.discovery]` block); `None`: a static party (`endpoint`, `encryption_cert`).
    pub discovery: Option<DiscoverySettings>,
    /// Where it is defined.
    pub location: Location,
}

/// The `[party.discovery]` block of a dynamic party: where its SMP is published, whom to
/// trust, and what to ask for (see docs/discovery.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoverySettings {
    /// The network's name (logs, cache key).
    pub network: String,
    /// The SML / BDXL zone the participant's DNS name is made in.
    pub sml_zone: Option<String>,
    /// A fixed SMP base URL instead of the DNS look-up.
    pub smp_url: Option<String>,
    /// How the participant id becomes a DNS name: `bdxl`, `peppol-naptr` or `sml-cname`.
    pub dns_scheme: crate::discovery::DnsScheme,
    /// The SMP's dialect: `oasis-1`, `peppol` or `oasis-2`.
    pub smp_dialect: crate::discovery::SmpDialect,
    /// NAPTR services accepted (default `meta:smp`).
    pub naptr_services: Vec<String>,
    /// PEM files of the certificates SMP answers must be signed under.
    pub smp_anchors: Vec<PathBuf>,
    /// PEM files of the CA certificates the endpoint's certificates must chain to.
    pub ap_anchors: Vec<PathBuf>,
    /// The transport profile asked for.
    pub transport_profile: String,
    /// The participant looked up (`scheme::value`).
    pub participant: crate::discovery::Identifier,
    /// The document type asked for (`scheme::value`).
    pub document_type: crate::discovery::Identifier,
    /// The process asked for (`scheme::value`); `None`: any.
    pub process: Option<crate::discovery::Identifier>,
    /// How long an answer is reused (bounded by the DNS records' TTL).
    pub cache_ttl: Duration,
    /// A DNS server (`ip:port`) to ask instead of the system's resolvers.
    pub dns_server: Option<std::net::SocketAddr>,
}

impl Party {
    /// Whether the party has the identifier `value`, of type `id_type` when one is given
    /// (an `eb:PartyId` without `@type` matches an id of any type).
    pub fn has_id(&self, value: &str, id_type: Option<&str>) -> bool {
        self.ids
            .iter()
            .any(|id| id.value == value && (id_type.is_none() || id.id_type.as_deref() == id_type))
    }
}

/// TLS settings of a party.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// The lowest TLS version accepted (1.2 or 1.3; nothing older is allowed by AS4).
    pub min_version: TlsVersion,
    /// Whether a client certificate is required on connections with this party.
    pub client_auth: bool,
    /// The party's TLS certificate (PEM), when it is pinned or is our own.
    pub cert: Option<PathBuf>,
    /// The CA certificate(s) (PEM) that its TLS certificate must chain to.
    pub trusted_ca: Option<PathBuf>,
}

/// A TLS protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsVersion {
    /// TLS 1.2.
    V1_2,
    /// TLS 1.3.
    V1_3,
}

/// Message exchange pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mep {
    /// `…/200704/oneWay`.
    OneWay,
    /// `…/200704/twoWay`.
    TwoWay,
}

impl Mep {
    /// The MEP URI.
    pub fn uri(self) -> String {
        match self {
            Mep::OneWay => format!("{EBMS_NS}/oneWay"),
            Mep::TwoWay => format!("{EBMS_NS}/twoWay"),
        }
    }
}

/// Transport channel binding of a MEP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Binding {
    /// `…/200704/push`.
    Push,
    /// `…/200704/pushAndPush`.
    PushAndPush,
    /// `…/200704/pull`.
    Pull,
}

impl Binding {
    /// The binding URI.
    pub fn uri(self) -> String {
        match self {
            Binding::Push => format!("{EBMS_NS}/push"),
            Binding::PushAndPush => format!("{EBMS_NS}/pushAndPush"),
            Binding::Pull => format!("{EBMS_NS}/pull"),
        }
    }
}

/// `eb:AgreementRef` and its `type`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgreementRef {
    /// The agreement.
    pub value: String,
    /// The `type` attribute, when there is one.
    pub agreement_type: Option<String>,
}

/// `eb:Service` and its `type`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    /// The service.
    pub value: String,
    /// The `type` attribute, when there is one.
    pub service_type: Option<String>,
}

/// One side of a leg: a role and the parties that may play it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LegSide {
    /// `eb:Role`.
    pub role: String,
    /// Names of the parties (see [`PModeSet::party`]).
    pub parties: Vec<String>,
}

/// A leg: one kind of user message between two roles, with everything needed to send
/// or receive it.
#[derive(Debug, Clone)]
pub struct Leg {
    /// The leg's name, unique in its process.
    pub name: String,
    /// The process it belongs to, unique in its file.
    pub process: String,
    /// The file it comes from.
    pub file: PathBuf,
    /// The value `eb:AgreementRef/@pmode` carries for this leg, when set.
    pub pmode_id: Option<String>,
    /// `eb:AgreementRef`, absent when messages carry none.
    pub agreement: Option<AgreementRef>,
    /// The process MEP.
    pub mep: Mep,
    /// The process binding.
    pub binding: Binding,
    /// True for the second leg of a two-way exchange, sent by the responder.
    pub reply: bool,
    /// The sending side (`eb:From`): the initiator, or the responder on a reply leg.
    pub from: LegSide,
    /// The receiving side (`eb:To`).
    pub to: LegSide,
    /// `eb:Service`.
    pub service: Service,
    /// `eb:Action`.
    pub action: String,
    /// The message partition channel.
    pub mpc: String,
    /// What payloads must look like; `None` allows any.
    pub payload: Option<PayloadProfile>,
    /// Message properties that must or may be present.
    pub properties: Vec<PropertyRule>,
    /// Signing and encryption.
    pub security: SecurityProfile,
    /// Receipts.
    pub receipt: ReceiptSettings,
    /// Retries and duplicate detection.
    pub reception: ReceptionAwareness,
    /// Error reporting.
    pub errors: ErrorHandling,
    /// Compression.
    pub compression: Compression,
    /// Whether a sender that is no party of the PModes is accepted on this leg as one of
    /// its dynamic `from` parties, when its signing certificate chains to that party's
    /// network's AP anchors (the process's `dynamic_initiators = true`; initiator legs).
    pub dynamic_initiators: bool,
    /// Where the leg is defined (its `name`).
    pub location: Location,
}

impl Leg {
    /// A short human label: `file.toml process 'p' leg 'l'`.
    pub fn label(&self) -> String {
        let file = self
            .file
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        format!("{file} process '{}' leg '{}'", self.process, self.name)
    }
}

/// A payload profile: the parts a message carries, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PayloadProfile {
    /// The parts; the first is the leading business document.
    pub parts: Vec<PartRule>,
    /// The largest total payload size in bytes, when limited.
    pub max_size: Option<u64>,
}

/// One payload part of a [`PayloadProfile`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartRule {
    /// A name for diagnostics.
    pub name: String,
    /// Acceptable MIME types (empty: any).
    pub mime_types: Vec<String>,
    /// Whether the part must be present.
    pub required: bool,
    /// The largest size of this part in bytes, when limited.
    pub max_size: Option<u64>,
    /// The Content-ID the part must have, when fixed (`cid:…`).
    pub cid: Option<String>,
}

/// A message property a leg requires or allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PropertyRule {
    /// The property name, e.g. `originalSender`.
    pub name: String,
    /// Whether it must be present.
    pub required: bool,
}

/// Which eDelivery AS4 security profile a leg uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecurityProfileKind {
    /// eDelivery AS4 1.15: RSA-SHA256, RSA-OAEP key transport, AES-128-GCM.
    As4v1_15,
    /// eDelivery AS4 2.0 Common Usage Profile: Ed25519 and X25519.
    As4v2Eddsa,
    /// eDelivery AS4 2.0 EC alternative: ECDSA P-256 and ECDH-ES.
    As4v2Ecdsa,
}

impl SecurityProfileKind {
    /// Every profile, in the order the documentation lists them.
    pub const ALL: [SecurityProfileKind; 3] = [
        SecurityProfileKind::As4v1_15,
        SecurityProfileKind::As4v2Eddsa,
        SecurityProfileKind::As4v2Ecdsa,
    ];

    /// The name PMode files and the CLI use: `as4-1.15`, `as4-2.0-eddsa`, `as4-2.0-ecdsa`.
    pub fn name(self) -> &'static str {
        match self {
            SecurityProfileKind::As4v1_15 => "as4-1.15",
            SecurityProfileKind::As4v2Eddsa => "as4-2.0-eddsa",
            SecurityProfileKind::As4v2Ecdsa => "as4-2.0-ecdsa",
        }
    }

    /// The profile of that [`name`](Self::name), if it is one.
    pub fn from_name(name: &str) -> Option<SecurityProfileKind> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }
}

/// How a signature or encryption names the certificate (WS-Security token reference).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenReference {
    /// BinarySecurityToken, direct reference (X509v3).
    Bst,
    /// Key Identifier: the Subject Key Identifier (Domibus's default).
    Ski,
    /// Issuer name and serial number.
    IssuerSerial,
    /// BinarySecurityToken holding a PKIPath.
    BstPkiPath,
}

/// Signing and encryption of a leg.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecurityProfile {
    /// The profile (algorithms).
    pub profile: SecurityProfileKind,
    /// Whether messages are signed.
    pub sign: bool,
    /// Whether payloads are encrypted.
    pub encrypt: bool,
    /// How the certificate is referenced.
    pub token_reference: TokenReference,
    /// Algorithm URIs accepted on receipt beyond the profile's (legacy peers).
    pub allowed_legacy_algorithms: Vec<String>,
}

impl Default for SecurityProfile {
    /// eDelivery AS4 1.15, signed and encrypted, BinarySecurityToken.
    fn default() -> Self {
        SecurityProfile {
            profile: SecurityProfileKind::As4v1_15,
            sign: true,
            encrypt: true,
            token_reference: TokenReference::Bst,
            allowed_legacy_algorithms: Vec::new(),
        }
    }
}

/// Receipts of a leg.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReceiptSettings {
    /// Whether a receipt is expected (and sent).
    pub enabled: bool,
    /// Whether receipts carry non-repudiation information.
    pub non_repudiation: bool,
}

impl Default for ReceiptSettings {
    /// Signed receipts with non-repudiation, as AS4 requires.
    fn default() -> Self {
        ReceiptSettings {
            enabled: true,
            non_repudiation: true,
        }
    }
}

/// How retries are spread (Domibus's `timeout;attempts;strategy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryStrategy {
    /// Equal intervals: `timeout / attempts`.
    Constant,
    /// Doubling intervals that add up to the timeout.
    Progressive,
}

/// A retry schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RetrySchedule {
    /// Explicit waits before each retry.
    Intervals(Vec<Duration>),
    /// `attempts` retries spread over `timeout`.
    Spread {
        /// The time within which all retries happen.
        timeout: Duration,
        /// How many retries.
        attempts: u32,
        /// How they are spread.
        strategy: RetryStrategy,
    },
}

impl RetrySchedule {
    /// The waits before each retry, in order.
    pub fn intervals(&self) -> Vec<Duration> {
        match self {
            RetrySchedule::Intervals(v) => v.clone(),
            RetrySchedule::Spread {
                timeout,
                attempts,
                strategy,
            } => {
                let n = (*attempts).min(64);
                if n == 0 {
                    return Vec::new();
                }
                match strategy {
                    RetryStrategy::Constant => vec![*timeout / n; n as usize],
                    RetryStrategy::Progressive => {
                        // base * (1 + 2 + … + 2^(n-1)) = timeout
                        let total = (1u128 << n) - 1;
                        let base = timeout.as_millis() / total;
                        (0..n)
                            .map(|i| Duration::from_millis((base << i) as u64))
                            .collect()
                    }
                }
            }
        }
    }
}

/// AS4 reception awareness: retries and duplicate detection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceptionAwareness {
    /// The retry schedule (empty: no retry).
    pub retry: RetrySchedule,
    /// Whether duplicates are detected and dropped.
    pub duplicate_detection: bool,
    /// How long message ids are remembered for duplicate detection.
    pub duplicate_window: Duration,
}

impl Default for ReceptionAwareness {
    /// Retries after 1, 2, 5 and 10 minutes; duplicates detected for 7 days.
    fn default() -> Self {
        ReceptionAwareness {
            retry: RetrySchedule::Intervals(vec![
                Duration::from_secs(60),
                Duration::from_secs(120),
                Duration::from_secs(300),
                Duration::from_secs(600),
            ]),
            duplicate_detection: true,
            duplicate_window: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// Error handling of a leg.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorHandling {
    /// Errors go back in the HTTP response (synchronously), as AS4 requires.
    pub report_as_response: bool,
    /// The producer (our backend) hears about errors on messages it sent.
    pub notify_producer: bool,
    /// The consumer (our backend) hears about errors on messages it receives.
    pub notify_consumer: bool,
    /// The producer hears when delivery failed (EBMS:0301 / EBMS:0202).
    pub notify_producer_on_delivery_failure: bool,
}

impl Default for ErrorHandling {
    /// Synchronous error signals; the producer hears about failures.
    fn default() -> Self {
        ErrorHandling {
            report_as_response: true,
            notify_producer: true,
            notify_consumer: false,
            notify_producer_on_delivery_failure: true,
        }
    }
}

/// Compression of a leg.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compression {
    /// Whether payloads are gzip-compressed when sending (receiving always accepts both).
    pub compress: bool,
    /// The largest size a part may decompress to (the zip-bomb guard), in bytes.
    pub max_decompressed_size: u64,
    /// Media types sent uncompressed even when `compress` is on (a media type, or a
    /// prefix ending in `*`; see [`leaves_uncompressed`](crate::compress::leaves_uncompressed)).
    pub uncompressed_types: Vec<String>,
}

/// The decompression cap when a PMode does not set one: 1 GiB.
pub(crate) const DEFAULT_MAX_DECOMPRESSED: u64 = 1 << 30;

impl Default for Compression {
    /// Compress, except the media types of
    /// [`DEFAULT_UNCOMPRESSED_TYPES`](crate::compress::DEFAULT_UNCOMPRESSED_TYPES), and
    /// refuse parts that decompress beyond 1 GiB.
    fn default() -> Self {
        Compression {
            compress: true,
            max_decompressed_size: DEFAULT_MAX_DECOMPRESSED,
            uncompressed_types: crate::compress::DEFAULT_UNCOMPRESSED_TYPES
                .iter()
                .map(|t| (*t).to_owned())
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_spread_divides_the_timeout() {
        let s = RetrySchedule::Spread {
            timeout: Duration::from_secs(12 * 60),
            attempts: 4,
            strategy: RetryStrategy::Constant,
        };
        assert_eq!(s.intervals(), vec![Duration::from_secs(180); 4]);
    }

    #[test]
    fn progressive_spread_doubles_and_fits_the_timeout() {
        let s = RetrySchedule::Spread {
            timeout: Duration::from_secs(70),
            attempts: 3,
            strategy: RetryStrategy::Progressive,
        };
        assert_eq!(
            s.intervals(),
            vec![
                Duration::from_secs(10),
                Duration::from_secs(20),
                Duration::from_secs(40)
            ]
        );
    }
}
