//! One received user message, from its MIME package to the answer: accepted with its
//! receipt, or refused with the ebMS error signal to send back.
//!
//! [`accept`] runs the stages in order, and nothing is accepted until all of them passed:
//!
//! 1. **route** — the leg whose PMode matches the header ([`routing::find_inbound`]):
//!    `EBMS:0010` naming the nearest leg when none does, or when the message came the
//!    other way than the leg's binding says ([`Arrival`]: pushed on a pull leg, pulled on
//!    a push leg);
//! 2. **address** — the message must be for us (an `eb:To` id of our party) and from a
//!    party of the PModes (an `eb:From` id): `EBMS:0010` otherwise;
//! 3. **security** — the receive pipeline of [`inbound`] with the leg's policy for that
//!    partner ([`LocalIdentity::receive_policy`]): decrypt, verify, trust, decompress;
//! 4. **enforce** — the leg's message properties and payload profile
//!    ([`enforce`]); skipped for the ebMS test service, whose messages are never
//!    delivered;
//! 5. **receipt** — signed with non-repudiation information when the leg asks for it.
//!
//! The SOAP root is read once by the ebMS reader: the caller parses it (to tell a user
//! message from a signal) and hands the [`Envelope`] over.
//!
//! A refusal before the leg is known (stages 1–2) is answered with an unsigned error
//! signal: nothing says how to sign it. Later refusals are signed when the leg signs.
//! This module stores nothing and delivers nothing: that, the duplicate check and the
//! HTTP answer are the caller's.

use std::collections::HashMap;
use std::path::Path;

use openssl::x509::X509;
use time::OffsetDateTime;

use crate::compress;
use crate::error::{EbmsError, ErrorCode};
use crate::inbound::{self, key_transports_for, EarlyPart, ReceivePolicy, ReceivedMessage};
use crate::leg::{profile_of, token_reference_of};
use crate::message::mime::{content_id_from_href, MimePackage, PartTap, RootPart, TappedPart};
use crate::message::model::UserMessage;
use crate::message::soap::{self, Envelope};
use crate::outbound::{build_error_signal, build_receipt, security_fault};
use crate::pmode::enforce::{self, PartFacts};
use crate::pmode::model::{Binding, Leg, PModeSet, Party};
use crate::pmode::routing::{self, InboundKey};
use crate::security::encrypt::{open_encryption, Decryption};
use crate::security::private_key::PrivateKey;
use crate::security::sign::SigningIdentity;
use crate::spool::Spool;

/// This access point's own keys, and the partners' signing certificates: what receiving
/// (and signing receipts and signals) needs besides the PModes.
pub struct LocalIdentity {
    /// The party (a `[[party]]` name of the PModes) we are.
    pub party: String,
    /// The key that signs messages, receipts and signals.
    pub signing_key: PrivateKey,
    /// Its certificate.
    pub signing_cert: X509,
    /// The key partners encrypt to.
    pub encryption_key: PrivateKey,
    /// Its certificate.
    pub encryption_cert: X509,
    /// CA certificates partners' signing certificates must chain to (empty: each
    /// partner's own certificate is pinned).
    pub trust_anchors: Vec<X509>,
    /// Each partner's signing certificate, by party name (from its `signing_cert` in the
    /// PModes). A message from a party without one cannot be verified.
    pub partner_signing_certs: HashMap<String, X509>,
    /// Each partner's next signing certificate (a key rollover), by party name (its
    /// `next_signing_cert` in the PModes): accepted alongside the current one.
    pub partner_next_signing_certs: HashMap<String, X509>,
    /// Our next signing key and certificate (a key rollover), used from its instant on.
    pub next_signing: Option<NextSigning>,
    /// The AP anchors of each dynamic party's network, by party name: what the signing
    /// certificate of a sender accepted as that party (a dynamic initiator, or a
    /// discovered partner) must chain to.
    pub dynamic_anchors: HashMap<String, Vec<X509>>,
}

/// A signing key and certificate that replace the current ones from an instant on.
///
/// The switch is one-way and made by whoever holds the clock
/// ([`NextSigning::activate_if_due`]): the access point checks it each time it takes the
/// set in force, so signing moves to the new key at the configured instant without a
/// restart or reload.
#[derive(Debug, Clone)]
pub struct NextSigning {
    /// The next key.
    pub key: PrivateKey,
    /// Its certificate.
    pub cert: X509,
    /// From when it signs.
    pub from: OffsetDateTime,
    active: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl NextSigning {
    /// A next key, not yet in use.
    pub fn new(key: PrivateKey, cert: X509, from: OffsetDateTime) -> NextSigning {
        NextSigning {
            key,
            cert,
            from,
            active: Default::default(),
        }
    }

    /// Switches to the next key when `now` has reached its instant; `true` only for the
    /// call that switched.
    pub fn activate_if_due(&self, now: OffsetDateTime) -> bool {
        now >= self.from && !self.active.swap(true, std::sync::atomic::Ordering::SeqCst)
    }

    /// Whether the next key is the one in use.
    pub fn is_active(&self) -> bool {
        self.active.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl std::fmt::Debug for LocalIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalIdentity")
            .field("party", &self.party)
            .finish_non_exhaustive()
    }
}

impl LocalIdentity {
    /// The signing key and certificate in use: the next ones once their instant has
    /// passed ([`NextSigning::activate_if_due`]), the configured ones before.
    pub fn current_signing(&self) -> (&PrivateKey, &X509) {
        match &self.next_signing {
            Some(n) if n.is_active() => (&n.key, &n.cert),
            _ => (&self.signing_key, &self.signing_cert),
        }
    }

    /// How we sign on `leg` (receipts, signals and messages): our signing key with the
    /// leg's profile and token reference.
    pub fn signing_identity(&self, leg: &Leg) -> SigningIdentity<'_> {
        let (key, certificate) = self.current_signing();
        SigningIdentity {
            profile: profile_of(leg.security.profile),
            key,
            certificate,
            token_reference: token_reference_of(leg.security.token_reference),
        }
    }

    /// The receive policy of `leg` for a message from `partner`, at `now`: the leg's
    /// profile, signature and encryption requirements and decompression cap; our
    /// decryption key; the partner's signing certificate as the only acceptable signer;
    /// our trust anchors (or, without any, the partner's certificate pinned); the
    /// partner's CRL files from the PModes. Payloads are spooled into `spool_dir` (`None`:
    /// the system temporary directory).
    pub fn receive_policy(
        &self,
        leg: &Leg,
        partner: &Party,
        now: OffsetDateTime,
        spool_dir: Option<&Path>,
    ) -> ReceivePolicy {
        let profile = profile_of(leg.security.profile);
        let mut policy = ReceivePolicy::strict(profile);
        policy.require_signature = leg.security.sign;
        policy.require_encryption = leg.security.encrypt;
        policy.decryption = Some((self.encryption_key.clone(), self.encryption_cert.clone()));
        policy.key_transports = key_transports_for(profile);
        let partner_cert = self.partner_signing_certs.get(&partner.name).cloned();
        let next_cert = self.partner_next_signing_certs.get(&partner.name).cloned();
        policy.partner_certificates = partner_cert.iter().chain(&next_cert).cloned().collect();
        // The signature must be the sending party's own (a shared CA is not enough); a party
        // without a signing certificate in the PModes cannot be verified at all. During a
        // rollover its next certificate is its own too.
        policy.expected_signer = partner_cert.clone();
        policy.next_expected_signer = next_cert.clone();
        policy.trust_anchors = if self.trust_anchors.is_empty() {
            partner_cert.into_iter().chain(next_cert).collect()
        } else {
            self.trust_anchors.clone()
        };
        // Revocation: the CRL files the PMode names for this partner (none: not checked).
        policy.crl_files = partner.crls.clone();
        policy.at = now;
        policy.decompression_cap = leg.compression.max_decompressed_size;
        policy.spool_dir = spool_dir.map(Path::to_path_buf);
        policy
    }

    /// The refusal of the message `ref_to` with `error`: its error signal is signed when
    /// `leg` is given and signs, unsigned otherwise.
    pub fn refusal(&self, error: EbmsError, ref_to: Option<&str>, leg: Option<&Leg>) -> Refusal {
        let signer = leg
            .filter(|l| l.security.sign)
            .map(|l| self.signing_identity(l));
        Refusal::new(error, ref_to, signer.as_ref())
    }
}

/// A user message that passed every stage of [`accept`], with the receipt to answer.
#[derive(Debug)]
pub struct Accepted<'p> {
    /// What the security pipeline delivered: the verified envelope, the payloads (in
    /// temporary files in the spool directory), signature and encryption.
    pub message: ReceivedMessage,
    /// The user message's header.
    pub user_message: UserMessage,
    /// The leg it arrived on.
    pub leg: &'p Leg,
    /// The party that sent it.
    pub partner: &'p Party,
    /// Whether it is an ebMS test-service message (acknowledged, never delivered).
    pub test_service: bool,
    /// The receipt to answer with (a SOAP envelope): signed with non-repudiation
    /// information when the leg asks for it.
    pub receipt: Vec<u8>,
}

impl Accepted<'_> {
    /// The message's `eb:MessageId`.
    pub fn message_id(&self) -> &str {
        &self.user_message.message_info.message_id
    }
}

/// A refused message: the error and the error signal to answer with.
#[derive(Debug)]
pub struct Refusal {
    /// Why (attributed to the refused message when its id is known).
    pub error: EbmsError,
    /// The error signal (a SOAP envelope), or why even an unsigned one could not be built.
    /// A signal that should be signed but cannot be is sent unsigned.
    pub signal: Result<Vec<u8>, EbmsError>,
}

impl Refusal {
    /// The refusal of the message `ref_to` (when known) with `error`, its signal signed by
    /// `signer` when given.
    pub fn new(
        error: EbmsError,
        ref_to: Option<&str>,
        signer: Option<&SigningIdentity<'_>>,
    ) -> Refusal {
        let error = match ref_to {
            Some(id) => error.for_message(id),
            None => error,
        };
        let signal = build_error_signal(&error, None, signer)
            .or_else(|_| build_error_signal(&error, None, None))
            .map(String::into_bytes);
        Refusal { error, signal }
    }

    /// Whether the signal carries a WS-Security SOAP Fault
    /// ([`security_fault`]): Domibus and the eDelivery test bed expect such an answer
    /// with HTTP 500.
    pub fn is_security_fault(&self) -> bool {
        security_fault(&self.error).is_some()
    }
}

/// How a user message reached us; its leg's binding must say the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// Pushed to our MSH endpoint (a push or push-and-push leg).
    Pushed,
    /// In the answer to a PullRequest of ours (a pull leg).
    Pulled,
}

impl Arrival {
    fn fits(self, binding: Binding) -> bool {
        match self {
            Arrival::Pushed => binding != Binding::Pull,
            Arrival::Pulled => binding == Binding::Pull,
        }
    }
}

/// Accepts the user message in `package`, whose SOAP root the caller read into
/// `envelope`, for this access point (`identity`) under `pmodes`, at `now`; payloads are
/// spooled into `spool` (its directory best on the store's file system, its budget shared
/// by every reception in flight). See the [module documentation](self) for the stages
/// and how each refusal is signed.
pub fn accept<'p>(
    package: &MimePackage,
    envelope: Envelope,
    arrival: Arrival,
    pmodes: &'p PModeSet,
    identity: &LocalIdentity,
    now: OffsetDateTime,
    spool: &Spool,
) -> Result<Accepted<'p>, Refusal> {
    let Some(um) = envelope.messaging.user_message.clone() else {
        return Err(Refusal::new(
            EbmsError::new(
                ErrorCode::InvalidHeader,
                "eb:Messaging holds no UserMessage; only a user message can be accepted",
            ),
            None,
            None,
        ));
    };
    let id = um.message_info.message_id.clone();
    // Stages 1 and 2: route, for us, from a partner.
    let Admitted {
        leg,
        partner,
        test_service,
        policy,
    } = admit(&um, arrival, pmodes, identity, now, spool)?;
    // From here on the leg is known: its signals are signed when it signs.
    let refuse = |e: EbmsError| identity.refusal(e, Some(&id), Some(leg));

    // Stage 3: decrypt, verify, trust, decompress.
    let received = inbound::receive_envelope(package, envelope, &policy).map_err(refuse)?;

    // Stage 4: the leg's properties and payload profile.
    if !test_service {
        let facts: Vec<PartFacts<'_>> = received
            .payloads
            .iter()
            .map(|p| PartFacts {
                content_id: &p.content_id,
                mime_type: &p.mime_type,
                size: p.len,
            })
            .collect();
        enforce::check_properties(leg, um.properties.iter().map(|p| p.name.as_str()))
            .and_then(|()| enforce::check_payloads(leg, &facts))
            .map_err(refuse)?;
    }

    // Stage 5: the receipt.
    let signer = identity.signing_identity(leg);
    let receipt = build_receipt(&received, leg.receipt.non_repudiation.then_some(&signer))
        .map_err(refuse)?
        .into_bytes();
    Ok(Accepted {
        message: received,
        user_message: um,
        leg,
        partner,
        test_service,
        receipt,
    })
}

/// What stages 1 and 2 of [`accept`] found: the leg, the sending party and the policy the
/// security pipeline runs with.
struct Admitted<'p> {
    leg: &'p Leg,
    partner: &'p Party,
    test_service: bool,
    policy: ReceivePolicy,
}

/// Stages 1 and 2 of [`accept`] for the user message `um`: its leg, its sender, and the
/// receive policy for them (spooling into `spool`).
fn admit<'p>(
    um: &UserMessage,
    arrival: Arrival,
    pmodes: &'p PModeSet,
    identity: &LocalIdentity,
    now: OffsetDateTime,
    spool: &Spool,
) -> Result<Admitted<'p>, Refusal> {
    let id = &um.message_info.message_id;
    let unsigned = |e: EbmsError| Refusal::new(e, Some(id), None);

    // Stage 1: route; a sender no party of the PModes may be a dynamic initiator.
    let key = InboundKey::of(um);
    let (route, dynamic_sender) = match routing::find_inbound(pmodes, &key) {
        Ok(route) => (route, None),
        Err(e) => match routing::find_inbound_dynamic(pmodes, &key) {
            Some((route, party)) => (route, Some(party)),
            None => return Err(unsigned(e)),
        },
    };
    let leg = route.leg;
    if !arrival.fits(leg.binding) {
        return Err(unsigned(EbmsError::new(
            ErrorCode::ProcessingModeMismatch,
            format!(
                "the message was {} but its leg {} has the binding {}: a pull leg's messages \
                 are only taken by pulling, a push leg's only pushed",
                match arrival {
                    Arrival::Pushed => "pushed",
                    Arrival::Pulled => "pulled",
                },
                leg.label(),
                leg.binding.uri()
            ),
        )));
    }

    // Stage 2: for us, from a partner.
    let to = &um.party_info.to.party_ids;
    let ours = pmodes.party(&identity.party);
    if !to
        .iter()
        .any(|t| ours.is_some_and(|p| p.has_id(&t.value, t.type_.as_deref())))
    {
        return Err(unsigned(EbmsError::new(
            ErrorCode::ProcessingModeMismatch,
            format!(
                "the message is addressed to {:?}, but this access point is party `{}`; send it to the recipient's endpoint",
                to.iter().map(|t| t.value.as_str()).collect::<Vec<_>>(),
                identity.party
            ),
        )));
    }
    let from = &um.party_info.from.party_ids;
    let Some(partner) = dynamic_sender.or_else(|| {
        pmodes
            .parties
            .iter()
            .find(|p| from.iter().any(|f| p.has_id(&f.value, f.type_.as_deref())))
    }) else {
        return Err(unsigned(EbmsError::new(
            ErrorCode::ProcessingModeMismatch,
            "the sending party is not a [[party]] of this access point's PModes",
        )));
    };

    // From here on the leg is known: its signals are signed when it signs.
    let refuse = |e: EbmsError| identity.refusal(e, Some(id), Some(leg));

    // The policy of stage 3 (decrypt, verify, trust, decompress).
    let mut policy = identity.receive_policy(leg, partner, now, spool.dir.as_deref());
    if dynamic_sender.is_some() {
        // Any signer whose certificate chains to the network's AP anchors (none: refused).
        policy.require_signature = true;
        policy.partner_certificates = Vec::new();
        policy.expected_signer = None;
        policy.trust_anchors = identity
            .dynamic_anchors
            .get(&partner.name)
            .cloned()
            .unwrap_or_default();
        if policy.trust_anchors.is_empty() {
            return Err(refuse(EbmsError::new(
                ErrorCode::FailedAuthentication,
                format!(
                    "a dynamic initiator taken for party `{}` cannot be verified: its network has no AP anchors loaded",
                    partner.name
                ),
            )));
        }
    }
    policy.spool_budget = spool.budget.clone();
    policy.write_behind = spool.write_behind;
    policy.keep_decrypted = spool.keep_decrypted;
    Ok(Admitted {
        leg,
        partner,
        test_service: route.test_service,
        policy,
    })
}

/// Decrypts large encrypted payloads while their MIME body is read, for [`accept`] to
/// take over: a [`PartTap`] for [`MimePackage::read_http_body_tapped`].
///
/// Without it each such part is spilled to a temporary file as it arrives and, once the
/// body has ended, read back and decrypted into a second file. With it, the first
/// attachment that outgrows memory starts stages 1 and 2 of [`accept`] over the root
/// (which came first): a message that would be refused there is not touched, and is
/// refused as before by [`accept`]. Then the security header is opened with the leg's
/// policy, and every part it names is decrypted as it arrives ([`inbound`]'s
/// `EarlyPart`). Stage 3 of [`accept`] opens the header again, takes each outcome under
/// the key it recovers (a mismatch is refused) and goes on as if it had decrypted the
/// part itself: the same errors, the same signature, policy and trust checks after.
///
/// Build it with the same PModes, identity and spool as the [`accept`] it serves.
pub struct EarlyDecryption<'p> {
    arrival: Arrival,
    pmodes: &'p PModeSet,
    identity: &'p LocalIdentity,
    now: OffsetDateTime,
    spool: &'p Spool,
    /// The header opened for the leg's policy, once a part asked for it (`None` inside:
    /// nothing to decrypt early; such parts spill as before).
    opened: Option<Option<Opened>>,
}

/// What [`EarlyDecryption`] read of a message once: its security header opened for the
/// leg's policy, and how each payload part is compressed.
struct Opened {
    dec: Decryption,
    policy: ReceivePolicy,
    /// Each `PartInfo`'s Content-ID and whether it declares the part gzip-compressed (a
    /// declaration that cannot be read counts as not: [`accept`] will refuse it).
    compressed: Vec<(String, bool)>,
}

impl<'p> EarlyDecryption<'p> {
    /// A tap for a message arriving so, received with these settings.
    pub fn new(
        arrival: Arrival,
        pmodes: &'p PModeSet,
        identity: &'p LocalIdentity,
        now: OffsetDateTime,
        spool: &'p Spool,
    ) -> EarlyDecryption<'p> {
        EarlyDecryption {
            arrival,
            pmodes,
            identity,
            now,
            spool,
            opened: None,
        }
    }

    /// Stages 1 and 2 over the root, then the security header opened for the leg; `None`
    /// for any refusal or failure, which [`accept`] then reports as it always did.
    fn open(&self, root: &[u8]) -> Option<Opened> {
        let envelope = soap::parse_envelope(root).ok()?;
        let um = envelope.messaging.user_message.as_ref()?;
        let admitted = admit(
            um,
            self.arrival,
            self.pmodes,
            self.identity,
            self.now,
            self.spool,
        )
        .ok()?;
        let policy = admitted.policy;
        let (key, cert) = policy.decryption.as_ref()?;
        let header = std::str::from_utf8(root).ok()?;
        let dec = open_encryption(header, key, cert, &policy.key_transports).ok()?;
        let compressed = um
            .parts
            .iter()
            .filter_map(|part| {
                let cid = content_id_from_href(part.href.as_deref()?)?;
                let compressed = compress::part_info_compression(part).is_ok_and(|c| c.compressed);
                Some((cid, compressed))
            })
            .collect();
        Some(Opened {
            dec,
            policy,
            compressed,
        })
    }
}

impl PartTap for EarlyDecryption<'_> {
    fn take(
        &mut self,
        root: &RootPart,
        content_id: &str,
        head: &[u8],
    ) -> Option<Box<dyn TappedPart>> {
        if self.opened.is_none() {
            self.opened = Some(self.open(&root.content));
        }
        let opened = self.opened.as_ref()?.as_ref()?;
        let part = opened.dec.part_for(content_id)?;
        // Declared once only: a part named by two PartInfos is copied for each, so its
        // digest is not taken early.
        let mut declared = opened
            .compressed
            .iter()
            .filter(|(cid, _)| cid == content_id);
        let compressed = match (declared.next(), declared.next()) {
            (Some((_, compressed)), None) => *compressed,
            _ => false,
        };
        let mut early = EarlyPart::new(&opened.dec, part, &opened.policy, compressed);
        early.write(head);
        Some(Box::new(early))
    }
}

/// [`accept`] for a package whose SOAP root has not been read yet: reads it, then
/// accepts. A root the ebMS reader refuses is refused with an unsigned signal.
pub fn accept_package<'p>(
    package: &MimePackage,
    arrival: Arrival,
    pmodes: &'p PModeSet,
    identity: &LocalIdentity,
    now: OffsetDateTime,
    spool: &Spool,
) -> Result<Accepted<'p>, Refusal> {
    let envelope =
        soap::parse_envelope(&package.root().content).map_err(|e| Refusal::new(e, None, None))?;
    accept(package, envelope, arrival, pmodes, identity, now, spool)
}
