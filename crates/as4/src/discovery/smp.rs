//! SMP requests and answers: OASIS SMP 1.0, the Peppol SMP and OASIS SMP 2.0.
//!
//! [`service_metadata_url`] builds the request for a participant and document type
//! (SMP 1.0 §3.4.1 / SMP 2.0 §5.4: each `scheme::value` percent-encoded whole).
//! [`read_service_metadata`] reads the answer in whichever dialect it is written (told by
//! the document element's namespace), checks its signature ([`super::signature`]) and
//! returns the metadata with the signature's outcome kept apart, so that a diagnosis can
//! still show what an unverifiable answer says. [`ServiceMetadata::choose`] then picks
//! the endpoint: the requested process (or any), the transport profile, current at the
//! time of use (SMP 1.0: "senders should ignore" endpoints outside their dates; SMP 2.0's
//! dates are days and the expiration day is exclusive), and its certificate.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use openssl::x509::X509;
use time::format_description::well_known::Rfc3339;
use time::{Date, Month, OffsetDateTime, PrimitiveDateTime, Time};

use super::signature::{verify_enveloped, SmpSigner};
use super::{DiscoveryError, Identifier};
use crate::security::dom::{Element, XmlDocument};

/// OASIS SMP 1.0.
pub(crate) const NS_SMP1: &str = "http://docs.oasis-open.org/bdxr/ns/SMP/2016/05";
/// The Peppol SMP.
pub(crate) const NS_PEPPOL: &str = "http://busdox.org/serviceMetadata/publishing/1.0/";
/// Peppol identifiers.
pub(crate) const NS_PEPPOL_IDS: &str = "http://busdox.org/transport/identifiers/1.0/";
/// WS-Addressing (the Peppol endpoint address).
pub(crate) const NS_WSA: &str = "http://www.w3.org/2005/08/addressing";
/// OASIS SMP 2.0 ServiceMetadata.
pub(crate) const NS_SMP2_SM: &str = "http://docs.oasis-open.org/bdxr/ns/SMP/2/ServiceMetadata";
/// OASIS SMP 2.0 basic components.
pub(crate) const NS_SMP2_CBC: &str = "http://docs.oasis-open.org/bdxr/ns/SMP/2/BasicComponents";
/// OASIS SMP 2.0 aggregate components.
pub(crate) const NS_SMP2_CAC: &str = "http://docs.oasis-open.org/bdxr/ns/SMP/2/AggregateComponents";

/// The dialect of an SMP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SmpDialect {
    /// OASIS SMP 1.0 (`…/bdxr/ns/SMP/2016/05`).
    Oasis1,
    /// The Peppol SMP (`busdox.org`), SMP 1.0's ancestor.
    Peppol,
    /// OASIS SMP 2.0 (`…/bdxr/ns/SMP/2/`), under `/bdxr-smp-2/`.
    Oasis2,
}

impl SmpDialect {
    /// The names accepted in configuration and on the command line.
    pub const NAMES: &'static str = "oasis-1, peppol, oasis-2";

    /// Reads a configured name.
    pub fn parse(name: &str) -> Result<Self, DiscoveryError> {
        match name.to_ascii_lowercase().as_str() {
            "oasis-1" | "oasis1" | "smp1" | "1" | "1.0" => Ok(SmpDialect::Oasis1),
            "peppol" => Ok(SmpDialect::Peppol),
            "oasis-2" | "oasis2" | "smp2" | "2" | "2.0" => Ok(SmpDialect::Oasis2),
            other => Err(DiscoveryError::Config(format!(
                "unknown SMP version `{other}` (known: {})",
                Self::NAMES
            ))),
        }
    }

    /// The configured name.
    pub fn name(self) -> &'static str {
        match self {
            SmpDialect::Oasis1 => "oasis-1",
            SmpDialect::Peppol => "peppol",
            SmpDialect::Oasis2 => "oasis-2",
        }
    }
}

/// The URL of the service metadata of `participant` for `document` at the SMP `base`.
pub fn service_metadata_url(
    base: &str,
    dialect: SmpDialect,
    participant: &Identifier,
    document: &Identifier,
) -> String {
    let base = base.trim_end_matches('/');
    let api = match dialect {
        SmpDialect::Oasis2 => "/bdxr-smp-2",
        SmpDialect::Oasis1 | SmpDialect::Peppol => "",
    };
    format!(
        "{base}{api}/{}/services/{}",
        participant.url_segment(),
        document.url_segment()
    )
}

/// A redirect to another SMP's answer (followed once).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redirect {
    /// Where the answer is.
    pub href: String,
    /// SMP 1.0: the subject of the certificate that must sign the destination.
    pub certificate_uid: Option<String>,
    /// SMP 2.0: the certificates one of which must sign the destination (DER).
    pub certificates: Vec<Vec<u8>>,
}

/// A published certificate: its SMP 2.0 `TypeCode` (when given) and its DER bytes.
pub type PublishedCertificate = (Option<String>, Vec<u8>);

/// One endpoint of a process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The transport profile identifier.
    pub transport_profile: String,
    /// The endpoint URL.
    pub url: String,
    /// Not to be used before.
    pub activation: Option<OffsetDateTime>,
    /// Not to be used from (exclusive).
    pub expiration: Option<OffsetDateTime>,
    /// Its certificates (DER) with their SMP 2.0 `TypeCode`, when given.
    pub certificates: Vec<PublishedCertificate>,
}

/// A process and its endpoints (or a redirect, in SMP 2.0).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Process {
    /// The process ids (none: any process, SMP 2.0).
    pub ids: Vec<Identifier>,
    /// The endpoints.
    pub endpoints: Vec<Endpoint>,
    /// An SMP 2.0 redirect instead of endpoints.
    pub redirect: Option<Redirect>,
}

/// An SMP answer about one participant and document type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceMetadata {
    /// The dialect it is written in.
    pub dialect: SmpDialect,
    /// The participant it is about.
    pub participant: Option<Identifier>,
    /// The document type it is about.
    pub document: Option<Identifier>,
    /// The processes.
    pub processes: Vec<Process>,
    /// An SMP 1.0 / Peppol redirect instead of service information.
    pub redirect: Option<Redirect>,
}

/// An answer read: the metadata, and the outcome of its signature check kept apart.
#[derive(Debug, Clone)]
pub struct SmpResponse {
    /// What the answer says.
    pub metadata: ServiceMetadata,
    /// The verified signer, or why the signature is refused.
    pub signature: Result<SmpSigner, DiscoveryError>,
}

/// The endpoint chosen for a send.
#[derive(Debug, Clone)]
pub struct ChosenEndpoint {
    /// The process it serves (None when the SMP 2.0 metadata names no process).
    pub process: Option<Identifier>,
    /// The endpoint.
    pub endpoint: Endpoint,
    /// Its certificate (the one to encrypt to; in single-certificate networks also the
    /// one its receipts are signed with).
    pub certificate: X509,
    /// SMP 2.0: a separately published signing certificate (a `TypeCode` naming
    /// `Signature` or `sign`), the one its receipts are signed with.
    pub signing_certificate: Option<X509>,
}

fn malformed(detail: impl Into<String>) -> DiscoveryError {
    DiscoveryError::Malformed(detail.into())
}

/// Reads an SMP answer (service metadata in any dialect) and checks its signature against
/// `anchors` at `at` (`None`: cryptography only, for diagnosis).
pub fn read_service_metadata(
    xml: &[u8],
    anchors: Option<&[X509]>,
    at: OffsetDateTime,
) -> Result<SmpResponse, DiscoveryError> {
    let doc = XmlDocument::parse(xml).map_err(|e| malformed(e.detail))?;
    let root = doc
        .root()
        .ok_or_else(|| malformed("the answer has no document element"))?;
    let metadata = match (root.namespace(), root.local_name()) {
        (Some(NS_SMP1), _) => read_v1(&root, SmpDialect::Oasis1)?,
        (Some(NS_PEPPOL), _) => read_v1(&root, SmpDialect::Peppol)?,
        (Some(NS_SMP2_SM), "ServiceMetadata") => read_v2(&root)?,
        (ns, name) => {
            return Err(malformed(format!(
                "the document element is {{{}}}{name}, not SMP service metadata (OASIS SMP 1.0, Peppol or SMP 2.0)",
                ns.unwrap_or("")
            )))
        }
    };
    let signature = verify_enveloped(&doc, anchors, at);
    Ok(SmpResponse {
        metadata,
        signature,
    })
}

fn text_of(e: Option<Element<'_>>) -> Option<String> {
    e.map(|e| e.text().trim().to_owned())
        .filter(|t| !t.is_empty())
}

fn identifier(e: Option<Element<'_>>, scheme_attr: &str) -> Option<Identifier> {
    e.map(|e| Identifier::new(e.attribute(scheme_attr).unwrap_or(""), e.text().trim()))
}

fn read_v1(root: &Element<'_>, dialect: SmpDialect) -> Result<ServiceMetadata, DiscoveryError> {
    let ns = if dialect == SmpDialect::Peppol {
        NS_PEPPOL
    } else {
        NS_SMP1
    };
    let ids_ns = if dialect == SmpDialect::Peppol {
        NS_PEPPOL_IDS
    } else {
        NS_SMP1
    };
    let sm = match root.local_name() {
        "SignedServiceMetadata" => root
            .child(ns, "ServiceMetadata")
            .ok_or_else(|| malformed("SignedServiceMetadata holds no ServiceMetadata"))?,
        "ServiceMetadata" => *root,
        other => {
            return Err(malformed(format!(
                "the document element is {other}, not SignedServiceMetadata: a service group or another resource was returned"
            )))
        }
    };
    if let Some(r) = sm.child(ns, "Redirect") {
        return Ok(ServiceMetadata {
            dialect,
            participant: None,
            document: None,
            processes: Vec::new(),
            redirect: Some(Redirect {
                href: r
                    .attribute("href")
                    .ok_or_else(|| malformed("Redirect has no href"))?
                    .to_owned(),
                certificate_uid: text_of(r.child(ns, "CertificateUID")),
                certificates: Vec::new(),
            }),
        });
    }
    let info = sm.child(ns, "ServiceInformation").ok_or_else(|| {
        malformed("ServiceMetadata holds neither ServiceInformation nor Redirect")
    })?;
    let mut processes = Vec::new();
    for p in info
        .child(ns, "ProcessList")
        .into_iter()
        .flat_map(|l| l.children_named(ns, "Process"))
    {
        let mut endpoints = Vec::new();
        for e in p
            .child(ns, "ServiceEndpointList")
            .into_iter()
            .flat_map(|l| l.children_named(ns, "Endpoint"))
        {
            let url = if dialect == SmpDialect::Peppol {
                text_of(
                    e.child(NS_WSA, "EndpointReference")
                        .and_then(|r| r.child(NS_WSA, "Address")),
                )
            } else {
                text_of(e.child(ns, "EndpointURI"))
            }
            .unwrap_or_default();
            let mut certificates = Vec::new();
            if let Some(c) = text_of(e.child(ns, "Certificate")) {
                certificates.push((None, decode_certificate(&c)?));
            }
            endpoints.push(Endpoint {
                transport_profile: e.attribute("transportProfile").unwrap_or("").to_owned(),
                url,
                activation: text_of(e.child(ns, "ServiceActivationDate"))
                    .map(|t| parse_time(&t, false))
                    .transpose()?,
                expiration: text_of(e.child(ns, "ServiceExpirationDate"))
                    .map(|t| parse_time(&t, false))
                    .transpose()?,
                certificates,
            });
        }
        processes.push(Process {
            ids: identifier(p.child(ids_ns, "ProcessIdentifier"), "scheme")
                .into_iter()
                .collect(),
            endpoints,
            redirect: None,
        });
    }
    Ok(ServiceMetadata {
        dialect,
        participant: identifier(info.child(ids_ns, "ParticipantIdentifier"), "scheme"),
        document: identifier(info.child(ids_ns, "DocumentIdentifier"), "scheme"),
        processes,
        redirect: None,
    })
}

fn read_v2(root: &Element<'_>) -> Result<ServiceMetadata, DiscoveryError> {
    let cbc = |e: &Element<'_>, name: &str| text_of(e.child(NS_SMP2_CBC, name));
    let certificates = |e: &Element<'_>| -> Result<Vec<PublishedCertificate>, DiscoveryError> {
        e.children_named(NS_SMP2_CAC, "Certificate")
            .map(|c| {
                let content = cbc(&c, "ContentBinaryObject")
                    .ok_or_else(|| malformed("a Certificate has no ContentBinaryObject"))?;
                Ok((cbc(&c, "TypeCode"), decode_certificate(&content)?))
            })
            .collect()
    };
    let mut processes = Vec::new();
    for pm in root.children_named(NS_SMP2_CAC, "ProcessMetadata") {
        let ids = pm
            .children_named(NS_SMP2_CAC, "Process")
            .filter_map(|p| identifier(p.child(NS_SMP2_CBC, "ID"), "schemeID"))
            .collect();
        let redirect = match pm.child(NS_SMP2_CAC, "Redirect") {
            Some(r) => Some(Redirect {
                href: cbc(&r, "PublisherURI")
                    .ok_or_else(|| malformed("Redirect has no PublisherURI"))?,
                certificate_uid: None,
                certificates: certificates(&r)?.into_iter().map(|(_, der)| der).collect(),
            }),
            None => None,
        };
        let mut endpoints = Vec::new();
        for e in pm.children_named(NS_SMP2_CAC, "Endpoint") {
            endpoints.push(Endpoint {
                transport_profile: cbc(&e, "TransportProfileID").unwrap_or_default(),
                url: cbc(&e, "AddressURI").unwrap_or_default(),
                activation: cbc(&e, "ActivationDate")
                    .map(|t| parse_time(&t, false))
                    .transpose()?,
                expiration: cbc(&e, "ExpirationDate")
                    .map(|t| parse_time(&t, true))
                    .transpose()?,
                certificates: certificates(&e)?,
            });
        }
        processes.push(Process {
            ids,
            endpoints,
            redirect,
        });
    }
    Ok(ServiceMetadata {
        dialect: SmpDialect::Oasis2,
        participant: identifier(root.child(NS_SMP2_CBC, "ParticipantID"), "schemeID"),
        document: identifier(root.child(NS_SMP2_CBC, "ID"), "schemeID"),
        processes,
        redirect: None,
    })
}

fn decode_certificate(text: &str) -> Result<Vec<u8>, DiscoveryError> {
    let b64: String = text
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .flat_map(|l| l.chars())
        .filter(|c| !c.is_whitespace())
        .collect();
    STANDARD
        .decode(b64)
        .map_err(|e| malformed(format!("an endpoint Certificate is not Base64: {e}")))
}

/// Reads `xs:dateTime` (offset optional: UTC) or `xs:date` (midnight UTC).
fn parse_time(text: &str, _exclusive_day: bool) -> Result<OffsetDateTime, DiscoveryError> {
    let bad = || malformed(format!("`{text}` is not an xs:dateTime or xs:date"));
    if let Ok(t) = OffsetDateTime::parse(text, &Rfc3339) {
        return Ok(t);
    }
    if text.contains('T') {
        return OffsetDateTime::parse(&format!("{text}Z"), &Rfc3339).map_err(|_| bad());
    }
    // A date, possibly with a zone suffix we ignore (`Z`, `+01:00`).
    let day = text.get(..10).ok_or_else(bad)?;
    let mut parts = day.split('-');
    let (Some(y), Some(m), Some(d)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(bad());
    };
    let year: i32 = y.parse().map_err(|_| bad())?;
    let month: u8 = m.parse().map_err(|_| bad())?;
    let dom: u8 = d.parse().map_err(|_| bad())?;
    let date = Date::from_calendar_date(year, Month::try_from(month).map_err(|_| bad())?, dom)
        .map_err(|_| bad())?;
    Ok(PrimitiveDateTime::new(date, Time::MIDNIGHT).assume_utc())
}

fn list(items: impl Iterator<Item = String>) -> String {
    let v: Vec<String> = items.collect();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

impl ServiceMetadata {
    /// Checks that the answer is about `participant` (ignoring case) and `document`
    /// (exactly), as asked: some SMPs match case-insensitively and answer for another id.
    pub fn check_answers(
        &self,
        participant: &Identifier,
        document: &Identifier,
    ) -> Result<(), DiscoveryError> {
        if let Some(p) = &self.participant {
            if !p.same_as(participant, true) {
                return Err(DiscoveryError::WrongAnswer(format!(
                    "participant {p} instead of {participant}"
                )));
            }
        }
        if let Some(d) = &self.document {
            if !d.same_as(document, false) {
                return Err(DiscoveryError::WrongAnswer(format!(
                    "document type {d} instead of {document}"
                )));
            }
        }
        Ok(())
    }

    /// The processes matching `process` (all when `None`; an SMP 2.0 process without ids
    /// serves any).
    fn matching(&self, process: Option<&Identifier>) -> Vec<&Process> {
        self.processes
            .iter()
            .filter(|p| match process {
                None => true,
                Some(wanted) => p.ids.is_empty() || p.ids.iter().any(|i| i.same_as(wanted, false)),
            })
            .collect()
    }

    /// The redirect to follow for `process`, if the answer is one.
    pub fn redirect_for(&self, process: Option<&Identifier>) -> Option<&Redirect> {
        self.redirect.as_ref().or_else(|| {
            self.matching(process)
                .into_iter()
                .find_map(|p| p.redirect.as_ref())
        })
    }

    /// Picks the endpoint for `process` (any when `None`) with `transport_profile`,
    /// current at `at`, and its certificate (with several, SMP 2.0's encryption one:
    /// a `TypeCode` naming `Exchange` or `encrypt`, else the first).
    pub fn choose(
        &self,
        process: Option<&Identifier>,
        transport_profile: &str,
        at: OffsetDateTime,
    ) -> Result<ChosenEndpoint, DiscoveryError> {
        let processes = self.matching(process);
        if processes.is_empty() {
            return Err(DiscoveryError::NoProcess {
                document: self
                    .document
                    .as_ref()
                    .map(|d| d.to_string())
                    .unwrap_or_else(|| "?".into()),
                process: process.map(|p| p.to_string()).unwrap_or_default(),
                offered: list(
                    self.processes
                        .iter()
                        .flat_map(|p| p.ids.iter().map(|i| i.to_string())),
                ),
            });
        }
        let candidates: Vec<(&Process, &Endpoint)> = processes
            .iter()
            .flat_map(|p| p.endpoints.iter().map(move |e| (*p, e)))
            .filter(|(_, e)| e.transport_profile == transport_profile)
            .collect();
        if candidates.is_empty() {
            return Err(DiscoveryError::TransportNotOffered {
                wanted: transport_profile.to_owned(),
                offered: list(
                    processes
                        .iter()
                        .flat_map(|p| p.endpoints.iter().map(|e| e.transport_profile.clone())),
                ),
            });
        }
        let mut refusal = None;
        for (p, e) in candidates {
            if let Some(from) = e.activation.filter(|from| at < *from) {
                refusal.get_or_insert(DiscoveryError::NotYetActive {
                    url: e.url.clone(),
                    from: from.to_string(),
                    at: at.to_string(),
                });
                continue;
            }
            if let Some(until) = e.expiration.filter(|until| at >= *until) {
                refusal.get_or_insert(DiscoveryError::Expired {
                    url: e.url.clone(),
                    until: until.to_string(),
                    at: at.to_string(),
                });
                continue;
            }
            if e.url.is_empty() {
                return Err(malformed("the endpoint has no address"));
            }
            let der = e
                .certificates
                .iter()
                .find(|(code, _)| {
                    code.as_deref().is_some_and(|c| {
                        let c = c.to_ascii_lowercase();
                        c.ends_with("#exchange") || c.contains("encrypt")
                    })
                })
                .or_else(|| e.certificates.first())
                .map(|(_, der)| der)
                .ok_or_else(|| DiscoveryError::NoCertificate {
                    url: e.url.clone(),
                    detail: "no Certificate element".into(),
                })?;
            let certificate = X509::from_der(der).map_err(|err| DiscoveryError::NoCertificate {
                url: e.url.clone(),
                detail: format!("the certificate is not DER X.509: {err}"),
            })?;
            let signing_certificate = e
                .certificates
                .iter()
                .find(|(code, _)| {
                    code.as_deref().is_some_and(|c| {
                        let c = c.to_ascii_lowercase();
                        c.ends_with("#signature") || c.contains("sign")
                    })
                })
                .map(|(_, der)| {
                    X509::from_der(der).map_err(|err| DiscoveryError::NoCertificate {
                        url: e.url.clone(),
                        detail: format!("the signing certificate is not DER X.509: {err}"),
                    })
                })
                .transpose()?;
            return Ok(ChosenEndpoint {
                process: p.ids.first().cloned(),
                endpoint: e.clone(),
                certificate,
                signing_certificate,
            });
        }
        Err(refusal.expect("every candidate was refused with a reason"))
    }
}
