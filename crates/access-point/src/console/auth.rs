//! Who is logged in: passwords (argon2id), roles, sessions in the store, CSRF tokens.
//!
//! A session is a random 256-bit cookie value; the store keeps only its SHA-256, so a copy
//! of the database cannot be replayed as a cookie. A login always makes a new session (the
//! server never adopts a value the browser brings: no session fixation) and ends the one
//! the browser had. A session ends after `idle_timeout_mins` without a request and
//! `absolute_timeout_hours` after the login, whatever its use.

use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use argon2::Argon2;
use time::OffsetDateTime;
use varti_store::{ConsoleSession, ConsoleUser, StoreError};

use super::ConsoleConfig;
use crate::access_point::AccessPoint;

/// What a console user may do. Each role may do everything the ones before it may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Reads: dashboard, messages (without payloads), audit trail, partners, PModes.
    Viewer,
    /// Also acts on messages: download payloads, retry now, resend, acknowledge.
    Operator,
    /// Also administers: purge now, reload.
    Admin,
}

impl Role {
    /// Every role, weakest first.
    pub const ALL: [Role; 3] = [Role::Viewer, Role::Operator, Role::Admin];

    /// `viewer`, `operator` or `admin`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    /// The role named `name`.
    pub fn parse(name: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == name)
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The argon2id hash (PHC string) of `password`, with a fresh random salt and the
/// algorithm's recommended parameters.
pub fn hash_password(password: &str) -> Result<String, String> {
    Argon2::default()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| format!("cannot hash the password: {e}"))
}

/// Whether `password` matches the PHC string `hash`.
pub(crate) fn verify_password(password: &str, hash: &str) -> bool {
    match PasswordHash::new(hash) {
        Ok(parsed) => Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok(),
        Err(_) => false,
    }
}

/// A hash no password matches, verified against when the user does not exist, so that
/// the answer takes as long as for a wrong password (user names do not leak by timing).
pub(crate) fn dummy_hash() -> &'static str {
    static HASH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HASH.get_or_init(|| hash_password(&random_token()).unwrap_or_default())
}

/// 256 random bits, URL-safe base64.
pub(crate) fn random_token() -> String {
    use base64::Engine as _;
    let mut bytes = [0u8; 32];
    openssl::rand::rand_bytes(&mut bytes).expect("the OS random generator works");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// SHA-256 of a cookie value, hex: the session's key in the store.
pub(crate) fn session_key(cookie: &str) -> String {
    openssl::sha::sha256(cookie.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Constant-time equality of two tokens.
pub(crate) fn same_token(a: &str, b: &str) -> bool {
    a.len() == b.len() && openssl::memcmp::eq(a.as_bytes(), b.as_bytes())
}

/// A logged-in user, as a request sees it.
#[derive(Debug, Clone)]
pub(crate) struct LoggedIn {
    /// The session as stored.
    pub(crate) session: ConsoleSession,
    /// The user's role now (read on every request: a changed role applies at once).
    pub(crate) role: Role,
}

impl LoggedIn {
    /// The user's name.
    pub(crate) fn user(&self) -> &str {
        &self.session.user
    }

    /// The audit trail's actor for this user's acts.
    pub(crate) fn actor(&self) -> String {
        format!("console:{}", self.session.user)
    }
}

/// The live session whose cookie value is `cookie`, or `None` (unknown, expired, or its
/// user removed or without a valid role). Touches the session (at most once a minute).
/// Blocking.
pub(crate) fn current(
    ap: &AccessPoint,
    config: &ConsoleConfig,
    cookie: &str,
) -> Result<Option<LoggedIn>, StoreError> {
    let key = session_key(cookie);
    let Some(mut session) = ap.store.console_session(&key)? else {
        return Ok(None);
    };
    let now = ap.clock.now();
    if expired(config, &session, now) {
        ap.store.remove_console_session(&key)?;
        return Ok(None);
    }
    let Some(role) = ap
        .store
        .console_user(&session.user)?
        .and_then(|u| Role::parse(&u.role))
    else {
        ap.store.remove_console_session(&key)?;
        return Ok(None);
    };
    if now - session.last_seen > time::Duration::minutes(1) {
        session.last_seen = now;
        ap.store.put_console_session(&session)?;
    }
    Ok(Some(LoggedIn { session, role }))
}

/// Whether `session` is past its idle or absolute timeout at `now`.
pub(crate) fn expired(
    config: &ConsoleConfig,
    session: &ConsoleSession,
    now: OffsetDateTime,
) -> bool {
    now - session.last_seen >= config.idle_timeout()
        || now - session.created_at >= config.absolute_timeout()
}

/// Checks `name` and `password`; on success makes a new session for the user (and ends
/// `previous`, the session the browser had, if any). Returns the new cookie value and the
/// session, or `None` for a wrong name or password. Blocking (argon2 is slow on purpose).
pub(crate) fn log_in(
    ap: &AccessPoint,
    name: &str,
    password: &str,
    previous: Option<&str>,
) -> Result<Option<(String, LoggedIn)>, StoreError> {
    let user: Option<ConsoleUser> = if name.is_empty() || name.len() > 256 {
        None
    } else {
        ap.store.console_user(name)?
    };
    let hash = user
        .as_ref()
        .map_or(dummy_hash(), |u| u.password_hash.as_str());
    let matches = verify_password(password, hash);
    let (Some(user), true) = (user, matches) else {
        return Ok(None);
    };
    let Some(role) = Role::parse(&user.role) else {
        return Ok(None);
    };
    if let Some(old) = previous {
        ap.store.remove_console_session(&session_key(old))?;
    }
    let cookie = random_token();
    let now = ap.clock.now();
    let session = ConsoleSession {
        id_sha256: session_key(&cookie),
        user: user.name,
        csrf: random_token(),
        created_at: now,
        last_seen: now,
    };
    ap.store.put_console_session(&session)?;
    Ok(Some((cookie, LoggedIn { session, role })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_hash_and_verify() {
        let hash = hash_password("correct horse").unwrap();
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        assert!(verify_password("correct horse", &hash));
        assert!(!verify_password("wrong horse", &hash));
        assert!(!verify_password("correct horse", "not a hash"));
        assert!(!verify_password("", dummy_hash()));
    }

    #[test]
    fn roles_order_and_parse() {
        assert!(Role::Viewer < Role::Operator && Role::Operator < Role::Admin);
        for r in Role::ALL {
            assert_eq!(Role::parse(r.as_str()), Some(r));
        }
        assert_eq!(Role::parse("root"), None);
    }

    #[test]
    fn sessions_expire_when_idle_and_when_old_on_the_access_points_clock() {
        let dir = tempfile::tempdir().unwrap();
        let (ap, _) = crate::test_support::access_point(dir.path());
        let start = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        let clock = crate::Clock::manual(start);
        let ap = std::sync::Arc::try_unwrap(ap)
            .expect("one owner")
            .with_clock(clock.clone());
        let config = ConsoleConfig::default();
        ap.store
            .put_console_user(&ConsoleUser {
                name: "ann".into(),
                role: "operator".into(),
                password_hash: hash_password("pw").unwrap(),
                created_at: start,
                updated_at: start,
            })
            .unwrap();
        assert!(log_in(&ap, "ann", "nope", None).unwrap().is_none());
        assert!(log_in(&ap, "bob", "pw", None).unwrap().is_none());
        let (cookie, who) = log_in(&ap, "ann", "pw", None).unwrap().unwrap();
        assert_eq!(who.role, Role::Operator);
        // Used every 20 minutes, it lives until the absolute timeout.
        let step = std::time::Duration::from_secs(20 * 60);
        let mut used = std::time::Duration::ZERO;
        while used + step < std::time::Duration::from_secs(config.absolute_timeout_hours * 3600) {
            clock.advance(step);
            used += step;
            assert!(
                current(&ap, &config, &cookie).unwrap().is_some(),
                "alive after {used:?}"
            );
        }
        clock.advance(step);
        assert!(current(&ap, &config, &cookie).unwrap().is_none());
        // Idle longer than the idle timeout: gone.
        let (cookie, _) = log_in(&ap, "ann", "pw", None).unwrap().unwrap();
        clock.advance(std::time::Duration::from_secs(
            config.idle_timeout_mins * 60,
        ));
        assert!(current(&ap, &config, &cookie).unwrap().is_none());
        // A new login ends the session the browser had.
        let (first, _) = log_in(&ap, "ann", "pw", None).unwrap().unwrap();
        let (second, _) = log_in(&ap, "ann", "pw", Some(&first)).unwrap().unwrap();
        assert!(current(&ap, &config, &first).unwrap().is_none());
        assert!(current(&ap, &config, &second).unwrap().is_some());
    }
}
