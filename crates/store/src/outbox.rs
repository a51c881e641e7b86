//! The webhook outbox: events about messages, written by the store in the same transaction
//! as the state change they report, so that no event is lost when an instance dies between
//! the change and the webhook's delivery.
//!
//! A change of a record writes an event when it moves the message into
//!
//! * `received` (a new inbound message that is not test traffic) → event `received`;
//! * `acknowledged` → event `sent`;
//! * `failed` → event `failed`, carrying the message's last error.
//!
//! Only for the owners named by [`Store::set_outbox_owners`] once it is called (the
//! backends with a webhook).
//!
//! The webhook dispatcher claims events with a lease ([`Store::claim_outbox_event`] for the
//! event its own instance just announced, [`Store::claim_outbox_due`] for the rest: events
//! whose announcing instance died, or whose lease expired), delivers them with the event id
//! as `X-Varti-Delivery`, and removes each once the backend answered
//! ([`Store::complete_outbox_events`]). Events of one message are claimed in the order they
//! were written: an event waits while an earlier event of its message is still pending.
//!
//! [`Store::claim_outbox_event`]: crate::Store::claim_outbox_event
//! [`Store::claim_outbox_due`]: crate::Store::claim_outbox_due
//! [`Store::complete_outbox_events`]: crate::Store::complete_outbox_events
//! [`Store::set_outbox_owners`]: crate::Store::set_outbox_owners

use std::collections::HashSet;
use std::sync::{Arc, PoisonError, RwLock};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::{Direction, MessageRecord, State};

/// One event waiting in the outbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxEvent {
    /// The event's id (a UUID): the same on every delivery attempt, by any instance, so the
    /// backend can drop repeats.
    pub event_id: String,
    /// The message the event is about.
    pub message_id: String,
    /// The backend the message belongs to.
    pub owner: String,
    /// `received`, `sent` or `failed`.
    pub kind: String,
    /// The message's last error, for `failed`.
    pub error: Option<String>,
    /// When the state change happened.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

/// What [`Store::claim_outbox_event`](crate::Store::claim_outbox_event) found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutboxClaim {
    /// The event is now leased to the caller.
    Claimed(OutboxEvent),
    /// The event exists but is leased to someone else, or waits for an earlier event of
    /// its message.
    Busy,
    /// No such event is pending (never written, or already delivered).
    Absent,
}

/// The event a change of a record from `old` (its state before, `None` for a new record)
/// to `new` writes to the outbox, if any: its kind and error.
pub(crate) fn event_for(
    old: Option<State>,
    new: &MessageRecord,
) -> Option<(&'static str, Option<String>)> {
    if old == Some(new.state) {
        return None;
    }
    match new.state {
        State::Received
            if old.is_none() && new.direction == Direction::Inbound && !new.meta.is_test() =>
        {
            Some(("received", None))
        }
        State::Acknowledged => Some(("sent", None)),
        State::Failed => Some(("failed", new.last_error.clone())),
        _ => None,
    }
}

/// The owners whose events a store writes (see
/// [`Store::set_outbox_owners`](crate::Store::set_outbox_owners)): all until set.
#[derive(Debug, Default)]
pub(crate) struct Owners(RwLock<Option<Arc<HashSet<String>>>>);

impl Owners {
    pub(crate) fn set(&self, owners: Option<HashSet<String>>) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = owners.map(Arc::new);
    }

    /// Whether the events of `owner`'s messages are written.
    pub(crate) fn keep(&self, owner: &str) -> bool {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .is_none_or(|owners| owners.contains(owner))
    }
}

/// The outbox event a change writes, with a fresh id, if its owner's events are kept.
pub(crate) fn new_event(
    old: Option<State>,
    new: &MessageRecord,
    owners: &Owners,
) -> Option<OutboxEvent> {
    if !owners.keep(&new.meta.owner) {
        return None;
    }
    event_for(old, new).map(|(kind, error)| OutboxEvent {
        event_id: uuid::Uuid::new_v4().to_string(),
        message_id: new.meta.message_id.clone(),
        owner: new.meta.owner.clone(),
        kind: kind.to_owned(),
        error,
        at: new.updated_at,
    })
}

/// An event as the embedded store keeps it: with its lease.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct StoredEvent {
    pub(crate) event: OutboxEvent,
    pub(crate) holder: Option<String>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub(crate) lease_until: Option<OffsetDateTime>,
}

impl StoredEvent {
    /// Whether the announcing instance may claim it now: nobody holds it, or the lease ran
    /// out.
    pub(crate) fn claimable(&self, now: OffsetDateTime) -> bool {
        self.holder.is_none() || self.lease_until.is_none_or(|t| t <= now)
    }

    /// Whether a sweep may claim it now: unclaimed since `unclaimed_before`, or its lease
    /// ran out.
    pub(crate) fn due(&self, now: OffsetDateTime, unclaimed_before: OffsetDateTime) -> bool {
        match &self.holder {
            None => self.event.at <= unclaimed_before,
            Some(_) => self.lease_until.is_none_or(|t| t <= now),
        }
    }
}
