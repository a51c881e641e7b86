//! Common-services discovery by DNS NAPTR (TDD: each country's Evidence Broker and Data
//! Service Directory are found at `<cc>.<eb|dsd>.v<major>.cs.<acc|prod>.oots.tech.ec.europa.eu`).
//!
//! The NAPTR records are read as a U-NAPTR application (RFC 4848 on the DDDS of RFC
//! 3401–3403): records are taken in `order`, then `preference`; a record with the `U`
//! flag is terminal and its regexp, applied to the name looked up (the application-unique
//! string), gives the URL; a record with no flag is a delegation to its `replacement`
//! name, looked up in turn; other flags are not for this application and are skipped.
//! The TDD names no service tag, so the services field is not filtered.

use std::net::SocketAddr;
use std::time::Duration;

use hickory_resolver::proto::rr::{RData, RecordType};
use hickory_resolver::TokioResolver;
// The RFC 3402 substitution is shared with partner discovery (varti-as4).
pub(crate) use varti_as4::discovery::substitute;

/// Delegations (flag-less records) followed before giving up (a loop guard).
const MAX_HOPS: usize = 5;

/// Why discovery found no URL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DiscoveryError {
    /// The name has no NAPTR record, or none this application can use.
    #[error("no usable NAPTR record at {name}: {detail} (check oots.common_services.discovery (acc or prod), edm_major and the country code, or configure oots.common_services.url)")]
    NotFound {
        /// The name looked up.
        name: String,
        /// What was (not) there.
        detail: String,
    },
    /// The DNS look-up itself failed (no answer, server failure).
    #[error("DNS look-up of NAPTR {name} failed: {detail} (check oots.common_services.dns_server or the system's resolver, and that this host reaches it)")]
    Dns {
        /// The name looked up.
        name: String,
        /// The resolver's message.
        detail: String,
    },
}

/// A NAPTR record's fields as this application reads them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Naptr {
    /// Processing order (lowest first).
    pub order: u16,
    /// Preference among equal orders (lowest first).
    pub preference: u16,
    /// The flags (`U` terminal with a URI; empty: delegation).
    pub flags: String,
    /// The substitution expression (`!ere!replacement!flags`).
    pub regexp: String,
    /// The next name for a delegation (`.` when none).
    pub replacement: String,
}

/// Looks NAPTR records up and turns them into a URL.
pub struct NaptrDiscovery {
    resolver: TokioResolver,
}

impl NaptrDiscovery {
    /// A resolver asking `dns_server` (UDP, then TCP for long answers), or the system's
    /// configured servers when `None`; each DNS query bounded by `timeout`.
    pub fn new(dns_server: Option<SocketAddr>, timeout: Duration) -> Result<Self, String> {
        let resolver = varti_access_point::discovery::dns_resolver(
            dns_server,
            timeout,
            "oots.common_services.dns_server",
        )?;
        Ok(NaptrDiscovery { resolver })
    }

    /// The URL `name` resolves to.
    pub async fn discover(&self, name: &str) -> Result<String, DiscoveryError> {
        let aus = name.trim_end_matches('.').to_owned();
        let mut lookup_name = aus.clone();
        for _ in 0..MAX_HOPS {
            let records = self.naptr(&lookup_name).await?;
            match select(&aus, &records) {
                Selected::Url(url) => {
                    tracing::info!(name = %aus, %url, "common services discovered by NAPTR");
                    return Ok(url);
                }
                Selected::Delegate(next) => lookup_name = next,
                Selected::Nothing(detail) => {
                    return Err(DiscoveryError::NotFound {
                        name: lookup_name,
                        detail,
                    })
                }
            }
        }
        Err(DiscoveryError::NotFound {
            name: aus,
            detail: format!("more than {MAX_HOPS} delegations"),
        })
    }

    async fn naptr(&self, name: &str) -> Result<Vec<Naptr>, DiscoveryError> {
        // Fully qualified: the system's search domains must not be appended.
        let fqdn = format!("{name}.");
        let lookup = match self.resolver.lookup(fqdn.as_str(), RecordType::NAPTR).await {
            Ok(l) => l,
            Err(e) if e.is_no_records_found() || e.is_nx_domain() => {
                return Err(DiscoveryError::NotFound {
                    name: name.to_owned(),
                    detail: "the DNS has no NAPTR record there".into(),
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
        Ok(lookup
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                RData::NAPTR(n) => Some(Naptr {
                    order: n.order,
                    preference: n.preference,
                    flags: text(&n.flags),
                    regexp: text(&n.regexp),
                    replacement: n.replacement.to_utf8(),
                }),
                _ => None,
            })
            .collect())
    }
}

/// What the records of one name lead to.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Selected {
    Url(String),
    Delegate(String),
    Nothing(String),
}

/// Picks the first usable record (by order, then preference) for the application-unique
/// string `aus`.
fn select(aus: &str, records: &[Naptr]) -> Selected {
    let mut sorted: Vec<&Naptr> = records.iter().collect();
    sorted.sort_by_key(|r| (r.order, r.preference));
    let mut skipped = Vec::new();
    for r in sorted {
        let flags = r.flags.to_ascii_lowercase();
        if flags == "u" {
            match substitute(aus, &r.regexp) {
                Ok(url) if url.starts_with("https://") || url.starts_with("http://") => {
                    return Selected::Url(url)
                }
                Ok(url) => skipped.push(format!("`{url}` is not an http(s) URL")),
                Err(e) => skipped.push(format!("regexp `{}`: {e}", r.regexp)),
            }
        } else if flags.is_empty() && r.regexp.is_empty() {
            let next = r.replacement.trim_end_matches('.');
            if !next.is_empty() {
                return Selected::Delegate(next.to_owned());
            }
            skipped.push("a delegation without a replacement name".into());
        } else {
            skipped.push(format!("flags `{}` are not for this application", r.flags));
        }
    }
    if skipped.is_empty() {
        Selected::Nothing("the DNS has no NAPTR record there".into())
    } else {
        Selected::Nothing(skipped.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const AUS: &str = "lv.dsd.v2.cs.acc.oots.tech.ec.europa.eu";

    #[test]
    fn the_usual_u_naptr_expression_gives_its_literal_url() {
        assert_eq!(
            substitute(AUS, "!^.*$!https://query.cs.acc.oots.tech.ec.europa.eu/!").unwrap(),
            "https://query.cs.acc.oots.tech.ec.europa.eu/"
        );
    }

    #[test]
    fn groups_escapes_and_the_case_flag() {
        assert_eq!(
            substitute(AUS, r"!^([a-z]+)\.(dsd)\..*$!https://\2.\1.example/x\!y!").unwrap(),
            "https://dsd.lv.example/x!y"
        );
        assert_eq!(
            substitute("LV.DSD", "#^lv\\.(.*)$#https://h/\\1#i").unwrap(),
            "https://h/DSD"
        );
        assert!(substitute(AUS, "!^(a)$!x!")
            .unwrap_err()
            .contains("does not match"));
        assert!(substitute(AUS, "!.*!\\2!")
            .unwrap_err()
            .contains("names no group"));
        assert!(substitute(AUS, "!.*!x").unwrap_err().contains("parts"));
        assert!(substitute(AUS, "!.*!x!g")
            .unwrap_err()
            .contains("unknown flag"));
        assert!(substitute(AUS, "1.*1x1").unwrap_err().contains("delimiter"));
    }

    fn rec(order: u16, pref: u16, flags: &str, regexp: &str, replacement: &str) -> Naptr {
        Naptr {
            order,
            preference: pref,
            flags: flags.into(),
            regexp: regexp.into(),
            replacement: replacement.into(),
        }
    }

    #[test]
    fn records_are_taken_by_order_then_preference_and_unusable_ones_skipped() {
        let records = [
            rec(20, 10, "U", "!^.*$!https://late.example/!", "."),
            rec(10, 20, "U", "!^.*$!https://second.example/!", "."),
            rec(10, 10, "S", "", "_x._tcp.example."),
            rec(10, 15, "U", "!^.*$!ftp://not-http.example/!", "."),
            rec(10, 16, "U", "!^.*$!https://first.example/!", "."),
        ];
        assert_eq!(
            select(AUS, &records),
            Selected::Url("https://first.example/".into())
        );
        assert_eq!(
            select(AUS, &[rec(1, 1, "", "", "next.example.")]),
            Selected::Delegate("next.example".into())
        );
        match select(AUS, &[rec(1, 1, "S", "", "x.")]) {
            Selected::Nothing(d) => assert!(d.contains("flags `S`"), "{d}"),
            other => panic!("{other:?}"),
        }
    }
}
