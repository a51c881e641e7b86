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
//! # In the shared store
//!
//! A preview lives in the message store (sled, or the PostgreSQL both instances of a pair
//! share) as opaque preview records ([`varti_store::Store::put_preview_record`]): the
//! session (`s/{id}`: link hash, person, state, bound browser, decision) as JSON, each
//! evidence file (`s/{id}/e/{n}`, and `s/{id}/e/{n}.html` for its transformation)
//! encrypted with AES-256-GCM under `preview.evidence_key_file`, and each login in progress
//! (`l/{state}`). Any instance of a pair therefore serves the pages, takes the login's
//! return from the identity provider and the decision, and answers the flows; a restart
//! ends nothing. Changes of a session are compare-and-swap: of two instances deciding at
//! once, one wins. An instance decrypts evidence into `data_dir/preview/{id}` only to show
//! it, and deletes those copies when the preview ends (or at the next sweep, when another
//! instance ended it). The encrypted evidence is removed at the decision and purged by the
//! store at the link's expiry; the session record a day later.

pub mod api;
mod oidc;
mod pages;
mod routes;
pub(crate) mod test_idp;
pub(crate) mod xslt;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use varti_access_point::Clock;
use varti_store::Store;

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
    /// File holding the AES-256 key that encrypts evidence held in the store for a preview
    /// (32 bytes: raw, 64 hex digits, or base64). Both instances of a pair need the same
    /// key. Required when previews are on. Make one with `openssl rand -hex 32`.
    pub evidence_key_file: Option<PathBuf>,
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
            evidence_key_file: None,
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PreviewEvidence {
    /// Its title as the citizen sees it.
    pub title: String,
    /// Its media type (`application/pdf`, `application/xml`, …).
    pub media_type: String,
    /// The file (owned by the preview space from now on: [`PreviewSpace::open`] moves it,
    /// encrypted, into the store and deletes it).
    pub path: PathBuf,
    /// For XML evidence with a stylesheet: its transformation into HTML (owned and deleted
    /// like `path`), shown to the citizen instead of the XML outline.
    pub html: Option<PathBuf>,
}

/// What [`PreviewSpace::open`] needs.
#[derive(Debug, Clone, Serialize, Deserialize)]
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

/// One preview, as its store record holds it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Session {
    id: String,
    /// SHA-256 of the link secret (the secret itself is only in the link).
    link_sha256: [u8; 32],
    request: PreviewRequest,
    #[serde(with = "time::serde::rfc3339")]
    expires_at: OffsetDateTime,
    state: PreviewState,
    #[serde(with = "time::serde::rfc3339::option")]
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
#[derive(Debug, Serialize, Deserialize)]
struct Login {
    session_id: String,
    nonce: String,
    pkce_verifier: String,
    #[serde(with = "time::serde::rfc3339")]
    started: OffsetDateTime,
    /// The link (`{id}.{secret}`) to return to.
    link: String,
}

/// How long a citizen may take at the identity provider.
const LOGIN_TTL: time::Duration = time::Duration::minutes(15);

/// The preview space of one instance (its state is in the store, shared by a pair).
pub struct PreviewSpace {
    config: PreviewConfig,
    files_dir: PathBuf,
    oidc: oidc::OidcClient,
    test_idp: Option<Arc<test_idp::TestIdp>>,
    store: Arc<dyn Store>,
    /// AES-256-GCM key of the evidence held in the store.
    key: [u8; 32],
    changed: tokio::sync::Notify,
    clock: Clock,
}

/// How often [`PreviewSpace::wait`] looks at the store for a decision taken by another
/// instance.
const WAIT_POLL: Duration = Duration::from_millis(250);

/// How long a finished session's record stays (for `GET /api/v1/previews/{id}`).
const KEEP_ENDED: time::Duration = time::Duration::days(1);

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
    /// Builds the preview space from `config`, keeping its previews in `store`; evidence
    /// being shown is decrypted under `data_dir/preview`.
    pub fn new(
        config: PreviewConfig,
        data_dir: &Path,
        store: Arc<dyn Store>,
    ) -> Result<PreviewSpace, PreviewSetupError> {
        let key = read_key(config.evidence_key_file.as_deref())?;
        let public_url = config.public_url.trim_end_matches('/').to_owned();
        if !(public_url.starts_with("https://") || public_url.starts_with("http://")) {
            return Err(PreviewSetupError::Config(format!(
                "preview.public_url `{public_url}` must be an http(s) URL (the address citizens reach, e.g. https://preview.example.lv)"
            )));
        }
        let files_dir = data_dir.join("preview");
        // Files of an earlier run are decrypted copies: the store has the evidence.
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
            store,
            key,
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

    /// Opens a preview: the link the citizen must follow. The evidence files move,
    /// encrypted, into the store (the files are deleted).
    pub fn open(&self, request: PreviewRequest) -> Result<PreviewLink, PreviewStoreError> {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let secret = random_token();
        let now = self.clock.now();
        let max = Duration::from_secs(self.config.link_ttl_secs);
        let ttl = request.ttl.map(|t| t.min(max)).unwrap_or(max);
        let expires_at = now + ttl;
        let url = format!("{}/preview/{id}.{secret}", self.config.public_url);
        let stored = self.store_evidence(&id, &request.evidences, expires_at);
        // This instance keeps its decrypted copy to show (moved, not copied); another
        // instance decrypts from the store when it has to show the evidence.
        if stored.is_ok() {
            self.keep_local(&id, &request.evidences);
        }
        remove_files(&id, &request.evidences, &self.files_dir);
        if let Err(e) = stored {
            let _ = self.store.remove_preview_records(&format!("s/{id}/"));
            return Err(e);
        }
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
        let bytes = serde_json::to_vec(&session).map_err(|e| PreviewStoreError(e.to_string()))?;
        self.store
            .put_preview_record(&session_key(&id), &bytes, expires_at + KEEP_ENDED)
            .map_err(|e| PreviewStoreError(e.to_string()))?;
        tracing::info!(preview = %id, reference = %session.request.reference, evidences = session.request.evidences.len(), expires_at = %expires_at, "preview opened");
        Ok(PreviewLink {
            id,
            url,
            expires_at,
        })
    }

    /// Moves the files handed to [`PreviewSpace::open`] to where
    /// [`PreviewSpace::local_evidence`] looks (a failure only means decrypting later).
    fn keep_local(&self, id: &str, evidences: &[PreviewEvidence]) {
        let dir = self.files_dir.join(id);
        if std::fs::create_dir_all(&dir).is_err() {
            return;
        }
        for (n, e) in evidences.iter().enumerate() {
            let _ = std::fs::rename(&e.path, dir.join(n.to_string()));
            if let Some(html) = &e.html {
                let _ = std::fs::rename(html, dir.join(format!("{n}.html")));
            }
        }
    }

    /// Encrypts each evidence file (and its HTML) into the store, kept until the expiry.
    fn store_evidence(
        &self,
        id: &str,
        evidences: &[PreviewEvidence],
        expires_at: OffsetDateTime,
    ) -> Result<(), PreviewStoreError> {
        for (n, e) in evidences.iter().enumerate() {
            let files = std::iter::once((evidence_key(id, n, false), &e.path))
                .chain(e.html.as_ref().map(|h| (evidence_key(id, n, true), h)));
            for (key, path) in files {
                let plain = std::fs::read(path).map_err(|err| {
                    PreviewStoreError(format!("reading {}: {err}", path.display()))
                })?;
                let sealed = seal(&self.key, &key, &plain)?;
                self.store
                    .put_preview_record(&key, &sealed, expires_at)
                    .map_err(|err| PreviewStoreError(err.to_string()))?;
            }
        }
        Ok(())
    }

    /// Sets where the citizen returns after deciding: an OOTS requester names it
    /// (`ReturnLocation`) only in its second request, after the preview was opened.
    /// False when there is no such preview.
    pub(crate) fn set_return_url(&self, id: &str, url: &str) -> bool {
        self.update(id, |session, _| {
            session.request.return_url = Some(url.to_owned());
        })
        .is_some()
    }

    /// The preview's status (expiry applied), if it exists.
    pub fn state(&self, id: &str) -> Option<PreviewStatus> {
        self.update(id, |_, _| ()).map(|(s, ())| s.status())
    }

    /// Waits until the preview is decided (on any instance) or expires (or `timeout`
    /// passes) and returns its status.
    pub async fn wait(&self, id: &str, timeout: Duration) -> Option<PreviewStatus> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.changed.notified();
            let status = blocking(|| self.state(id))?;
            if status.state != PreviewState::Pending {
                return Some(status);
            }
            let until_expiry = (status.expires_at - self.clock.now())
                .try_into()
                .unwrap_or(Duration::ZERO)
                + Duration::from_millis(50);
            let wake = tokio::time::Instant::now() + until_expiry.min(WAIT_POLL);
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep_until(wake.min(deadline)) => {}
            }
            if tokio::time::Instant::now() >= deadline {
                return blocking(|| self.state(id));
            }
        }
    }

    /// Purges the store's preview records past their time (evidence at the link's expiry,
    /// logins after their time, sessions a day after) and deletes this instance's
    /// decrypted copies of previews no longer pending. Run periodically by `serve`.
    pub fn sweep(&self) {
        match self.store.purge_preview_records(self.clock.now()) {
            Ok(0) => {}
            Ok(n) => tracing::debug!(records = n, "purged preview records past their time"),
            Err(e) => tracing::warn!(error = %e, "cannot purge preview records"),
        }
        let Ok(dirs) = std::fs::read_dir(&self.files_dir) else {
            return;
        };
        for dir in dirs.flatten() {
            let name = dir.file_name().to_string_lossy().into_owned();
            // Files on their way into a preview (uploads, the provider's copies).
            if name.starts_with("upload-") {
                continue;
            }
            if self
                .state(&name)
                .is_none_or(|s| s.state != PreviewState::Pending)
            {
                let _ = std::fs::remove_dir_all(dir.path());
            }
        }
    }

    /// The session `id` and its record's bytes.
    fn load(&self, id: &str) -> Option<(Vec<u8>, Session)> {
        let bytes = match self.store.preview_record(&session_key(id)) {
            Ok(Some(b)) => b,
            Ok(None) => return None,
            Err(e) => {
                tracing::error!(preview = %id, error = %e, "cannot read a preview from the store");
                return None;
            }
        };
        match serde_json::from_slice::<Session>(&bytes) {
            Ok(s) => Some((bytes, s)),
            Err(e) => {
                tracing::error!(preview = %id, error = %e, "a preview record in the store cannot be read");
                None
            }
        }
    }

    /// Applies `change` to the session `id` (after expiring it if due) and stores the
    /// result over the version read (compare-and-swap: a change by another instance
    /// meanwhile makes it start over). When the change ends the preview, its evidence goes.
    /// The session after the change, and what `change` returned.
    fn update<R>(
        &self,
        id: &str,
        mut change: impl FnMut(&mut Session, OffsetDateTime) -> R,
    ) -> Option<(Session, R)> {
        for _ in 0..16 {
            let (bytes, before) = self.load(id)?;
            let now = self.clock.now();
            let mut session = before.clone();
            if session.state == PreviewState::Pending && now >= session.expires_at {
                session.state = PreviewState::Expired;
            }
            let result = change(&mut session, now);
            let after = match serde_json::to_vec(&session) {
                Ok(a) => a,
                Err(e) => {
                    tracing::error!(preview = %id, error = %e, "cannot serialise a preview");
                    return None;
                }
            };
            if after == bytes {
                return Some((session, result));
            }
            let keep = session.expires_at + KEEP_ENDED;
            match self
                .store
                .swap_preview_record(&session_key(id), &bytes, &after, keep)
            {
                Ok(true) => {
                    if before.state == PreviewState::Pending
                        && session.state != PreviewState::Pending
                    {
                        self.ended(&session);
                    }
                    return Some((session, result));
                }
                Ok(false) => continue,
                Err(e) => {
                    tracing::error!(preview = %id, error = %e, "cannot store a preview's change");
                    return None;
                }
            }
        }
        tracing::error!(preview = %id, "a preview keeps changing under this instance; giving up this change");
        None
    }

    /// A preview ended (decided or expired): its evidence goes from the store and from
    /// this instance's disk; waiters wake.
    fn ended(&self, session: &Session) {
        if session.state == PreviewState::Expired {
            tracing::info!(preview = %session.id, reference = %session.request.reference, "preview expired");
        }
        if let Err(e) = self
            .store
            .remove_preview_records(&format!("{}/", session_key(&session.id)))
        {
            tracing::warn!(preview = %session.id, error = %e, "cannot remove a preview's evidence from the store now; the store purges it at the link's expiry");
        }
        let _ = std::fs::remove_dir_all(self.files_dir.join(&session.id));
        self.changed.notify_waiters();
    }

    /// The session's evidence as files on this instance's disk (decrypted from the store
    /// when not there yet). `None` when the store no longer has it.
    fn local_evidence(&self, session: &Session) -> Option<Vec<PreviewEvidence>> {
        let dir = self.files_dir.join(&session.id);
        let mut out = Vec::new();
        for (n, e) in session.request.evidences.iter().enumerate() {
            let path = dir.join(n.to_string());
            let html = e.html.as_ref().map(|_| dir.join(format!("{n}.html")));
            for (file, is_html) in
                std::iter::once((&path, false)).chain(html.iter().map(|h| (h, true)))
            {
                if file.exists() {
                    continue;
                }
                let key = evidence_key(&session.id, n, is_html);
                let sealed = match self.store.preview_record(&key) {
                    Ok(Some(s)) => s,
                    Ok(None) => return None,
                    Err(err) => {
                        tracing::error!(preview = %session.id, error = %err, "cannot read a preview's evidence from the store");
                        return None;
                    }
                };
                let plain = match open_sealed(&self.key, &key, &sealed) {
                    Ok(p) => p,
                    Err(err) => {
                        tracing::error!(preview = %session.id, error = %err, "cannot decrypt a preview's evidence (is preview.evidence_key_file the same on every instance?)");
                        return None;
                    }
                };
                let written = std::fs::create_dir_all(&dir).and_then(|()| {
                    let tmp = dir.join(format!(".{n}.{}", uuid::Uuid::new_v4().simple()));
                    std::fs::write(&tmp, &plain)?;
                    std::fs::rename(&tmp, file)
                });
                if let Err(err) = written {
                    tracing::error!(preview = %session.id, error = %err, "cannot write a preview's evidence for display");
                    return None;
                }
            }
            out.push(PreviewEvidence {
                title: e.title.clone(),
                media_type: e.media_type.clone(),
                path,
                html,
            });
        }
        Some(out)
    }

    /// The public base URL.
    pub fn public_url(&self) -> &str {
        &self.config.public_url
    }
}

/// Runs `f`, which talks to the store synchronously, from async code: on a multi-threaded
/// runtime (`serve`'s) the worker hands its other tasks over first, so they are not held
/// up, and the PostgreSQL client (which blocks on a runtime of its own) may run at all —
/// on a worker thread it panics. Elsewhere (tests, sync callers) `f` simply runs.
pub(crate) fn blocking<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// A preview could not be stored.
#[derive(Debug, thiserror::Error)]
#[error("preview store: {0}")]
pub struct PreviewStoreError(String);

fn session_key(id: &str) -> String {
    format!("s/{id}")
}

fn evidence_key(id: &str, n: usize, html: bool) -> String {
    if html {
        format!("s/{id}/e/{n}.html")
    } else {
        format!("s/{id}/e/{n}")
    }
}

/// Deletes the files handed to [`PreviewSpace::open`] (and the upload directories they
/// were in, once empty).
fn remove_files(id: &str, evidences: &[PreviewEvidence], files_dir: &Path) {
    for e in evidences {
        for path in std::iter::once(&e.path).chain(e.html.as_ref()) {
            if let Err(err) = std::fs::remove_file(path) {
                if err.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(preview = %id, file = %path.display(), error = %err, "cannot delete a preview's evidence file");
                }
            }
        }
        if let Some(dir) = e.path.parent() {
            if dir.starts_with(files_dir) && dir != files_dir {
                let _ = std::fs::remove_dir(dir);
            }
        }
    }
}

/// The evidence key from `preview.evidence_key_file`: 32 bytes, raw, hex or base64.
fn read_key(file: Option<&Path>) -> Result<[u8; 32], PreviewSetupError> {
    use base64::Engine;
    let Some(file) = file else {
        return Err(PreviewSetupError::Config(
            "preview.evidence_key_file is not set: previews keep the evidence encrypted in the store and need a 32-byte key, the same on every instance (make one with `openssl rand -hex 32 > /etc/varti/preview.key`)".into(),
        ));
    };
    let bytes = std::fs::read(file).map_err(|source| PreviewSetupError::Io {
        what: format!("reading preview.evidence_key_file {}", file.display()),
        source,
    })?;
    let text = std::str::from_utf8(&bytes).map(str::trim).unwrap_or("");
    let key = if bytes.len() == 32 {
        bytes
    } else if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        (0..32)
            .map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16).unwrap_or(0))
            .collect()
    } else {
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .unwrap_or_default()
    };
    key.try_into().map_err(|_| {
        PreviewSetupError::Config(format!(
            "preview.evidence_key_file {} does not hold a 32-byte key (raw, 64 hex digits or base64); make one with `openssl rand -hex 32`",
            file.display()
        ))
    })
}

/// AES-256-GCM of `plain` under `key`, bound to the record id `aad`: nonce, tag, text.
fn seal(key: &[u8; 32], aad: &str, plain: &[u8]) -> Result<Vec<u8>, PreviewStoreError> {
    let mut nonce = [0u8; 12];
    openssl::rand::rand_bytes(&mut nonce).map_err(|e| PreviewStoreError(e.to_string()))?;
    let mut tag = [0u8; 16];
    let text = openssl::symm::encrypt_aead(
        openssl::symm::Cipher::aes_256_gcm(),
        key,
        Some(&nonce),
        aad.as_bytes(),
        plain,
        &mut tag,
    )
    .map_err(|e| PreviewStoreError(e.to_string()))?;
    let mut out = Vec::with_capacity(28 + text.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&tag);
    out.extend_from_slice(&text);
    Ok(out)
}

/// The plain bytes of [`seal`]'s output; fails on a wrong key or altered bytes.
fn open_sealed(key: &[u8; 32], aad: &str, sealed: &[u8]) -> Result<Vec<u8>, PreviewStoreError> {
    if sealed.len() < 28 {
        return Err(PreviewStoreError("sealed evidence is too short".into()));
    }
    let (nonce, rest) = sealed.split_at(12);
    let (tag, text) = rest.split_at(16);
    openssl::symm::decrypt_aead(
        openssl::symm::Cipher::aes_256_gcm(),
        key,
        Some(nonce),
        aad.as_bytes(),
        text,
        tag,
    )
    .map_err(|_| PreviewStoreError("the evidence does not decrypt with this key".into()))
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
        let key = dir.join("key");
        std::fs::write(&key, [7u8; 32]).unwrap();
        let config = PreviewConfig {
            enabled: true,
            public_url: "http://127.0.0.1:9".into(),
            link_ttl_secs: 600,
            evidence_key_file: Some(key),
            test_idp: TestIdpConfig {
                enabled: true,
                persons: vec![person],
                redirect_uris: Vec::new(),
            },
            ..PreviewConfig::default()
        };
        let store = Arc::new(varti_store::SledStore::open(dir.join("store")).unwrap());
        PreviewSpace::new(config, dir, store)
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
        let link = space.open(request(Some(Duration::from_secs(60)))).unwrap();
        assert_eq!(link.expires_at, clock.now() + Duration::from_secs(60));
        clock.advance(Duration::from_secs(59));
        assert_eq!(space.state(&link.id).unwrap().state, PreviewState::Pending);
        clock.advance(Duration::from_secs(1));
        assert_eq!(space.state(&link.id).unwrap().state, PreviewState::Expired);

        // A lifetime longer than preview.link_ttl_secs is cut to it.
        let long = space
            .open(request(Some(Duration::from_secs(86_400))))
            .unwrap();
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
        let link = space.open(request(Some(Duration::from_secs(60)))).unwrap();
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
    fn evidence_is_encrypted_in_the_store_shared_by_two_spaces_and_removed_at_the_decision() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Clock::manual(OffsetDateTime::now_utc());
        let one = space(dir.path(), &clock);
        // A second instance over the same store (its own disk).
        let other_dir = dir.path().join("other");
        std::fs::create_dir_all(&other_dir).unwrap();
        std::fs::write(other_dir.join("key"), [7u8; 32]).unwrap();
        let mut config = one.config.clone();
        config.evidence_key_file = Some(other_dir.join("key"));
        let two = PreviewSpace::new(config, &other_dir, one.store.clone())
            .unwrap()
            .with_clock(clock.clone());

        let file = one.files_dir().join("upload-x");
        std::fs::create_dir_all(&file).unwrap();
        let file = file.join("0");
        let secret = b"secret evidence of Anna";
        std::fs::write(&file, secret).unwrap();
        let mut req = request(None);
        req.evidences.push(PreviewEvidence {
            title: "E".into(),
            media_type: "application/pdf".into(),
            path: file.clone(),
            html: None,
        });
        let link = one.open(req).unwrap();
        assert!(!file.exists(), "the handed-over file moved into the store");
        assert!(
            one.files_dir().join(&link.id).join("0").exists(),
            "its shown copy"
        );
        let sealed = one
            .store
            .preview_record(&evidence_key(&link.id, 0, false))
            .unwrap()
            .unwrap();
        assert!(
            !sealed.windows(secret.len()).any(|w| w == secret),
            "the evidence is not in the store in the clear"
        );

        // The other instance sees the preview and decrypts the evidence.
        let (_, session) = two.load(&link.id).unwrap();
        let shown = two.local_evidence(&session).unwrap();
        assert_eq!(std::fs::read(&shown[0].path).unwrap(), secret);

        // Decided on the other instance: the first one sees it, the evidence is gone.
        let decided = two.update(&link.id, |s, now| {
            s.state = PreviewState::Approved;
            s.decided_at = Some(now);
        });
        assert!(decided.is_some());
        assert_eq!(one.state(&link.id).unwrap().state, PreviewState::Approved);
        assert_eq!(
            one.store
                .preview_record(&evidence_key(&link.id, 0, false))
                .unwrap(),
            None
        );
        assert!(!shown[0].path.exists(), "the decrypted copy is deleted");
    }

    #[test]
    fn a_missing_or_short_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let err = read_key(None).unwrap_err().to_string();
        assert!(err.contains("evidence_key_file is not set"), "{err}");
        std::fs::write(dir.path().join("short"), "abcd").unwrap();
        let err = read_key(Some(&dir.path().join("short")))
            .unwrap_err()
            .to_string();
        assert!(err.contains("does not hold a 32-byte key"), "{err}");
        std::fs::write(dir.path().join("hex"), format!("{}\n", "ab".repeat(32))).unwrap();
        assert_eq!(read_key(Some(&dir.path().join("hex"))).unwrap(), [0xab; 32]);
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
