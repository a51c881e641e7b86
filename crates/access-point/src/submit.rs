//! Submission: a backend's request to send becomes a stored outbound message.
//!
//! The caller (backend API, drop folder) first streams each payload into the store's
//! [`PayloadStore`](varti_store::PayloadStore), then calls [`submit`]. If `submit` fails the
//! caller still owns those payloads and removes them.

use time::OffsetDateTime;
use varti_as4::pmode::enforce::{self, PartFacts};
use varti_as4::pmode::model::{Binding, Leg};
use varti_as4::pmode::routing::{self, Submission as RouteQuery};
use varti_store::{MessageMeta, MessageProperty, NewOutbound, PayloadEntry, StoreError};

use crate::access_point::AccessPoint;
use crate::reload::Snapshot;

/// What a backend asks to send.
#[derive(Debug, Clone, Default)]
pub struct Submission {
    /// The backend submitting (owner of the message).
    pub owner: String,
    /// The MessageId to use; generated when `None`. Reusing an id is refused.
    pub message_id: Option<String>,
    /// The receiving party: a `[[party]]` name or one of its party ids.
    pub to_party: String,
    /// The type of `to_party`, when it is an id whose type matters.
    pub to_party_type: Option<String>,
    /// `eb:Service`.
    pub service: String,
    /// `eb:Service/@type`.
    pub service_type: Option<String>,
    /// `eb:Action`.
    pub action: String,
    /// `eb:AgreementRef`, to choose among legs.
    pub agreement: Option<String>,
    /// `eb:ConversationId`; generated when `None`.
    pub conversation_id: Option<String>,
    /// `eb:RefToMessageId`: the request this message answers (two-way exchanges).
    pub ref_to_message_id: Option<String>,
    /// `eb:MessageProperties`.
    pub properties: Vec<MessageProperty>,
    /// The payloads, already in the store's payload store.
    pub payloads: Vec<PayloadEntry>,
}

/// Why a submission was refused.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// No leg (or more than one) fits the submission.
    #[error("{0}")]
    NoRoute(String),
    /// The submission is incomplete or inconsistent.
    #[error("{0}")]
    Invalid(String),
    /// The store refused it (a reused MessageId, or a store failure).
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The key under which a leg is recorded in [`MessageMeta::pmode_id`]: its file, process
/// and leg name (unique in a PMode set; `pmode check` refuses duplicates).
pub fn leg_key(leg: &Leg) -> String {
    let file = leg
        .file
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    format!("{file}#{}/{}", leg.process, leg.name)
}

/// The leg a submission goes on (its payloads aside), the receiving party's id and our own.
fn route<'s>(
    snap: &'s Snapshot,
    sub: &Submission,
) -> Result<(routing::Route<'s>, String, Option<String>), SubmitError> {
    // A party name stands for its first id.
    let (to_party, to_party_type) = match snap.pmodes.party(&sub.to_party) {
        Some(p) if sub.to_party_type.is_none() => match p.ids.first() {
            Some(id) => (id.value.clone(), id.id_type.clone()),
            None => (sub.to_party.clone(), None),
        },
        _ => (sub.to_party.clone(), sub.to_party_type.clone()),
    };
    let me = snap
        .pmodes
        .party(&snap.identity.party)
        .and_then(|p| p.ids.first())
        .map(|id| id.value.clone());
    let query = RouteQuery {
        agreement: sub.agreement.clone(),
        agreement_type: None,
        service: sub.service.clone(),
        service_type: sub.service_type.clone(),
        action: sub.action.clone(),
        to_party: to_party.clone(),
        to_party_type,
        from_party: me.clone(),
    };
    let route =
        routing::find_outbound(&snap.pmodes, &query).map_err(|e| SubmitError::NoRoute(e.detail))?;
    Ok((route, to_party, me))
}

/// Whether the leg `sub` would go on now compresses a part of type `mime_type` (`false`
/// when no leg fits: the submission will be refused anyway). A payload streamed in before
/// the message is submitted can then be stored the way it will be sent: compressed once,
/// as it arrives. The sender decides again when it seals the message (the PModes may have
/// been reloaded since), and inflates a payload kept compressed for a leg that no longer
/// compresses it.
pub(crate) fn leg_compresses(ap: &AccessPoint, sub: &Submission, mime_type: &str) -> bool {
    let snap = ap.current();
    route(&snap, sub).is_ok_and(|(route, _, _)| {
        let c = &route.leg.compression;
        c.compress && !varti_as4::compress::leaves_uncompressed(mime_type, &c.uncompressed_types)
    })
}

/// Resolves the leg, stores the message as `Submitted` (due now) and wakes the sender.
/// Returns the MessageId.
///
/// A message on a one-way/pull leg is not pushed: it waits until its partner pulls it
/// ([`pull`](crate::pull)). It is stored due only in a hundred years
/// (`wait_for_pull`), so the push sender's
/// [`claim_due`](varti_store::Store::claim_due) never takes it, while a pull request takes
/// it with [`claim_message`](varti_store::Store::claim_message), which ignores the due time.
pub fn submit(
    ap: &AccessPoint,
    sub: Submission,
    now: OffsetDateTime,
) -> Result<String, SubmitError> {
    let mut sub = sub;
    // Every part needs a Content-ID in the MIME package; make one when the backend gave none.
    for (i, p) in sub.payloads.iter_mut().enumerate() {
        if p.content_id.trim_start_matches("cid:").is_empty() {
            p.content_id = format!("part{i}-{}@varti", uuid::Uuid::new_v4().simple());
        }
    }
    if sub.service.is_empty() || sub.action.is_empty() || sub.to_party.is_empty() {
        return Err(SubmitError::Invalid(
            "a submission needs to_party, service and action".into(),
        ));
    }
    let snap = ap.current();
    let (route, to_party, me) = route(&snap, &sub)?;
    if !route.test_service {
        let facts: Vec<PartFacts<'_>> = sub
            .payloads
            .iter()
            .map(|p| PartFacts {
                content_id: p.content_id.trim_start_matches("cid:"),
                mime_type: &p.mime_type,
                size: p.stored.size,
            })
            .collect();
        enforce::check_properties(route.leg, sub.properties.iter().map(|p| p.name.as_str()))
            .and_then(|()| enforce::check_payloads(route.leg, &facts))
            .map_err(|e| SubmitError::Invalid(e.detail))?;
    }
    for (what, id) in [
        ("message_id", &sub.message_id),
        ("ref_to_message_id", &sub.ref_to_message_id),
    ] {
        if let Some(Err(why)) = id.as_deref().map(varti_as4::message::id::check) {
            return Err(SubmitError::Invalid(format!("{what}: {why}")));
        }
    }
    let message_id = sub
        .message_id
        .unwrap_or_else(|| format!("{}@varti", uuid::Uuid::new_v4()));
    let meta = MessageMeta {
        message_id: message_id.clone(),
        owner: sub.owner,
        from_party: me.unwrap_or_else(|| snap.identity.party.clone()),
        to_party,
        service: sub.service,
        action: sub.action,
        conversation_id: sub
            .conversation_id
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
        ref_to_message_id: sub.ref_to_message_id,
        pmode_id: leg_key(route.leg),
        payloads: sub.payloads,
        properties: sub.properties,
    };
    let pulled = route.leg.binding == Binding::Pull;
    let not_before = if pulled {
        crate::pull::wait_for_pull(now)
    } else {
        now
    };
    ap.store
        .insert_outbound(NewOutbound { meta, not_before }, now)?;
    if pulled {
        tracing::info!(message_id = %message_id, leg = %route.leg.label(), mpc = %route.leg.mpc, "message submitted; it waits to be pulled");
    } else {
        tracing::info!(message_id = %message_id, leg = %route.leg.label(), "message submitted");
        ap.wake_sender.notify_one();
    }
    Ok(message_id)
}
