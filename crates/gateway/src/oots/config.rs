//! The `[oots]` table of `varti.toml`.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use varti_oots::flow::{AgentData, SchemeId};

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
    pub fn agent_data(&self) -> AgentData {
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
    pub fn validate(&self, key: &'static str) -> Result<(), ConfigError> {
        let invalid =
            |problem: String, fix: &'static str| Err(ConfigError::Invalid { key, problem, fix });
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
            platform: None,
            evidence_retention_secs: 0,
            record_retention_secs: 7 * 24 * 3600,
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
        if let Some(p) = &self.platform {
            p.validate("oots.platform")?;
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

    /// Whether some connector serves `provider` (one naming it, or one for any provider).
    pub fn serves_provider(&self, provider: &str) -> bool {
        self.connectors.iter().any(|c| serves(c, provider))
    }

    /// The connector for a request to `provider` for an evidence type (matched by
    /// identifier, then by classification). A connector naming the provider wins over one
    /// serving any provider.
    pub fn connector_for(
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
            assert!(matches!(e, ConfigError::Invalid { key: "k", .. }), "{e}");
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
}
