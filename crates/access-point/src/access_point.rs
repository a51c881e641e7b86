//! The running access point: what `varti serve` holds while it runs, shared by the MSH
//! receiver, the sender and the backend API.
//!
//! [`AccessPoint`] ties together its [`Settings`], the store, the metrics and the set in
//! force — the PModes, this access point's own keys ([`LocalIdentity`]), the partners'
//! certificates, the outbound client and the backend clients — which a reload replaces
//! whole ([`Snapshot`], [`AccessPoint::current`], [`crate::reload`]). The stages that use
//! it live in their own modules:
//!
//! * [`receiver`](crate::receiver) — `POST /msh`: route by PMode, verify and decrypt, store durably, answer
//!   with the (signed) receipt; duplicates get the original receipt.
//! * [`sender`](crate::sender) — claims due outbound messages, seals and pushes them, checks the receipt,
//!   retries per the leg's schedule, fails with EBMS:0301 after the last retry.
//! * [`submit`](crate::submit) — turns a backend's submission into a stored outbound message.
//! * [`pull`] — one-way/pull: answers partners' pull requests with the messages waiting
//!   for them (and takes their receipts), and pulls from partners for our own pull legs.
//!
//! Everything that happens to a message is announced as a [`MessageEvent`] (webhooks and
//! tests listen).

use std::collections::{HashMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use openssl::x509::X509;
use varti_as4::error::EbmsError;
use varti_as4::inbound::DeliveredPayload;
use varti_as4::message::model::UserMessage;
use varti_as4::pmode::model::Party;
use varti_as4::security::private_key::PrivateKey;
use varti_as4::spool::{claim_spool_dir, Claim, Spool, SpoolBudget, SpoolClaim};
use varti_store::Store;

use crate::client::{OutboundClient, PartnerTls};
use crate::clock::Clock;
use crate::config::Settings;
use crate::ops::Metrics;
use crate::pull;
use crate::reload::{ReloadHook, ReloadSource, Snapshot};
use crate::webhooks::Notice;

/// Why the access point cannot start. Each message says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The PModes have errors.
    #[error("the PModes in {dir} have {count} error(s); run `varti pmode check {dir}` to see them:\n{first}")]
    PModes {
        /// The directory.
        dir: String,
        /// How many errors.
        count: usize,
        /// The first error, with its location.
        first: String,
    },
    /// A key or certificate cannot be read.
    #[error("cannot read {what} {path}: {problem}")]
    Credential {
        /// Which one (`identity.signing_key`, …).
        what: String,
        /// The file.
        path: PathBuf,
        /// What went wrong.
        problem: String,
    },
    /// The configured identity is not a party of the PModes.
    #[error("identity.party `{0}` is not a [[party]] of the PModes; name the party this access point is (see `varti pmode show`)")]
    UnknownParty(String),
    /// One of our keys or certificates is below the key-strength policy
    /// (`varti_as4::security::keys`); partners' are refused by the PMode check.
    #[error("{what} ({path}) has {weak}: {}; to start anyway for a while, add allow_weak_keys = \"why, until when\" to our party in the PModes", weak.hint())]
    WeakKey {
        /// Which one (`identity.signing_cert`, `tls.key`, …).
        what: String,
        /// The file.
        path: PathBuf,
        /// What is weak.
        #[source]
        weak: varti_as4::security::keys::WeakKey,
    },
    /// A partner's TLS settings cannot be used.
    #[error("partner `{partner}`: {problem}")]
    PartnerTls {
        /// The party.
        partner: String,
        /// What went wrong.
        problem: String,
    },
    /// A dynamic partner's discovery settings cannot be used.
    #[error("discovery of partner `{partner}`: {problem}")]
    Discovery {
        /// The party.
        partner: String,
        /// What went wrong.
        problem: String,
    },
}

/// This access point's own keys (and the partners' signing certificates), as the
/// receiving side of `varti_as4` takes them.
pub use varti_as4::receive::LocalIdentity;

/// A partner's certificates, read from the PModes once at start-up.
#[derive(Debug, Default, Clone)]
pub struct PartnerCerts {
    /// Its signing certificate (what its signatures must be made with).
    pub signing: Option<X509>,
    /// Its encryption certificate (what we encrypt to).
    pub encryption: Option<X509>,
}

/// What happened to a message; announced to webhooks and anyone listening.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MessageEvent {
    /// An inbound message was stored and acknowledged; it waits for its backend.
    Received {
        /// Its MessageId.
        message_id: String,
        /// The backend it belongs to.
        owner: String,
    },
    /// An outbound message was acknowledged by the partner.
    Sent {
        /// Its MessageId.
        message_id: String,
        /// The backend that submitted it.
        owner: String,
    },
    /// An outbound message failed for good (EBMS:0301 after the last retry, or an error
    /// signal that no retry can fix).
    Failed {
        /// Its MessageId.
        message_id: String,
        /// The backend that submitted it.
        owner: String,
        /// The ebMS error code and detail.
        error: String,
    },
}

impl MessageEvent {
    /// The message the event is about.
    pub fn message_id(&self) -> &str {
        match self {
            MessageEvent::Received { message_id, .. }
            | MessageEvent::Sent { message_id, .. }
            | MessageEvent::Failed { message_id, .. } => message_id,
        }
    }
    /// The backend that owns the message.
    pub fn owner(&self) -> &str {
        match self {
            MessageEvent::Received { owner, .. }
            | MessageEvent::Sent { owner, .. }
            | MessageEvent::Failed { owner, .. } => owner,
        }
    }
    /// `received`, `sent` or `failed`.
    pub fn kind(&self) -> &'static str {
        match self {
            MessageEvent::Received { .. } => "received",
            MessageEvent::Sent { .. } => "sent",
            MessageEvent::Failed { .. } => "failed",
        }
    }
}

/// An inbound user message as a feature's [`InboundCheck`] sees it: received, routed,
/// decrypted, verified and checked against its leg, and not stored yet.
#[derive(Debug, Clone, Copy)]
pub struct InboundMessage<'a> {
    /// Its ebMS header.
    pub user_message: &'a UserMessage,
    /// The party that sent it: the PMode party whose own certificate signed it.
    pub partner: &'a Party,
    /// Its payloads, delivered (decrypted, decompressed) into temporary files that vanish
    /// when the message is refused.
    pub payloads: &'a [DeliveredPayload],
}

/// Why a feature refused an inbound message: the ebMS error its sender gets instead of a
/// receipt, and a short reason for the `varti_refusals_total` metric.
#[derive(Debug, Clone)]
pub struct InboundRefusal {
    /// The error signal's error (its code and detail go back to the sender).
    pub error: EbmsError,
    /// A short, fixed reason (`snake_case`): the metric's `reason` label.
    pub reason: &'static str,
}

/// A feature's check of the inbound messages of a service it claimed
/// ([`AccessPoint::check_inbound`]). It runs on the receiving thread after every AS4 stage
/// passed and before anything of the message is stored: a refusal answers the sender with
/// its ebMS error signal instead of a receipt, leaves the store unchanged and drops the
/// payloads' temporary files at once.
pub trait InboundCheck: Send + Sync {
    /// `Ok` to store and acknowledge `message`; `Err` to refuse it.
    fn check(&self, message: &InboundMessage<'_>) -> Result<(), InboundRefusal>;
}

/// Owner of ebMS test-service messages: no backend has this name, so they are never
/// delivered.
pub(crate) const TEST_SERVICE_OWNER: &str = "varti:test-service";

/// Owner of inbound messages when no backend is configured (they wait in the store, visible
/// to `varti messages list`).
pub(crate) const DEFAULT_OWNER: &str = "default";

/// The running access point.
pub struct AccessPoint {
    /// The settings it was opened with. The parts a reload can change (PModes, identity,
    /// backend clients) are read from [`AccessPoint::current`] instead.
    pub settings: Settings,
    /// The message store.
    pub store: Arc<dyn Store>,
    /// Prometheus metrics.
    pub metrics: Arc<Metrics>,
    /// The wall clock every time-based decision reads (see [`Clock`]).
    pub clock: Clock,
    /// The disk budget of the messages being received (`limits.spool_budget_bytes`).
    pub spool_budget: Arc<SpoolBudget>,
    /// This instance's name in leases and logs.
    pub instance: String,
    /// Wakes the sender when a message was submitted.
    pub wake_sender: tokio::sync::Notify,
    /// What we signed in each pulled message, until its receipt comes.
    pub pulled: pull::SealedForPull,
    /// Set while the store takes no writes (the readiness probe failed): the sender, the
    /// puller and the webhook sweep claim no work until it is cleared.
    pub store_down: std::sync::atomic::AtomicBool,
    events: tokio::sync::broadcast::Sender<MessageEvent>,
    notices: tokio::sync::broadcast::Sender<Notice>,
    /// Services taken by a feature of the runtime rather than a backend client (see
    /// [`AccessPoint::claim_service`]).
    service_owners: RwLock<HashMap<String, String>>,
    /// The features' checks of inbound messages, by service
    /// ([`AccessPoint::check_inbound`]).
    inbound_checks: RwLock<HashMap<String, Arc<dyn InboundCheck>>>,
    /// The set in force (PModes, keys, partners, backend clients): replaced whole by a
    /// reload, never changed in place.
    pub(crate) current: RwLock<Arc<Snapshot>>,
    /// Whether the client may push to `http://` (kept for reloads).
    pub(crate) allow_plain_http: bool,
    /// How a reload re-reads the settings (registered by the binary).
    pub(crate) reload_source: RwLock<Option<ReloadSource>>,
    /// Features taking part in reloads.
    pub(crate) reload_hooks: RwLock<Vec<Arc<dyn ReloadHook>>>,
    /// Held for the whole of a reload: one at a time.
    pub(crate) reloading: Mutex<()>,
    /// Backend clients that have used their token since this instance started (the first
    /// use of each is audited).
    pub(crate) tokens_seen: Mutex<HashSet<String>>,
    /// The files the set in force was read from, the configuration file included (what
    /// a reload compares with to say what changed).
    pub(crate) files_in_force: Mutex<Vec<crate::reload::FileHash>>,
}

impl std::fmt::Debug for AccessPoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessPoint")
            .field("party", &self.current().identity.party)
            .field("instance", &self.instance)
            .finish_non_exhaustive()
    }
}

impl AccessPoint {
    /// Whether work may be claimed: the store took the last probe's write (see
    /// [`AccessPoint::store_down`]).
    pub fn may_claim(&self) -> bool {
        !self.store_down.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The same access point reading `clock` instead of the system time; tests pass a
    /// [`Clock::manual`] to drive leases, schedules and expiry without sleeping.
    pub fn with_clock(mut self, clock: Clock) -> AccessPoint {
        self.clock = clock;
        self
    }

    /// Loads the PModes and keys named by `settings` and builds the access point over
    /// `store`. `allow_plain_http` lets the client push to `http://` endpoints
    /// (`--insecure-http`).
    pub fn open(
        settings: Settings,
        store: Arc<dyn Store>,
        metrics: Arc<Metrics>,
        allow_plain_http: bool,
    ) -> Result<AccessPoint, StartError> {
        let snapshot = Snapshot::load(settings.clone(), allow_plain_http, 1)?;
        let files = snapshot.files.clone();
        let config = &settings;
        let instance = config.sender.instance.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/etc/hostname")
                .map(|h| h.trim().to_owned())
                .unwrap_or_else(|_| "varti".to_owned());
            format!("{host}-{}", std::process::id())
        });
        let (events, _) = tokio::sync::broadcast::channel(1024);
        let (notices, _) = tokio::sync::broadcast::channel(1024);
        let spool_budget = SpoolBudget::new(settings.limits.spool_budget_bytes);
        Ok(AccessPoint {
            settings,
            store,
            metrics,
            clock: Clock::system(),
            spool_budget,
            instance,
            wake_sender: tokio::sync::Notify::new(),
            pulled: pull::SealedForPull::default(),
            store_down: std::sync::atomic::AtomicBool::new(false),
            events,
            notices,
            service_owners: RwLock::new(HashMap::new()),
            inbound_checks: RwLock::new(HashMap::new()),
            current: RwLock::new(Arc::new(snapshot)),
            allow_plain_http,
            reload_source: RwLock::new(None),
            reload_hooks: RwLock::new(Vec::new()),
            reloading: Mutex::new(()),
            tokens_seen: Mutex::new(HashSet::new()),
            files_in_force: Mutex::new(files),
        })
    }

    /// The set in force: take it once at the start of an exchange and keep it to the end,
    /// so that a reload meanwhile does not change the rules halfway (see [`crate::reload`]).
    pub fn current(&self) -> Arc<Snapshot> {
        let snap = self
            .current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        // A key rollover: from its instant on (by our clock) the next signing key signs.
        if let Some(next) = &snap.identity.next_signing {
            if next.activate_if_due(self.clock.now()) {
                // Not an administrative act (the configuration that set it up was, when it
                // was loaded): logged, without a blocking audit write on this path.
                tracing::warn!(
                    from = %next.from,
                    key = %varti_as4::security::private_key::KeyOperations::location(&next.key),
                    "key rollover: signing with identity.next_signing_key from now on"
                );
            }
        }
        snap
    }

    /// Announces an event (to webhooks and other listeners; nobody listening is fine).
    pub fn announce(&self, event: MessageEvent) {
        tracing::debug!(
            message_id = event.message_id(),
            kind = event.kind(),
            "event"
        );
        let _ = self.events.send(event);
    }

    /// Listens to events from now on.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<MessageEvent> {
        self.events.subscribe()
    }

    /// Has the webhook dispatcher deliver `notice` to its backend (signed and retried like
    /// the message events; nothing happens when the backend has no webhook).
    pub fn notify(&self, notice: Notice) {
        tracing::debug!(owner = %notice.owner, event = notice.event, subject = %notice.subject, "notice");
        let _ = self.notices.send(notice);
    }

    /// Listens to notices from now on (the webhook dispatcher does).
    pub(crate) fn subscribe_notices(&self) -> tokio::sync::broadcast::Receiver<Notice> {
        self.notices.subscribe()
    }

    /// Hands every inbound message of `service` to `owner` instead of a backend client: a
    /// feature of the runtime (the OOTS gateway) consumes them itself, picking them up from
    /// the store under that owner. Call it at start-up, before the MSH listener serves.
    pub fn claim_service(&self, service: &str, owner: &str) {
        self.service_owners
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(service.to_owned(), owner.to_owned());
    }

    /// Has `check` judge every inbound message of `service` before it is stored (see
    /// [`InboundCheck`]); a feature that claimed the service uses it to refuse what it
    /// would never use. Call it at start-up, before the MSH listener serves; a second call
    /// for the same service replaces the check.
    pub fn check_inbound(&self, service: &str, check: Arc<dyn InboundCheck>) {
        self.inbound_checks
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(service.to_owned(), check);
    }

    /// The verdict of the check registered for the message's service (none: `Ok`).
    pub(crate) fn judge_inbound(&self, message: &InboundMessage<'_>) -> Result<(), InboundRefusal> {
        let service = &message.user_message.collaboration_info.service.value;
        let check = self
            .inbound_checks
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(service)
            .cloned();
        match check {
            Some(c) => c.check(message),
            None => Ok(()),
        }
    }

    /// Who takes inbound messages of `service`: the feature that claimed it
    /// ([`AccessPoint::claim_service`]), else the first configured client whose `services`
    /// list it (or that lists none); [`DEFAULT_OWNER`] without clients.
    pub(crate) fn owner_for_service(&self, service: &str) -> String {
        if let Some(owner) = self
            .service_owners
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(service)
        {
            return owner.clone();
        }
        let current = self.current();
        let clients = current.clients();
        clients
            .iter()
            .find(|c| c.services.iter().any(|s| s == service))
            .or_else(|| clients.iter().find(|c| c.services.is_empty()))
            .map(|c| c.name.clone())
            .unwrap_or_else(|| DEFAULT_OWNER.to_owned())
    }

    /// Where received payloads are spooled before they are stored (beside the store, so
    /// moving them is cheap).
    pub fn spool_dir(&self) -> PathBuf {
        self.settings.spool_dir()
    }

    /// Where a reception's temporary files go and the budget they share.
    pub fn spool(&self) -> Spool {
        Spool {
            dir: Some(self.spool_dir()),
            budget: Some(self.spool_budget.clone()),
            write_behind: self.store.payloads().adopts_files(),
            keep_decrypted: self.store.payloads().adopts_files(),
        }
    }

    /// Takes the spool directory for this serving process and removes the files an
    /// earlier run left there when it was killed (see [`varti_as4::spool::claim_spool_dir`]).
    /// Keep the returned claim while serving; `None` when another live process holds the
    /// directory. A directory that cannot be taken or cleared is logged, not fatal: the
    /// leftovers only take disk space.
    pub fn claim_spool(&self) -> Option<SpoolClaim> {
        let dir = self.spool_dir();
        match claim_spool_dir(&dir) {
            Ok(Claim::Held {
                claim,
                swept_files,
                swept_bytes,
            }) => {
                // Sealed copies an earlier version kept for its retries: every attempt now
                // seals its message anew (signing the same bytes), so none is read again.
                let sealed = dir.join("sealed");
                let (files, bytes) = match remove_sealed_copies(&sealed) {
                    Ok(removed) => removed,
                    Err(e) => {
                        tracing::warn!(dir = %sealed.display(), error = %e, "cannot remove the sealed copies an earlier version kept");
                        (0, 0)
                    }
                };
                let (files, bytes) = (swept_files + files, swept_bytes + bytes);
                if files > 0 {
                    tracing::info!(
                        dir = %dir.display(),
                        files,
                        bytes,
                        "removed the temporary files an earlier run left in the spool directory"
                    );
                }
                Some(claim)
            }
            Ok(Claim::HeldElsewhere) => {
                tracing::warn!(
                    dir = %dir.display(),
                    "another running process holds the spool directory: its leftovers are \
                     not removed (give each instance a data_dir of its own)"
                );
                None
            }
            Err(e) => {
                tracing::warn!(
                    dir = %dir.display(),
                    error = %e,
                    "cannot take or clear the spool directory: files left by an earlier \
                     run stay (check the directory's owner and permissions)"
                );
                None
            }
        }
    }
}

/// Removes the directory of sealed copies `dir` (a missing one has none) with the files in
/// it. Files removed, bytes.
fn remove_sealed_copies(dir: &Path) -> io::Result<(u64, u64)> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((0, 0)),
        Err(e) => return Err(e),
    };
    let (mut files, mut bytes) = (0, 0);
    for entry in entries {
        let meta = entry?.metadata()?;
        if meta.is_file() {
            files += 1;
            bytes += meta.len();
        }
    }
    std::fs::remove_dir_all(dir)?;
    Ok((files, bytes))
}

/// Registers a partner's TLS settings with the client: its trusted CA (default: our own
/// TLS client CA) and, when it wants mutual TLS, our TLS certificate as client identity.
pub(crate) fn register_partner(
    client: &OutboundClient,
    config: &Settings,
    party: &Party,
) -> Result<(), StartError> {
    let tls = party.tls.as_ref();
    let ca = tls
        .and_then(|t| t.trusted_ca.clone())
        .unwrap_or_else(|| config.tls.client_ca.clone());
    let identity = (config.tls.cert.as_path(), config.tls.key.as_path());
    let want_client_auth = tls.is_none_or(|t| t.client_auth);
    let partner_tls = PartnerTls::from_pem_files(&ca, want_client_auth.then_some(identity))
        .map_err(|e| StartError::PartnerTls {
            partner: party.name.clone(),
            problem: e.to_string(),
        })?;
    client
        .set_partner(&party.name, partner_tls)
        .map_err(|e| StartError::PartnerTls {
            partner: party.name.clone(),
            problem: e.to_string(),
        })
}

fn credential(what: &str, path: &Path, problem: impl std::fmt::Display) -> StartError {
    StartError::Credential {
        what: what.to_owned(),
        path: path.to_owned(),
        problem: problem.to_string(),
    }
}

/// Our keys and certificates against the key-strength policy: identity keys always, the
/// TLS certificate and key when we serve TLS (unreadable TLS files are reported by the
/// listener). With our party's `allow_weak_keys`, a weak key is logged, not refused.
pub(crate) fn check_own_keys(
    config: &Settings,
    identity: &LocalIdentity,
    plain_http: bool,
    exception: Option<&str>,
) -> Result<(), StartError> {
    use varti_as4::security::keys::{check_certificate, check_key};
    let id = &config.identity;
    let mut found = vec![
        (
            "identity.signing_cert",
            &id.signing_cert,
            check_certificate(&identity.signing_cert),
        ),
        (
            "identity.signing_key",
            &id.signing_key,
            public_of(&identity.signing_key).and_then(|k| check_key(&k)),
        ),
        (
            "identity.encryption_cert",
            &id.encryption_cert,
            check_certificate(&identity.encryption_cert),
        ),
        (
            "identity.encryption_key",
            &id.encryption_key,
            public_of(&identity.encryption_key).and_then(|k| check_key(&k)),
        ),
    ];
    if !plain_http {
        if let Ok(certs) = read_certs("tls.cert", &config.tls.cert) {
            for cert in &certs {
                found.push(("tls.cert", &config.tls.cert, check_certificate(cert)));
            }
        }
        if let Ok(key) = read_key("tls.key", &config.tls.key, config, None) {
            found.push((
                "tls.key",
                &config.tls.key,
                public_of(&key).and_then(|k| check_key(&k)),
            ));
        }
    }
    for (what, path, verdict) in found {
        let Err(weak) = verdict else { continue };
        match exception {
            Some(reason) => tracing::warn!(
                setting = what,
                file = %path.display(),
                %reason,
                "{what} has {weak}; accepted because our party has allow_weak_keys"
            ),
            None => {
                return Err(StartError::WeakKey {
                    what: what.to_owned(),
                    path: path.clone(),
                    weak,
                })
            }
        }
    }
    Ok(())
}

fn public_of(
    key: &PrivateKey,
) -> Result<openssl::pkey::PKey<openssl::pkey::Public>, varti_as4::security::keys::WeakKey> {
    use varti_as4::security::private_key::KeyOperations;
    key.public_key()
        .map_err(|_| varti_as4::security::keys::WeakKey::KeyType {
            name: "unreadable".into(),
        })
}

/// Opens a private-key setting: a PEM file or a `pkcs11:` URI (module from `[pkcs11]`,
/// else `VARTI_PKCS11_MODULE`). `cert` is the key's certificate, used for the public half
/// of a token key that has none in the token.
pub(crate) fn read_key(
    what: &str,
    path: &Path,
    config: &Settings,
    cert: Option<&X509>,
) -> Result<PrivateKey, StartError> {
    varti_as4::security::private_key::load(
        path,
        config.pkcs11.module.as_deref(),
        cert.map(|c| &**c),
    )
    .map_err(|e| {
        // A pkcs11: URI may hold the PIN: the error shows it without.
        let text = path.to_string_lossy();
        let shown = if varti_as4::security::pkcs11::is_pkcs11_uri(&text) {
            varti_as4::security::pkcs11::Pkcs11Uri::parse(&text)
                .map(|u| PathBuf::from(u.redacted()))
                .unwrap_or_else(|_| PathBuf::from("pkcs11:(unparsable URI)"))
        } else {
            path.to_path_buf()
        };
        credential(what, &shown, e)
    })
}

pub(crate) fn read_certs(what: &str, path: &Path) -> Result<Vec<X509>, StartError> {
    let pem = std::fs::read(path).map_err(|e| credential(what, path, e))?;
    let certs = X509::stack_from_pem(&pem)
        .map_err(|e| credential(what, path, format!("not PEM certificates ({e})")))?;
    if certs.is_empty() {
        return Err(credential(what, path, "holds no certificate"));
    }
    Ok(certs)
}

pub(crate) fn read_cert(what: &str, path: &Path) -> Result<X509, StartError> {
    Ok(read_certs(what, path)?.remove(0))
}
