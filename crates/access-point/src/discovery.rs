//! Dynamic discovery at run time: the DNS look-up, the SMP request and the cache.
//!
//! The protocol is `varti_as4::discovery`'s; this module does the I/O around it:
//! participant id → DNS name (the network's scheme) → NAPTR (hickory) → SMP URL → HTTP GET
//! of the service metadata (a redirect followed once) → signature and endpoint checks →
//! the endpoint URL and certificate, checked against the network's AP anchors.
//!
//! [`Discoverer::discover`] records every step in a [`Report`] (what `varti discover`
//! prints). With `verify` off (diagnosis only) a failed signature or AP-anchor check is
//! a warning instead of the outcome; such results are never cached. Verified outcomes,
//! found or refused, are cached for the network's TTL (bounded by the NAPTR records'
//! DNS TTL) until [`Discoverer::invalidate`] (a reload).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use hickory_resolver::config::{NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::{RData, RecordType};
use hickory_resolver::TokioResolver;
use http_body_util::{BodyExt, Empty, Limited};
use openssl::x509::X509;
use time::OffsetDateTime;
use varti_as4::discovery::{
    dns_name, read_service_metadata, service_metadata_url, smp_url_from_naptr, DiscoveryError,
    DnsScheme, Identifier, Naptr, SmpDialect, SMP_NAPTR_SERVICE,
};
use varti_as4::security::token::{
    distinguished_name_matches, distinguished_name_string, validate_certificate_chain,
};

use crate::https::{error_chain, https_client, HttpsClient, HttpsOptions};

/// Largest SMP answer read (service metadata is a few kilobytes).
const MAX_ANSWER: usize = 1024 * 1024;

/// One network partners are discovered in: where its SMPs are published and whom to trust.
#[derive(Debug, Clone)]
pub struct Network {
    /// Its name (configuration, logs, cache key).
    pub name: String,
    /// The SML / BDXL zone, e.g. `participant.sml.prod.tech.peppol.org`.
    pub sml_zone: Option<String>,
    /// How participant ids become DNS names.
    pub dns_scheme: DnsScheme,
    /// A fixed SMP base URL instead of the DNS look-up.
    pub smp_url: Option<String>,
    /// The SMP's dialect (decides the request path; answers are read in any dialect).
    pub smp_dialect: SmpDialect,
    /// The NAPTR services accepted (default `meta:smp`).
    pub naptr_services: Vec<String>,
    /// Certificates SMP answers must be signed under.
    pub smp_anchors: Vec<X509>,
    /// Certificates endpoint certificates must chain to.
    pub ap_anchors: Vec<X509>,
    /// The transport profile to use.
    pub transport_profile: String,
    /// How long an answer (found or refused) is reused.
    pub cache_ttl: Duration,
}

/// What to discover.
#[derive(Debug, Clone)]
pub struct Query {
    /// The final recipient.
    pub participant: Identifier,
    /// The document type.
    pub document: Identifier,
    /// The process (any when `None`).
    pub process: Option<Identifier>,
    /// The time of use: validity of endpoints and certificates.
    pub at: OffsetDateTime,
    /// Whether signatures and anchors are enforced (off: diagnosis only).
    pub verify: bool,
}

/// The endpoint discovered.
#[derive(Debug, Clone)]
pub struct Found {
    /// The endpoint URL.
    pub url: String,
    /// The transport profile.
    pub transport_profile: String,
    /// The process it serves, when named.
    pub process: Option<Identifier>,
    /// The endpoint's certificate (to encrypt to; in single-certificate networks also to
    /// verify its receipts with).
    pub certificate: X509,
    /// A separately published signing certificate (SMP 2.0), checked like the other.
    pub signing_certificate: Option<X509>,
    /// Whether the SMP signature and the AP anchors were checked and held.
    pub verified: bool,
}

/// One step of a look-up, as shown to an operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// A short key: `dns_name`, `naptr`, `smp_url`, `request`, `signature`, `redirect`,
    /// `endpoint`, `certificate`, `cache`.
    pub key: &'static str,
    /// What it found.
    pub value: String,
}

/// A look-up: its steps, warnings and outcome.
#[derive(Debug, Clone)]
pub struct Report {
    /// The steps in order.
    pub steps: Vec<Step>,
    /// Checks that failed but were not enforced (`verify` off).
    pub warnings: Vec<String>,
    /// The endpoint, or why there is none.
    pub outcome: Result<Found, DiscoveryError>,
}

impl Report {
    fn step(&mut self, key: &'static str, value: impl Into<String>) {
        self.steps.push(Step {
            key,
            value: value.into(),
        });
    }
}

/// Network, participant (lower case), document, process, transport profile.
type CacheKey = (String, String, String, String, String);
/// Until when, and the outcome.
type CacheEntry = (OffsetDateTime, Result<Found, DiscoveryError>);

/// Discovers endpoints: a DNS resolver, an HTTP client for SMPs and the answer cache.
pub struct Discoverer {
    resolver: TokioResolver,
    http: HttpsClient<Empty<Bytes>>,
    timeout: Duration,
    cache: Mutex<HashMap<CacheKey, CacheEntry>>,
}

impl std::fmt::Debug for Discoverer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Discoverer").finish_non_exhaustive()
    }
}

/// A DNS resolver asking `dns_server` (UDP, then TCP for long answers) or, when `None`,
/// the system's configured servers; one attempt per query, each bounded by `timeout`.
/// `setting` names the configuration key that sets the server, for the error message.
/// Shared by partner discovery and the OOTS gateway's common-services look-up.
pub fn dns_resolver(
    dns_server: Option<SocketAddr>,
    timeout: Duration,
    setting: &str,
) -> Result<TokioResolver, String> {
    let provider = TokioRuntimeProvider::default();
    let mut builder = match dns_server {
        Some(addr) => {
            let mut ns = NameServerConfig::udp_and_tcp(addr.ip());
            for c in &mut ns.connections {
                c.port = addr.port();
            }
            TokioResolver::builder_with_config(
                ResolverConfig::from_name_servers(vec![ns]),
                provider,
            )
        }
        None => TokioResolver::builder(provider).map_err(|e| {
            format!("cannot read the system's DNS configuration: {e} (set {setting})")
        })?,
    };
    let opts = builder.options_mut();
    opts.timeout = timeout;
    opts.attempts = 1;
    builder
        .build()
        .map_err(|e| format!("cannot set up the DNS resolver: {e}"))
}

impl Discoverer {
    /// A discoverer asking `dns_server` (or the system's resolvers when `None`), reaching
    /// SMPs over HTTPS trusting `tls_roots` (the system's CAs when empty) or plain HTTP,
    /// each DNS query and HTTP request bounded by `timeout`.
    pub fn new(
        dns_server: Option<SocketAddr>,
        tls_roots: Vec<rustls::pki_types::CertificateDer<'static>>,
        timeout: Duration,
    ) -> Result<Self, String> {
        let resolver = dns_resolver(dns_server, timeout, "discovery.dns_server")?;
        let mut roots = rustls::RootCertStore::empty();
        if tls_roots.is_empty() {
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
        } else {
            for r in tls_roots {
                roots
                    .add(r)
                    .map_err(|e| format!("an SMP TLS CA certificate cannot be used: {e}"))?;
            }
        }
        let tls = rustls::ClientConfig::builder_with_provider(crate::server::tls::provider())
            .with_protocol_versions(crate::server::tls::VERSIONS)
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let http = https_client(HttpsOptions {
            allow_plain_http: true,
            connect_timeout: Some(timeout),
            http2: false,
            ..HttpsOptions::new(tls)
        });
        Ok(Discoverer {
            resolver,
            http,
            timeout,
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// Forgets every cached answer (a reload: anchors or networks may have changed).
    pub fn invalidate(&self) {
        self.cache.lock().expect("cache lock").clear();
    }

    /// Looks `query` up in `network` (see the module documentation); `now` is the
    /// clock's time, for the cache.
    pub async fn discover(&self, network: &Network, query: &Query, now: OffsetDateTime) -> Report {
        let key: CacheKey = (
            network.name.clone(),
            query.participant.to_string().to_lowercase(),
            query.document.to_string(),
            query
                .process
                .as_ref()
                .map(|p| p.to_string())
                .unwrap_or_default(),
            network.transport_profile.clone(),
        );
        if query.verify {
            if let Some((until, outcome)) = self.cache.lock().expect("cache lock").get(&key) {
                if now < *until {
                    return Report {
                        steps: vec![Step {
                            key: "cache",
                            value: format!("answer cached until {until}"),
                        }],
                        warnings: Vec::new(),
                        outcome: outcome.clone(),
                    };
                }
            }
        }
        let mut report = Report {
            steps: Vec::new(),
            warnings: Vec::new(),
            outcome: Err(DiscoveryError::Config("not run".into())),
        };
        let mut ttl = network.cache_ttl;
        let outcome = self.run(network, query, &mut report, &mut ttl).await;
        let cacheable = query.verify
            && !matches!(
                outcome,
                Err(DiscoveryError::Dns { .. }) | Err(DiscoveryError::Smp { .. })
            );
        if cacheable {
            let until = now + ttl;
            self.cache
                .lock()
                .expect("cache lock")
                .insert(key, (until, outcome.clone()));
        }
        match &outcome {
            Ok(found) => tracing::info!(
                network = %network.name, participant = %query.participant, url = %found.url,
                verified = found.verified, "partner discovered"
            ),
            Err(e) => tracing::info!(
                network = %network.name, participant = %query.participant, error = %e,
                "partner discovery failed"
            ),
        }
        report.outcome = outcome;
        report
    }

    async fn run(
        &self,
        network: &Network,
        query: &Query,
        report: &mut Report,
        ttl: &mut Duration,
    ) -> Result<Found, DiscoveryError> {
        let base = match (&network.smp_url, &network.sml_zone) {
            (Some(url), _) => {
                report.step("smp_url", format!("{url} (configured)"));
                url.clone()
            }
            (None, Some(zone)) => {
                let name = dns_name(&query.participant, network.dns_scheme, zone);
                report.step(
                    "dns_name",
                    format!("{name} ({})", network.dns_scheme.name()),
                );
                if network.dns_scheme.uses_naptr() {
                    let (records, record_ttl) = self.naptr(&name).await?;
                    *ttl = (*ttl).min(record_ttl);
                    for r in &records {
                        report.step(
                            "naptr",
                            format!(
                                "{} {} \"{}\" \"{}\" \"{}\" {}",
                                r.order, r.preference, r.flags, r.service, r.regexp, r.replacement
                            ),
                        );
                    }
                    let services: Vec<&str> =
                        network.naptr_services.iter().map(String::as_str).collect();
                    let url = smp_url_from_naptr(&name, &records, &services)?;
                    report.step("smp_url", url.clone());
                    url
                } else {
                    let url = format!("http://{name}/");
                    report.step("smp_url", format!("{url} (the SML name is the SMP host)"));
                    url
                }
            }
            (None, None) => {
                return Err(DiscoveryError::Config(format!(
                    "network `{}` has neither an SML zone nor an SMP URL",
                    network.name
                )))
            }
        };
        let url = service_metadata_url(
            &base,
            network.smp_dialect,
            &query.participant,
            &query.document,
        );
        let anchors = query.verify.then_some(network.smp_anchors.as_slice());
        report.step("request", format!("GET {url}"));
        let answer = read_service_metadata(&self.get(&url).await?, anchors, query.at)?;
        match &answer.signature {
            Ok(s) => report.step(
                "signature",
                format!(
                    "{} by '{}' (issuer '{}'){}",
                    if s.trusted { "verified" } else { "valid" },
                    s.subject,
                    s.issuer,
                    if s.trusted {
                        ", trusted"
                    } else {
                        ", trust NOT checked"
                    }
                ),
            ),
            Err(e) => {
                report.step("signature", format!("REFUSED: {e}"));
                if query.verify {
                    return Err(e.clone());
                }
                report
                    .warnings
                    .push(format!("the SMP answer's signature does not hold: {e}"));
            }
        }
        let metadata = match answer
            .metadata
            .redirect_for(query.process.as_ref())
            .cloned()
        {
            None => answer.metadata,
            Some(redirect) => {
                // Followed once (SMP 1.0 §3.6.2.3); its signer must be the one named.
                report.step("redirect", redirect.href.clone());
                report.step("request", format!("GET {}", redirect.href));
                let target =
                    read_service_metadata(&self.get(&redirect.href).await?, anchors, query.at)?;
                let problem = match &target.signature {
                    Err(e) => Some(e.clone()),
                    Ok(s) => {
                        let named = if let Some(uid) = &redirect.certificate_uid {
                            distinguished_name_matches(uid, s.certificate.subject_name())
                        } else if !redirect.certificates.is_empty() {
                            let der = s.certificate.to_der().unwrap_or_default();
                            redirect.certificates.contains(&der)
                        } else {
                            true
                        };
                        if named {
                            report.step(
                                "signature",
                                format!("redirect target signed by '{}', as named", s.subject),
                            );
                            None
                        } else {
                            Some(DiscoveryError::Redirect(format!(
                                "the target is signed by '{}', not by the certificate the redirect names",
                                s.subject
                            )))
                        }
                    }
                };
                if let Some(e) = problem {
                    report.step("signature", format!("REFUSED: {e}"));
                    if query.verify {
                        return Err(e);
                    }
                    report.warnings.push(e.to_string());
                }
                if target
                    .metadata
                    .redirect_for(query.process.as_ref())
                    .is_some()
                {
                    return Err(DiscoveryError::Redirect(
                        "the redirected answer redirects again; a redirect is followed once".into(),
                    ));
                }
                target.metadata
            }
        };
        metadata.check_answers(&query.participant, &query.document)?;
        let chosen =
            metadata.choose(query.process.as_ref(), &network.transport_profile, query.at)?;
        report.step(
            "endpoint",
            format!(
                "{} ({}{})",
                chosen.endpoint.url,
                chosen.endpoint.transport_profile,
                chosen
                    .process
                    .as_ref()
                    .map(|p| format!(", process {p}"))
                    .unwrap_or_default()
            ),
        );
        let cert = &chosen.certificate;
        report.step(
            "certificate",
            format!(
                "subject '{}', issuer '{}', valid {} to {}",
                distinguished_name_string(cert.subject_name()),
                distinguished_name_string(cert.issuer_name()),
                cert.not_before(),
                cert.not_after()
            ),
        );
        if let Some(signing) = &chosen.signing_certificate {
            report.step(
                "signing_cert",
                format!(
                    "subject '{}', issuer '{}', valid {} to {}",
                    distinguished_name_string(signing.subject_name()),
                    distinguished_name_string(signing.issuer_name()),
                    signing.not_before(),
                    signing.not_after()
                ),
            );
        }
        let mut verified = query.verify;
        for c in std::iter::once(cert).chain(chosen.signing_certificate.as_ref()) {
            if let Err(e) = validate_certificate_chain(c, &[], &network.ap_anchors, query.at) {
                let e = DiscoveryError::UntrustedEndpoint(e.detail);
                if query.verify {
                    return Err(e);
                }
                report.warnings.push(e.to_string());
                verified = false;
            }
        }
        Ok(Found {
            url: chosen.endpoint.url.clone(),
            transport_profile: chosen.endpoint.transport_profile.clone(),
            process: chosen.process.clone(),
            certificate: chosen.certificate.clone(),
            signing_certificate: chosen.signing_certificate.clone(),
            verified,
        })
    }

    async fn naptr(&self, name: &str) -> Result<(Vec<Naptr>, Duration), DiscoveryError> {
        let fqdn = format!("{name}.");
        let lookup = match self.resolver.lookup(fqdn.as_str(), RecordType::NAPTR).await {
            Ok(l) => l,
            Err(e) if e.is_no_records_found() || e.is_nx_domain() => {
                return Err(DiscoveryError::NotRegistered {
                    record: "NAPTR",
                    name: name.to_owned(),
                    detail: e.to_string(),
                })
            }
            Err(e) => {
                return Err(DiscoveryError::Dns {
                    name: name.to_owned(),
                    detail: e.to_string(),
                })
            }
        };
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        let ttl = lookup
            .answers()
            .iter()
            .map(|r| r.ttl)
            .min()
            .map(|s| Duration::from_secs(u64::from(s)))
            .unwrap_or(Duration::ZERO);
        let records = lookup
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                RData::NAPTR(n) => Some(Naptr {
                    order: n.order,
                    preference: n.preference,
                    flags: text(&n.flags),
                    service: text(&n.services),
                    regexp: text(&n.regexp),
                    replacement: n.replacement.to_utf8(),
                }),
                _ => None,
            })
            .collect();
        Ok((records, ttl))
    }

    async fn get(&self, url: &str) -> Result<Vec<u8>, DiscoveryError> {
        let fail = |detail: String| DiscoveryError::Smp {
            url: url.to_owned(),
            detail,
        };
        let uri: http::Uri = url.parse().map_err(|e| fail(format!("not a URL: {e}")))?;
        let request = http::Request::get(uri)
            .header(http::header::ACCEPT, "text/xml, application/xml")
            .body(Empty::<Bytes>::new())
            .map_err(|e| fail(e.to_string()))?;
        let response = tokio::time::timeout(self.timeout, self.http.request(request))
            .await
            .map_err(|_| fail(format!("no answer within {:?}", self.timeout)))?
            .map_err(|e| fail(error_chain(&e)))?;
        let status = response.status();
        if status == http::StatusCode::NOT_FOUND {
            return Err(fail(
                "404: the SMP has no metadata for this participant and document type".into(),
            ));
        }
        if !status.is_success() {
            return Err(fail(format!("HTTP status {status}")));
        }
        let body = tokio::time::timeout(
            self.timeout,
            Limited::new(response.into_body(), MAX_ANSWER).collect(),
        )
        .await
        .map_err(|_| {
            fail(format!(
                "the answer did not arrive within {:?}",
                self.timeout
            ))
        })?
        .map_err(|e| {
            fail(format!(
                "reading the answer: {e} (at most {MAX_ANSWER} bytes)"
            ))
        })?;
        Ok(body.to_bytes().to_vec())
    }
}

impl Network {
    /// A network with the defaults: BDXL DNS names, OASIS SMP 1.0, the `meta:smp`
    /// NAPTR service, eDelivery AS4 1.x transport, a one-hour cache.
    pub fn new(name: impl Into<String>) -> Self {
        Network {
            name: name.into(),
            sml_zone: None,
            dns_scheme: DnsScheme::Bdxl,
            smp_url: None,
            smp_dialect: SmpDialect::Oasis1,
            naptr_services: vec![SMP_NAPTR_SERVICE.to_owned()],
            smp_anchors: Vec::new(),
            ap_anchors: Vec::new(),
            transport_profile: varti_as4::discovery::TRANSPORT_BDXR_AS4.to_owned(),
            cache_ttl: Duration::from_secs(3600),
        }
    }
}

/// A dynamic party of the PModes: its network, what is asked for, and a discoverer with
/// its own cache (a reload makes a new one, so a reload starts with an empty cache).
pub(crate) struct DynamicParty {
    network: Network,
    participant: Identifier,
    document: Identifier,
    process: Option<Identifier>,
    discoverer: Discoverer,
}

impl std::fmt::Debug for DynamicParty {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DynamicParty")
            .field("network", &self.network.name)
            .field("participant", &self.participant)
            .finish_non_exhaustive()
    }
}

/// Why a dynamic party's endpoint could not be had for a message.
#[derive(Debug, Clone)]
pub(crate) enum LookupFailure {
    /// DNS or the SMP could not be reached: may pass, retried like a transport failure.
    Transient(String),
    /// The answer was refused (signature, anchors, validity, not registered …).
    Refused(String),
}

impl DynamicParty {
    /// Reads the anchors the settings name and sets up a discoverer.
    pub(crate) fn load(
        settings: &varti_as4::pmode::model::DiscoverySettings,
    ) -> Result<Self, String> {
        let read = |paths: &[std::path::PathBuf], what: &str| -> Result<Vec<X509>, String> {
            let mut certs = Vec::new();
            for p in paths {
                let pem = std::fs::read(p)
                    .map_err(|e| format!("discovery.{what} {}: {e}", p.display()))?;
                certs.extend(X509::stack_from_pem(&pem).map_err(|e| {
                    format!(
                        "discovery.{what} {}: not PEM certificates: {e}",
                        p.display()
                    )
                })?);
            }
            Ok(certs)
        };
        let network = Network {
            name: settings.network.clone(),
            sml_zone: settings.sml_zone.clone(),
            dns_scheme: settings.dns_scheme,
            smp_url: settings.smp_url.clone(),
            smp_dialect: settings.smp_dialect,
            naptr_services: settings.naptr_services.clone(),
            smp_anchors: read(&settings.smp_anchors, "smp_anchors")?,
            ap_anchors: read(&settings.ap_anchors, "ap_anchors")?,
            transport_profile: settings.transport_profile.clone(),
            cache_ttl: settings.cache_ttl,
        };
        Ok(DynamicParty {
            network,
            participant: settings.participant.clone(),
            document: settings.document_type.clone(),
            process: settings.process.clone(),
            discoverer: Discoverer::new(settings.dns_server, Vec::new(), Duration::from_secs(10))?,
        })
    }

    /// The network's AP anchors (what the discovered certificates chain to).
    pub(crate) fn ap_anchors(&self) -> &[X509] {
        &self.network.ap_anchors
    }

    /// The endpoint and certificate for a message at `now` (cached answers reused).
    pub(crate) async fn find(&self, now: OffsetDateTime) -> Result<Found, LookupFailure> {
        let query = Query {
            participant: self.participant.clone(),
            document: self.document.clone(),
            process: self.process.clone(),
            at: now,
            verify: true,
        };
        let report = self.discoverer.discover(&self.network, &query, now).await;
        report.outcome.map_err(|e| {
            let text = format!(
                "discovering {} in network `{}`: {e}",
                self.participant, self.network.name
            );
            match e {
                DiscoveryError::Dns { .. } | DiscoveryError::Smp { .. } => {
                    LookupFailure::Transient(text)
                }
                _ => LookupFailure::Refused(text),
            }
        })
    }
}
