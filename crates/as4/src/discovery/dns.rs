//! The DNS name of a participant in an SML / BDXL zone.
//!
//! Three constructions are in use (sources in `docs/discovery.md`):
//! * [`DnsScheme::Bdxl`] — eDelivery BDXL as the EC's SML and Dynamic Discovery Client
//!   compute it: SHA-256 of the lower-cased identifier, Base32 without padding (upper
//!   case). An ebCore party-id type (`urn:oasis:names:tc:ebcore:partyid-type:…`) is hashed
//!   whole (`scheme:value`, one colon) with no scheme label; any other scheme hashes the
//!   value only and becomes a label before the zone.
//! * [`DnsScheme::PeppolNaptr`] — Peppol since 2025-11: the same hash of the value only,
//!   written in lower case, then the lower-cased scheme label and the zone.
//! * [`DnsScheme::PeppolCname`] — the legacy Peppol SML: `B-` + hex MD5 of the
//!   lower-cased value, the scheme label and the zone; the name is the SMP's host (a
//!   CNAME), there is no NAPTR step.

use data_encoding::BASE32_NOPAD;
use openssl::hash::{hash, MessageDigest};
use openssl::sha::sha256;

use super::{DiscoveryError, Identifier, EBCORE_PREFIX};

/// How a network turns a participant id into a DNS name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DnsScheme {
    /// eDelivery BDXL (SHA-256 + Base32, ebCore ids hashed whole); then NAPTR.
    Bdxl,
    /// Peppol NAPTR (SHA-256 + lower-case Base32 of the value); then NAPTR.
    PeppolNaptr,
    /// Legacy Peppol SML (`B-` + MD5 of the value): the SMP host itself, no NAPTR.
    PeppolCname,
}

impl DnsScheme {
    /// The names accepted in configuration and on the command line.
    pub const NAMES: &'static str = "bdxl, peppol-naptr, sml-cname";

    /// Reads a configured name (`bdxl`, `peppol-naptr`, `sml-cname`).
    pub fn parse(name: &str) -> Result<Self, DiscoveryError> {
        match name.to_ascii_lowercase().as_str() {
            "bdxl" | "edelivery-bdxl" => Ok(DnsScheme::Bdxl),
            "peppol-naptr" | "peppol" => Ok(DnsScheme::PeppolNaptr),
            "sml-cname" | "peppol-cname" | "cname" => Ok(DnsScheme::PeppolCname),
            other => Err(DiscoveryError::Config(format!(
                "unknown DNS scheme `{other}` (known: {})",
                Self::NAMES
            ))),
        }
    }

    /// The configured name.
    pub fn name(self) -> &'static str {
        match self {
            DnsScheme::Bdxl => "bdxl",
            DnsScheme::PeppolNaptr => "peppol-naptr",
            DnsScheme::PeppolCname => "sml-cname",
        }
    }

    /// Whether the name is looked up for NAPTR records (else it is the SMP host).
    pub fn uses_naptr(self) -> bool {
        !matches!(self, DnsScheme::PeppolCname)
    }
}

/// The DNS name of `participant` in `zone` under `scheme` (no trailing dot).
pub fn dns_name(participant: &Identifier, scheme: DnsScheme, zone: &str) -> String {
    let zone = zone.trim_matches('.');
    let scheme_label = participant.scheme.to_lowercase();
    let value = participant.value.to_lowercase();
    match scheme {
        DnsScheme::Bdxl => {
            if scheme_label.starts_with(EBCORE_PREFIX) {
                let whole = format!("{scheme_label}:{value}");
                format!("{}.{zone}", BASE32_NOPAD.encode(&sha256(whole.as_bytes())))
            } else {
                format!(
                    "{}.{scheme_label}.{zone}",
                    BASE32_NOPAD.encode(&sha256(value.as_bytes()))
                )
            }
        }
        DnsScheme::PeppolNaptr => format!(
            "{}.{scheme_label}.{zone}",
            BASE32_NOPAD
                .encode(&sha256(value.as_bytes()))
                .to_ascii_lowercase()
        ),
        DnsScheme::PeppolCname => {
            let label = if value == "*" {
                "*".to_owned()
            } else {
                let digest =
                    hash(MessageDigest::md5(), value.as_bytes()).expect("MD5 is always available");
                let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
                format!("B-{hex}")
            };
            format!("{label}.{scheme_label}.{zone}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> Identifier {
        Identifier::parse(s).unwrap()
    }

    // Vectors: BDXL 1.6 §1.5.1/§1.5.2, the EC DDC tests, and the Peppol POLICY 7 example
    // as peppol-commons reproduces it (see /work/shared/specs/discovery.md §1).
    #[test]
    fn edelivery_bdxl_vectors() {
        assert_eq!(
            dns_name(
                &id("urn:oasis:names:tc:ebcore:partyid-type:iso6523:0088::4035811991021"),
                DnsScheme::Bdxl,
                "bdxl.example.com"
            ),
            "I3QYB36CTAYRFGTHBYCQZDTOJFHGAZJEGLFOOE7727EGVDWRK5QQ.bdxl.example.com"
        );
        assert_eq!(
            dns_name(
                &id("iso6523-actorid-upis::0088:4035811991021"),
                DnsScheme::Bdxl,
                "bdxl.example.com."
            ),
            "LZMEDSMZXYD37YC74TZVPYCMUANFCMN667JHGBFQDDRVMSE6NYTA.iso6523-actorid-upis.bdxl.example.com"
        );
        assert_eq!(
            dns_name(
                &id("country-state-qns::urn:brazil:saopaulo"),
                DnsScheme::Bdxl,
                "z"
            ),
            "2CDN5ANIHSX2W6D2ZA5YSSGR2BXVLCGTLS6STIYM2CZYHB3L7GMA.country-state-qns.z"
        );
        assert_eq!(
            dns_name(
                &id("urn:oasis:names:tc:ebcore:partyid-type:unregistered::urn:brazil:saopaulo"),
                DnsScheme::Bdxl,
                "z"
            ),
            "XN536BJVZUJJWWJZPQN5KAM6LFPK4ZZD2VL4AXQRELT5HTCJ6LEQ.z"
        );
    }

    #[test]
    fn peppol_naptr_vector_ignores_the_case_of_the_value() {
        for v in ["0088:123abc", "0088:123ABC"] {
            assert_eq!(
                dns_name(
                    &id(&format!("iso6523-actorid-upis::{v}")),
                    DnsScheme::PeppolNaptr,
                    "participant.sml.prod.tech.peppol.org"
                ),
                "y7dzfxaf3d4cjz4kcgrxtec6twvcga4ky7zwa5boif6mswd4tdrq.iso6523-actorid-upis.participant.sml.prod.tech.peppol.org"
            );
        }
    }

    #[test]
    fn legacy_sml_vector_and_wildcard() {
        assert_eq!(
            dns_name(
                &id("iso6523-actorid-upis::0088:123abc"),
                DnsScheme::PeppolCname,
                "edelivery.tech.ec.europa.eu"
            ),
            "B-f5e78500450d37de5aabe6648ac3bb70.iso6523-actorid-upis.edelivery.tech.ec.europa.eu"
        );
        assert_eq!(
            dns_name(&id("iso6523-actorid-upis::*"), DnsScheme::PeppolCname, "z"),
            "*.iso6523-actorid-upis.z"
        );
    }

    #[test]
    fn identifiers_are_scheme_double_colon_value() {
        assert!(Identifier::parse("0088:123").is_err());
        assert!(Identifier::parse("scheme::").is_err());
        let i = id("busdox-docid-qns::urn:x::y##UBL-2.1");
        assert_eq!(i.scheme, "busdox-docid-qns");
        assert_eq!(i.value, "urn:x::y##UBL-2.1");
        assert_eq!(
            i.url_segment(),
            "busdox-docid-qns%3A%3Aurn%3Ax%3A%3Ay%23%23UBL-2.1"
        );
        assert_eq!(
            DnsScheme::parse("SML-CNAME").unwrap(),
            DnsScheme::PeppolCname
        );
        assert!(DnsScheme::parse("sha1").is_err());
    }
}
