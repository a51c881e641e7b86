//! The message state machine, written once and shared by every [`Store`](crate::Store).
//!
//! A store never changes a message's state by itself: it asks [`transition`] what the next
//! state is, and only then writes it (with a compare-and-set on the state it read). That keeps
//! the rules in one place, testable without a database, and identical for sled and PostgreSQL.
//!
//! ```text
//!  OUTBOUND (we send)
//!
//!                 Claim                 Acknowledge
//!  Submitted ───────────────▶ Sending ────────────────▶ Acknowledged
//!     │  ▲                    │  ▲  │                        ▲
//!     │  │ Resend             │  │  │ Fail (last retry:      │ Acknowledge
//!     │  │                    │  │  │ EBMS:0301, or an       │ (late receipt)
//!     │  │     AttemptFailed  │  │  │ error that no retry    │
//!     │  │     LeaseExpired   │  │  │ can fix)               │
//!     │  │                    ▼  │  ▼                        │
//!     │  │           WaitingForRetry ────────────────────────┘
//!     │  │                 │   Claim (when the retry is due)
//!     │  │                 │ Fail (cancelled)
//!     │  │                 ▼
//!     └──┼─── Fail ──▶  Failed
//!        └──────────────┘
//!
//!  INBOUND (we receive)
//!
//!             Deliver                Download (ack)          Delete
//!  Received ───────────▶ Delivered ────────────────▶ Downloaded ─────────▶ Deleted
//!     │                      │                          ▲                   ▲
//!     └──── Download (ack) ──┼──────────────────────────┘                   │
//!                            └──────────────────── Delete ──────────────────┘
//! ```
//!
//! What the inbound states mean to an operator (Domibus' words in brackets):
//!
//! * `received` [RECEIVED]: verified, stored, answered with a receipt; its backend has not
//!   acknowledged it yet. Downloading its payloads does **not** change this: each download
//!   is recorded in the history (a `fetch` entry naming the payload and the client), so an
//!   operator sees who fetched what, but only the explicit acknowledgement settles it.
//! * `delivered`: announced to its backend (the webhook was accepted, or the feature that
//!   claimed the service took it) — exactly once.
//! * `downloaded` [DOWNLOADED]: the backend acknowledged it (`POST /messages/{id}/ack`,
//!   `varti messages ack`): the explicit act that says "we have it".
//! * `deleted`: the backend removed it.
//!
//! Some history entries record what happened without changing the state; the state
//! machine refuses them as transitions ([`Event::is_note`]): `receive` (the arrival: the
//! first entry of every inbound message, naming the sending party and the peer address),
//! `fetch` (a payload was downloaded) and `retry_now` (an operator made a waiting message
//! due now). Their entries have `from == to`.
//!
//! Rules that are not obvious from the picture:
//!
//! * **Idempotence.** Applying an event whose effect is already in place returns the current
//!   state unchanged instead of an error: acknowledging an acknowledged message, failing a
//!   failed one, recording a failed attempt on a message already waiting for its retry,
//!   delivering a message that was already delivered (or downloaded, or deleted), downloading
//!   a downloaded one, deleting a deleted one. Two instances that both learn of a receipt, or
//!   a retried API call, therefore do no harm.
//! * **Exactly one self-loop meaning.** `transition(s, e) == Ok(s)` means "already applied,
//!   nothing to do", never "do it again". Stores rely on this to report
//!   [`TransitionOutcome::AlreadyApplied`](crate::TransitionOutcome) and to let exactly one
//!   caller of [`Store::mark_delivered`](crate::Store::mark_delivered) win. That is why
//!   `Claim` on a message that is already `Sending` is refused: a claim is never a no-op.
//! * **Lease takeover.** A `Sending` message whose lease expired (its sender died) first
//!   goes back to `WaitingForRetry` by `LeaseExpired`, then is claimed again; the history shows
//!   both steps.
//! * **Terminal states stay terminal**, except that an administrator may `Resend` a failed
//!   message. A receipt arriving after the message was given up (`Failed`) is refused: the
//!   backend has already been told EBMS:0301.
//! * **Directions never mix**: an outbound event on an inbound state (or the reverse) is an
//!   [`InvalidTransition`].
//! * **Duplicates are not transitions.** A duplicate inbound message leaves the original's
//!   state alone; the store answers it with the original receipt and counts it.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Which way a message travels through this access point.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Submitted by a backend, sent by us to a partner.
    Outbound,
    /// Received by us from a partner, delivered to a backend.
    Inbound,
}

impl Direction {
    /// The state every new message of this direction starts in.
    pub(crate) fn initial_state(self) -> State {
        match self {
            Direction::Outbound => State::Submitted,
            Direction::Inbound => State::Received,
        }
    }

    /// A stable lower-case name (`outbound`, `inbound`) for logs, APIs and database columns.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Outbound => "outbound",
            Direction::Inbound => "inbound",
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a message is in its life. See the module documentation for the diagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Outbound: accepted from the backend, not yet tried.
    Submitted,
    /// Outbound: an instance holds a lease on it and is sending it now.
    Sending,
    /// Outbound: an attempt failed (or its sender vanished); the next one is scheduled.
    WaitingForRetry,
    /// Outbound: the partner's receipt arrived. Terminal.
    Acknowledged,
    /// Outbound: given up (EBMS:0301 after the last retry, or a non-retryable error).
    /// Terminal unless an administrator resends it.
    Failed,
    /// Inbound: verified, stored durably and answered with a receipt.
    Received,
    /// Inbound: handed to (or announced to) its backend — exactly once.
    Delivered,
    /// Inbound: the backend acknowledged it (`POST /messages/{id}/ack`; Domibus' DOWNLOADED).
    Downloaded,
    /// Inbound: the backend acknowledged and removed it. Terminal.
    Deleted,
}

impl State {
    /// Every state, outbound first. Handy for exhaustive tests and for database enums.
    pub const ALL: [State; 9] = [
        State::Submitted,
        State::Sending,
        State::WaitingForRetry,
        State::Acknowledged,
        State::Failed,
        State::Received,
        State::Delivered,
        State::Downloaded,
        State::Deleted,
    ];

    /// The direction this state belongs to.
    pub fn direction(self) -> Direction {
        match self {
            State::Submitted
            | State::Sending
            | State::WaitingForRetry
            | State::Acknowledged
            | State::Failed => Direction::Outbound,
            State::Received | State::Delivered | State::Downloaded | State::Deleted => {
                Direction::Inbound
            }
        }
    }

    /// True once the message's exchange is over: its payloads may be purged after the
    /// retention period. (`Failed` counts: the payload of a message nobody will send again
    /// must not linger either; a resend needs it, so resend before the retention runs out.)
    pub(crate) fn is_settled(self) -> bool {
        matches!(
            self,
            State::Acknowledged
                | State::Failed
                | State::Delivered
                | State::Downloaded
                | State::Deleted
        )
    }

    /// A stable snake_case name (`waiting_for_retry`, …) for logs, APIs and database columns.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Submitted => "submitted",
            State::Sending => "sending",
            State::WaitingForRetry => "waiting_for_retry",
            State::Acknowledged => "acknowledged",
            State::Failed => "failed",
            State::Received => "received",
            State::Delivered => "delivered",
            State::Downloaded => "downloaded",
            State::Deleted => "deleted",
        }
    }

    /// Parses [`State::as_str`]'s names back (for database columns and CLI filters).
    pub fn parse(name: &str) -> Option<State> {
        State::ALL.into_iter().find(|s| s.as_str() == name)
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Something that happened to a message. Events carry no data: details (errors, receipts,
/// retry times) live in the record; the state machine only decides the next state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    /// Outbound: an instance takes a lease and starts an attempt.
    Claim,
    /// Outbound: the attempt failed in a way a retry may fix.
    AttemptFailed,
    /// Outbound: the instance holding the lease did not finish before the lease expired.
    LeaseExpired,
    /// Outbound: the partner's receipt arrived.
    Acknowledge,
    /// Outbound: give up (last retry exhausted → EBMS:0301, a fatal error, or cancelled).
    Fail,
    /// Outbound: an administrator sends a failed message again.
    Resend,
    /// Inbound: hand the message to its backend.
    Deliver,
    /// Inbound: the backend acknowledged the message (its explicit ack; downloading a
    /// payload is a [`Event::Fetch`] note, not this).
    Download,
    /// Inbound: the backend acknowledged and removed the message.
    Delete,
    /// Inbound, history only: the message arrived (the first entry of every inbound
    /// message; its note names the sending party and the peer address).
    Receive,
    /// Inbound, history only: a backend downloaded one of the payloads.
    Fetch,
    /// Outbound, history only: an operator made a message waiting for its retry due now.
    RetryNow,
}

impl Event {
    /// Every event.
    pub const ALL: [Event; 12] = [
        Event::Claim,
        Event::AttemptFailed,
        Event::LeaseExpired,
        Event::Acknowledge,
        Event::Fail,
        Event::Resend,
        Event::Deliver,
        Event::Download,
        Event::Delete,
        Event::Receive,
        Event::Fetch,
        Event::RetryNow,
    ];

    /// Whether this event only records something in the history without changing the
    /// state (`receive`, `fetch`, `retry_now`); [`transition`] refuses these.
    pub fn is_note(self) -> bool {
        matches!(self, Event::Receive | Event::Fetch | Event::RetryNow)
    }

    /// A stable snake_case name for logs and history columns.
    pub fn as_str(self) -> &'static str {
        match self {
            Event::Claim => "claim",
            Event::AttemptFailed => "attempt_failed",
            Event::LeaseExpired => "lease_expired",
            Event::Acknowledge => "acknowledge",
            Event::Fail => "fail",
            Event::Resend => "resend",
            Event::Deliver => "deliver",
            Event::Download => "download",
            Event::Delete => "delete",
            Event::Receive => "receive",
            Event::Fetch => "fetch",
            Event::RetryNow => "retry_now",
        }
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An event that the state machine does not allow in the message's current state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "a message in state `{from}` cannot take event `{event}`: the state machine allows no \
     such step (re-read the message: another instance or call may have moved it on)"
)]
pub struct InvalidTransition {
    /// The state the message was in.
    pub from: State,
    /// The refused event.
    pub event: Event,
}

/// The state machine: the state after `event` happens to a message in state `current`.
///
/// Returns `Ok(current)` when the event's effect is already in place (an idempotent repeat;
/// the caller writes nothing) and an [`InvalidTransition`] when the step is not allowed.
pub fn transition(current: State, event: Event) -> Result<State, InvalidTransition> {
    use Event as E;
    use State as S;
    let next = match (current, event) {
        // Outbound.
        (S::Submitted | S::WaitingForRetry, E::Claim) => S::Sending,
        (S::Sending, E::AttemptFailed | E::LeaseExpired) => S::WaitingForRetry,
        (S::WaitingForRetry, E::AttemptFailed) => S::WaitingForRetry,
        (S::Sending | S::WaitingForRetry | S::Acknowledged, E::Acknowledge) => S::Acknowledged,
        (S::Submitted | S::Sending | S::WaitingForRetry | S::Failed, E::Fail) => S::Failed,
        (S::Failed, E::Resend) => S::Submitted,
        // Inbound.
        (S::Received, E::Deliver) => S::Delivered,
        (S::Delivered | S::Downloaded | S::Deleted, E::Deliver) => current,
        (S::Received | S::Delivered | S::Downloaded, E::Download) => S::Downloaded,
        (S::Delivered | S::Downloaded | S::Deleted, E::Delete) => S::Deleted,
        (from, event) => return Err(InvalidTransition { from, event }),
    };
    Ok(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EVENTS: [Event; 12] = Event::ALL;

    #[test]
    fn outbound_happy_path_and_retry_path() {
        let s = transition(State::Submitted, Event::Claim).unwrap();
        assert_eq!(s, State::Sending);
        let s = transition(s, Event::AttemptFailed).unwrap();
        assert_eq!(s, State::WaitingForRetry);
        let s = transition(s, Event::Claim).unwrap();
        assert_eq!(s, State::Sending);
        assert_eq!(
            transition(s, Event::Acknowledge).unwrap(),
            State::Acknowledged
        );
        assert_eq!(transition(s, Event::Fail).unwrap(), State::Failed);
        assert_eq!(
            transition(State::Failed, Event::Resend).unwrap(),
            State::Submitted
        );
    }

    #[test]
    fn lease_takeover_goes_through_waiting_for_retry() {
        assert_eq!(
            transition(State::Sending, Event::LeaseExpired).unwrap(),
            State::WaitingForRetry
        );
        // A claim is never a no-op: a second claimer of a Sending message is refused.
        assert_eq!(
            transition(State::Sending, Event::Claim),
            Err(InvalidTransition {
                from: State::Sending,
                event: Event::Claim
            })
        );
    }

    #[test]
    fn inbound_path() {
        let s = transition(State::Received, Event::Deliver).unwrap();
        assert_eq!(s, State::Delivered);
        let s = transition(s, Event::Download).unwrap();
        assert_eq!(s, State::Downloaded);
        assert_eq!(transition(s, Event::Delete).unwrap(), State::Deleted);
        assert_eq!(
            transition(State::Delivered, Event::Delete).unwrap(),
            State::Deleted
        );
        // The backend's acknowledgement needs no announcement first.
        assert_eq!(
            transition(State::Received, Event::Download).unwrap(),
            State::Downloaded
        );
        assert!(transition(State::Deleted, Event::Download).is_err());
    }

    #[test]
    fn history_notes_are_never_transitions() {
        for state in State::ALL {
            for event in EVENTS.into_iter().filter(|e| e.is_note()) {
                assert!(transition(state, event).is_err(), "{state} + {event}");
            }
        }
    }

    /// The idempotent repeats: the only (state, event) pairs that leave the state unchanged.
    const NO_OPS: [(State, Event); 8] = [
        (State::Acknowledged, Event::Acknowledge),
        (State::Failed, Event::Fail),
        (State::WaitingForRetry, Event::AttemptFailed),
        (State::Delivered, Event::Deliver),
        (State::Downloaded, Event::Deliver),
        (State::Deleted, Event::Deliver),
        (State::Downloaded, Event::Download),
        (State::Deleted, Event::Delete),
    ];

    #[test]
    fn repeats_are_no_ops() {
        for (state, event) in NO_OPS {
            assert_eq!(transition(state, event), Ok(state), "{state} + {event}");
        }
    }

    #[test]
    fn self_loops_are_exactly_the_idempotent_repeats() {
        // Stores read `Ok(current)` as "already applied"; an accidental self-loop (say, a
        // claim of a message being sent) would make two instances both believe they won.
        for state in State::ALL {
            for event in EVENTS {
                let self_loop = transition(state, event) == Ok(state);
                assert_eq!(
                    self_loop,
                    NO_OPS.contains(&(state, event)),
                    "{state} + {event}"
                );
            }
        }
    }

    #[test]
    fn terminal_states_refuse_progress() {
        assert!(transition(State::Failed, Event::Acknowledge).is_err());
        assert!(transition(State::Acknowledged, Event::Fail).is_err());
        assert!(transition(State::Acknowledged, Event::Claim).is_err());
        assert!(transition(State::Acknowledged, Event::Resend).is_err());
        assert!(transition(State::Deleted, Event::Claim).is_err());
    }

    #[test]
    fn directions_never_mix() {
        for state in State::ALL {
            for event in EVENTS {
                if let Ok(next) = transition(state, event) {
                    assert_eq!(
                        next.direction(),
                        state.direction(),
                        "{state} + {event} crossed directions"
                    );
                }
            }
        }
    }

    #[test]
    fn names_round_trip() {
        for s in State::ALL {
            assert_eq!(State::parse(s.as_str()), Some(s));
        }
        assert_eq!(State::parse("nope"), None);
    }
}
