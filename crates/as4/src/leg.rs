//! A PMode leg applied to messages: the algorithm suite and token reference its security
//! settings name, the `eb:UserMessage` sent on it, and the policy it is sent with.
//!
//! This is the one place a [`SecurityProfileKind`] becomes a [`Profile`] (by the leg, by
//! the name a PMode file or a command line gives, or by the signature method a received
//! message uses), and the one place a leg's header values are put into a user message:
//! the running access point and `varti message seal` build their messages here.

use openssl::x509::X509;

use crate::error::{EbmsError, ErrorCode};
use crate::message::model::{
    AgreementRef, CollaborationInfo, MessageInfo, Party as EbParty, PartyId, PartyInfo, Property,
    Service, UserMessage, DEFAULT_MPC,
};
use crate::outbound::SendPolicy;
use crate::pmode::model::{Leg, Party, SecurityProfileKind, TokenReference};
use crate::security::private_key::KeyOperations;
use crate::security::profile::{Profile, AS4_1_15, AS4_2_0_ECDSA, AS4_2_0_EDDSA};
use crate::security::token::TokenReference as WsseTokenReference;

/// The algorithm suite of a PMode security profile.
pub fn profile_of(kind: SecurityProfileKind) -> &'static Profile {
    match kind {
        SecurityProfileKind::As4v1_15 => &AS4_1_15,
        SecurityProfileKind::As4v2Eddsa => &AS4_2_0_EDDSA,
        SecurityProfileKind::As4v2Ecdsa => &AS4_2_0_ECDSA,
    }
}

/// The algorithm suite called `name` in PMode files and on the command line
/// (`as4-1.15`, `as4-2.0-eddsa`, `as4-2.0-ecdsa`); `None` for any other name.
pub fn profile_named(name: &str) -> Option<&'static Profile> {
    SecurityProfileKind::from_name(name).map(profile_of)
}

/// The algorithm suite whose signature method is `uri` (a received `ds:SignatureMethod`);
/// `None` when no profile signs with it.
pub fn profile_signing_with(uri: &str) -> Option<&'static Profile> {
    SecurityProfileKind::ALL
        .into_iter()
        .map(profile_of)
        .find(|p| p.signature.uri() == uri)
}

/// The WS-Security token reference a PMode names. Sending with a PKIPath is not offered:
/// `bst-pkipath` signs with a plain BinarySecurityToken, which carries the same
/// certificate (receiving accepts both).
pub fn token_reference_of(t: TokenReference) -> WsseTokenReference {
    match t {
        TokenReference::Bst | TokenReference::BstPkiPath => WsseTokenReference::BinarySecurityToken,
        TokenReference::Ski => WsseTokenReference::SubjectKeyIdentifier,
        TokenReference::IssuerSerial => WsseTokenReference::IssuerSerial,
    }
}

/// The id `party` is named by on the wire: the one whose value is `preferred`, else its
/// first; `None` when the party has no id at all.
pub fn wire_party_id(party: &Party, preferred: &str) -> Option<PartyId> {
    party
        .ids
        .iter()
        .find(|i| i.value == preferred)
        .or_else(|| party.ids.first())
        .map(|i| PartyId {
            value: i.value.clone(),
            type_: i.id_type.clone(),
        })
}

/// What a user message on a leg says beyond what the leg fixes.
#[derive(Debug, Clone)]
pub struct MessageFields {
    /// MessageId, timestamp and RefToMessageId.
    pub info: MessageInfo,
    /// The sender's party id (see [`wire_party_id`]).
    pub from: PartyId,
    /// The receiver's party id.
    pub to: PartyId,
    /// `eb:Service`; `None`: the leg's.
    pub service: Option<String>,
    /// `eb:Action`; `None`: the leg's.
    pub action: Option<String>,
    /// `eb:ConversationId`.
    pub conversation_id: String,
    /// The message properties.
    pub properties: Vec<Property>,
}

/// The `eb:UserMessage` (without parts: [`send`](crate::outbound::send) adds one per
/// payload) that `fields` make on `leg`: the leg's MPC (left out when it is the default
/// one), roles, agreement (with the leg's `pmode_id`), service type, and the service and
/// action of the leg unless `fields` name others. The properties are not checked against
/// the leg here (see [`enforce`](crate::pmode::enforce)).
pub fn user_message(leg: &Leg, fields: MessageFields) -> UserMessage {
    UserMessage {
        mpc: (leg.mpc != DEFAULT_MPC).then(|| leg.mpc.clone()),
        message_info: fields.info,
        party_info: PartyInfo {
            from: EbParty {
                party_ids: vec![fields.from],
                role: leg.from.role.clone(),
            },
            to: EbParty {
                party_ids: vec![fields.to],
                role: leg.to.role.clone(),
            },
        },
        collaboration_info: CollaborationInfo {
            agreement_ref: leg.agreement.as_ref().map(|a| AgreementRef {
                value: a.value.clone(),
                type_: a.agreement_type.clone(),
                pmode: leg.pmode_id.clone(),
            }),
            service: Service {
                value: fields.service.unwrap_or_else(|| leg.service.value.clone()),
                type_: leg.service.service_type.clone(),
            },
            action: fields.action.unwrap_or_else(|| leg.action.clone()),
            conversation_id: fields.conversation_id,
        },
        properties: fields.properties,
        parts: Vec::new(),
    }
}

/// The policy a message on `leg` is sent with: signed by `key`/`certificate` with the
/// leg's profile and token reference, payloads encrypted for `receiver_certificate` when
/// the leg encrypts, compressed when the leg compresses (but for the media types it leaves
/// uncompressed).
///
/// `EBMS:0010` when the leg encrypts and no receiver certificate is given. A certificate
/// given for a leg that does not encrypt is not used.
pub fn send_policy<'a>(
    leg: &'a Leg,
    key: &'a dyn KeyOperations,
    certificate: &'a X509,
    receiver_certificate: Option<&'a X509>,
) -> Result<SendPolicy<'a>, EbmsError> {
    let encrypt_for = match (leg.security.encrypt, receiver_certificate) {
        (false, _) => None,
        (true, Some(c)) => Some(c),
        (true, None) => {
            return Err(EbmsError::new(
                ErrorCode::ProcessingModeMismatch,
                format!(
                    "leg {} encrypts, but the receiving party has no encryption certificate",
                    leg.label()
                ),
            ))
        }
    };
    Ok(SendPolicy {
        uncompressed_types: &leg.compression.uncompressed_types,
        ..SendPolicy::new(
            profile_of(leg.security.profile),
            token_reference_of(leg.security.token_reference),
            key,
            certificate,
            encrypt_for.map(|c| &**c),
            leg.compression.compress,
        )
    })
}
