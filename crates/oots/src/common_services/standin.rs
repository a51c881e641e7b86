//! A local stand-in for the common services: **a far-edge test double**, for tests and
//! the demo only, never for production look-ups. It answers the three queries with the
//! published sample answers, picked by a fixed table of query parameters ([`ROUTES`]);
//! a query the table does not know gets the service's empty answer (France's recorded
//! `EB:ERR:0001` / `DSD:ERR:0001`).
//!
//! Samples come from two places, both read in place: France's recorded EB/DSD answers
//! (`<vectors>/oots-france/common_services/`, each with the HTTP headers the EC sent,
//! including the JAdES signature, which the stand-in replays) and the EDM 1.0 release's EB
//! and DSD examples (`<specs>/oots-edm-v1/xml/`). With a [`ResponseSigner`] every answer is
//! signed afresh instead, so a client can trust the stand-in's own certificate.
//!
//! This module is transport-free: [`StandIn::answer`] maps a request path and query
//! string to a reply; the gateway's `varti oots standin` serves it over HTTP.

use std::path::{Path, PathBuf};

use time::OffsetDateTime;

use super::client::HttpReply;
use super::query::{Query, Service, QUERY_DATA_SERVICES, QUERY_EVIDENCE_TYPES, QUERY_REQUIREMENTS};
use super::signature::ResponseSigner;

/// Where a sample lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Base {
    /// The interop vectors directory (`VARTI_VECTORS`).
    Vectors,
    /// The specs directory (`VARTI_SPECS`).
    Specs,
}

/// A sample answer file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// Which directory.
    pub base: Base,
    /// The path below it.
    pub path: &'static str,
}

macro_rules! fr {
    ($f:literal) => {
        Sample {
            base: Base::Vectors,
            path: concat!("oots-france/common_services/", $f),
        }
    };
}
macro_rules! eb {
    ($f:literal) => {
        Sample {
            base: Base::Specs,
            path: concat!("oots-edm-v1/xml/EB/Complete XML examples (EB)/", $f),
        }
    };
}
macro_rules! dsd {
    ($f:literal) => {
        Sample {
            base: Base::Specs,
            path: concat!("oots-edm-v1/xml/DSD/Complete XML examples (DSD)/", $f),
        }
    };
}

/// One row of the table: a query id, the parameter values that must match exactly (the
/// value `!` means "must be absent"), and the sample answered.
#[derive(Debug, Clone, Copy)]
pub struct Route {
    /// The `queryId`.
    pub query_id: &'static str,
    /// (parameter, value) pairs that must all match.
    pub params: &'static [(&'static str, &'static str)],
    /// The answer.
    pub sample: Sample,
}

const ACC_TEST_REQUIREMENT: &str =
    "https://sr.acc.oots.tech.ec.europa.eu/requirements/00000000-0000-0000-0000-000000000000";
const BIRTH: &str = "https://sr.oots.tech.europa.eu/evidencetypeclassifications/DE/ca8afed6-2dc0-422a-a931-d21c3d8d370e";
const SECONDARY: &str = "https://sr.oots.tech.europa.eu/evidencetypeclassifications/DE/edf717b7-b373-40b1-b51b-cbb7c9d64de5";

/// The table, first match wins (so the more specific rows come first).
pub const ROUTES: &[Route] = &[
    // --- Evidence Broker: requirements of a procedure ---
    Route {
        query_id: QUERY_REQUIREMENTS,
        params: &[("procedure-id", "00"), ("country-code", "FR")],
        sample: fr!("eb_requirements_fr.xml"),
    },
    Route {
        query_id: QUERY_REQUIREMENTS,
        params: &[("procedure-id", "R1"), ("country-code", "DE")],
        sample: eb!("4.2. Get List of Requirements Query - Birth Certificate.xml"),
    },
    Route {
        query_id: QUERY_REQUIREMENTS,
        params: &[("procedure-id", "T2"), ("country-code", "DE")],
        sample: eb!("4.2. Get List of Requirements Query - Secondary Education.xml"),
    },
    Route {
        query_id: QUERY_REQUIREMENTS,
        params: &[("procedure-id", "X6"), ("country-code", "DE")],
        sample: eb!("4.2. Get List of Requirements Query - Social Security Contributions.xml"),
    },
    // --- Evidence Broker: evidence types of a requirement ---
    Route {
        query_id: QUERY_EVIDENCE_TYPES,
        params: &[("requirement-id", ACC_TEST_REQUIREMENT), ("country-code", "FR")],
        sample: fr!("eb_evidence_types_fr.xml"),
    },
    Route {
        query_id: QUERY_EVIDENCE_TYPES,
        params: &[("requirement-id", ACC_TEST_REQUIREMENT), ("country-code", "FI")],
        sample: fr!("eb_evidence_types_fi.xml"),
    },
    Route {
        query_id: QUERY_EVIDENCE_TYPES,
        params: &[
            ("requirement-id", "https://sr.oots.tech.europa.eu/requirements/315cfd75-6605-49c4-b0fe-799833b41099"),
            ("country-code", "DE"),
        ],
        sample: eb!("4.3. Get Evidence Types for Requirement Query - Birth Certificate.xml"),
    },
    Route {
        query_id: QUERY_EVIDENCE_TYPES,
        params: &[
            ("requirement-id", "https://sr.oots.tech.europa.eu/requirements/cfcd4e22-30f1-48fa-93e4-6cf98cedbf40"),
            ("country-code", "DE"),
        ],
        sample: eb!("4.3. Get Evidence Types for Requirement Query - Secondary Education.xml"),
    },
    Route {
        query_id: QUERY_EVIDENCE_TYPES,
        params: &[
            ("requirement-id", "https://sr.oots.tech.europa.eu/requirements/777873c1-02c4-49ff-af8f-77c59a42a7f4"),
            ("country-code", "DE"),
        ],
        sample: eb!("4.3. Get Evidence Types for Requirement Query - Social Security Contributions.xml"),
    },
    Route {
        query_id: QUERY_EVIDENCE_TYPES,
        params: &[("requirement-id", "a55f92a0-aa80-44b4-8135-7c9a31716ce1")],
        sample: eb!("4.4. Query Error Response of the Evidence Broker - Social Security Contributions.xml"),
    },
    // --- Data Service Directory ---
    Route {
        query_id: QUERY_DATA_SERVICES,
        params: &[
            ("evidence-type-classification", "https://sr.acc.oots.tech.ec.europa.eu/evidencetypeclassifications/FI/19f0783e-7cdc-4146-9ff9-e331514ffb74"),
            ("country-code", "FI"),
        ],
        sample: fr!("dsd_data_services_fi.xml"),
    },
    // Birth certificate: the exception-based flow. With the user's answers …
    Route {
        query_id: QUERY_DATA_SERVICES,
        params: &[
            ("evidence-type-classification", BIRTH),
            ("country-code", "DE"),
            ("evidence-type-id", "2af27699-f131-4411-8fdb-9e8cd4e8bded"),
            ("jurisdiction-context-id", "5ce148b9-5578-4049-aecf-af7bb55714b5"),
        ],
        sample: dsd!("4.3. Query Response of the DSD - Birth Certificate.xml"),
    },
    // … and without them: DSD:ERR:0005 asking for them.
    Route {
        query_id: QUERY_DATA_SERVICES,
        params: &[("evidence-type-classification", BIRTH), ("country-code", "DE")],
        sample: dsd!("4.4.3. Query Error Response of the DSD requesting additional User Provided Attributes - Birth Certificate - DSD-ERR005.xml"),
    },
    Route {
        query_id: QUERY_DATA_SERVICES,
        params: &[
            ("evidence-type-classification", SECONDARY),
            ("country-code", "DE"),
            ("evidence-type-id", "487fdfdc-7f92-42bb-a690-dcbd3d65f435"),
            ("jurisdiction-context-id", "9be524c1-6efe-417a-974c-088f54f0bcae"),
        ],
        sample: dsd!("4.3. Query Response of the DSD - Secondary Education.xml"),
    },
    Route {
        query_id: QUERY_DATA_SERVICES,
        params: &[
            ("evidence-type-classification", SECONDARY),
            ("country-code", "DE"),
            ("evidence-type-id", "487fdfdc-7f92-42bb-a690-dcbd3d65f435"),
            ("jurisdiction-context-id", "!"),
        ],
        sample: dsd!("4.3. Query Response of the DSD - Birth Certificate Simple Flow.xml"),
    },
    Route {
        query_id: QUERY_DATA_SERVICES,
        params: &[("evidence-type-classification", SECONDARY), ("country-code", "DE")],
        sample: dsd!("4.4.3. Query Error Response of the DSD requesting additional User Provided Attributes - Secondary Education - DSD-ERR005.xml"),
    },
    Route {
        query_id: QUERY_DATA_SERVICES,
        params: &[
            ("evidence-type-classification", "https://sr.oots.tech.europa.eu/evidencetypeclassifications/DE/d6bef643-fb9d-404f-8377-323ec2955e44"),
            ("country-code", "DE"),
        ],
        sample: dsd!("4.3. Query Response of the DSD - Social Security Contributions.xml"),
    },
    Route {
        query_id: QUERY_DATA_SERVICES,
        params: &[
            ("evidence-type-classification", "https://sr.oots.tech.europa.eu/evidencetypeclassifications/ES/edf717b7-b373-40b1-b51b-cbb7c9d64de5"),
            ("country-code", "ES"),
        ],
        sample: dsd!("4.4.3. Query Error Response of the DSD requesting additional User Provided Attributes - Social Security Contributions - DSD-ERR005.xml"),
    },
];

/// A country code that is not two capital letters: the services' "bad query parameters"
/// exception (`EB:ERR:0003` / `DSD:ERR:0003`, detail `country-code`).
pub(crate) const BAD_COUNTRY_EB: Sample =
    eb!("4.4. Query Error Response of the Evidence Broker - Birth.xml");
/// See [`BAD_COUNTRY_EB`].
pub(crate) const BAD_COUNTRY_DSD: Sample =
    dsd!("4.4.1 Query Error Response of the DSD - Birth Certificate.xml");
/// The Evidence Broker's empty answer (`EB:ERR:0001`), for unknown queries.
pub(crate) const EMPTY_EB: Sample = fr!("eb_requirements_vides.xml");
/// The Data Service Directory's empty answer (`DSD:ERR:0001`), for unknown queries.
pub(crate) const EMPTY_DSD: Sample = fr!("dsd_aucun_service_fr.xml");

/// The sample a parsed query is answered with.
pub fn route(query: &Query) -> Sample {
    let params = query.parameters();
    let value = |name: &str| {
        params
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.trim())
    };
    let country = value("country-code").unwrap_or_default();
    let valid_country = country.len() == 2 && country.bytes().all(|b| b.is_ascii_uppercase());
    if !valid_country {
        return match query.service() {
            Service::EvidenceBroker => BAD_COUNTRY_EB,
            Service::DataServiceDirectory => BAD_COUNTRY_DSD,
        };
    }
    for r in ROUTES {
        if r.query_id != query.id() {
            continue;
        }
        let matches = r.params.iter().all(|(n, v)| match (*v, value(n)) {
            ("!", found) => found.is_none(),
            (want, Some(found)) => want == found,
            (_, None) => false,
        });
        if matches {
            return r.sample;
        }
    }
    match query.service() {
        Service::EvidenceBroker => EMPTY_EB,
        Service::DataServiceDirectory => EMPTY_DSD,
    }
}

/// The stand-in: where the samples are, and optionally a key to sign with.
pub struct StandIn {
    vectors: PathBuf,
    specs: PathBuf,
    signer: Option<ResponseSigner>,
}

impl StandIn {
    /// A stand-in reading samples from the vectors and specs directories.
    pub fn new(vectors: impl Into<PathBuf>, specs: impl Into<PathBuf>) -> Self {
        StandIn {
            vectors: vectors.into(),
            specs: specs.into(),
            signer: None,
        }
    }

    /// Signs every answer with `signer` (instead of replaying recorded signatures).
    pub fn with_signer(mut self, signer: ResponseSigner) -> Self {
        self.signer = Some(signer);
        self
    }

    /// Where a sample file is.
    pub fn path_of(&self, s: Sample) -> PathBuf {
        let base: &Path = match s.base {
            Base::Vectors => &self.vectors,
            Base::Specs => &self.specs,
        };
        base.join(s.path)
    }

    /// Checks that every sample of the table is readable; the error lists those that are
    /// not (wrong `--vectors`/`--specs`).
    pub fn check(&self) -> Result<(), String> {
        let missing: Vec<String> = ROUTES
            .iter()
            .map(|r| r.sample)
            .chain([BAD_COUNTRY_EB, BAD_COUNTRY_DSD, EMPTY_EB, EMPTY_DSD])
            .map(|s| self.path_of(s))
            .filter(|p| !p.is_file())
            .map(|p| p.display().to_string())
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "sample answers not found (check the vectors and specs directories): {}",
                missing.join(", ")
            ))
        }
    }

    /// Answers a GET of `path?query` at time `now`: the routed sample (200), 404 for
    /// another path, 400 with a RegRep exception for a query that is none of the three.
    pub fn answer(&self, path: &str, query: &str, now: OffsetDateTime) -> HttpReply {
        if !path.ends_with("/rest/search") {
            return plain(
                404,
                "not found: the stand-in answers GET …/rest/search?queryId=…",
            );
        }
        let q = match Query::from_query_string(query) {
            Ok(q) => q,
            Err(e) => {
                return self.finish(400, invalid_request(&e.to_string()).into_bytes(), None, now)
            }
        };
        let sample = route(&q);
        let file = self.path_of(sample);
        let body = match std::fs::read(&file) {
            Ok(b) => b,
            Err(e) => {
                return plain(
                    500,
                    &format!(
                        "the stand-in cannot read its sample {}: {e}",
                        file.display()
                    ),
                )
            }
        };
        let recorded = recorded_headers(&file);
        tracing::debug!(query = q.id(), sample = %file.display(), "stand-in answer");
        self.finish(200, body, recorded, now)
    }

    fn finish(
        &self,
        status: u16,
        body: Vec<u8>,
        recorded: Option<Vec<(String, String)>>,
        now: OffsetDateTime,
    ) -> HttpReply {
        let mut headers = vec![(
            "content-type".to_owned(),
            "application/x-ebrs+xml".to_owned(),
        )];
        match (&self.signer, recorded) {
            (Some(s), _) => match s.sign(&body, now) {
                Ok(h) => headers.extend(h),
                Err(e) => return plain(500, &format!("the stand-in cannot sign: {e}")),
            },
            (None, Some(r)) => headers.extend(
                r.into_iter()
                    .filter(|(n, _)| !n.eq_ignore_ascii_case("content-type")),
            ),
            (None, None) => {}
        }
        HttpReply {
            status,
            headers,
            body,
        }
    }
}

/// The headers recorded beside a sample (`x.xml` → `x.headers`, `name: value` lines).
fn recorded_headers(sample: &Path) -> Option<Vec<(String, String)>> {
    let text = std::fs::read_to_string(sample.with_extension("headers")).ok()?;
    Some(
        text.lines()
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
            .collect(),
    )
}

fn plain(status: u16, text: &str) -> HttpReply {
    HttpReply {
        status,
        headers: vec![("content-type".into(), "text/plain; charset=utf-8".into())],
        body: text.as_bytes().to_vec(),
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('"', "&quot;")
}

/// A RegRep exception answer for a query the stand-in cannot read.
fn invalid_request(detail: &str) -> String {
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<query:QueryResponse xmlns:query="urn:oasis:names:tc:ebxml-regrep:xsd:query:4.0" xmlns:rs="urn:oasis:names:tc:ebxml-regrep:xsd:rs:4.0" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" status="urn:oasis:names:tc:ebxml-regrep:ResponseStatusType:Failure">
  <rs:Exception xsi:type="rs:InvalidRequestExceptionType" severity="urn:oasis:names:tc:ebxml-regrep:ErrorSeverityType:Error" message="The query parameters do not follow the query specification" detail="{}" code="DSD:ERR:0003"/>
</query:QueryResponse>
"#,
        escape(detail)
    )
}
