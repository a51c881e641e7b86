//! The operations console's accounts and sessions, kept in the store so that two instances
//! sharing a database (active-active behind a load balancer) share them too.
//!
//! The store keeps what it is given and interprets nothing: the role is a name the console
//! checks, the password hash a PHC string the console verifies, and a session is kept under
//! the SHA-256 of its cookie value, so the stored rows cannot be replayed as cookies.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::record::validate_id;
use crate::StoreError;

/// Longest user name, role, hash or session field, in bytes.
const MAX_FIELD_LEN: usize = 512;

/// A console account (local login).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsoleUser {
    /// The login name (unique).
    pub name: String,
    /// `viewer`, `operator` or `admin` (the console checks it).
    pub role: String,
    /// The password's argon2 hash as a PHC string (`$argon2id$…`).
    pub password_hash: String,
    /// When the account was created.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// When it was last changed (role, password).
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

/// A console login session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsoleSession {
    /// SHA-256 (hex) of the session cookie's value: the key.
    pub id_sha256: String,
    /// The user logged in.
    pub user: String,
    /// The token every form of this session must carry.
    pub csrf: String,
    /// When the user logged in (the absolute timeout counts from here).
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// When the session was last used (the idle timeout counts from here).
    #[serde(with = "time::serde::rfc3339")]
    pub last_seen: OffsetDateTime,
}

impl ConsoleUser {
    pub(crate) fn validate(&self) -> Result<(), StoreError> {
        validate_id("console user name", &self.name, MAX_FIELD_LEN)?;
        validate_id("console role", &self.role, MAX_FIELD_LEN)?;
        validate_id("console password hash", &self.password_hash, MAX_FIELD_LEN)
    }
}

impl ConsoleSession {
    pub(crate) fn validate(&self) -> Result<(), StoreError> {
        validate_id("console session id", &self.id_sha256, MAX_FIELD_LEN)?;
        validate_id("console session user", &self.user, MAX_FIELD_LEN)?;
        validate_id("console CSRF token", &self.csrf, MAX_FIELD_LEN)
    }
}
