//! The `[oots]` table of `varti.toml`.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use varti_oots::flow::{AgentData, SchemeId};

/// A value of `[oots]` (or of a portal's `oots_party`) that parses but cannot work. The
/// message names the key and the fix.
#[derive(Debug, thiserror::Error)]
#[error("configuration key `{key}` {problem}; {fix}")]
pub struct InvalidSetting {
    /// The dotted key, e.g. `oots.connectors.url`.
    pub key: &'static str,
    /// What is wrong.
    pub problem: String,
    /// How to fix it.
    pub fix: &'static str,
}

/// Which side(s) of the exchange this gateway plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OotsRole {
    /// The OOTS gateway is off: QueryManager messages go to backends like any other.
    #[default]
    Off,
    /// Procedure portals send requests through this gateway.
    Requester,
    /// This gateway answers requests from its data service connectors.
    Provider,
    /// Both.
    Both,
}

impl OotsRole {
    /// Whether it answers requests.
    pub(crate) fn provides(self) -> bool {
        matches!(self, OotsRole::Provider | OotsRole::Both)
    }
    /// Whether it sends requests.
    pub fn requests(self) -> bool {
        matches!(self, OotsRole::Requester | OotsRole::Both)
    }
}

/// `[oots]`: the OOTS gateway.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OotsConfig {
    /// `off` (default), `requester`, `provider` or `both`.
    pub role: OotsRole,
    /// Requester: seconds a request may wait for its answer before it ends `timed_out`.
    pub request_timeout_secs: u64,
    /// Genericode code lists (`*.gc`) the EDM model checks codes against; none: codes are
    /// not checked.
    pub codelists: Option<PathBuf>,
    /// The official EDM XSD directory; set: received requests are schema-validated.
    pub schemas: Option<PathBuf>,
    /// A Schematron rule directory; set: received requests are checked by its rules.
    pub rules: Option<PathBuf>,
    /// Provider: the largest total of evidence files a connector may return, in bytes.
    pub max_evidence_bytes: u64,
    /// Requester: the largest total of evidence files an answer may carry, in bytes (the
    /// EDM document not counted). A larger answer is refused with EBMS:0010 before anything
    /// of it is stored, and its request ends `error` with EDM:ERR:0008.
    pub max_received_evidence_bytes: u64,
    /// Requester: providers that answer through other gateways than the one their requests
    /// go to. Without an entry, only the gateway a request was sent to may answer it.
    pub answer_gateways: Vec<AnswerGateways>,
    /// Provider: the intermediary platform each requesting gateway is. A request naming a
    /// platform (an `IP` agent, or as its `originalSender`) must come from the gateway
    /// configured for it.
    pub requester_platforms: Vec<RequesterPlatform>,
    /// Provider: one data service connector per evidence type (and provider).
    pub connectors: Vec<ConnectorConfig>,
    /// This gateway as an intermediary platform serving many portals and providers: it
    /// names itself in the EDM documents as an agent classified `IP`. None: it is not one.
    pub platform: Option<OotsParty>,
    /// Requester: seconds the evidence of a settled request is kept after its hand-over
    /// (the owning portal downloaded every file, or the request ended without evidence);
    /// 0 purges it at once.
    pub evidence_retention_secs: u64,
    /// Requester: seconds a settled request's record is kept (then GET answers 404); any
    /// evidence never handed over is purged with it.
    pub record_retention_secs: u64,
    /// Requester: the common services (Evidence Broker, Data Service Directory) portals
    /// look up through `GET /api/v1/oots/lookup/…`.
    pub common_services: CommonServicesConfig,
}

/// `[[oots.answer_gateways]]`: a provider's answers may also come from these gateways (an
/// intermediary, the provider's second access point …), not only from the one its
/// requests were sent to.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AnswerGateways {
    /// The evidence provider (its EvidenceProvider identifier, the requests'
    /// `finalRecipient`).
    pub provider: String,
    /// The gateways (PMode party names or ids) that may answer for it besides the one asked.
    pub gateways: Vec<String>,
}

/// `[[oots.requester_platforms]]`: the requesting gateway `gateway` is the intermediary
/// platform `platform` (the identifier its requests name as the `IP` agent).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RequesterPlatform {
    /// The gateway (a PMode party name or id).
    pub gateway: String,
    /// The platform's identifier.
    pub platform: String,
}

/// An organisation in the OOTS exchange as the configuration names it: a procedure portal
/// (`[[backend.clients]] oots_party`) or the platform itself (`[oots] platform`).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct OotsParty {
    /// The identifier scheme: an EAS code `urn:cef.eu:names:identifier:EAS:<code>` or a
    /// `urn:oasis:names:tc:ebcore:partyid-type:unregistered…` type (R-EDM-REQ-C012).
    pub scheme: String,
    /// The identifier (what `originalSender` carries).
    pub id: String,
    /// The name shown to the other side.
    pub name: String,
    /// The language of the name (default `EN`).
    #[serde(default)]
    pub lang: Option<String>,
    /// Its country (ISO 3166 alpha-2).
    #[serde(default)]
    pub country: Option<String>,
}

impl OotsParty {
    /// The agent the EDM builders take.
    pub(crate) fn agent_data(&self) -> AgentData {
        AgentData {
            identifier: SchemeId {
                scheme: self.scheme.clone(),
                value: self.id.clone(),
            },
            name: self.name.clone(),
            lang: self.lang.clone(),
            country: self.country.clone(),
        }
    }

    /// Checks what the EDM rules require of an agent (identifier with an allowed scheme,
    /// a name); `key` names the table in errors.
    pub fn validate(&self, key: &'static str) -> Result<(), InvalidSetting> {
        let invalid =
            |problem: String, fix: &'static str| Err(InvalidSetting { key, problem, fix });
        const EAS: &str = "urn:cef.eu:names:identifier:EAS:";
        const EBCORE: &str = "urn:oasis:names:tc:ebcore:partyid-type:unregistered";
        let scheme = self.scheme.trim();
        if !(scheme.starts_with(EBCORE)
            || scheme
                .strip_prefix(EAS)
                .is_some_and(|c| !c.is_empty() && c.bytes().all(|b| b.is_ascii_alphanumeric())))
        {
            return invalid(
                format!("scheme `{}` is neither an EAS code nor an ebCore party id type", self.scheme),
                "use urn:cef.eu:names:identifier:EAS:<code> (e.g. EAS:0096) or urn:oasis:names:tc:ebcore:partyid-type:unregistered:<type> (rule R-EDM-REQ-C012)",
            );
        }
        if self.id.trim().is_empty() || self.name.trim().is_empty() {
            return invalid(
                format!("id `{}` / name `{}`: both are required", self.id, self.name),
                "give the organisation's identifier and its name (rules R-EDM-REQ-S040, R-EDM-REQ-C010)",
            );
        }
        Ok(())
    }
}

/// Which common-services environment DNS discovery looks in (`…cs.<acc|prod>.oots…`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Discovery {
    /// No discovery: `url` is used, or the look-ups are off.
    #[default]
    Off,
    /// The acceptance environment.
    Acc,
    /// Production.
    Prod,
}

/// `[oots.common_services]`: where the common services are and how their answers are
/// trusted. Off unless `url` or `discovery` is set.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CommonServicesConfig {
    /// The base URL of both services (`…/rest/search` is appended), e.g. the EC's
    /// `https://query.cs.acc.oots.tech.ec.europa.eu`. Exclusive with `discovery`.
    pub url: Option<String>,
    /// Find each country's instance by DNS NAPTR on
    /// `<cc>.<eb|dsd>.v<edm_major>.cs.<acc|prod>.oots.tech.ec.europa.eu`.
    pub discovery: Discovery,
    /// The EDM major version in the discovery names (`v2`).
    pub edm_major: u32,
    /// The DNS server discovery asks (`IP:PORT`); none: the system's (`/etc/resolv.conf`).
    pub dns_server: Option<std::net::SocketAddr>,
    /// PEM files with the certificates (CA or signer) the answers' signatures must chain to.
    pub trust: Vec<PathBuf>,
    /// Refuse answers whose signature does not verify against `trust`. Turning it off is
    /// for a local stand-in without a key only.
    pub verify_signatures: bool,
    /// PEM file with the CAs trusted for the services' TLS certificates.
    pub tls_ca: PathBuf,
    /// Allow `http://` URLs (the local stand-in only).
    pub allow_http: bool,
    /// Seconds one look-up (DNS, then HTTPS) may take.
    pub timeout_secs: u64,
    /// Seconds a verified answer is reused without asking again; 0: never.
    pub cache_secs: u64,
}

impl Default for CommonServicesConfig {
    fn default() -> Self {
        CommonServicesConfig {
            url: None,
            discovery: Discovery::Off,
            edm_major: 2,
            dns_server: None,
            trust: Vec::new(),
            verify_signatures: true,
            tls_ca: PathBuf::from(crate::common_services::SYSTEM_CA_BUNDLE),
            allow_http: false,
            timeout_secs: 10,
            cache_secs: 3600,
        }
    }
}

impl CommonServicesConfig {
    /// Whether look-ups are on (a URL or discovery is configured).
    pub fn enabled(&self) -> bool {
        self.url.is_some() || self.discovery != Discovery::Off
    }

    fn validate(&self) -> Result<(), InvalidSetting> {
        let invalid = |key: &'static str, problem: String, fix: &'static str| {
            Err(InvalidSetting { key, problem, fix })
        };
        if !self.enabled() {
            return Ok(());
        }
        if let Some(url) = &self.url {
            if self.discovery != Discovery::Off {
                return invalid(
                    "oots.common_services.url",
                    "is set together with discovery".into(),
                    "use either a fixed url or discovery = \"acc\" / \"prod\", not both",
                );
            }
            let http = url.starts_with("http://");
            if !(http || url.starts_with("https://")) {
                return invalid(
                    "oots.common_services.url",
                    format!("`{url}` is not an https:// URL"),
                    "give the services' base URL, e.g. https://query.cs.acc.oots.tech.ec.europa.eu",
                );
            }
            if http && !self.allow_http {
                return invalid(
                    "oots.common_services.url",
                    format!("`{url}` is plain http://"),
                    "use https://; allow_http = true is for a local stand-in only",
                );
            }
        }
        if self.verify_signatures && self.trust.is_empty() {
            return invalid(
                "oots.common_services.trust",
                "is empty while verify_signatures is on".into(),
                "list the PEM file(s) with the CA the common services sign their answers with",
            );
        }
        if self.timeout_secs == 0 {
            return invalid(
                "oots.common_services.timeout_secs",
                "is 0".into(),
                "give the seconds one look-up may take (e.g. 10)",
            );
        }
        Ok(())
    }
}

impl Default for OotsConfig {
    fn default() -> Self {
        OotsConfig {
            role: OotsRole::Off,
            request_timeout_secs: 900,
            codelists: None,
            schemas: None,
            rules: None,
            max_evidence_bytes: 200 * 1024 * 1024,
            max_received_evidence_bytes: 50 * 1024 * 1024,
            answer_gateways: Vec::new(),
            requester_platforms: Vec::new(),
            connectors: Vec::new(),
            platform: None,
            evidence_retention_secs: 0,
            record_retention_secs: 7 * 24 * 3600,
            common_services: CommonServicesConfig::default(),
        }
    }
}

/// `[[oots.connectors]]`: where the evidence of one evidence type comes from.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ConnectorConfig {
    /// The evidence type served: the `DataServiceEvidenceType` identifier (as published in
    /// the DSD) or its `EvidenceTypeClassification` URL.
    pub evidence_type: String,
    /// The evidence provider served (its identifier: the request's `finalRecipient` and
    /// EvidenceProvider agent). None: any provider this gateway is asked for.
    #[serde(default)]
    pub provider: Option<String>,
    /// The register's endpoint (`http://` or `https://`); Varti POSTs the request JSON.
    pub url: String,
    /// Seconds one call may take (connect, answer and files).
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
    /// Further attempts after a failed call (timeout, unreachable, HTTP 5xx).
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Milliseconds between attempts.
    #[serde(default = "default_retry_delay")]
    pub retry_delay_ms: u64,
    /// The register's evidence may only leave after the citizen previewed and approved it
    /// in the preview space (`[preview]` must be enabled). A request with
    /// `PossibilityForPreview` false then gets EDM:ERR:0002 and never the evidence.
    #[serde(default)]
    pub preview: bool,
    /// An XSLT 1.0 stylesheet (a file) that turns this evidence type's XML evidence into
    /// HTML the citizen reads in the preview space (OOTS test event TC10); the raw XML stays
    /// downloadable. A stylesheet the register sends with the evidence wins. It runs
    /// sandboxed: it can load nothing (no `document()`, `xsl:import`, `xsl:include`) and
    /// its work is bounded.
    #[serde(default)]
    pub stylesheet: Option<PathBuf>,
}

fn default_timeout() -> u64 {
    30
}
fn default_retries() -> u32 {
    2
}
fn default_retry_delay() -> u64 {
    1000
}

impl OotsConfig {
    /// Makes relative directories relative to `base` (the configuration file's directory).
    pub fn resolve_relative_to(&mut self, base: &Path) {
        for p in [&mut self.codelists, &mut self.schemas, &mut self.rules]
            .into_iter()
            .flatten()
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        for c in &mut self.connectors {
            if let Some(p) = c.stylesheet.as_mut().filter(|p| p.is_relative()) {
                *p = base.join(&*p);
            }
        }
        let cs = &mut self.common_services;
        for p in cs.trust.iter_mut().chain(std::iter::once(&mut cs.tls_ca)) {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
    }

    /// Checks the values that parse but cannot work.
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        let invalid = |key: &'static str, problem: String, fix: &'static str| {
            Err(InvalidSetting { key, problem, fix })
        };
        if self.request_timeout_secs == 0 {
            return invalid(
                "oots.request_timeout_secs",
                "is 0".into(),
                "give the seconds a request may wait for its answer (the TDD's test events used 300 to 2400)",
            );
        }
        if let Some(p) = &self.platform {
            p.validate("oots.platform")?;
        }
        for c in &self.connectors {
            if let Some(p) = &c.stylesheet {
                if let Err(e) = std::fs::metadata(p) {
                    return invalid(
                        "oots.connectors.stylesheet",
                        format!(
                            "evidence type `{}`: cannot read {}: {e}",
                            c.evidence_type,
                            p.display()
                        ),
                        "give the path of an XSLT 1.0 file (relative to the configuration file), or leave stylesheet out",
                    );
                }
            }
        }
        if self.max_received_evidence_bytes == 0 {
            return invalid(
                "oots.max_received_evidence_bytes",
                "is 0".into(),
                "give the most evidence (bytes) one answer may carry, e.g. 52428800 (50 MiB)",
            );
        }
        for a in &self.answer_gateways {
            if a.provider.trim().is_empty()
                || a.gateways.is_empty()
                || a.gateways.iter().any(|g| g.trim().is_empty())
            {
                return invalid(
                    "oots.answer_gateways",
                    format!(
                        "provider `{}` with gateways {:?}: both are required",
                        a.provider, a.gateways
                    ),
                    "name the provider (its EvidenceProvider identifier) and the PMode parties it answers through",
                );
            }
        }
        for (n, p) in self.requester_platforms.iter().enumerate() {
            if p.gateway.trim().is_empty() || p.platform.trim().is_empty() {
                return invalid(
                    "oots.requester_platforms",
                    format!(
                        "gateway `{}` / platform `{}`: both are required",
                        p.gateway, p.platform
                    ),
                    "name the requesting gateway (a PMode party) and the platform identifier its requests name",
                );
            }
            let twice = self.requester_platforms[..n].iter().any(|q| {
                q.gateway.trim() == p.gateway.trim() || q.platform.trim() == p.platform.trim()
            });
            if twice {
                return invalid(
                    "oots.requester_platforms",
                    format!(
                        "gateway `{}` or platform `{}` is listed twice",
                        p.gateway, p.platform
                    ),
                    "give each gateway one platform, and each platform one gateway",
                );
            }
        }
        if self.record_retention_secs < self.evidence_retention_secs {
            return invalid(
                "oots.record_retention_secs",
                format!(
                    "{} is shorter than oots.evidence_retention_secs ({})",
                    self.record_retention_secs, self.evidence_retention_secs
                ),
                "keep records at least as long as the evidence they point to",
            );
        }
        self.common_services.validate()?;
        for c in &self.connectors {
            if c.provider.as_deref().is_some_and(|p| p.trim().is_empty()) {
                return invalid(
                    "oots.connectors.provider",
                    format!("is empty for evidence type `{}`", c.evidence_type),
                    "give the provider's identifier (its EvidenceProvider agent id), or leave provider out to serve any",
                );
            }
            if !(c.url.starts_with("http://") || c.url.starts_with("https://")) {
                return invalid(
                    "oots.connectors.url",
                    format!(
                        "`{}` (evidence type `{}`) is not an http(s) URL",
                        c.url, c.evidence_type
                    ),
                    "give the register's endpoint, e.g. https://register.example/oots/evidence",
                );
            }
            if c.timeout_secs == 0 {
                return invalid(
                    "oots.connectors.timeout_secs",
                    format!("is 0 for evidence type `{}`", c.evidence_type),
                    "give the seconds one call to the register may take",
                );
            }
            if c.evidence_type.trim().is_empty() {
                return invalid(
                    "oots.connectors.evidence_type",
                    "is empty".into(),
                    "give the DataServiceEvidenceType identifier or classification the connector serves",
                );
            }
        }
        Ok(())
    }

    /// The gateways configured to answer for `provider` besides the one asked
    /// (`[[oots.answer_gateways]]`).
    pub(crate) fn answer_gateways_for<'a>(
        &'a self,
        provider: &'a str,
    ) -> impl Iterator<Item = &'a str> {
        self.answer_gateways
            .iter()
            .filter(move |a| a.provider.trim() == provider.trim())
            .flat_map(|a| a.gateways.iter().map(|g| g.trim()))
    }

    /// The platform the requesting gateway known by `gateway_names` (its PMode party name
    /// and ids) is (`[[oots.requester_platforms]]`).
    pub(crate) fn platform_of_gateway(&self, gateway_names: &[&str]) -> Option<&str> {
        self.requester_platforms
            .iter()
            .find(|p| gateway_names.contains(&p.gateway.trim()))
            .map(|p| p.platform.trim())
    }

    /// The requesting gateway configured for `platform` (`[[oots.requester_platforms]]`).
    pub(crate) fn gateway_of_platform(&self, platform: &str) -> Option<&str> {
        self.requester_platforms
            .iter()
            .find(|p| p.platform.trim() == platform.trim())
            .map(|p| p.gateway.trim())
    }

    /// Whether some connector serves `provider` (one naming it, or one for any provider).
    pub(crate) fn serves_provider(&self, provider: &str) -> bool {
        self.connectors.iter().any(|c| serves(c, provider))
    }

    /// The connector for a request to `provider` for an evidence type (matched by
    /// identifier, then by classification). A connector naming the provider wins over one
    /// serving any provider.
    pub(crate) fn connector_for(
        &self,
        provider: &str,
        identifier: Option<&str>,
        classification: Option<&str>,
    ) -> Option<&ConnectorConfig> {
        let find = |v: Option<&str>, own: bool| {
            v.and_then(|v| {
                self.connectors.iter().find(|c| {
                    c.evidence_type.trim() == v.trim()
                        && serves(c, provider)
                        && c.provider.is_some() == own
                })
            })
        };
        [true, false]
            .into_iter()
            .find_map(|own| find(identifier, own).or_else(|| find(classification, own)))
    }
}

fn serves(c: &ConnectorConfig, provider: &str) -> bool {
    c.provider
        .as_deref()
        .is_none_or(|p| p.trim() == provider.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connector(evidence_type: &str, provider: Option<&str>, url: &str) -> ConnectorConfig {
        ConnectorConfig {
            evidence_type: evidence_type.into(),
            provider: provider.map(str::to_owned),
            url: url.into(),
            timeout_secs: 1,
            retries: 0,
            retry_delay_ms: 0,
            preview: false,
            stylesheet: None,
        }
    }

    #[test]
    fn requests_route_by_provider_then_evidence_type() {
        let c = OotsConfig {
            connectors: vec![
                connector("EV", None, "http://any"),
                connector("EV", Some("P1"), "http://p1"),
                connector("EV2", Some("P2"), "http://p2"),
            ],
            ..OotsConfig::default()
        };
        let url = |p: &str, et: &str| c.connector_for(p, Some(et), None).map(|c| c.url.as_str());
        // The provider's own connector wins over the one serving any provider.
        assert_eq!(url("P1", "EV"), Some("http://p1"));
        assert_eq!(url("P2", "EV"), Some("http://any"));
        assert_eq!(url("P2", "EV2"), Some("http://p2"));
        // P1 has no EV2: another provider's connector is never used.
        assert_eq!(url("P1", "EV2"), None);
        assert!(
            c.serves_provider("P3"),
            "the provider-less connector serves any"
        );
        let only_named = OotsConfig {
            connectors: vec![connector("EV", Some("P1"), "http://p1")],
            ..OotsConfig::default()
        };
        assert!(only_named.serves_provider(" P1 "));
        assert!(!only_named.serves_provider("P3"));
        assert_eq!(only_named.connector_for("P3", Some("EV"), None), None);
    }

    #[test]
    fn parties_need_an_allowed_scheme_an_id_and_a_name() {
        let party = |scheme: &str, id: &str, name: &str| OotsParty {
            scheme: scheme.into(),
            id: id.into(),
            name: name.into(),
            lang: None,
            country: None,
        };
        for ok in [
            "urn:cef.eu:names:identifier:EAS:0096",
            "urn:oasis:names:tc:ebcore:partyid-type:unregistered:oots",
        ] {
            party(ok, "X1", "Portal").validate("k").unwrap();
        }
        for (scheme, id, name) in [
            ("urn:cef.eu:names:identifier:EAS:", "X1", "Portal"),
            ("eidas", "X1", "Portal"),
            ("urn:cef.eu:names:identifier:EAS:0096", " ", "Portal"),
            ("urn:cef.eu:names:identifier:EAS:0096", "X1", ""),
        ] {
            let e = party(scheme, id, name).validate("k").unwrap_err();
            assert!(matches!(e, InvalidSetting { key: "k", .. }), "{e}");
        }
        let mut c = OotsConfig {
            platform: Some(party("nope", "X", "Y")),
            ..OotsConfig::default()
        };
        assert!(c.validate().is_err());
        c.platform = None;
        c.evidence_retention_secs = 10;
        c.record_retention_secs = 5;
        assert!(c.validate().is_err(), "records shorter than their evidence");
    }

    #[test]
    fn a_connector_stylesheet_is_resolved_beside_the_file_and_must_be_readable() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("birth.xsl"), "<xsl:stylesheet/>").unwrap();
        let mut c: OotsConfig = toml::from_str(
            "[[connectors]]\nevidence_type = \"EV\"\nurl = \"http://r\"\nstylesheet = \"birth.xsl\"\n",
        )
        .unwrap();
        c.resolve_relative_to(dir.path());
        assert_eq!(
            c.connectors[0].stylesheet.as_deref(),
            Some(dir.path().join("birth.xsl").as_path())
        );
        c.validate().unwrap();
        c.connectors[0].stylesheet = Some(dir.path().join("missing.xsl"));
        let e = c.validate().unwrap_err();
        assert_eq!(e.key, "oots.connectors.stylesheet", "{e}");
        assert!(e.to_string().contains("missing.xsl"), "{e}");
    }

    #[test]
    fn answer_gateways_and_requester_platforms_are_looked_up_and_checked() {
        let c: OotsConfig = toml::from_str(
            "[[answer_gateways]]\nprovider = \"P1\"\ngateways = [\"gw-2\", \" gw-3 \"]\n\
             [[requester_platforms]]\ngateway = \"varti-a\"\nplatform = \"VARTI-DK\"\n",
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(
            c.answer_gateways_for(" P1 ").collect::<Vec<_>>(),
            ["gw-2", "gw-3"]
        );
        assert_eq!(c.answer_gateways_for("P2").count(), 0);
        assert_eq!(c.platform_of_gateway(&["x", "varti-a"]), Some("VARTI-DK"));
        assert_eq!(c.platform_of_gateway(&["varti-b"]), None);
        assert_eq!(c.gateway_of_platform("VARTI-DK"), Some("varti-a"));
        // The requester's cap is on, and below the provider's, by default.
        let d = OotsConfig::default();
        assert!(d.max_received_evidence_bytes > 0);
        assert!(d.max_received_evidence_bytes < d.max_evidence_bytes);
        for (text, key) in [
            (
                "max_received_evidence_bytes = 0\n",
                "oots.max_received_evidence_bytes",
            ),
            (
                "[[answer_gateways]]\nprovider = \"P1\"\ngateways = []\n",
                "oots.answer_gateways",
            ),
            (
                "[[requester_platforms]]\ngateway = \"\"\nplatform = \"X\"\n",
                "oots.requester_platforms",
            ),
            (
                "[[requester_platforms]]\ngateway = \"a\"\nplatform = \"X\"\n\
                 [[requester_platforms]]\ngateway = \"b\"\nplatform = \"X\"\n",
                "oots.requester_platforms",
            ),
        ] {
            let p = problem(text).unwrap_or_else(|| panic!("{text} passes"));
            assert!(p.contains(key), "{p}");
        }
    }

    fn problem(toml_text: &str) -> Option<String> {
        let c: OotsConfig = toml::from_str(toml_text).unwrap();
        c.validate().err().map(|e| e.to_string())
    }

    #[test]
    fn common_services_settings_that_cannot_work_are_named() {
        // Off by default: nothing to check.
        assert_eq!(problem(""), None);
        let trust = "trust = [\"ca.pem\"]\n";
        assert_eq!(
            problem(&format!("[common_services]\ndiscovery = \"acc\"\n{trust}")),
            None
        );
        let both = problem(&format!(
            "[common_services]\nurl = \"https://cs.example\"\ndiscovery = \"prod\"\n{trust}"
        ))
        .unwrap();
        assert!(both.contains("oots.common_services.url") && both.contains("not both"));
        let http = problem(&format!(
            "[common_services]\nurl = \"http://cs.example\"\n{trust}"
        ))
        .unwrap();
        assert!(http.contains("allow_http"), "{http}");
        assert_eq!(
            problem(&format!(
                "[common_services]\nurl = \"http://127.0.0.1:8480\"\nallow_http = true\n{trust}"
            )),
            None
        );
        // Answers are not taken unverified unless explicitly asked for.
        let untrusted = problem("[common_services]\nurl = \"https://cs.example\"\n").unwrap();
        assert!(
            untrusted.contains("oots.common_services.trust"),
            "{untrusted}"
        );
        assert_eq!(
            problem("[common_services]\nurl = \"https://cs.example\"\nverify_signatures = false\n"),
            None
        );
    }
}
