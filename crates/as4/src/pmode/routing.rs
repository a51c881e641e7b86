//! Routing: which leg an inbound message or an outbound submission belongs to.
//!
//! Inbound, a leg is selected by the eDelivery AS4 P-Mode matching rules: From PartyId
//! (+type) and Role, To PartyId (+type) and Role, Service (+type), Action, AgreementRef
//! (+type), the optional `AgreementRef/@pmode`, and the MPC. A message for the ebMS test
//! service (Service `…/200704/service`, Action `…/200704/test`) that no leg names
//! explicitly is accepted on any leg between the same parties and roles, with that leg's
//! security (AS4: "every agreement gets a test P-Mode with the same security").
//!
//! When nothing matches, the error is EBMS:0010 and names the nearest leg and each
//! field that differed, so that an operator can fix the sender or the PMode at once.

use crate::error::{EbmsError, ErrorCode};
use crate::message::model::UserMessage;

use super::model::*;

/// The header values of an inbound user message that select its leg. Plain strings, so
/// that any message model can fill it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InboundKey {
    /// `eb:From/eb:PartyId`.
    pub from_party: String,
    /// `eb:From/eb:PartyId/@type`.
    pub from_party_type: Option<String>,
    /// `eb:From/eb:Role`.
    pub from_role: String,
    /// `eb:To/eb:PartyId`.
    pub to_party: String,
    /// `eb:To/eb:PartyId/@type`.
    pub to_party_type: Option<String>,
    /// `eb:To/eb:Role`.
    pub to_role: String,
    /// `eb:Service`.
    pub service: String,
    /// `eb:Service/@type`.
    pub service_type: Option<String>,
    /// `eb:Action`.
    pub action: String,
    /// `eb:AgreementRef`, when present.
    pub agreement: Option<String>,
    /// `eb:AgreementRef/@type`.
    pub agreement_type: Option<String>,
    /// `eb:AgreementRef/@pmode`.
    pub pmode: Option<String>,
    /// `eb:UserMessage/@mpc` (absent: the default MPC).
    pub mpc: Option<String>,
}

impl InboundKey {
    /// The key of a received user message: its first From and To party ids, their roles,
    /// its service, action, agreement and MPC.
    pub fn of(um: &UserMessage) -> InboundKey {
        let from = um.party_info.from.party_ids.first();
        let to = um.party_info.to.party_ids.first();
        let ci = &um.collaboration_info;
        InboundKey {
            from_party: from.map(|p| p.value.clone()).unwrap_or_default(),
            from_party_type: from.and_then(|p| p.type_.clone()),
            from_role: um.party_info.from.role.clone(),
            to_party: to.map(|p| p.value.clone()).unwrap_or_default(),
            to_party_type: to.and_then(|p| p.type_.clone()),
            to_role: um.party_info.to.role.clone(),
            service: ci.service.value.clone(),
            service_type: ci.service.type_.clone(),
            action: ci.action.clone(),
            agreement: ci.agreement_ref.as_ref().map(|a| a.value.clone()),
            agreement_type: ci.agreement_ref.as_ref().and_then(|a| a.type_.clone()),
            pmode: ci.agreement_ref.as_ref().and_then(|a| a.pmode.clone()),
            mpc: um.mpc.clone(),
        }
    }
}

/// What a backend asks to send. `None` fields match anything (but must then leave a
/// single leg).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Submission {
    /// `eb:AgreementRef`.
    pub agreement: Option<String>,
    /// `eb:AgreementRef/@type`.
    pub agreement_type: Option<String>,
    /// `eb:Service`.
    pub service: String,
    /// `eb:Service/@type`.
    pub service_type: Option<String>,
    /// `eb:Action`.
    pub action: String,
    /// The receiving party's id.
    pub to_party: String,
    /// Its type.
    pub to_party_type: Option<String>,
    /// Our own party id, when we act as several.
    pub from_party: Option<String>,
}

/// The leg found for a message.
#[derive(Debug, Clone, Copy)]
pub struct Route<'a> {
    /// The leg: its security, reliability, … apply.
    pub leg: &'a Leg,
    /// True when the message is for the ebMS test service and was matched on the
    /// parties and roles of `leg` (acknowledge, never deliver to a backend).
    pub test_service: bool,
}

/// One field of a key that differs from a leg.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Difference {
    /// The field, e.g. `Action`.
    pub field: &'static str,
    /// The value in the message.
    pub got: String,
    /// What the leg expects.
    pub expected: String,
}

fn opt(v: &Option<String>) -> String {
    match v {
        Some(v) => format!("'{v}'"),
        None => "none".to_owned(),
    }
}

fn party_ids(set: &PModeSet, names: &[String]) -> Vec<PartyId> {
    names
        .iter()
        .filter_map(|n| set.party(n))
        .flat_map(|p| p.ids.iter().cloned())
        .collect()
}

fn party_list(ids: &[PartyId]) -> String {
    if ids.is_empty() {
        return "no party".to_owned();
    }
    ids.iter()
        .map(|i| format!("'{i}'"))
        .collect::<Vec<_>>()
        .join(" or ")
}

/// Compares a party id (with `None` type meaning "any" when `any_type`).
fn party_matches(ids: &[PartyId], value: &str, id_type: &Option<String>, any_type: bool) -> bool {
    ids.iter()
        .any(|i| i.value == value && ((any_type && id_type.is_none()) || i.id_type == *id_type))
}

/// Records how one side (From or To) of an inbound message differs from a leg's side.
fn side_differences(
    d: &mut Vec<Difference>,
    side: &'static str,
    set: &PModeSet,
    leg_side: &LegSide,
    party: &str,
    party_type: &Option<String>,
    role: &str,
) {
    let ids = party_ids(set, &leg_side.parties);
    if !party_matches(&ids, party, party_type, false) {
        let got = PartyId {
            value: party.to_string(),
            id_type: party_type.clone(),
        };
        d.push(Difference {
            field: if side == "From" {
                "From PartyId"
            } else {
                "To PartyId"
            },
            got: format!("'{got}'"),
            expected: party_list(&ids),
        });
    }
    if role != leg_side.role {
        d.push(Difference {
            field: if side == "From" {
                "From Role"
            } else {
                "To Role"
            },
            got: format!("'{role}'"),
            expected: format!("'{}'", leg_side.role),
        });
    }
}

/// The fields in which `key` differs from `leg`; with `parties_only`, only the
/// party and role fields (the test-service rule).
pub(crate) fn inbound_differences(
    set: &PModeSet,
    leg: &Leg,
    key: &InboundKey,
    parties_only: bool,
) -> Vec<Difference> {
    let mut d = Vec::new();
    side_differences(
        &mut d,
        "From",
        set,
        &leg.from,
        &key.from_party,
        &key.from_party_type,
        &key.from_role,
    );
    side_differences(
        &mut d,
        "To",
        set,
        &leg.to,
        &key.to_party,
        &key.to_party_type,
        &key.to_role,
    );
    if parties_only {
        return d;
    }
    if key.service != leg.service.value {
        d.push(Difference {
            field: "Service",
            got: format!("'{}'", key.service),
            expected: format!("'{}'", leg.service.value),
        });
    }
    if key.service_type != leg.service.service_type {
        d.push(Difference {
            field: "Service type",
            got: opt(&key.service_type),
            expected: opt(&leg.service.service_type),
        });
    }
    if key.action != leg.action {
        d.push(Difference {
            field: "Action",
            got: format!("'{}'", key.action),
            expected: format!("'{}'", leg.action),
        });
    }
    let leg_agreement = leg.agreement.as_ref().map(|a| a.value.clone());
    let key_agreement = key.agreement.clone().filter(|a| !a.is_empty());
    if key_agreement != leg_agreement {
        d.push(Difference {
            field: "AgreementRef",
            got: opt(&key_agreement),
            expected: opt(&leg_agreement),
        });
    } else {
        let leg_type = leg
            .agreement
            .as_ref()
            .and_then(|a| a.agreement_type.clone());
        if leg_agreement.is_some() && key.agreement_type != leg_type {
            d.push(Difference {
                field: "AgreementRef type",
                got: opt(&key.agreement_type),
                expected: opt(&leg_type),
            });
        }
    }
    if let (Some(got), Some(want)) = (&key.pmode, &leg.pmode_id) {
        if got != want {
            d.push(Difference {
                field: "AgreementRef pmode",
                got: format!("'{got}'"),
                expected: format!("'{want}'"),
            });
        }
    }
    let mpc = key
        .mpc
        .as_deref()
        .filter(|m| !m.is_empty())
        .unwrap_or(DEFAULT_MPC);
    if mpc != leg.mpc {
        d.push(Difference {
            field: "MPC",
            got: format!("'{mpc}'"),
            expected: format!("'{}'", leg.mpc),
        });
    }
    d
}

/// How far a leg is from a key: fewest differing fields first, then the smallest
/// spelling distance (so that a typo in Action points at the leg it was meant for).
fn distance(diffs: &[Difference]) -> (usize, usize) {
    let spelling = diffs
        .iter()
        .map(|d| super::files::edit_distance(&d.got, &d.expected))
        .sum();
    (diffs.len(), spelling)
}

fn describe(diffs: &[Difference]) -> String {
    diffs
        .iter()
        .map(|d| format!("{}: got {}, expected {}", d.field, d.got, d.expected))
        .collect::<Vec<_>>()
        .join("; ")
}

fn no_match(what: &str, nearest: Option<(&Leg, Vec<Difference>)>) -> EbmsError {
    let detail = match nearest {
        None => format!("no leg matches {what}: no PMode leg is configured; add PMode files"),
        Some((leg, diffs)) => format!(
            "no leg matches {what}: nearest is {} which differs in {}",
            leg.label(),
            describe(&diffs)
        ),
    };
    EbmsError::new(ErrorCode::ProcessingModeMismatch, detail)
}

fn ambiguous(what: &str, a: &Leg, b: &Leg) -> EbmsError {
    EbmsError::new(
        ErrorCode::ProcessingModeMismatch,
        format!(
            "{what} matches more than one leg: {} and {}; `varti pmode check` reports this, make the legs differ",
            a.label(),
            b.label()
        ),
    )
}

fn is_test(service: &str, action: &str) -> bool {
    service == TEST_SERVICE && action == TEST_ACTION
}

/// Finds the leg of an inbound user message, or EBMS:0010 naming the nearest leg and
/// the fields that differed.
pub fn find_inbound<'a>(set: &'a PModeSet, key: &InboundKey) -> Result<Route<'a>, EbmsError> {
    let mut nearest: Option<(&Leg, Vec<Difference>)> = None;
    let mut found: Vec<&Leg> = Vec::new();
    for leg in &set.legs {
        let diffs = inbound_differences(set, leg, key, false);
        if diffs.is_empty() {
            found.push(leg);
        } else if nearest
            .as_ref()
            .is_none_or(|(_, n)| distance(&diffs) < distance(n))
        {
            nearest = Some((leg, diffs));
        }
    }
    match found.as_slice() {
        [leg] => {
            return Ok(Route {
                leg,
                test_service: is_test(&key.service, &key.action),
            })
        }
        [a, b, ..] => return Err(ambiguous("the message", a, b)),
        [] => {}
    }
    if is_test(&key.service, &key.action) {
        // Any leg between these parties and roles; one under the message's agreement
        // first, so its security is the one the sender used.
        let candidates: Vec<&Leg> = set
            .legs
            .iter()
            .filter(|l| inbound_differences(set, l, key, true).is_empty())
            .collect();
        let key_agreement = key.agreement.as_deref().filter(|a| !a.is_empty());
        let pick = candidates
            .iter()
            .find(|l| l.agreement.as_ref().map(|a| a.value.as_str()) == key_agreement)
            .or(candidates.first());
        if let Some(leg) = pick {
            return Ok(Route {
                leg,
                test_service: true,
            });
        }
    }
    Err(no_match("the message", nearest))
}

/// For a message from a sender that is no party of `set`: the leg allowing dynamic
/// initiators that the message fits when its sender is taken for one of the leg's dynamic
/// `from` parties, and that party. `None` when the sender is a listed party, or when no
/// such leg (or more than one) fits.
pub fn find_inbound_dynamic<'a>(
    set: &'a PModeSet,
    key: &InboundKey,
) -> Option<(Route<'a>, &'a Party)> {
    let listed = set
        .parties
        .iter()
        .any(|p| p.has_id(&key.from_party, key.from_party_type.as_deref()));
    if listed || key.from_party.is_empty() {
        return None;
    }
    let mut found: Vec<(&Leg, &Party)> = Vec::new();
    for leg in set.legs.iter().filter(|l| l.dynamic_initiators) {
        for party in leg
            .from
            .parties
            .iter()
            .filter_map(|n| set.party(n))
            .filter(|p| p.discovery.is_some())
        {
            let Some(id) = party.ids.first() else {
                continue;
            };
            let as_party = InboundKey {
                from_party: id.value.clone(),
                from_party_type: id.id_type.clone(),
                ..key.clone()
            };
            if inbound_differences(set, leg, &as_party, false).is_empty() {
                found.push((leg, party));
            }
        }
    }
    match found.as_slice() {
        [(leg, party)] => Some((
            Route {
                leg,
                test_service: is_test(&key.service, &key.action),
            },
            party,
        )),
        _ => None,
    }
}

/// Finds the leg to send a submission on, or EBMS:0010 naming the nearest leg and the
/// fields that differed.
pub fn find_outbound<'a>(set: &'a PModeSet, sub: &Submission) -> Result<Route<'a>, EbmsError> {
    let test = is_test(&sub.service, &sub.action);
    let mut nearest: Option<(&Leg, Vec<Difference>)> = None;
    let mut found: Vec<&Leg> = Vec::new();
    let mut test_candidates: Vec<&Leg> = Vec::new();
    for leg in &set.legs {
        let diffs = outbound_differences(set, leg, sub);
        let parties_ok = !diffs.iter().any(|d| d.field.ends_with("party"));
        if diffs.is_empty() {
            found.push(leg);
        } else {
            if test && parties_ok {
                test_candidates.push(leg);
            }
            if nearest
                .as_ref()
                .is_none_or(|(_, n)| distance(&diffs) < distance(n))
            {
                nearest = Some((leg, diffs));
            }
        }
    }
    match found.as_slice() {
        [leg] => {
            return Ok(Route {
                leg,
                test_service: test,
            })
        }
        [a, b, ..] => return Err(ambiguous("the submission", a, b)),
        [] => {}
    }
    if test {
        let pick = test_candidates
            .iter()
            .find(|l| l.agreement.as_ref().map(|a| &a.value) == sub.agreement.as_ref())
            .or(test_candidates.first());
        if let Some(leg) = pick {
            return Ok(Route {
                leg,
                test_service: true,
            });
        }
    }
    Err(no_match("the submission", nearest))
}

/// The fields in which a submission differs from a leg.
pub(crate) fn outbound_differences(set: &PModeSet, leg: &Leg, sub: &Submission) -> Vec<Difference> {
    let mut d = Vec::new();
    if sub.service != leg.service.value {
        d.push(Difference {
            field: "Service",
            got: format!("'{}'", sub.service),
            expected: format!("'{}'", leg.service.value),
        });
    }
    if sub.service_type.is_some() && sub.service_type != leg.service.service_type {
        d.push(Difference {
            field: "Service type",
            got: opt(&sub.service_type),
            expected: opt(&leg.service.service_type),
        });
    }
    if sub.action != leg.action {
        d.push(Difference {
            field: "Action",
            got: format!("'{}'", sub.action),
            expected: format!("'{}'", leg.action),
        });
    }
    if let Some(agreement) = &sub.agreement {
        let leg_agreement = leg.agreement.as_ref().map(|a| a.value.clone());
        if Some(agreement) != leg_agreement.as_ref() {
            d.push(Difference {
                field: "AgreementRef",
                got: format!("'{agreement}'"),
                expected: opt(&leg_agreement),
            });
        } else if sub.agreement_type.is_some() {
            let leg_type = leg
                .agreement
                .as_ref()
                .and_then(|a| a.agreement_type.clone());
            if sub.agreement_type != leg_type {
                d.push(Difference {
                    field: "AgreementRef type",
                    got: opt(&sub.agreement_type),
                    expected: opt(&leg_type),
                });
            }
        }
    }
    let to_ids = party_ids(set, &leg.to.parties);
    if !party_matches(&to_ids, &sub.to_party, &sub.to_party_type, true) {
        d.push(Difference {
            field: "To party",
            got: format!(
                "'{}'",
                PartyId {
                    value: sub.to_party.clone(),
                    id_type: sub.to_party_type.clone()
                }
            ),
            expected: party_list(&to_ids),
        });
    }
    if let Some(from) = &sub.from_party {
        let from_ids = party_ids(set, &leg.from.parties);
        if !party_matches(&from_ids, from, &None, true) {
            d.push(Difference {
                field: "From party",
                got: format!("'{from}'"),
                expected: party_list(&from_ids),
            });
        }
    }
    d
}
