//! Appending administrative acts to the store's audit trail ([`varti_store::AuditEntry`]).
//!
//! What is audited, and by whom (`actor`):
//!
//! | action | when | actor |
//! |---|---|---|
//! | `config.load` | `serve` started: the configuration, PMode, certificate and CRL files with their SHA-256 | `local` |
//! | `config.reload` | every reload, applied or refused: hashes, changes, "needs restart", errors | `local` (SIGHUP) or the API client |
//! | `messages.purge` | `POST /admin/purge` | the admin client |
//! | `message.resend` | `POST /messages/{id}/resend` | the client |
//! | `message.ack` | `POST /messages/{id}/ack` by an admin client (a backend acknowledging its own message is in the message's history instead) | the admin client |
//! | `token.use` | the first authenticated call of each backend client after the instance started | the client |
//!
//! Token use is audited once per client and instance start, not per call: a backend makes
//! thousands of calls a day, and what an auditor asks — which tokens are in use, since
//! when, on which instance — is answered by the first; each state-changing admin call is
//! audited on its own. New acts (`messages retry`, console logins) call
//! [`AccessPoint::audit`].

use varti_store::{AuditEntry, AuditOutcome, NewAuditEntry, StoreError};

use crate::AccessPoint;

/// The actor of acts the serving process does on its own (start-up, SIGHUP).
pub const LOCAL_ACTOR: &str = "local";

impl AccessPoint {
    /// Appends an administrative act to the audit trail, at the runtime clock's now, as
    /// this instance: `actor` did `action` (a dotted name, e.g. `message.retry`) to
    /// `subject` (a message id, a file, a client; may be empty), with this `outcome` and
    /// `details` (a JSON object). The act is also logged. Blocking (a durable store
    /// write): from async code, call it inside `spawn_blocking`. A failure is logged and
    /// returned; the act itself is not undone by it.
    pub fn audit(
        &self,
        actor: &str,
        action: &str,
        subject: &str,
        outcome: AuditOutcome,
        details: serde_json::Value,
    ) -> Result<AuditEntry, StoreError> {
        tracing::info!(actor, action, subject, %outcome, "audit");
        let entry = NewAuditEntry {
            instance: self.instance.clone(),
            actor: actor.to_owned(),
            action: action.to_owned(),
            subject: subject.to_owned(),
            outcome,
            details,
        };
        self.store
            .append_audit(entry, self.clock.now())
            .inspect_err(|e| {
                tracing::error!(actor, action, subject, error = %e, "cannot append to the audit trail");
            })
    }

    /// Audits the first use of `client`'s token since this instance started (see the
    /// module documentation); later uses return at once. Blocking on the first use.
    pub(crate) fn audit_token_use(&self, client: &str, admin: bool) {
        let first = self
            .tokens_seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(client.to_owned());
        if first {
            let _ = self.audit(
                client,
                "token.use",
                client,
                AuditOutcome::Ok,
                serde_json::json!({"admin": admin, "first_use_since_start": true}),
            );
        }
    }

    /// Whether `client` has used its token since this instance started (no store access).
    pub(crate) fn token_seen(&self, client: &str) -> bool {
        self.tokens_seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(client)
    }
}
