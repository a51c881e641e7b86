//! The preview space: the web page where a citizen sees the evidence an evidence provider
//! is about to send to another member state, and approves or cancels the exchange (OOTS
//! "preview", `../shared/specs/oots.md` §4).
//!
//! # The path of a preview
//!
//! 1. Something on the provider side (the OOTS provider flow, or an evidence-provider
//!    backend through `POST /api/v1/previews`) calls [`PreviewSpace::open`] with the
//!    evidence files, the person the request names and who asked. It gets a **link**: a
//!    random, single-use, expiring URL under `preview.public_url`.
//! 2. The citizen arrives at the link from the procedure portal. The page sends them to the
//!    identity provider (OpenID Connect, authorization code flow with PKCE; a national eID
//!    gateway in production, the built-in test identity provider in tests and the demo).
//! 3. Back from the identity provider, the ID token is verified and the person in it must
//!    match the person of the preview (identifier when both have one, otherwise family
//!    name, given name and date of birth). A match binds the link to this browser (a
//!    cookie): the link cannot be used again elsewhere. Someone else gets a refusal and sees
//!    no evidence.
//! 4. The page shows who asked, for which procedure, and the evidence: PDF inline, XML
//!    rendered as a readable outline, anything else as a download. The citizen approves or
//!    cancels; [`PreviewSpace::state`] (and `GET /api/v1/previews/{id}`) tells the flow.
//! 5. Once decided or expired, the evidence files are deleted: evidence must not linger.
//!
//! Pages exist in English and Latvian (`?lang=lv`, or the browser's Accept-Language).
//!
//! # Limits
//!
//! Preview sessions live in the memory of the instance that opened them: in an active-active
//! pair, each instance has its own `preview.public_url` (or the load balancer keeps a
//! citizen on one instance), and a restart ends the open previews (the citizen gets a fresh
//! link from the portal). Evidence files are on the instance's disk under
//! `data_dir/preview`.

pub mod api;
mod oidc;
mod pages;
mod routes;
pub(crate) mod test_idp;
pub(crate) mod xslt;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use varti_access_point::Clock;

pub use oidc::OidcError;
pub use routes::PreviewRoutes;

/// `[preview]` in the configuration.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PreviewConfig {
    /// Serve the preview space. Default false.
    pub enabled: bool,
    /// Listener of the preview pages (plain HTTP: put the TLS reverse proxy that serves
    /// `public_url` in front of it, or set `tls`). Default 127.0.0.1:8490.
    pub listen: std::net::SocketAddr,
    /// Serve the pages over HTTPS with the `[tls]` certificate and key (no client
    /// certificates asked for) instead of plain HTTP. Default false.
    pub tls: bool,
    /// The address citizens reach the pages at (no trailing slash), e.g.
    /// `https://preview.example.lv`. Links and the OpenID Connect redirect URI are built from
    /// it. Default `http://127.0.0.1:8490`.
    pub public_url: String,
    /// How long a link stays usable, in seconds. Default 900 (15 minutes).
    pub link_ttl_secs: u64,
    /// The identity provider (OpenID Connect).
    pub oidc: OidcConfig,
    /// The built-in test identity provider (tests and the demo only).
    pub test_idp: TestIdpConfig,
}

impl Default for PreviewConfig {
    fn default() -> Self {
        PreviewConfig {
            enabled: false,
            listen: std::net::SocketAddr::from(([127, 0, 0, 1], 8490)),
            tls: false,
            public_url: "http://127.0.0.1:8490".into(),
            link_ttl_secs: 900,
            oidc: OidcConfig::default(),
            test_idp: TestIdpConfig::default(),
        }
    }
}

/// `[preview.oidc]`: the OpenID Connect provider (the national eID gateway).
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct OidcConfig {
    /// The issuer (`iss` of its ID tokens).
    pub issuer: String,
    /// Its authorization endpoint.
    pub authorize_url: String,
    /// Its token endpoint.
    pub token_url: String,
    /// Its JSON Web Key Set (the keys that sign ID tokens).
    pub jwks_url: String,
    /// Our client id there.
    pub client_id: String,
    /// File holding our client secret (sent with HTTP Basic authentication).
    pub client_secret_file: Option<PathBuf>,
    /// PEM CA certificates for the provider's TLS. Default: the system bundle.
    pub ca_file: Option<PathBuf>,
}

/// `[preview.test_idp]`: a built-in OpenID Connect provider with a fixed list of people, so
/// that tests and the demo run the real login path without a national eID gateway. Never
/// enable it in production: anyone can log in as anyone on the list.
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct TestIdpConfig {
    /// Serve it under `{public_url}/test-idp` and use it instead of `[preview.oidc]`.
    pub enabled: bool,
    /// The people one can log in as.
    pub persons: Vec<Person>,
    /// Redirect URIs it may send the browser back to, besides the preview's own callback
    /// (`{public_url}/preview/callback`, always allowed); compared exactly. Default none.
    pub redirect_uris: Vec<String>,
}

/// A natural person as the eIDAS minimum data set names them.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Person {
    /// eIDAS person identifier (e.g. `LV/LV/010203-12345`), when known.
    #[serde(default)]
    pub identifier: Option<String>,
    /// Given name(s).
    pub given_name: String,
    /// Family name(s).
    pub family_name: String,
    /// Date of birth, `YYYY-MM-DD`.
    pub birth_date: String,
}

impl Person {
    /// Whether `other` (from the identity provider) is this person: the identifiers when
    /// both have one, otherwise the names and date of birth (case and surrounding spaces
    /// ignored).
    pub fn matches(&self, other: &Person) -> bool {
        if let (Some(a), Some(b)) = (&self.identifier, &other.identifier) {
            return a.trim() == b.trim();
        }
        let same = |a: &str, b: &str| a.trim().to_lowercase() == b.trim().to_lowercase();
        same(&self.given_name, &other.given_name)
            && same(&self.family_name, &other.family_name)
            && self.birth_date.trim() == other.birth_date.trim()
    }
}

/// Where a preview is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PreviewState {
    /// Waiting for the citizen.
    Pending,
    /// The citizen approved: the evidence may be sent.
    Approved,
    /// The citizen cancelled: the evidence must not be sent.
    Cancelled,
    /// Nobody decided in time.
    Expired,
}

impl PreviewState {
    /// The state's name in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            PreviewState::Pending => "pending",
            PreviewState::Approved => "approved",
            PreviewState::Cancelled => "cancelled",
            PreviewState::Expired => "expired",
        }
    }
}

/// One evidence file shown in a preview.
#[derive(Debug, Clone)]
pub struct PreviewEvidence {
    /// Its title as the citizen sees it.
    pub title: String,
    /// Its media type (`application/pdf`, `application/xml`, …).
    pub media_type: String,
    /// The file (owned by the preview space from now on: deleted when the preview ends).
    pub path: PathBuf,
    /// For XML evidence with a stylesheet: its transformation into HTML (owned and deleted
    /// like `path`), shown to the citizen instead of the XML outline.
    pub html: Option<PathBuf>,
}

/// What [`PreviewSpace::open`] needs.
#[derive(Debug, Clone)]
pub struct PreviewRequest {
    /// The exchange this preview belongs to (the EDM request id, or the caller's reference).
    pub reference: String,
    /// Who may see it.
    pub person: Person,
    /// Who asked, as the citizen should read it (authority and country).
    pub requester: String,
    /// The procedure the evidence is for, if known.
    pub procedure: Option<String>,
    /// The evidence files.
    pub evidences: Vec<PreviewEvidence>,
    /// Where the citizen returns after deciding (the portal), if given.
    pub return_url: Option<String>,
    /// A lifetime shorter than `preview.link_ttl_secs`, if wanted.
    pub ttl: Option<Duration>,
    /// The backend that opened it (only it may read its state).
    pub owner: String,
}

/// What [`PreviewSpace::open`] gives back.
#[derive(Debug, Clone)]
pub struct PreviewLink {
    /// The preview's id (for [`PreviewSpace::state`]).
    pub id: String,
    /// The link for the citizen.
    pub url: String,
    /// When the link stops working.
    pub expires_at: OffsetDateTime,
}

/// A preview as the flows and the API see it.
#[derive(Debug, Clone, Serialize)]
pub struct PreviewStatus {
    /// Its id.
    pub id: String,
    /// The caller's reference.
    pub reference: String,
    /// Where it is.
    pub state: PreviewState,
    /// When the link stops (or stopped) working.
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    /// When the citizen decided.
    #[serde(with = "time::serde::rfc3339::option")]
    pub decided_at: Option<OffsetDateTime>,
    /// The backend that opened it.
    #[serde(skip)]
    pub owner: String,
}

/// One preview held in memory.
#[derive(Debug)]
struct Session {
    id: String,
    /// SHA-256 of the link secret (the secret itself is only in the link).
    link_sha256: [u8; 32],
    request: PreviewRequest,
    expires_at: OffsetDateTime,
    state: PreviewState,
    decided_at: Option<OffsetDateTime>,
    /// SHA-256 of the browser cookie that won the link, once someone authenticated.
    bound_cookie_sha256: Option<[u8; 32]>,
    /// Anti-forgery token of the decision form.
    form_token: String,
    /// The page language: chosen by `?lang=` or, on the first visit, the browser's
    /// languages.
    language: Option<pages::Lang>,
}

impl Session {
    fn status(&self) -> PreviewStatus {
        PreviewStatus {
            id: self.id.clone(),
            reference: self.request.reference.clone(),
            state: self.state,
            expires_at: self.expires_at,
            decided_at: self.decided_at,
            owner: self.request.owner.clone(),
        }
    }
}

/// A login in progress (between the redirect to the identity provider and its callback).
#[derive(Debug)]
struct Login {
    session_id: String,
    nonce: String,
    pkce_verifier: String,
    started: OffsetDateTime,
    /// The link (`{id}.{secret}`) to return to.
    link: String,
}

/// How long a citizen may take at the identity provider.
const LOGIN_TTL: time::Duration = time::Duration::minutes(15);

/// The preview space of one instance.
pub struct PreviewSpace {
    config: PreviewConfig,
    files_dir: PathBuf,
    oidc: oidc::OidcClient,
    test_idp: Option<Arc<test_idp::TestIdp>>,
    inner: Mutex<Inner>,
    changed: tokio::sync::Notify,
    clock: Clock,
}

#[derive(Default)]
struct Inner {
    sessions: HashMap<String, Session>,
    logins: HashMap<String, Login>,
}

impl std::fmt::Debug for PreviewSpace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreviewSpace")
            .field("public_url", &self.config.public_url)
            .finish_non_exhaustive()
    }
}

/// Why the preview space cannot start.
#[derive(Debug, thiserror::Error)]
pub enum PreviewSetupError {
    /// A setting is missing or wrong.
    #[error("preview: {0}")]
    Config(String),
    /// A file could not be read or written.
    #[error("preview: {what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
}

impl PreviewSpace {
    /// Builds the preview space from `config`; evidence files are kept under
    /// `data_dir/preview`.
    pub fn new(config: PreviewConfig, data_dir: &Path) -> Result<PreviewSpace, PreviewSetupError> {
        let public_url = config.public_url.trim_end_matches('/').to_owned();
        if !(public_url.starts_with("https://") || public_url.starts_with("http://")) {
            return Err(PreviewSetupError::Config(format!(
                "preview.public_url `{public_url}` must be an http(s) URL (the address citizens reach, e.g. https://preview.example.lv)"
            )));
        }
        let files_dir = data_dir.join("preview");
        // Files of an earlier run belong to previews that ended with it.
        if files_dir.exists() {
            std::fs::remove_dir_all(&files_dir).map_err(|source| PreviewSetupError::Io {
                what: format!("removing old preview files in {}", files_dir.display()),
                source,
            })?;
        }
        std::fs::create_dir_all(&files_dir).map_err(|source| PreviewSetupError::Io {
            what: format!("creating {}", files_dir.display()),
            source,
        })?;
        let redirect_uri = format!("{public_url}/preview/callback");
        let (oidc, test_idp) = if config.test_idp.enabled {
            if config.test_idp.persons.is_empty() {
                return Err(PreviewSetupError::Config(
                    "preview.test_idp is enabled with no persons: add [[preview.test_idp.persons]] entries (given_name, family_name, birth_date, identifier)".into(),
                ));
            }
            let mut redirect_uris = vec![redirect_uri.clone()];
            redirect_uris.extend(config.test_idp.redirect_uris.iter().cloned());
            let idp = Arc::new(test_idp::TestIdp::new(
                format!("{public_url}/test-idp"),
                config.test_idp.persons.clone(),
                redirect_uris,
            )?);
            let client =
                oidc::OidcClient::for_test_idp(&idp, redirect_uri, config.oidc.ca_file.as_deref())?;
            (client, Some(idp))
        } else {
            (
                oidc::OidcClient::from_config(&config.oidc, redirect_uri)?,
                None,
            )
        };
        let config = PreviewConfig {
            public_url,
            ..config
        };
        Ok(PreviewSpace {
            config,
            files_dir,
            oidc,
            test_idp,
            inner: Mutex::new(Inner::default()),
            changed: tokio::sync::Notify::new(),
            clock: Clock::system(),
        })
    }

    /// The same space deciding expiry by `clock` (the access point's, so that a test can
    /// move both); identity tokens from the provider are still checked against the system
    /// clock, since their times come from outside.
    pub fn with_clock(mut self, clock: Clock) -> PreviewSpace {
        self.clock = clock;
        self
    }

    /// Where the caller should put evidence files before [`PreviewSpace::open`] (the same
    /// file system, so they can be moved in).
    pub(crate) fn files_dir(&self) -> &Path {
        &self.files_dir
    }

    /// Opens a preview: the link the citizen must follow.
    pub fn open(&self, request: PreviewRequest) -> PreviewLink {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let secret = random_token();
        let now = self.clock.now();
        let max = Duration::from_secs(self.config.link_ttl_secs);
        let ttl = request.ttl.map(|t| t.min(max)).unwrap_or(max);
        let expires_at = now + ttl;
        let url = format!("{}/preview/{id}.{secret}", self.config.public_url);
        tracing::info!(preview = %id, reference = %request.reference, evidences = request.evidences.len(), expires_at = %expires_at, "preview opened");
        let session = Session {
            id: id.clone(),
            link_sha256: openssl::sha::sha256(secret.as_bytes()),
            request,
            expires_at,
            state: PreviewState::Pending,
            decided_at: None,
            bound_cookie_sha256: None,
            form_token: random_token(),
            language: None,
        };
        self.inner
            .lock()
            .expect("preview lock")
            .sessions
            .insert(id.clone(), session);
        PreviewLink {
            id,
            url,
            expires_at,
        }
    }

    /// Sets where the citizen returns after deciding: an OOTS requester names it
    /// (`ReturnLocation`) only in its second request, after the preview was opened.
    /// False when there is no such preview.
    pub(crate) fn set_return_url(&self, id: &str, url: &str) -> bool {
        let mut inner = self.inner.lock().expect("preview lock");
        match inner.sessions.get_mut(id) {
            Some(session) => {
                session.request.return_url = Some(url.to_owned());
                true
            }
            None => false,
        }
    }

    /// The preview's status (expiry applied), if it exists.
    pub fn state(&self, id: &str) -> Option<PreviewStatus> {
        let mut inner = self.inner.lock().expect("preview lock");
        let session = inner.sessions.get_mut(id)?;
        self.expire_if_due(session, self.clock.now());
        Some(session.status())
    }

    /// Waits until the preview is decided or expires (or `timeout` passes) and returns its
    /// status.
    pub async fn wait(&self, id: &str, timeout: Duration) -> Option<PreviewStatus> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.changed.notified();
            let status = self.state(id)?;
            if status.state != PreviewState::Pending {
                return Some(status);
            }
            let until_expiry = (status.expires_at - self.clock.now())
                .try_into()
                .unwrap_or(Duration::ZERO)
                + Duration::from_millis(50);
            let wake = tokio::time::Instant::now() + until_expiry;
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep_until(wake.min(deadline)) => {}
            }
            if tokio::time::Instant::now() >= deadline {
                return self.state(id);
            }
        }
    }

    /// Ends previews past their expiry and forgets finished ones after a day; deletes their
    /// files. Run periodically by `serve`.
    pub fn sweep(&self) {
        let now = self.clock.now();
        let mut inner = self.inner.lock().expect("preview lock");
        let mut forget = Vec::new();
        for session in inner.sessions.values_mut() {
            self.expire_if_due(session, now);
            let ended = session.decided_at.unwrap_or(session.expires_at);
            if session.state != PreviewState::Pending && now - ended > time::Duration::days(1) {
                forget.push(session.id.clone());
            }
        }
        for id in forget {
            inner.sessions.remove(&id);
        }
        inner.logins.retain(|_, l| now - l.started < LOGIN_TTL);
    }

    fn cleanup_files(&self, session: &Session) {
        let files = session
            .request
            .evidences
            .iter()
            .flat_map(|e| std::iter::once(&e.path).chain(e.html.as_ref()));
        for path in files {
            if let Err(err) = std::fs::remove_file(path) {
                if err.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(preview = %session.id, file = %path.display(), error = %err, "cannot delete a preview's evidence file");
                }
            }
        }
        // The directories the files were uploaded into, once empty.
        for e in &session.request.evidences {
            if let Some(dir) = e.path.parent() {
                if dir.starts_with(&self.files_dir) && dir != self.files_dir {
                    let _ = std::fs::remove_dir(dir);
                }
            }
        }
    }

    /// Ends a pending session past its expiry: marked expired, its files deleted, waiters
    /// woken. Every path that looks at a session calls it first.
    fn expire_if_due(&self, session: &mut Session, now: OffsetDateTime) {
        if session.state == PreviewState::Pending && now >= session.expires_at {
            session.state = PreviewState::Expired;
            tracing::info!(preview = %session.id, reference = %session.request.reference, "preview expired");
            self.cleanup_files(session);
            self.changed.notify_waiters();
        }
    }

    /// The public base URL.
    pub fn public_url(&self) -> &str {
        &self.config.public_url
    }
}

/// 32 random bytes, base64url without padding.
fn random_token() -> String {
    use base64::Engine;
    let mut bytes = [0u8; 32];
    openssl::rand::rand_bytes(&mut bytes).expect("the system random generator works");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn anna() -> Person {
        Person {
            identifier: None,
            given_name: "Anna".into(),
            family_name: "Bērziņa".into(),
            birth_date: "1990-04-01".into(),
        }
    }

    /// A space with the built-in test identity provider, over `dir`, reading `clock`.
    fn space(dir: &Path, clock: &Clock) -> PreviewSpace {
        let mut person = anna();
        person.identifier = Some("LV/LV/1".into());
        let config = PreviewConfig {
            enabled: true,
            public_url: "http://127.0.0.1:9".into(),
            link_ttl_secs: 600,
            test_idp: TestIdpConfig {
                enabled: true,
                persons: vec![person],
                redirect_uris: Vec::new(),
            },
            ..PreviewConfig::default()
        };
        PreviewSpace::new(config, dir)
            .unwrap()
            .with_clock(clock.clone())
    }

    fn request(ttl: Option<Duration>) -> PreviewRequest {
        PreviewRequest {
            reference: "req-1".into(),
            person: anna(),
            requester: "Example requester".into(),
            procedure: None,
            evidences: Vec::new(),
            return_url: None,
            ttl,
            owner: "portal".into(),
        }
    }

    #[test]
    fn a_link_expires_at_its_lifetime_by_the_clock_and_not_a_moment_before() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Clock::manual(OffsetDateTime::now_utc());
        let space = space(dir.path(), &clock);
        let link = space.open(request(Some(Duration::from_secs(60))));
        assert_eq!(link.expires_at, clock.now() + Duration::from_secs(60));
        clock.advance(Duration::from_secs(59));
        assert_eq!(space.state(&link.id).unwrap().state, PreviewState::Pending);
        clock.advance(Duration::from_secs(1));
        assert_eq!(space.state(&link.id).unwrap().state, PreviewState::Expired);

        // A lifetime longer than preview.link_ttl_secs is cut to it.
        let long = space.open(request(Some(Duration::from_secs(86_400))));
        assert_eq!(long.expires_at, clock.now() + Duration::from_secs(600));
        clock.advance(Duration::from_secs(599));
        space.sweep();
        assert_eq!(space.state(&long.id).unwrap().state, PreviewState::Pending);
        clock.advance(Duration::from_secs(1));
        space.sweep();
        assert_eq!(space.state(&long.id).unwrap().state, PreviewState::Expired);
    }

    #[tokio::test(start_paused = true)]
    async fn wait_returns_when_the_link_expires_or_at_its_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Clock::manual(OffsetDateTime::now_utc());
        let space = space(dir.path(), &clock);
        let link = space.open(request(Some(Duration::from_secs(60))));
        // Tokio's paused time runs out the 5 s timeout at once; the link is still pending.
        let status = space.wait(&link.id, Duration::from_secs(5)).await.unwrap();
        assert_eq!(status.state, PreviewState::Pending);
        // Once the clock is past the expiry, the next wake-up finds the link expired.
        clock.advance(Duration::from_secs(60));
        let status = space
            .wait(&link.id, Duration::from_secs(120))
            .await
            .unwrap();
        assert_eq!(status.state, PreviewState::Expired);
    }

    #[test]
    fn a_person_matches_by_identifier_when_both_have_one_else_by_names_and_birth_date() {
        let mut other = anna();
        other.given_name = " ANNA ".into();
        assert!(anna().matches(&other));
        other.birth_date = "1990-04-02".into();
        assert!(!anna().matches(&other));

        let mut a = anna();
        a.identifier = Some("LV/LV/1".into());
        let mut b = anna();
        b.identifier = Some("LV/LV/2".into());
        assert!(!a.matches(&b), "same names, different identifiers");
        b.identifier = Some("LV/LV/1".into());
        b.family_name = "Other".into();
        assert!(a.matches(&b), "the identifier decides when both have one");
    }
}
