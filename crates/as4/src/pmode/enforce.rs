//! What a leg demands of a message beyond routing: its message properties and payload
//! profile. Checked on receipt (after decryption and decompression, so on the parts a
//! backend would get) and on submission, so that Varti never accepts or sends a message
//! that its PMode — and a Domibus peer holding the same PMode — would refuse.
//!
//! Every refusal is `EBMS:0010 ProcessingModeMismatch` naming the rule and the fix.

use super::model::{Leg, PartRule};
use crate::error::{EbmsError, ErrorCode};

/// A payload as the checks see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartFacts<'a> {
    /// Its Content-ID (without `cid:`).
    pub content_id: &'a str,
    /// Its MIME type (the `MimeType` part property when compressed).
    pub mime_type: &'a str,
    /// Its size in bytes (decompressed).
    pub size: u64,
}

fn mismatch(detail: String) -> EbmsError {
    EbmsError::new(ErrorCode::ProcessingModeMismatch, detail)
}

/// Checks the message property names against the leg's property rules: every required one
/// present, and — when the leg lists any — no property it does not list.
pub fn check_properties<'a>(
    leg: &Leg,
    names: impl IntoIterator<Item = &'a str>,
) -> Result<(), EbmsError> {
    if leg.properties.is_empty() {
        return Ok(());
    }
    let names: Vec<&str> = names.into_iter().collect();
    for name in &names {
        if !leg.properties.iter().any(|r| r.name == *name) {
            return Err(mismatch(format!(
                "message property `{name}` is not defined for leg {} (defined: {})",
                leg.label(),
                leg.properties
                    .iter()
                    .map(|r| r.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
    }
    for rule in leg.properties.iter().filter(|r| r.required) {
        if !names.contains(&rule.name.as_str()) {
            return Err(mismatch(format!(
                "message property `{}` is required by leg {} but missing",
                rule.name,
                leg.label()
            )));
        }
    }
    Ok(())
}

/// Checks the payloads against the leg's payload profile: each payload must fit a part
/// rule (its Content-ID when the rule fixes one, its MIME type, its size), each rule takes
/// at most one payload, required rules must be taken, and the total size must fit.
pub fn check_payloads(leg: &Leg, parts: &[PartFacts<'_>]) -> Result<(), EbmsError> {
    let Some(profile) = &leg.payload else {
        return Ok(());
    };
    let total: u64 = parts.iter().map(|p| p.size).sum();
    if let Some(max) = profile.max_size {
        if total > max {
            return Err(mismatch(format!(
                "the payloads total {total} bytes, more than the {max} bytes leg {} allows",
                leg.label()
            )));
        }
    }
    // CP_TA06: the business document is the first part. A profile whose first rule is
    // required names that leading document, so the first payload must be it; a message
    // that carries it elsewhere is refused even though every part would find a rule.
    if let (Some(lead), Some(first)) = (profile.parts.first().filter(|r| r.required), parts.first())
    {
        if !fits(lead, first) {
            return Err(mismatch(format!(
                "the first payload `{}` ({}, {} bytes) is not the business document `{}` that \
                 leg {} requires first (parts: {}); send the business document as the first \
                 part",
                first.content_id,
                first.mime_type,
                first.size,
                lead.name,
                leg.label(),
                describe(&profile.parts)
            )));
        }
    }
    let mut taken = vec![false; profile.parts.len()];
    for part in parts {
        let fits = |rule: &PartRule| fits(rule, part);
        // Rules fixing this Content-ID first, then the first free rule that fits.
        let slot = profile
            .parts
            .iter()
            .enumerate()
            .filter(|(i, r)| !taken[*i] && fits(r))
            .min_by_key(|(i, r)| (r.cid.is_none(), *i))
            .map(|(i, _)| i);
        match slot {
            Some(i) => taken[i] = true,
            None => {
                return Err(mismatch(format!(
                    "payload `{}` ({}, {} bytes) fits no part of the payload profile of leg {} \
                     (parts: {})",
                    part.content_id,
                    part.mime_type,
                    part.size,
                    leg.label(),
                    describe(&profile.parts)
                )))
            }
        }
    }
    for (rule, taken) in profile.parts.iter().zip(&taken) {
        if rule.required && !taken {
            return Err(mismatch(format!(
                "the payload `{}` required by leg {} is missing (parts: {})",
                rule.name,
                leg.label(),
                describe(&profile.parts)
            )));
        }
    }
    Ok(())
}

/// Whether `part` fits `rule`: its Content-ID when the rule fixes one, its MIME type, its
/// size.
fn fits(rule: &PartRule, part: &PartFacts<'_>) -> bool {
    rule.cid
        .as_deref()
        .is_none_or(|cid| cid.trim_start_matches("cid:") == part.content_id)
        && (rule.mime_types.is_empty()
            || rule
                .mime_types
                .iter()
                .any(|m| m.eq_ignore_ascii_case(part.mime_type)))
        && rule.max_size.is_none_or(|max| part.size <= max)
}

fn describe(parts: &[PartRule]) -> String {
    parts
        .iter()
        .map(|r| {
            let mut s = r.name.clone();
            if !r.mime_types.is_empty() {
                s.push_str(&format!(" [{}]", r.mime_types.join("|")));
            }
            if let Some(max) = r.max_size {
                s.push_str(&format!(" ≤{max} B"));
            }
            if r.required {
                s.push_str(" required");
            }
            s
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pmode::model::{PayloadProfile, PropertyRule};

    fn leg_with(properties: Vec<PropertyRule>, payload: Option<PayloadProfile>) -> Leg {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../pmodes");
        let (set, _) = crate::pmode::load_dir(&dir);
        let mut leg = set.legs[0].clone();
        leg.properties = properties;
        leg.payload = payload;
        leg
    }

    fn rule(name: &str, required: bool) -> PropertyRule {
        PropertyRule {
            name: name.into(),
            required,
        }
    }

    fn part(name: &str, mime: &[&str], required: bool, max: Option<u64>) -> PartRule {
        PartRule {
            name: name.into(),
            mime_types: mime.iter().map(|m| m.to_string()).collect(),
            required,
            max_size: max,
            cid: None,
        }
    }

    #[test]
    fn properties_required_and_unknown() {
        let leg = leg_with(
            vec![
                rule("originalSender", true),
                rule("trackingIdentifier", false),
            ],
            None,
        );
        check_properties(&leg, ["originalSender"]).unwrap();
        check_properties(&leg, ["originalSender", "trackingIdentifier"]).unwrap();
        let e = check_properties(&leg, ["trackingIdentifier"]).unwrap_err();
        assert_eq!(e.code, ErrorCode::ProcessingModeMismatch);
        assert!(e.detail.contains("originalSender"), "{}", e.detail);
        let e = check_properties(&leg, ["originalSender", "colour"]).unwrap_err();
        assert!(e.detail.contains("`colour` is not defined"), "{}", e.detail);
        // A leg without rules accepts anything.
        check_properties(&leg_with(vec![], None), ["anything"]).unwrap();
    }

    #[test]
    fn payload_profile() {
        let profile = PayloadProfile {
            parts: vec![
                part("edm", &["application/x-ebrs+xml"], true, Some(100)),
                part("evidence", &[], false, None),
            ],
            max_size: Some(1000),
        };
        let leg = leg_with(vec![], Some(profile));
        let edm = PartFacts {
            content_id: "a",
            mime_type: "application/x-ebrs+xml",
            size: 50,
        };
        let pdf = PartFacts {
            content_id: "b",
            mime_type: "application/pdf",
            size: 300,
        };
        check_payloads(&leg, std::slice::from_ref(&edm)).unwrap();
        check_payloads(&leg, &[edm.clone(), pdf.clone()]).unwrap();
        // The same parts with the business document second (CP_TA06): each would find a
        // rule, but the leading document is not first.
        let e = check_payloads(&leg, &[pdf.clone(), edm.clone()]).unwrap_err();
        assert!(e.detail.contains("first payload `b`"), "{}", e.detail);
        assert!(e.detail.contains("business document `edm`"), "{}", e.detail);
        // No payload at all: the required part is missing.
        let e = check_payloads(&leg, &[]).unwrap_err();
        assert!(e.detail.contains("`edm` required"), "{}", e.detail);
        // The evidence alone: the required EDM part is missing.
        let e = check_payloads(&leg, std::slice::from_ref(&pdf)).unwrap_err();
        assert!(e.detail.contains("business document `edm`"), "{}", e.detail);
        // A third part fits no rule.
        let e = check_payloads(&leg, &[edm.clone(), pdf.clone(), pdf.clone()]).unwrap_err();
        assert!(e.detail.contains("fits no part"), "{}", e.detail);
        // Too big an EDM part.
        let big = PartFacts {
            size: 101,
            ..edm.clone()
        };
        assert!(check_payloads(&leg, &[big]).is_err());
        // Total size.
        let huge = PartFacts { size: 990, ..pdf };
        let e = check_payloads(&leg, &[edm, huge]).unwrap_err();
        assert!(e.detail.contains("total"), "{}", e.detail);
    }
}
