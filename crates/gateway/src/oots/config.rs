//! The `[oots]` table of `varti.toml`.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::config::ConfigError;

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
    pub fn provides(self) -> bool {
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
    /// Provider: one data service connector per evidence type.
    pub connectors: Vec<ConnectorConfig>,
    /// Requester: the common services (Evidence Broker, Data Service Directory) portals
    /// look up through `GET /api/v1/oots/lookup/…`.
    pub common_services: CommonServicesConfig,
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

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &'static str, problem: String, fix: &'static str| {
            Err(ConfigError::Invalid { key, problem, fix })
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
            connectors: Vec::new(),
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
        let cs = &mut self.common_services;
        for p in cs.trust.iter_mut().chain(std::iter::once(&mut cs.tls_ca)) {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
    }

    /// Checks the values that parse but cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &'static str, problem: String, fix: &'static str| {
            Err(ConfigError::Invalid { key, problem, fix })
        };
        if self.request_timeout_secs == 0 {
            return invalid(
                "oots.request_timeout_secs",
                "is 0".into(),
                "give the seconds a request may wait for its answer (the TDD's test events used 300 to 2400)",
            );
        }
        self.common_services.validate()?;
        for c in &self.connectors {
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

    /// The connector for a request's evidence type (matched by identifier, then by
    /// classification).
    pub fn connector_for(
        &self,
        identifier: Option<&str>,
        classification: Option<&str>,
    ) -> Option<&ConnectorConfig> {
        let find = |v: Option<&str>| {
            v.and_then(|v| {
                self.connectors
                    .iter()
                    .find(|c| c.evidence_type.trim() == v.trim())
            })
        };
        find(identifier).or_else(|| find(classification))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
