//! What can change while the access point runs, and reloading it without a restart.
//!
//! A [`Snapshot`] is the *set* an exchange works with: the PModes, our keys, the partners'
//! certificates (and the outbound client built for their TLS settings), and the backend
//! clients. The access point holds the current one behind an `Arc`; every exchange takes
//! it once at its start ([`AccessPoint::current`]) and keeps it to the end, so a message in
//! flight finishes under the set it started with, whatever a reload does meanwhile.
//!
//! [`AccessPoint::reload`] (called on SIGHUP and by `POST /api/v1/admin/reload`) re-reads
//! everything through the [`ReloadSource`] the binary registered (the configuration file,
//! judged with the checks of `varti certs check`), builds a complete new snapshot with the
//! very code start-up uses ([`Snapshot::load`]), asks every registered [`ReloadHook`]
//! whether it can live with the new set, and only then swaps it in. Any error keeps the
//! old set, whole. Settings that only a restart can change (listeners, TLS server
//! certificate, store, sender, limits, retention, webhooks) are compared with the values in
//! force and reported as "needs restart" — never silently ignored. Every reload, applied or
//! refused, is appended to the audit trail with the SHA-256 of every file read.
//!
//! Later features hook in with [`AccessPoint::on_reload`]: key rollover (#17) checks and
//! applies the new keys, a discovery cache (#16) drops what the new PModes contradict.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use openssl::x509::X509;
use serde::Serialize;
use time::OffsetDateTime;
use varti_as4::inbound::ReceivePolicy;
use varti_as4::message::mime::hex;
use varti_as4::pmode::model::{Leg, PModeSet, Party};

use varti_store::AuditOutcome;

use crate::access_point::{
    check_own_keys, read_cert, read_certs, read_key, register_partner, LocalIdentity, PartnerCerts,
    StartError,
};
use crate::audit::LOCAL_ACTOR;
use crate::client::{ClientSettings, OutboundClient};
use crate::config::{ApiClient, Settings};
use crate::submit::leg_key;
use crate::AccessPoint;

/// The set of agreements, keys and clients one exchange works with (see the module
/// documentation). Built by start-up and by every accepted reload; never changed after.
pub struct Snapshot {
    /// The settings it was loaded from. Only the reloadable parts (PModes directory,
    /// identity, backend clients) are in force from a reload; the rest stays as at start-up
    /// ([`AccessPoint::settings`](crate::AccessPoint::settings)).
    pub settings: Settings,
    /// The agreements.
    pub pmodes: PModeSet,
    /// Our keys (and the partners' signing certificates).
    pub identity: LocalIdentity,
    /// Partners' certificates by party name.
    pub partners: HashMap<String, PartnerCerts>,
    /// The outbound HTTP client, with every partner's TLS settings from these PModes.
    pub client: OutboundClient,
    /// Every file the set was read from, with its SHA-256 (private keys excepted).
    pub files: Vec<FileHash>,
    /// 1 at start-up, one more with each applied reload.
    pub generation: u64,
    /// The dynamic parties by name, each with its discoverer and answer cache (new with
    /// each snapshot: a reload starts with an empty cache).
    pub(crate) dynamic: HashMap<String, crate::discovery::DynamicParty>,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("generation", &self.generation)
            .field("party", &self.identity.party)
            .field("legs", &self.pmodes.legs.len())
            .finish_non_exhaustive()
    }
}

/// A file read into a set, and its SHA-256.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileHash {
    /// What it is (`config`, `pmode`, `identity.signing_cert`, `crl of party x`, …).
    pub role: String,
    /// Where it is.
    pub path: PathBuf,
    /// Its SHA-256 (hex), or `None` when it could not be read.
    pub sha256: Option<String>,
}

impl FileHash {
    /// Reads `path` and hashes it. The path is made absolute (an auditor reading the trail
    /// later has no working directory to resolve a relative one against).
    pub fn of(role: impl Into<String>, path: &Path) -> FileHash {
        FileHash {
            role: role.into(),
            path: std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned()),
            sha256: std::fs::read(path)
                .ok()
                .map(|b| hex(&openssl::sha::sha256(&b))),
        }
    }
}

/// `[identity] next_signing_*`: all three or none.
fn next_signing(config: &Settings) -> Result<Option<varti_as4::receive::NextSigning>, StartError> {
    let id = &config.identity;
    let (key, cert, from) = match (&id.next_signing_key, &id.next_signing_cert, &id.next_signing_from) {
        (None, None, None) => return Ok(None),
        (Some(k), Some(c), Some(f)) => (k, c, f),
        _ => {
            return Err(StartError::Credential {
                what: "identity.next_signing_key".to_owned(),
                path: PathBuf::from("(configuration)"),
                problem: "a key rollover needs next_signing_key, next_signing_cert and next_signing_from together".to_owned(),
            })
        }
    };
    let from = time::OffsetDateTime::parse(from, &time::format_description::well_known::Rfc3339)
        .map_err(|e| StartError::Credential {
            what: "identity.next_signing_from".to_owned(),
            path: PathBuf::from(from),
            problem: format!("not an RFC 3339 instant like 2027-03-01T00:00:00Z ({e})"),
        })?;
    let cert = read_cert("identity.next_signing_cert", cert)?;
    let key = read_key("identity.next_signing_key", key, config, Some(&cert))?;
    let public = cert.public_key().ok();
    let fits = public.is_some_and(|p| {
        varti_as4::security::private_key::proves_possession(&key, &p).unwrap_or(false)
    });
    if !fits {
        return Err(StartError::Credential {
            what: "identity.next_signing_key".to_owned(),
            path: id.next_signing_cert.clone().unwrap_or_default(),
            problem: "the next signing key does not belong to next_signing_cert".to_owned(),
        });
    }
    Ok(Some(varti_as4::receive::NextSigning::new(key, cert, from)))
}

impl Snapshot {
    /// Loads the PModes and keys `settings` name, with every check start-up makes:
    /// PModes without errors, our party among them, our keys readable and strong enough,
    /// the partners' certificates readable, their TLS settings usable.
    pub(crate) fn load(
        settings: Settings,
        allow_plain_http: bool,
        generation: u64,
    ) -> Result<Snapshot, StartError> {
        let config = &settings;
        let (pmodes, diags) = varti_as4::pmode::files::load_dir(&config.pmodes_dir);
        let errors: Vec<_> = diags.iter().filter(|d| d.is_error()).collect();
        if let Some(first) = errors.first() {
            return Err(StartError::PModes {
                dir: config.pmodes_dir.display().to_string(),
                count: errors.len(),
                first: format!(
                    "{}:{}:{}: {}",
                    first.location.file.display(),
                    first.location.line,
                    first.location.column,
                    first.message
                ),
            });
        }
        let id = &config.identity;
        if pmodes.party(&id.party).is_none() {
            return Err(StartError::UnknownParty(id.party.clone()));
        }
        let signing_cert = read_cert("identity.signing_cert", &id.signing_cert)?;
        let encryption_cert = read_cert("identity.encryption_cert", &id.encryption_cert)?;
        let next_signing = next_signing(config)?;
        let mut identity = LocalIdentity {
            party: id.party.clone(),
            signing_key: read_key(
                "identity.signing_key",
                &id.signing_key,
                config,
                Some(&signing_cert),
            )?,
            signing_cert,
            encryption_key: read_key(
                "identity.encryption_key",
                &id.encryption_key,
                config,
                Some(&encryption_cert),
            )?,
            encryption_cert,
            trust_anchors: id
                .trust_anchors
                .iter()
                .map(|p| read_certs("identity.trust_anchors", p))
                .collect::<Result<Vec<_>, _>>()?
                .into_iter()
                .flatten()
                .collect::<Vec<X509>>(),
            partner_signing_certs: HashMap::new(),
            partner_next_signing_certs: HashMap::new(),
            next_signing,
            dynamic_anchors: HashMap::new(),
        };
        // A signing key that does not belong to its certificate would sign messages every
        // partner refuses: caught here, once, rather than on each message (the signer
        // does not verify its own signatures).
        if let Ok(public) = identity.signing_cert.public_key() {
            match varti_as4::security::private_key::proves_possession(
                &identity.signing_key,
                &public,
            ) {
                Ok(true) => {}
                Ok(false) => {
                    let problem = format!(
                        "it does not belong to identity.signing_cert ({}): configure the key \
                         and certificate of one pair",
                        id.signing_cert.display()
                    );
                    return Err(StartError::Credential {
                        what: "identity.signing_key".to_owned(),
                        path: id.signing_key.clone(),
                        problem,
                    });
                }
                // A token that is away for now: the signatures fail (and are retried)
                // until it is back, as they would have anyway.
                Err(e) => {
                    tracing::warn!(error = %e, "cannot check now that identity.signing_key belongs to identity.signing_cert")
                }
            }
        }
        let exception = pmodes
            .party(&id.party)
            .and_then(|p| p.allow_weak_keys.as_deref());
        check_own_keys(config, &identity, allow_plain_http, exception)?;
        let mut partners = HashMap::new();
        let mut dynamic = HashMap::new();
        let mut client_settings = ClientSettings::from(&config.client);
        client_settings.allow_plain_http = allow_plain_http;
        let client = OutboundClient::new(client_settings);
        for party in &pmodes.parties {
            let certs = PartnerCerts {
                signing: party
                    .signing_cert
                    .as_deref()
                    .map(|p| read_cert(&format!("signing_cert of party {}", party.name), p))
                    .transpose()?,
                encryption: party
                    .encryption_cert
                    .as_deref()
                    .map(|p| read_cert(&format!("encryption_cert of party {}", party.name), p))
                    .transpose()?,
            };
            if let Some(signing) = &certs.signing {
                identity
                    .partner_signing_certs
                    .insert(party.name.clone(), signing.clone());
            }
            if let Some(next) = &party.next_signing_cert {
                let next = read_cert(&format!("next_signing_cert of party {}", party.name), next)?;
                identity
                    .partner_next_signing_certs
                    .insert(party.name.clone(), next);
            }
            partners.insert(party.name.clone(), certs);
            if let Some(settings) = party.discovery.as_ref().filter(|_| party.name != id.party) {
                let found = crate::discovery::DynamicParty::load(settings).map_err(|problem| {
                    StartError::Discovery {
                        partner: party.name.clone(),
                        problem,
                    }
                })?;
                identity
                    .dynamic_anchors
                    .insert(party.name.clone(), found.ap_anchors().to_vec());
                dynamic.insert(party.name.clone(), found);
            }
            // Only partners we push to need TLS client settings.
            if party.name != identity.party
                && (party.endpoint.is_some() || party.discovery.is_some())
            {
                register_partner(&client, config, party)?;
            }
        }
        let files = files_of(config, &pmodes);
        Ok(Snapshot {
            settings,
            pmodes,
            identity,
            partners,
            client,
            files,
            generation,
            dynamic,
        })
    }

    /// The backend API's clients.
    pub fn clients(&self) -> &[ApiClient] {
        &self.settings.clients
    }

    /// The leg recorded as `key` (see [`leg_key`]), if these PModes have it.
    pub fn leg(&self, key: &str) -> Option<&Leg> {
        self.pmodes.legs.iter().find(|l| leg_key(l) == key)
    }

    /// The party on the other side of `leg` from us (`None` if we are on neither side, or
    /// the leg names several parties there and `hint` picks none).
    pub fn counterpart<'a>(&'a self, leg: &'a Leg, hint: Option<&str>) -> Option<&'a Party> {
        let me = &self.identity.party;
        let side = if leg.from.parties.iter().any(|p| p == me) {
            &leg.to
        } else {
            &leg.from
        };
        let names: Vec<&String> = side.parties.iter().filter(|p| *p != me).collect();
        let name = match hint {
            Some(h) => names.into_iter().find(|n| {
                n.as_str() == h
                    || self
                        .pmodes
                        .party(n)
                        .is_some_and(|p| p.ids.iter().any(|id| id.value == h))
            })?,
            None => names.first().copied().or_else(|| {
                // A leg between us and ourselves (loopback tests).
                side.parties.iter().find(|p| *p == me)
            })?,
        };
        self.pmodes.party(name)
    }

    /// The receive policy of `leg` for a message from `partner`, at `now`
    /// ([`LocalIdentity::receive_policy`]), spooling into `spool_dir`.
    pub fn receive_policy(
        &self,
        leg: &Leg,
        partner: &Party,
        now: OffsetDateTime,
        spool_dir: &Path,
    ) -> ReceivePolicy {
        self.identity
            .receive_policy(leg, partner, now, Some(spool_dir))
    }
}

/// Every file a set is read from (private keys excepted: a key is identified by its
/// certificate), in a stable order.
fn files_of(settings: &Settings, pmodes: &PModeSet) -> Vec<FileHash> {
    let mut files = Vec::new();
    if let Ok(entries) = std::fs::read_dir(&settings.pmodes_dir) {
        let mut paths: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "toml") && p.is_file())
            .collect();
        paths.sort();
        files.extend(paths.iter().map(|p| FileHash::of("pmode", p)));
    }
    let id = &settings.identity;
    files.push(FileHash::of("identity.signing_cert", &id.signing_cert));
    files.push(FileHash::of(
        "identity.encryption_cert",
        &id.encryption_cert,
    ));
    for anchor in &id.trust_anchors {
        files.push(FileHash::of("identity.trust_anchors", anchor));
    }
    for party in &pmodes.parties {
        let name = &party.name;
        if let Some(p) = &party.signing_cert {
            files.push(FileHash::of(format!("signing_cert of party {name}"), p));
        }
        if let Some(p) = &party.encryption_cert {
            files.push(FileHash::of(format!("encryption_cert of party {name}"), p));
        }
        if let Some(ca) = party.tls.as_ref().and_then(|t| t.trusted_ca.as_ref()) {
            files.push(FileHash::of(format!("tls.trusted_ca of party {name}"), ca));
        }
        for crl in &party.crls {
            files.push(FileHash::of(format!("crl of party {name}"), crl));
        }
    }
    files
}

/// What a [`ReloadSource`] re-read: the settings, and the files it read them from (the
/// configuration file) with their hashes.
#[derive(Debug, Clone)]
pub struct ReloadInput {
    /// The access point's settings, as the configuration file now says.
    pub settings: Settings,
    /// The files the source read.
    pub files: Vec<FileHash>,
    /// What the source found changed that only a restart applies (parts of the file the
    /// access point does not see: listeners, the store, features' sections).
    pub needs_restart: Vec<String>,
}

/// How the access point re-reads its settings on a reload: registered by the binary,
/// which knows the configuration file ([`AccessPoint::set_reload_source`]). It judges what
/// it read like the binary's own checks do (`varti certs check`) and returns every error.
pub type ReloadSource = Arc<dyn Fn() -> Result<ReloadInput, Vec<String>> + Send + Sync>;

/// A feature that takes part in reloads ([`AccessPoint::on_reload`]).
pub trait ReloadHook: Send + Sync {
    /// The feature's name in reports.
    fn name(&self) -> &str;
    /// Whether the feature can work with `next`; an error refuses the whole reload (the
    /// old set stays). Must not change anything.
    fn check(&self, next: &Snapshot) -> Result<(), Vec<String>> {
        let _ = next;
        Ok(())
    }
    /// `current` is now in force.
    fn applied(&self, current: &Arc<Snapshot>) {
        let _ = current;
    }
}

/// What a reload did: printed by `varti reload`, answered by the API, audited.
#[derive(Debug, Clone, Serialize)]
pub struct ReloadReport {
    /// True when the new set is in force; false when it was refused (the old one stays).
    pub applied: bool,
    /// The generation in force afterwards.
    pub generation: u64,
    /// What changed (files, backend clients, our party), one line each.
    pub changes: Vec<String>,
    /// What differs from the running values but only a restart applies.
    pub needs_restart: Vec<String>,
    /// Why the reload was refused.
    pub errors: Vec<String>,
    /// Every file read, with its SHA-256.
    pub files: Vec<FileHash>,
}

/// The differences a reload from `old` (read from `old_files`) to `new` (from
/// `new_files`) makes: files and backend clients.
pub(crate) fn changes(
    old_files: &[FileHash],
    old: &Snapshot,
    new: &Snapshot,
    new_files: &[FileHash],
) -> Vec<String> {
    let mut out = Vec::new();
    let key = |f: &FileHash| (f.role.clone(), f.path.clone());
    let before: BTreeMap<_, _> = old_files.iter().map(|f| (key(f), &f.sha256)).collect();
    let after: BTreeMap<_, _> = new_files.iter().map(|f| (key(f), &f.sha256)).collect();
    for ((role, path), hash) in &after {
        match before.get(&(role.clone(), path.clone())) {
            None => out.push(format!("added {role} {}", path.display())),
            Some(old) if old != hash => out.push(format!("changed {role} {}", path.display())),
            Some(_) => {}
        }
    }
    for (role, path) in before.keys() {
        if !after.contains_key(&(role.clone(), path.clone())) {
            out.push(format!("removed {role} {}", path.display()));
        }
    }
    if old.identity.party != new.identity.party {
        out.push(format!(
            "identity.party: {} -> {}",
            old.identity.party, new.identity.party
        ));
    }
    let by_name = |s: &Snapshot| -> BTreeMap<String, ApiClient> {
        s.clients()
            .iter()
            .map(|c| (c.name.clone(), c.clone()))
            .collect()
    };
    let (a, b) = (by_name(old), by_name(new));
    for (name, c) in &b {
        match a.get(name) {
            None => out.push(format!("added backend client {name}")),
            Some(o) => {
                let mut what = Vec::new();
                if o.token_sha256 != c.token_sha256 {
                    what.push("token");
                }
                if o.admin != c.admin {
                    what.push("admin");
                }
                if o.services != c.services {
                    what.push("services");
                }
                if !what.is_empty() {
                    out.push(format!(
                        "changed backend client {name} ({})",
                        what.join(", ")
                    ));
                }
            }
        }
    }
    for name in a.keys().filter(|n| !b.contains_key(*n)) {
        out.push(format!("removed backend client {name}"));
    }
    out
}

/// What `next` sets differently from the values in force (`running`, the start-up
/// settings) that only a restart applies.
pub(crate) fn needs_restart_of(running: &Settings, next: &Settings) -> Vec<String> {
    let mut out = Vec::new();
    let mut differs = |what: &str, same: bool| {
        if !same {
            out.push(what.to_owned());
        }
    };
    differs("data_dir", running.data_dir == next.data_dir);
    differs("[tls]", running.tls == next.tls);
    differs("[client]", running.client == next.client);
    differs("[sender]", running.sender == next.sender);
    differs("[limits]", running.limits == next.limits);
    differs("[retention]", running.retention == next.retention);
    let hooks = |s: &Settings| -> BTreeMap<String, (Option<String>, Option<String>)> {
        s.clients
            .iter()
            .filter(|c| c.webhook_url.is_some())
            .map(|c| {
                (
                    c.name.clone(),
                    (c.webhook_url.clone(), c.webhook_secret.clone()),
                )
            })
            .collect()
    };
    differs(
        "webhooks of [[backend.clients]]",
        hooks(running) == hooks(next),
    );
    out
}

impl AccessPoint {
    /// Registers how [`reload`](Self::reload) re-reads the settings. The binary does this
    /// once at start-up; without a source a reload is refused with an explanation.
    pub fn set_reload_source(&self, source: ReloadSource) {
        *self
            .reload_source
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Some(source);
    }

    /// Has `hook` check every new set before it is swapped in and hear when it is.
    pub fn on_reload(&self, hook: Arc<dyn ReloadHook>) {
        self.reload_hooks
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(hook);
    }

    /// Re-reads and re-checks the whole set and swaps it in, or keeps the old one on any
    /// error (see the [module documentation](self)). `actor` is who asked (`local` for
    /// SIGHUP, a backend client's name for the API), for the audit trail. Blocking: file
    /// reads, key checks and a store write.
    pub fn reload(&self, actor: &str) -> ReloadReport {
        let _one_at_a_time = self.reloading.lock().unwrap_or_else(|e| e.into_inner());
        let old = self.current();
        let refuse = |errors: Vec<String>, files: Vec<FileHash>, needs_restart| ReloadReport {
            applied: false,
            generation: old.generation,
            changes: Vec::new(),
            needs_restart,
            errors,
            files,
        };
        let source = self
            .reload_source
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let report = match source {
            None => refuse(
                vec![
                    "this access point was started without a configuration to reload from"
                        .to_owned(),
                ],
                Vec::new(),
                Vec::new(),
            ),
            Some(source) => match source() {
                Err(errors) => refuse(errors, Vec::new(), Vec::new()),
                Ok(input) => self.try_swap(&old, input),
            },
        };
        let outcome = if report.applied {
            AuditOutcome::Ok
        } else {
            AuditOutcome::Refused
        };
        if report.applied {
            tracing::info!(
                actor,
                generation = report.generation,
                changes = ?report.changes,
                needs_restart = ?report.needs_restart,
                "reloaded"
            );
        } else {
            tracing::error!(
                actor,
                errors = ?report.errors,
                "reload refused; the previous PModes, certificates and clients stay in force"
            );
        }
        let details = serde_json::json!({
            "generation": report.generation,
            "changes": report.changes,
            "needs_restart": report.needs_restart,
            "errors": report.errors,
            "files": file_hashes(&report.files),
        });
        // The reload stands even if the trail cannot take it (the error is logged).
        let _ = self.audit(actor, "config.reload", "", outcome, details);
        report
    }

    /// Builds and checks the set `input` describes and swaps it in; the report says how
    /// it went.
    fn try_swap(&self, old: &Arc<Snapshot>, input: ReloadInput) -> ReloadReport {
        let mut needs_restart = input.needs_restart;
        needs_restart.extend(needs_restart_of(&self.settings, &input.settings));
        let mut files = input.files;
        let next = match Snapshot::load(input.settings, self.allow_plain_http, old.generation + 1) {
            Ok(next) => next,
            Err(e) => {
                return ReloadReport {
                    applied: false,
                    generation: old.generation,
                    changes: Vec::new(),
                    needs_restart,
                    errors: vec![e.to_string()],
                    files,
                }
            }
        };
        files.extend(next.files.iter().cloned());
        let hooks = self
            .reload_hooks
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut errors = Vec::new();
        for hook in &hooks {
            if let Err(found) = hook.check(&next) {
                errors.extend(found.into_iter().map(|e| format!("{}: {e}", hook.name())));
            }
        }
        if !errors.is_empty() {
            return ReloadReport {
                applied: false,
                generation: old.generation,
                changes: Vec::new(),
                needs_restart,
                errors,
                files,
            };
        }
        // The puller's loops are started once, one per channel (see `pull::run`).
        if crate::pull::pull_channels(old) != crate::pull::pull_channels(&next) {
            needs_restart.push("the pull channels (one-way/pull legs we pull on)".to_owned());
        }
        let mut in_force = self
            .files_in_force
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let changes = changes(&in_force, old, &next, &files);
        *in_force = files.clone();
        drop(in_force);
        let next = Arc::new(next);
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = next.clone();
        for hook in &hooks {
            hook.applied(&next);
        }
        ReloadReport {
            applied: true,
            generation: next.generation,
            changes,
            needs_restart,
            errors: Vec::new(),
            files,
        }
    }

    /// Audits the start-up load of the set in force, with `extra` files (the configuration
    /// file) and their hashes. Blocking.
    pub fn audit_startup(&self, extra: &[FileHash]) {
        let current = self.current();
        let files: Vec<FileHash> = extra.iter().chain(&current.files).cloned().collect();
        *self
            .files_in_force
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = files.clone();
        let _ = self.audit(
            LOCAL_ACTOR,
            "config.load",
            "",
            AuditOutcome::Ok,
            serde_json::json!({
                "generation": current.generation,
                "party": current.identity.party,
                "files": file_hashes(&files),
            }),
        );
    }
}

/// `{role: {path: sha256}}`, the shape of `files` in audit details.
fn file_hashes(files: &[FileHash]) -> serde_json::Value {
    let mut out = serde_json::Map::new();
    for f in files {
        let entry = out
            .entry(f.role.clone())
            .or_insert_with(|| serde_json::json!({}));
        entry[f.path.display().to_string()] = match &f.sha256 {
            Some(h) => serde_json::json!(h),
            None => serde_json::json!("unreadable"),
        };
    }
    serde_json::Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use varti_store::AuditFilter;

    use crate::test_support::access_point;

    #[test]
    fn a_signing_key_of_another_certificate_is_refused_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let err = crate::test_support::open_access_point(dir.path(), |s| {
            s.identity.signing_key = repo.join("certs/varti-c/sign.key.pem");
        })
        .map(|_| ())
        .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("identity.signing_key"), "{text}");
        assert!(
            text.contains("does not belong to identity.signing_cert"),
            "{text}"
        );
    }

    struct Refuse;
    impl ReloadHook for Refuse {
        fn name(&self) -> &str {
            "key rollover"
        }
        fn check(&self, next: &Snapshot) -> Result<(), Vec<String>> {
            Err(vec![format!(
                "generation {} is not wanted",
                next.generation
            )])
        }
    }

    /// `[identity] next_signing_*`: the access point signs with the next key from its
    /// instant on, by its own clock, without a restart or reload; a next key that is not
    /// its certificate's is refused at start-up.
    #[test]
    fn our_signing_key_rolls_over_at_its_instant_by_the_access_points_clock() {
        use std::time::Duration;
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let next = |key: &str, cert: &str| {
            let (key, cert) = (repo.join(key), repo.join(cert));
            move |s: &mut Settings| {
                s.identity.next_signing_key = Some(key);
                s.identity.next_signing_cert = Some(cert);
                s.identity.next_signing_from = Some("2027-01-01T01:00:00Z".to_owned());
            }
        };
        let dir = tempfile::tempdir().unwrap();
        let (ap, _) = crate::test_support::open_access_point(
            dir.path(),
            next("certs/varti-c/sign.key.pem", "certs/varti-c/sign.cert.pem"),
        )
        .unwrap();
        let clock = crate::Clock::manual(time::macros::datetime!(2027-01-01 0:00 UTC));
        let ap = ap.with_clock(clock.clone());
        let signer = |ap: &AccessPoint| {
            let snap = ap.current();
            let der = snap.identity.current_signing().1.to_der().unwrap();
            der
        };
        let der = |p: &str| {
            openssl::x509::X509::from_pem(&std::fs::read(repo.join(p)).unwrap())
                .unwrap()
                .to_der()
                .unwrap()
        };
        let (old, new) = (
            der("certs/varti-a/sign.cert.pem"),
            der("certs/varti-c/sign.cert.pem"),
        );
        assert!(signer(&ap) == old, "before the instant: the configured key");
        clock.advance(Duration::from_secs(3599));
        assert!(
            signer(&ap) == old,
            "one second before: still the configured key"
        );
        clock.advance(Duration::from_secs(1));
        assert!(signer(&ap) == new, "at the instant: the next key");
        clock.advance(Duration::from_secs(3600));
        assert!(signer(&ap) == new, "and from then on");

        let dir = tempfile::tempdir().unwrap();
        let err = crate::test_support::open_access_point(
            dir.path(),
            next("certs/varti-c/sign.key.pem", "certs/varti-a/sign.cert.pem"),
        )
        .map(|_| ())
        .unwrap_err();
        assert!(err.to_string().contains("does not belong"), "{err}");

        // Configured on a running access point: `varti reload` picks it up, no restart.
        let dir = tempfile::tempdir().unwrap();
        let (ap, settings) = crate::test_support::open_access_point(dir.path(), |_| {}).unwrap();
        let clock = crate::Clock::manual(time::macros::datetime!(2027-01-01 0:00 UTC));
        let ap = ap.with_clock(clock.clone());
        let add = next("certs/varti-c/sign.key.pem", "certs/varti-c/sign.cert.pem");
        ap.set_reload_source(Arc::new(move || {
            let mut s = settings.clone();
            add.clone()(&mut s);
            Ok(ReloadInput {
                settings: s,
                files: Vec::new(),
                needs_restart: Vec::new(),
            })
        }));
        let r = ap.reload("t");
        assert!(r.applied, "{r:?}");
        assert!(
            signer(&ap) == old,
            "reloaded before the instant: the configured key"
        );
        clock.advance(Duration::from_secs(3600));
        assert!(signer(&ap) == new, "at the instant: the next key");
    }

    #[test]
    fn a_reload_swaps_the_whole_set_or_nothing_and_in_flight_snapshots_stay() {
        let dir = tempfile::tempdir().unwrap();
        let (ap, settings) = access_point(dir.path());
        let in_flight = ap.current();
        assert_eq!(in_flight.generation, 1);

        // Without a source: refused, explained.
        let r = ap.reload("t");
        assert!(!r.applied);
        assert!(r.errors[0].contains("without a configuration"), "{r:?}");

        // The source's own errors (the binary's `certs check`): refused, listed.
        ap.set_reload_source(Arc::new(|| Err(vec!["x.pem: expired".to_owned()])));
        let r = ap.reload("t");
        assert_eq!(
            (r.applied, r.errors.clone()),
            (false, vec!["x.pem: expired".to_owned()])
        );
        assert_eq!(ap.current().generation, 1);

        // A good set: in force; what an exchange took before keeps its own.
        let good = settings.clone();
        ap.set_reload_source(Arc::new(move || {
            let mut s = good.clone();
            s.retention.payload_days += 1;
            Ok(ReloadInput {
                settings: s,
                files: Vec::new(),
                needs_restart: Vec::new(),
            })
        }));
        let r = ap.reload("t");
        assert!(r.applied, "{r:?}");
        assert_eq!(r.generation, 2);
        assert!(r.changes.is_empty(), "{r:?}");
        assert_eq!(r.needs_restart, ["[retention]"]);
        assert_eq!(ap.current().generation, 2);
        assert_eq!(in_flight.generation, 1);
        assert!(!Arc::ptr_eq(&in_flight, &ap.current()));

        // A set that cannot start (PModes without our party): refused, old set kept.
        let mut bad = settings.clone();
        bad.identity.party = "nobody".into();
        ap.set_reload_source(Arc::new(move || {
            Ok(ReloadInput {
                settings: bad.clone(),
                files: Vec::new(),
                needs_restart: Vec::new(),
            })
        }));
        let r = ap.reload("t");
        assert!(!r.applied);
        assert!(r.errors[0].contains("nobody"), "{r:?}");
        assert_eq!(ap.current().generation, 2);

        // A hook's refusal keeps the old set too.
        let good = settings.clone();
        ap.set_reload_source(Arc::new(move || {
            Ok(ReloadInput {
                settings: good.clone(),
                files: Vec::new(),
                needs_restart: Vec::new(),
            })
        }));
        ap.on_reload(Arc::new(Refuse));
        let r = ap.reload("t");
        assert!(!r.applied);
        assert_eq!(r.errors, ["key rollover: generation 3 is not wanted"]);
        assert_eq!(ap.current().generation, 2);

        // Every attempt is in the audit trail.
        let trail = ap
            .store
            .list_audit(&AuditFilter::default())
            .unwrap()
            .entries;
        let outcomes: Vec<&str> = trail.iter().map(|e| e.outcome.as_str()).collect();
        assert_eq!(outcomes, ["refused", "refused", "ok", "refused", "refused"]);
        assert!(trail
            .iter()
            .all(|e| e.action == "config.reload" && e.actor == "t"));
    }
}
