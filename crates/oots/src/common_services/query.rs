//! The three common-services queries and their RegRep 4 REST binding URLs:
//! `{base}/rest/search?queryId={id}&{name}={value}…`.
//!
//! Parameter names follow the TDD query interface specifications (EB chapter 3.2.4, DSD
//! chapter 3.1.4): `procedure-id`, `requirement-id`, `country-code`,
//! `evidence-type-classification`, and for the DSD the optional `specification`,
//! `evidence-type-id`, `jurisdiction-context-id`, `jurisdiction-admin-l2`/`-l3` and the
//! user-provided evidence-provider classifications, each named by the classification
//! concept's identifier.

use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

/// Evidence Broker: the requirements of a procedure in a country.
pub(crate) const QUERY_REQUIREMENTS: &str =
    "urn:fdc:oots:eb:ebxml-regrep:queries:requirements-by-procedure-and-jurisdiction";
/// Evidence Broker: the evidence types proving a requirement in a country.
pub(crate) const QUERY_EVIDENCE_TYPES: &str =
    "urn:fdc:oots:eb:ebxml-regrep:queries:evidence-types-by-requirement-and-jurisdiction";
/// Data Service Directory: the data services delivering an evidence type in a country.
pub(crate) const QUERY_DATA_SERVICES: &str =
    "urn:fdc:oots:dsd:ebxml-regrep:queries:dataservices-by-evidencetype-and-jurisdiction";

/// Characters escaped in a query value: everything but the RFC 3986 unreserved ones and
/// `:` and `/`, which are legal in a query and keep Semantic Repository URLs readable (as
/// in the TDD's own examples).
const VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b':')
    .remove(b'/');

/// Which common service answers a query.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Service {
    /// The Evidence Broker (EB).
    EvidenceBroker,
    /// The Data Service Directory (DSD).
    DataServiceDirectory,
}

impl Service {
    /// `eb` or `dsd`, as in the discovery names and the error codes.
    pub fn short_name(self) -> &'static str {
        match self {
            Service::EvidenceBroker => "eb",
            Service::DataServiceDirectory => "dsd",
        }
    }
}

/// The DSD query's parameters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DataServicesQuery {
    /// `evidence-type-classification`: the Semantic Repository URL from the EB.
    pub evidence_type_classification: String,
    /// `country-code`: the providing country (ISO 3166-1 alpha-2).
    pub country_code: String,
    /// `specification`: only access services conforming to it, e.g. `oots-edm:v2.0`.
    pub specification: Option<String>,
    /// `evidence-type-id`: the data service evidence type asked about again after a
    /// `DSD:ERR:0005` answer.
    pub evidence_type_id: Option<String>,
    /// `jurisdiction-context-id`, from the `DSD:ERR:0005` answer's jurisdiction
    /// determination.
    pub jurisdiction_context_id: Option<String>,
    /// `jurisdiction-admin-l2`: the user's NUTS region.
    pub jurisdiction_admin_l2: Option<String>,
    /// `jurisdiction-admin-l3`: the user's LAU code.
    pub jurisdiction_admin_l3: Option<String>,
    /// The user's answers to the requested evidence-provider classifications:
    /// (classification concept identifier, chosen value).
    pub classifications: Vec<(String, String)>,
}

/// One common-services query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Query {
    /// EB: requirements of `procedure_id` (a Procedures code-list value such as `R1`) in
    /// `country_code`.
    Requirements {
        /// `procedure-id`.
        procedure_id: String,
        /// `country-code`.
        country_code: String,
    },
    /// EB: evidence types proving `requirement_id` (a Semantic Repository URL) in
    /// `country_code`.
    EvidenceTypes {
        /// `requirement-id`.
        requirement_id: String,
        /// `country-code`.
        country_code: String,
    },
    /// DSD: data services delivering an evidence type.
    DataServices(DataServicesQuery),
}

/// Why a query string is not one of the three queries.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    /// No `queryId` parameter.
    #[error("the query has no queryId parameter")]
    NoQueryId,
    /// A `queryId` that is none of the three.
    #[error("unknown queryId `{0}`; expected one of the EB requirements or evidence-types queries or the DSD data-services query")]
    UnknownQueryId(String),
    /// A required parameter is missing or empty.
    #[error("the {query} query needs the `{parameter}` parameter")]
    MissingParameter {
        /// The query's short name.
        query: &'static str,
        /// The parameter.
        parameter: &'static str,
    },
    /// A parameter is not valid percent-encoded UTF-8.
    #[error("a query parameter is not valid percent-encoded UTF-8: {0}")]
    Encoding(String),
}

impl Query {
    /// The `queryId`.
    pub fn id(&self) -> &'static str {
        match self {
            Query::Requirements { .. } => QUERY_REQUIREMENTS,
            Query::EvidenceTypes { .. } => QUERY_EVIDENCE_TYPES,
            Query::DataServices(_) => QUERY_DATA_SERVICES,
        }
    }

    /// The service that answers it.
    pub fn service(&self) -> Service {
        match self {
            Query::DataServices(_) => Service::DataServiceDirectory,
            _ => Service::EvidenceBroker,
        }
    }

    /// Its parameters in URL order, `queryId` first.
    pub fn parameters(&self) -> Vec<(&str, &str)> {
        let mut p = vec![("queryId", self.id())];
        match self {
            Query::Requirements {
                procedure_id,
                country_code,
            } => {
                p.push(("procedure-id", procedure_id));
                p.push(("country-code", country_code));
            }
            Query::EvidenceTypes {
                requirement_id,
                country_code,
            } => {
                p.push(("requirement-id", requirement_id));
                p.push(("country-code", country_code));
            }
            Query::DataServices(q) => {
                p.push((
                    "evidence-type-classification",
                    &q.evidence_type_classification,
                ));
                p.push(("country-code", &q.country_code));
                for (name, value) in [
                    ("specification", &q.specification),
                    ("evidence-type-id", &q.evidence_type_id),
                    ("jurisdiction-context-id", &q.jurisdiction_context_id),
                    ("jurisdiction-admin-l2", &q.jurisdiction_admin_l2),
                    ("jurisdiction-admin-l3", &q.jurisdiction_admin_l3),
                ] {
                    if let Some(v) = value {
                        p.push((name, v));
                    }
                }
                for (id, value) in &q.classifications {
                    p.push((id, value));
                }
            }
        }
        p
    }

    /// The query string (without `?`), values percent-encoded.
    pub fn query_string(&self) -> String {
        self.parameters()
            .iter()
            .map(|(n, v)| {
                format!(
                    "{}={}",
                    utf8_percent_encode(n, VALUE),
                    utf8_percent_encode(v, VALUE)
                )
            })
            .collect::<Vec<_>>()
            .join("&")
    }

    /// The GET URL at the service's `base` URL (`https://host/path`, with or without a
    /// trailing slash): `{base}/rest/search?{query string}`.
    pub fn url(&self, base: &str) -> String {
        format!(
            "{}/rest/search?{}",
            base.trim_end_matches('/'),
            self.query_string()
        )
    }

    /// Reads a query back from its query string (what a server receives). Parameters it
    /// does not know are, for the DSD query, user-provided classifications; for the EB
    /// queries they are ignored.
    pub fn from_query_string(qs: &str) -> Result<Query, QueryError> {
        let mut params: Vec<(String, String)> = Vec::new();
        for pair in qs.split('&').filter(|p| !p.is_empty()) {
            let (n, v) = pair.split_once('=').unwrap_or((pair, ""));
            let dec = |s: &str| {
                percent_decode_str(s)
                    .decode_utf8()
                    .map(|c| c.into_owned())
                    .map_err(|e| QueryError::Encoding(e.to_string()))
            };
            params.push((dec(n)?, dec(v)?));
        }
        let get = |name: &str| {
            params
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let need = |query: &'static str, parameter: &'static str| {
            get(parameter).ok_or(QueryError::MissingParameter { query, parameter })
        };
        let id = get("queryId").ok_or(QueryError::NoQueryId)?;
        match id.as_str() {
            QUERY_REQUIREMENTS => Ok(Query::Requirements {
                procedure_id: need("requirements", "procedure-id")?,
                country_code: need("requirements", "country-code")?,
            }),
            QUERY_EVIDENCE_TYPES => Ok(Query::EvidenceTypes {
                requirement_id: need("evidence-types", "requirement-id")?,
                country_code: need("evidence-types", "country-code")?,
            }),
            QUERY_DATA_SERVICES => {
                const KNOWN: &[&str] = &[
                    "queryId",
                    "evidence-type-classification",
                    "country-code",
                    "specification",
                    "evidence-type-id",
                    "jurisdiction-context-id",
                    "jurisdiction-admin-l2",
                    "jurisdiction-admin-l3",
                ];
                Ok(Query::DataServices(DataServicesQuery {
                    evidence_type_classification: need(
                        "data-services",
                        "evidence-type-classification",
                    )?,
                    country_code: need("data-services", "country-code")?,
                    specification: get("specification"),
                    evidence_type_id: get("evidence-type-id"),
                    jurisdiction_context_id: get("jurisdiction-context-id"),
                    jurisdiction_admin_l2: get("jurisdiction-admin-l2"),
                    jurisdiction_admin_l3: get("jurisdiction-admin-l3"),
                    classifications: params
                        .iter()
                        .filter(|(n, _)| !KNOWN.contains(&n.as_str()))
                        .cloned()
                        .collect(),
                }))
            }
            other => Err(QueryError::UnknownQueryId(other.to_owned())),
        }
    }
}

/// The DNS name whose NAPTR record points to a common-services instance (TDD:
/// `<cc>.<eb|dsd>.v<major>.cs.<acc|prod>.oots.tech.ec.europa.eu`). Varti does not resolve
/// it (no NAPTR-capable resolver is in its dependency set); a deployment resolves it
/// once, or reads the operator's documentation, and configures the base URL.
pub fn discovery_name(
    country_code: &str,
    service: Service,
    major: u32,
    production: bool,
) -> String {
    format!(
        "{}.{}.v{major}.cs.{}.oots.tech.ec.europa.eu",
        country_code.to_ascii_lowercase(),
        service.short_name(),
        if production { "prod" } else { "acc" }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requirements_url_matches_the_tdd_example() {
        let q = Query::Requirements {
            procedure_id: "R1".into(),
            country_code: "DE".into(),
        };
        assert_eq!(
            q.url("https://eb.example/"),
            "https://eb.example/rest/search?queryId=urn:fdc:oots:eb:ebxml-regrep:queries:requirements-by-procedure-and-jurisdiction&procedure-id=R1&country-code=DE"
        );
        assert_eq!(q.service(), Service::EvidenceBroker);
    }

    #[test]
    fn dsd_second_request_round_trips_with_classifications() {
        let q = Query::DataServices(DataServicesQuery {
            evidence_type_classification: "https://sr.oots.tech.europa.eu/evidencetypeclassifications/DE/ca8afed6-2dc0-422a-a931-d21c3d8d370e".into(),
            country_code: "DE".into(),
            specification: Some("oots-edm:v1.0".into()),
            evidence_type_id: Some("2af27699-f131-4411-8fdb-9e8cd4e8bded".into()),
            jurisdiction_context_id: Some("5ce148b9-5578-4049-aecf-af7bb55714b5".into()),
            jurisdiction_admin_l2: None,
            jurisdiction_admin_l3: Some("11000000".into()),
            classifications: vec![(
                "b07146b6-1468-41a7-a10f-ee2a61429dbc".into(),
                "Applicant Has & Been=Resident".into(),
            )],
        });
        let url = q.url("https://dsd.example/query/dsd");
        assert!(
            url.starts_with("https://dsd.example/query/dsd/rest/search?queryId=urn:fdc:oots:dsd:")
        );
        assert!(url.contains("&evidence-type-classification=https://sr.oots.tech.europa.eu/evidencetypeclassifications/DE/ca8afed6"));
        assert!(url.contains("&jurisdiction-admin-l3=11000000"));
        assert!(url.contains(
            "b07146b6-1468-41a7-a10f-ee2a61429dbc=Applicant%20Has%20%26%20Been%3DResident"
        ));
        let qs = url.split_once('?').unwrap().1;
        assert_eq!(Query::from_query_string(qs).unwrap(), q);
    }

    #[test]
    fn query_string_errors_name_the_problem() {
        assert_eq!(
            Query::from_query_string("procedure-id=R1"),
            Err(QueryError::NoQueryId)
        );
        assert_eq!(
            Query::from_query_string(&format!("queryId={QUERY_EVIDENCE_TYPES}&country-code=FR")),
            Err(QueryError::MissingParameter {
                query: "evidence-types",
                parameter: "requirement-id"
            })
        );
        assert!(matches!(
            Query::from_query_string("queryId=urn:x"),
            Err(QueryError::UnknownQueryId(id)) if id == "urn:x"
        ));
    }

    #[test]
    fn discovery_name_follows_the_tdd_pattern() {
        assert_eq!(
            discovery_name("LV", Service::DataServiceDirectory, 2, false),
            "lv.dsd.v2.cs.acc.oots.tech.ec.europa.eu"
        );
    }
}
