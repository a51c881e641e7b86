//! The records a [`Store`](crate::Store) keeps, and the store-independent logic that changes
//! them. Every implementation applies changes through the methods here, so the rules (state
//! machine, leases, history, settlement) are the same for sled and PostgreSQL.

use crate::payload::PayloadRef;
use crate::state::{transition, Direction, Event, InvalidTransition, State};
use crate::{StoreError, MAX_MESSAGE_ID_LEN, MAX_OWNER_LEN, MAX_PAGE_SIZE};

/// Longest value a search filter accepts, in bytes.
pub(crate) const MAX_SEARCH_LEN: usize = 4096;

/// Most messages a bare [`ListFilter::id_prefix`] may match in the embedded store: its
/// matches are read and ordered by time in one go, so a prefix like `a` is refused
/// (give more characters, or another filter) instead of reading the whole store.
pub const MAX_PREFIX_MATCHES: usize = 10_000;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;

/// Most history entries kept per message. Retries and lease takeovers are bounded by the
/// PMode, but a bound here keeps a misbehaving peer or loop from growing a record forever:
/// past it, the oldest entries after the first are dropped.
pub(crate) const MAX_HISTORY: usize = 200;

/// What the ebMS header says about a message, plus who owns it. Fixed at insertion.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageMeta {
    /// The ebMS `MessageId` (the record's key; unique across both directions).
    pub message_id: String,
    /// The backend this message belongs to (submitter for outbound, recipient for inbound).
    /// A backend sees only messages it owns.
    pub owner: String,
    /// `From/PartyId` (with its type, as the caller chooses to encode it).
    pub from_party: String,
    /// `To/PartyId`.
    pub to_party: String,
    /// `CollaborationInfo/Service`.
    pub service: String,
    /// `CollaborationInfo/Action`.
    pub action: String,
    /// `CollaborationInfo/ConversationId`.
    pub conversation_id: String,
    /// `RefToMessageId`, for responses in a two-way exchange.
    pub ref_to_message_id: Option<String>,
    /// The PMode (and leg) that governs the exchange.
    pub pmode_id: String,
    /// The message's payloads, in message order.
    pub payloads: Vec<PayloadEntry>,
    /// `MessageProperties` (OOTS: `originalSender`, `finalRecipient`), in message order.
    #[serde(default)]
    pub properties: Vec<MessageProperty>,
}

/// The ebMS test service (`eb:Service` of a test message, ebMS 3 core §5.2.2).
pub const TEST_SERVICE: &str =
    "http://docs.oasis-open.org/ebxml-msg/ebms/v3.0/ns/core/200704/service";
/// The ebMS test action.
pub const TEST_ACTION: &str = "http://docs.oasis-open.org/ebxml-msg/ebms/v3.0/ns/core/200704/test";
/// The EC connectivity-test service (`varti ping --connectivity`, the EC test bed).
pub const CONNECTIVITY_SERVICE: &str =
    "http://ec.europa.eu/e-delivery/services/connectivity-service";

impl MessageMeta {
    /// Whether this is test traffic rather than business: the ebMS test service and action,
    /// or the EC connectivity-test service (what `varti ping` sends). Listings hide it
    /// unless asked ([`ListFilter::exclude_test`]) and retention purges it on its own
    /// schedule. Derived from the header (never stored apart), so every record ever stored
    /// is classified the same way.
    pub fn is_test(&self) -> bool {
        (self.service == TEST_SERVICE && self.action == TEST_ACTION)
            || self.service == CONNECTIVITY_SERVICE
    }
}

/// A named property of a message (`eb:MessageProperties`) or of a payload (`eb:PartProperties`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageProperty {
    /// `@name`.
    pub name: String,
    /// The value.
    pub value: String,
    /// `@type`, when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub type_: Option<String>,
}

/// One payload of a message: its identity in the message and where its bytes are stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PayloadEntry {
    /// The `href` of its `PartInfo` (`cid:…`), or empty for a SOAP-body payload.
    pub content_id: String,
    /// Its MIME type.
    pub mime_type: String,
    /// Its bytes in the [`PayloadStore`](crate::PayloadStore).
    pub stored: PayloadRef,
    /// Its `PartProperties` other than the ones AS4 compression sets (`MimeType`,
    /// `CompressionType`).
    #[serde(default)]
    pub properties: Vec<MessageProperty>,
}

/// A message received from a partner, to be stored before its receipt is sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewInbound {
    /// Header data and payloads.
    pub meta: MessageMeta,
    /// The receipt (signal message bytes) that answers it; sent again to duplicates.
    pub receipt: Vec<u8>,
    /// Where it came from, as the MSH saw it (the TCP peer, or the client named by a
    /// trusted proxy; for a pulled message, the partner's URL), for the arrival entry of
    /// the history.
    pub peer: Option<String>,
}

/// A message submitted by a backend, to be sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewOutbound {
    /// Header data and payloads.
    pub meta: MessageMeta,
    /// The first attempt is due at this time (usually the insertion time).
    pub not_before: OffsetDateTime,
}

/// What [`Store::insert_inbound`](crate::Store::insert_inbound) did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InsertOutcome {
    /// The message is new and now durably stored.
    Inserted,
    /// The message was received before: answer with the original receipt again, do not
    /// deliver it again.
    Duplicate {
        /// The receipt sent for the original.
        original_receipt: Vec<u8>,
        /// The original's current state.
        state: State,
    },
}

/// How an outbound attempt ended (see [`Store::record_attempt`](crate::Store::record_attempt)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// The partner's receipt arrived.
    Acknowledged {
        /// The receipt, kept as evidence.
        receipt: Vec<u8>,
    },
    /// The attempt failed; try again at `at`.
    Retry {
        /// When the next attempt is due.
        at: OffsetDateTime,
        /// What went wrong, for the history and the backend.
        error: String,
    },
    /// Give up: the last retry failed (EBMS:0301) or the error is fatal.
    Failed {
        /// What went wrong.
        error: String,
    },
}

/// What [`Store::transition`](crate::Store::transition) did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransitionOutcome {
    /// The state changed to this one.
    Applied(State),
    /// The event's effect was already in place; nothing was written. The current state.
    AlreadyApplied(State),
}

/// A time-limited claim by one instance on an outbound message it is sending.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// The instance (or worker) holding it.
    pub holder: String,
    /// After this, another instance may take the message over.
    pub expires_at: OffsetDateTime,
}

/// One step in a message's life.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// When it happened.
    pub at: OffsetDateTime,
    /// What happened.
    pub event: Event,
    /// State before.
    pub from: State,
    /// State after.
    pub to: State,
    /// Detail: the lease holder, the error, …
    pub note: Option<String>,
}

/// Everything stored about one message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageRecord {
    /// Header data, owner and payloads.
    pub meta: MessageMeta,
    /// Which way it travels.
    pub direction: Direction,
    /// Where it is in its life.
    pub state: State,
    /// Outbound: attempts started so far (incremented by each claim).
    pub attempts: u32,
    /// Outbound: when the next attempt is due (while `Submitted` or `WaitingForRetry`).
    pub next_attempt_at: Option<OffsetDateTime>,
    /// Outbound: the sending lease, while `Sending`.
    pub lease: Option<Lease>,
    /// Inbound: the receipt we sent. Outbound: the receipt we received.
    #[serde(with = "opt_base64")]
    pub receipt: Option<Vec<u8>>,
    /// The last error of an attempt, if any.
    pub last_error: Option<String>,
    /// Inbound: how many duplicates of it arrived (and were answered with its receipt).
    pub duplicates: u32,
    /// When it was stored.
    pub created_at: OffsetDateTime,
    /// When it last changed.
    pub updated_at: OffsetDateTime,
    /// When it reached a settled state (delivered, acknowledged, failed); retention counts
    /// from here.
    pub settled_at: Option<OffsetDateTime>,
    /// When its payloads were purged.
    pub payloads_purged_at: Option<OffsetDateTime>,
    /// Its transitions, oldest first (at most `MAX_HISTORY`).
    pub history: Vec<HistoryEntry>,
}

/// The bytes of inline payloads, by payload id (see [`MessageRecord::inline_apart`]).
pub(crate) type InlineBytesById = Vec<(String, Arc<[u8]>)>;

impl MessageRecord {
    /// A new inbound record in state `Received`. Validates the metadata.
    pub(crate) fn new_inbound(msg: NewInbound, now: OffsetDateTime) -> Result<Self, StoreError> {
        validate_meta(&msg.meta)?;
        let note = format!(
            "from {} via {}",
            msg.meta.from_party,
            msg.peer.as_deref().unwrap_or("an unknown peer")
        );
        let mut record = Self::new(msg.meta, Direction::Inbound, now);
        record.receipt = Some(msg.receipt);
        // The arrival is the first entry of the history; it changes no state.
        record.history.push(HistoryEntry {
            at: now,
            event: Event::Receive,
            from: State::Received,
            to: State::Received,
            note: Some(note),
        });
        Ok(record)
    }

    /// A new outbound record in state `Submitted`, due at `not_before`.
    pub(crate) fn new_outbound(msg: NewOutbound, now: OffsetDateTime) -> Result<Self, StoreError> {
        validate_meta(&msg.meta)?;
        let mut record = Self::new(msg.meta, Direction::Outbound, now);
        record.next_attempt_at = Some(msg.not_before);
        Ok(record)
    }

    fn new(meta: MessageMeta, direction: Direction, now: OffsetDateTime) -> Self {
        MessageRecord {
            meta,
            direction,
            state: direction.initial_state(),
            attempts: 0,
            next_attempt_at: None,
            lease: None,
            receipt: None,
            last_error: None,
            duplicates: 0,
            created_at: now,
            updated_at: now,
            settled_at: None,
            payloads_purged_at: None,
            history: Vec::new(),
        }
    }

    /// The message id.
    pub fn id(&self) -> &str {
        &self.meta.message_id
    }

    /// The record with its inline payloads' bytes taken out (the payloads stay inline,
    /// empty), and those bytes by payload id; `None` when it has no inline payload. For
    /// copies that keep the bytes once beside rewrites of the record (`sled_store`,
    /// `sidecar`).
    pub(crate) fn inline_apart(&self) -> Option<(MessageRecord, InlineBytesById)> {
        if !self.meta.payloads.iter().any(|p| p.stored.is_inline()) {
            return None;
        }
        let mut apart = self.clone();
        let mut bytes = Vec::new();
        for p in &mut apart.meta.payloads {
            if let Some(b) = p.stored.take_inline() {
                bytes.push((p.stored.id.clone(), b));
            }
        }
        Some((apart, bytes))
    }

    /// Records that the payloads were purged at `at`, dropping the bytes of those kept
    /// inline in the record (the others' files or rows the caller removed first).
    pub(crate) fn mark_payloads_purged(&mut self, at: OffsetDateTime) {
        for entry in &mut self.meta.payloads {
            entry.stored.drop_inline();
        }
        self.payloads_purged_at = Some(at);
    }

    /// The other party: the sender of an inbound message, the recipient of an outbound one.
    pub fn partner(&self) -> &str {
        match self.direction {
            Direction::Inbound => &self.meta.from_party,
            Direction::Outbound => &self.meta.to_party,
        }
    }

    /// Records `event`, one that changes no state ([`Event::is_note`]), in the history.
    pub(crate) fn note(&mut self, event: Event, now: OffsetDateTime, note: Option<String>) {
        debug_assert!(event.is_note(), "{event} is a transition, not a note");
        if self.history.len() >= MAX_HISTORY {
            self.history.remove(1);
        }
        self.history.push(HistoryEntry {
            at: now,
            event,
            from: self.state,
            to: self.state,
            note,
        });
    }

    /// Records that a backend downloaded payload `index` (rules on
    /// [`Store::record_download`](crate::Store::record_download)).
    pub(crate) fn record_download(
        &mut self,
        index: usize,
        by: &str,
        now: OffsetDateTime,
    ) -> Result<(), StoreError> {
        if self.direction != Direction::Inbound {
            return Err(StoreError::InvalidInput(format!(
                "message `{}` is outbound: only downloads of received messages are recorded",
                self.id()
            )));
        }
        self.note(Event::Fetch, now, Some(format!("payload {index} by {by}")));
        Ok(())
    }

    /// Makes a message waiting for its retry due at `now` (rules on
    /// [`Store::retry_now`](crate::Store::retry_now)). Returns whether it changed.
    pub(crate) fn retry_now(&mut self, by: &str, now: OffsetDateTime) -> Result<bool, StoreError> {
        if self.direction != Direction::Outbound || self.state != State::WaitingForRetry {
            return Err(StoreError::StateConflict {
                message_id: self.id().to_owned(),
                expected: State::WaitingForRetry,
                actual: self.state,
            });
        }
        if self.next_attempt_at.is_some_and(|t| t <= now) {
            return Ok(false);
        }
        self.next_attempt_at = Some(now);
        self.updated_at = now;
        self.note(Event::RetryNow, now, Some(format!("made due now by {by}")));
        Ok(true)
    }

    /// When this record becomes claimable by [`Store::claim_due`](crate::Store::claim_due):
    /// the next attempt time while waiting, the lease expiry while sending, never otherwise.
    /// Stores index on this value.
    pub(crate) fn due_at(&self) -> Option<OffsetDateTime> {
        match self.state {
            State::Submitted | State::WaitingForRetry => self.next_attempt_at,
            State::Sending => self.lease.as_ref().map(|l| l.expires_at),
            _ => None,
        }
    }

    /// Applies `event` through the state machine, recording it in the history. Returns
    /// `Ok(false)` for an idempotent repeat (the record is left untouched). Keeps the fields
    /// that depend on the state (lease, next attempt, settlement) consistent.
    pub fn apply(
        &mut self,
        event: Event,
        now: OffsetDateTime,
        note: Option<String>,
    ) -> Result<bool, InvalidTransition> {
        let from = self.state;
        let to = transition(from, event)?;
        if to == from {
            return Ok(false);
        }
        self.state = to;
        self.updated_at = now;
        if to != State::Sending {
            self.lease = None;
        }
        if !matches!(to, State::Submitted | State::WaitingForRetry) {
            self.next_attempt_at = None;
        }
        if to.is_settled() && self.settled_at.is_none() {
            self.settled_at = Some(now);
        }
        if !to.is_settled() {
            self.settled_at = None;
        }
        if self.history.len() >= MAX_HISTORY {
            self.history.remove(1);
        }
        self.history.push(HistoryEntry {
            at: now,
            event,
            from,
            to,
            note,
        });
        Ok(true)
    }

    /// Whether [`Store::claim_due`](crate::Store::claim_due) may claim it at `now`.
    pub(crate) fn is_claimable(&self, now: OffsetDateTime) -> bool {
        self.direction == Direction::Outbound && self.due_at().is_some_and(|due| due <= now)
    }

    /// Whether [`Store::claim_message`](crate::Store::claim_message) may claim it at `now`:
    /// an outbound message waiting to be sent (`Submitted` or `WaitingForRetry`, whenever its
    /// next attempt is due), or `Sending` under a lease that expired.
    pub fn is_claimable_ignoring_due(&self, now: OffsetDateTime) -> bool {
        self.direction == Direction::Outbound
            && match self.state {
                State::Submitted | State::WaitingForRetry => true,
                State::Sending => self.lease.as_ref().is_none_or(|l| l.expires_at <= now),
                _ => false,
            }
    }

    /// Claims the record for `holder` (taking over an expired lease first). The caller has
    /// checked `is_claimable` or
    /// [`is_claimable_ignoring_due`](Self::is_claimable_ignoring_due).
    pub fn claim(
        &mut self,
        holder: &str,
        lease_for: Duration,
        now: OffsetDateTime,
    ) -> Result<(), StoreError> {
        if self.state == State::Sending {
            let previous = self.lease.as_ref().map(|l| l.holder.clone());
            self.apply(
                Event::LeaseExpired,
                now,
                previous.map(|h| format!("lease of {h} expired")),
            )
            .map_err(|e| self.invalid(e))?;
        }
        self.apply(Event::Claim, now, Some(format!("claimed by {holder}")))
            .map_err(|e| self.invalid(e))?;
        self.attempts = self.attempts.saturating_add(1);
        self.lease = Some(Lease {
            holder: holder.to_owned(),
            expires_at: now + lease_for,
        });
        Ok(())
    }

    /// Applies an attempt's outcome for the lease `holder` (the rules are on
    /// [`Store::record_attempt`](crate::Store::record_attempt)). Returns whether the record
    /// changed.
    pub fn record_attempt(
        &mut self,
        holder: &str,
        outcome: AttemptOutcome,
        now: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        if self.direction != Direction::Outbound {
            return Err(StoreError::InvalidInput(format!(
                "message `{}` is inbound: attempts are recorded only for outbound messages",
                self.id()
            )));
        }
        if let AttemptOutcome::Acknowledged { receipt } = outcome {
            let changed = self
                .apply(Event::Acknowledge, now, None)
                .map_err(|e| self.invalid(e))?;
            if changed {
                self.receipt = Some(receipt);
            }
            return Ok(changed);
        }
        let holds_lease =
            self.state == State::Sending && self.lease.as_ref().is_some_and(|l| l.holder == holder);
        if !holds_lease {
            return Err(StoreError::LeaseLost {
                message_id: self.id().to_owned(),
                holder: self.lease.as_ref().map(|l| l.holder.clone()),
            });
        }
        match outcome {
            AttemptOutcome::Retry { at, error } => {
                self.apply(Event::AttemptFailed, now, Some(error.clone()))
                    .map_err(|e| self.invalid(e))?;
                self.next_attempt_at = Some(at);
                self.last_error = Some(error);
            }
            AttemptOutcome::Failed { error } => {
                self.apply(Event::Fail, now, Some(error.clone()))
                    .map_err(|e| self.invalid(e))?;
                self.last_error = Some(error);
            }
            AttemptOutcome::Acknowledged { .. } => unreachable!("handled above"),
        }
        Ok(true)
    }

    /// Compare-and-set transition (the rules are on
    /// [`Store::transition`](crate::Store::transition)). On `Applied` the record changed.
    pub(crate) fn cas_transition(
        &mut self,
        expected: State,
        event: Event,
        now: OffsetDateTime,
    ) -> Result<TransitionOutcome, StoreError> {
        if matches!(
            event,
            Event::Claim | Event::AttemptFailed | Event::LeaseExpired
        ) {
            return Err(StoreError::InvalidInput(format!(
                "event `{event}` needs a lease: use claim_due or record_attempt"
            )));
        }
        let current = self.state;
        let target = transition(current, event);
        if current != expected {
            return match target {
                Ok(next) if next == current => Ok(TransitionOutcome::AlreadyApplied(current)),
                _ => Err(StoreError::StateConflict {
                    message_id: self.id().to_owned(),
                    expected,
                    actual: current,
                }),
            };
        }
        if !self.apply(event, now, None).map_err(|e| self.invalid(e))? {
            return Ok(TransitionOutcome::AlreadyApplied(current));
        }
        if event == Event::Resend {
            self.attempts = 0;
            self.next_attempt_at = Some(now);
            self.last_error = None;
        }
        Ok(TransitionOutcome::Applied(self.state))
    }

    fn invalid(&self, source: InvalidTransition) -> StoreError {
        StoreError::InvalidTransition {
            message_id: self.id().to_owned(),
            source,
        }
    }
}

/// Checks the identifiers a store keys on: bounded, non-empty, no NUL (a key separator).
pub(crate) fn validate_meta(meta: &MessageMeta) -> Result<(), StoreError> {
    validate_id("MessageId", &meta.message_id, MAX_MESSAGE_ID_LEN)?;
    validate_id("owner", &meta.owner, MAX_OWNER_LEN)
}

/// Checks one identifier: non-empty, at most `max` bytes, no NUL.
pub(crate) fn validate_id(what: &str, value: &str, max: usize) -> Result<(), StoreError> {
    if value.is_empty() || value.len() > max || value.contains('\0') {
        return Err(StoreError::InvalidInput(format!(
            "{what} must be 1 to {max} bytes without NUL characters (got {} bytes)",
            value.len()
        )));
    }
    Ok(())
}

/// Which messages [`Store::list`](crate::Store::list) returns. `Default` lists everything,
/// 100 per page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListFilter {
    /// Only this direction.
    pub direction: Option<Direction>,
    /// Only these states (empty: any).
    pub states: Vec<State>,
    /// Only this backend's messages.
    pub owner: Option<String>,
    /// Only messages created at or after this time.
    pub created_from: Option<OffsetDateTime>,
    /// Only messages created before this time.
    pub created_until: Option<OffsetDateTime>,
    /// Only messages with this partner ([`MessageRecord::partner`]: the From party of an
    /// inbound message, the To party of an outbound one).
    pub partner: Option<String>,
    /// Only this `ConversationId`.
    pub conversation_id: Option<String>,
    /// Only this `Service`.
    pub service: Option<String>,
    /// Only this `Action`.
    pub action: Option<String>,
    /// Only messages carrying every one of these message properties (name, value).
    pub properties: Vec<(String, String)>,
    /// Only message ids starting with this. The prefix alone may match at most
    /// [`MAX_PREFIX_MATCHES`] messages (a longer prefix narrows it).
    pub id_prefix: Option<String>,
    /// Leave out test traffic ([`MessageMeta::is_test`]).
    pub exclude_test: bool,
    /// Page size (clamped to 1..=[`MAX_PAGE_SIZE`]).
    pub limit: usize,
    /// Continue after this position (from [`Page::next`]).
    pub after: Option<ListCursor>,
}

impl Default for ListFilter {
    fn default() -> Self {
        ListFilter {
            direction: None,
            states: Vec::new(),
            owner: None,
            created_from: None,
            created_until: None,
            partner: None,
            conversation_id: None,
            service: None,
            action: None,
            properties: Vec::new(),
            id_prefix: None,
            exclude_test: false,
            limit: 100,
            after: None,
        }
    }
}

impl ListFilter {
    /// Whether `record` passes the filter (the cursor and the page size aside).
    pub fn matches(&self, record: &MessageRecord) -> bool {
        self.direction.is_none_or(|d| d == record.direction)
            && (self.states.is_empty() || self.states.contains(&record.state))
            && self.owner.as_ref().is_none_or(|o| *o == record.meta.owner)
            && self.created_from.is_none_or(|t| record.created_at >= t)
            && self.created_until.is_none_or(|t| record.created_at < t)
            && self.partner.as_ref().is_none_or(|p| p == record.partner())
            && self
                .conversation_id
                .as_ref()
                .is_none_or(|c| *c == record.meta.conversation_id)
            && self
                .service
                .as_ref()
                .is_none_or(|s| *s == record.meta.service)
            && self
                .action
                .as_ref()
                .is_none_or(|a| *a == record.meta.action)
            && self.properties.iter().all(|(name, value)| {
                record
                    .meta
                    .properties
                    .iter()
                    .any(|p| p.name == *name && p.value == *value)
            })
            && self
                .id_prefix
                .as_ref()
                .is_none_or(|p| record.meta.message_id.starts_with(p.as_str()))
            && !(self.exclude_test && record.meta.is_test())
    }

    /// Checks the search values (bounded, no NUL): refused with
    /// [`StoreError::InvalidInput`] before any store is read.
    pub(crate) fn validate(&self) -> Result<(), StoreError> {
        if let Some(owner) = &self.owner {
            validate_id("owner", owner, MAX_OWNER_LEN)?;
        }
        let fields = [
            ("partner", &self.partner),
            ("conversation", &self.conversation_id),
            ("service", &self.service),
            ("action", &self.action),
            ("id prefix", &self.id_prefix),
        ];
        for (what, value) in fields {
            if let Some(v) = value {
                validate_id(what, v, MAX_SEARCH_LEN)?;
            }
        }
        for (name, value) in &self.properties {
            validate_id("property name", name, MAX_SEARCH_LEN)?;
            if value.len() > MAX_SEARCH_LEN || value.contains('\0') {
                return Err(StoreError::InvalidInput(format!(
                    "property value must be at most {MAX_SEARCH_LEN} bytes without NUL \
                     characters (got {} bytes)",
                    value.len()
                )));
            }
        }
        Ok(())
    }

    /// The page size actually used.
    pub(crate) fn page_size(&self) -> usize {
        self.limit.clamp(1, MAX_PAGE_SIZE)
    }
}

/// A position in a listing: newest first, then by message id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListCursor {
    /// Creation time of the last record returned.
    pub created_at: OffsetDateTime,
    /// Its message id.
    pub message_id: String,
}

/// One page of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// The records, newest first.
    pub records: Vec<MessageRecord>,
    /// Where the next page starts, or `None` if this is the last one.
    pub next: Option<ListCursor>,
}

/// Receipts are binary (often signed XML); store them as base64 rather than a JSON array of
/// numbers, which would quadruple their size.
mod opt_base64 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(
        value: &Option<Vec<u8>>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        use base64::Engine as _;
        match value {
            Some(bytes) => {
                s.serialize_some(&base64::engine::general_purpose::STANDARD.encode(bytes))
            }
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Vec<u8>>, D::Error> {
        use base64::Engine as _;
        let text: Option<String> = Option::deserialize(d)?;
        text.map(|t| {
            base64::engine::general_purpose::STANDARD
                .decode(t)
                .map_err(serde::de::Error::custom)
        })
        .transpose()
    }
}
