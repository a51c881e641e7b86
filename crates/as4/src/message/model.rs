//! The ebMS3 header model: what `eb:Messaging` carries, as plain Rust values.
//!
//! The types follow the ebMS3 Core schema (`ebms-header-3_0-200704.xsd`) one to one,
//! so a header read by [`super::soap`] and written back says the same thing. Values
//! are kept as the strings found on the wire; where a value has a meaning the MSH acts
//! on (the timestamp, an error code, a severity) a typed view is offered beside it.
//!
//! Attributes named `type` in the schema are called `type_` here.

use std::fmt;

use time::{Date, Duration, Month, OffsetDateTime, PrimitiveDateTime, Time, UtcOffset};

use crate::error::{ErrorCode, Severity};

pub use crate::ns::{DS_NS, EBBP_NS, EBMS_NS, SOAP11_NS, SOAP12_NS, WSSE_NS, WSU_NS, XML_NS};

/// MEP: one-way (ebMS3 Core §2.2.3).
pub const MEP_ONE_WAY: &str =
    "http://docs.oasis-open.org/ebxml-msg/ebms/v3.0/ns/core/200704/oneWay";
/// MEP: two-way (ebMS3 Core §2.2.3).
pub const MEP_TWO_WAY: &str =
    "http://docs.oasis-open.org/ebxml-msg/ebms/v3.0/ns/core/200704/twoWay";
/// MEP binding: push (the AS4 default).
pub const BINDING_PUSH: &str = "http://docs.oasis-open.org/ebxml-msg/ebms/v3.0/ns/core/200704/push";
/// MEP binding: pull.
pub const BINDING_PULL: &str = "http://docs.oasis-open.org/ebxml-msg/ebms/v3.0/ns/core/200704/pull";
/// MEP binding: synchronous two-way.
pub const BINDING_SYNC: &str = "http://docs.oasis-open.org/ebxml-msg/ebms/v3.0/ns/core/200704/sync";
/// MEP binding: push and push (asynchronous two-way).
pub const BINDING_PUSH_AND_PUSH: &str =
    "http://docs.oasis-open.org/ebxml-msg/ebms/v3.0/ns/core/200704/pushAndPush";
/// MEP binding: push and pull.
pub const BINDING_PUSH_AND_PULL: &str =
    "http://docs.oasis-open.org/ebxml-msg/ebms/v3.0/ns/core/200704/pushAndPull";
/// MEP binding: pull and push.
pub const BINDING_PULL_AND_PUSH: &str =
    "http://docs.oasis-open.org/ebxml-msg/ebms/v3.0/ns/core/200704/pullAndPush";
/// The default message partition channel, meant when `mpc` is absent.
pub const DEFAULT_MPC: &str =
    "http://docs.oasis-open.org/ebxml-msg/ebms/v3.0/ns/core/200704/defaultMPC";
/// The ebMS test service (ebMS3 Core §5.2.2.9): acknowledged, never delivered.
pub const TEST_SERVICE: &str =
    "http://docs.oasis-open.org/ebxml-msg/ebms/v3.0/ns/core/200704/service";
/// The ebMS test action, used with [`TEST_SERVICE`].
pub const TEST_ACTION: &str = "http://docs.oasis-open.org/ebxml-msg/ebms/v3.0/ns/core/200704/test";
/// The default role, meant when a party's role is not otherwise agreed.
pub(crate) const ROLE_DEFAULT: &str =
    "http://docs.oasis-open.org/ebxml-msg/ebms/v3.0/ns/core/200704/defaultRole";
/// The initiator role of an MEP.
pub const ROLE_INITIATOR: &str =
    "http://docs.oasis-open.org/ebxml-msg/ebms/v3.0/ns/core/200704/initiator";
/// The responder role of an MEP.
pub const ROLE_RESPONDER: &str =
    "http://docs.oasis-open.org/ebxml-msg/ebms/v3.0/ns/core/200704/responder";
/// The EC eDelivery connectivity-test service (as Domibus configures it).
pub const EC_CONNECTIVITY_SERVICE: &str =
    "http://ec.europa.eu/e-delivery/services/connectivity-service";
/// The `type` of [`EC_CONNECTIVITY_SERVICE`].
pub const EC_CONNECTIVITY_SERVICE_TYPE: &str = "edelivery";
/// The action of the EC connectivity test.
pub const EC_CONNECTIVITY_ACTION: &str = "submitMessage";

/// The content of the `eb:Messaging` SOAP header block.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Messaging {
    /// The identifier signatures refer to: `wsu:Id` (what Varti writes), or, on read,
    /// the schema's own unqualified `id` attribute when `wsu:Id` is absent.
    pub id: Option<String>,
    /// The user message, if any (AS4 allows at most one per message).
    pub user_message: Option<UserMessage>,
    /// Signal messages (receipts, errors, pull requests), in document order.
    pub signals: Vec<SignalMessage>,
}

/// A timestamp that is not an `xsd:dateTime`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{lexical}` is not a valid xsd:dateTime ({why}); write it as YYYY-MM-DDThh:mm:ss[.fff][Z|±hh:mm], e.g. 2024-05-01T12:00:00.000Z")]
pub struct InvalidTimestamp {
    /// What was given.
    pub lexical: String,
    /// What is wrong with it.
    pub why: &'static str,
}

/// The ebMS3 timestamp: the instant and the exact lexical form it was written in.
///
/// Both are kept because the lexical form is what a signature covers and what an
/// operator recognises, while the instant is what the MSH compares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timestamp {
    instant: OffsetDateTime,
    lexical: String,
}

impl Timestamp {
    /// Parses an `xsd:dateTime` (ebMS3 Core §5.2.2.1). A value without a time zone
    /// is taken as UTC, which is what ebMS3 requires timestamps to be.
    pub fn parse(lexical: &str) -> Result<Timestamp, InvalidTimestamp> {
        let instant = parse_xsd_date_time(lexical).map_err(|why| InvalidTimestamp {
            lexical: lexical.to_owned(),
            why,
        })?;
        Ok(Timestamp {
            instant,
            lexical: lexical.to_owned(),
        })
    }

    /// A timestamp for an instant, written in UTC with milliseconds and `Z`.
    pub fn from_datetime(instant: OffsetDateTime) -> Timestamp {
        let utc = instant.to_offset(UtcOffset::UTC);
        let lexical = format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
            utc.year(),
            u8::from(utc.month()),
            utc.day(),
            utc.hour(),
            utc.minute(),
            utc.second(),
            utc.millisecond()
        );
        // Keep exactly what the lexical form says, so parse(lexical) == self.
        let instant = utc.replace_nanosecond(utc.millisecond() as u32 * 1_000_000);
        Timestamp {
            instant: instant.unwrap_or(utc),
            lexical,
        }
    }

    /// The current time.
    pub fn now() -> Timestamp {
        Timestamp::from_datetime(OffsetDateTime::now_utc())
    }

    /// The instant the timestamp denotes.
    pub fn instant(&self) -> OffsetDateTime {
        self.instant
    }

    /// The timestamp as written on the wire.
    pub fn as_str(&self) -> &str {
        &self.lexical
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.lexical)
    }
}

/// Parses the `xsd:dateTime` lexical space (XML Schema 1.0 §3.2.7):
/// `-?YYYY-MM-DDThh:mm:ss(.s+)?(Z|(+|-)hh:mm)?`, with `24:00:00` meaning the end of
/// the day. Checked field by field so that `2011-02-30` is refused.
fn parse_xsd_date_time(s: &str) -> Result<OffsetDateTime, &'static str> {
    let b = s.as_bytes();
    if b.first() == Some(&b'-') {
        return Err("years before 0001 are not supported");
    }
    let digits = |from: usize, n: usize| -> Result<u32, &'static str> {
        let part = b.get(from..from + n).ok_or("too short")?;
        if !part.iter().all(u8::is_ascii_digit) {
            return Err("a digit was expected");
        }
        Ok(part.iter().fold(0, |acc, d| acc * 10 + u32::from(d - b'0')))
    };
    // The year has four or more digits.
    let year_len = b.iter().take_while(|c| c.is_ascii_digit()).count();
    if !(4..=6).contains(&year_len) || (year_len > 4 && b[0] == b'0') {
        return Err("the year must have four digits");
    }
    let year = digits(0, year_len)? as i32;
    let mut i = year_len;
    let expect = |i: usize, c: u8| -> Result<(), &'static str> {
        if b.get(i) == Some(&c) {
            Ok(())
        } else {
            Err("a separator is missing or misplaced")
        }
    };
    expect(i, b'-')?;
    let month = digits(i + 1, 2)?;
    expect(i + 3, b'-')?;
    let day = digits(i + 4, 2)?;
    expect(i + 6, b'T')?;
    let hour = digits(i + 7, 2)?;
    expect(i + 9, b':')?;
    let minute = digits(i + 10, 2)?;
    expect(i + 12, b':')?;
    let second = digits(i + 13, 2)?;
    i += 15;
    let mut nanos = 0u32;
    if b.get(i) == Some(&b'.') {
        let frac = b[i + 1..].iter().take_while(|c| c.is_ascii_digit()).count();
        if frac == 0 {
            return Err("a fraction of a second needs at least one digit");
        }
        // Digits beyond nanoseconds are dropped: the MSH has no use for them.
        for (k, d) in b[i + 1..i + 1 + frac].iter().enumerate() {
            if k < 9 {
                nanos += u32::from(d - b'0') * 10u32.pow(8 - k as u32);
            }
        }
        i += 1 + frac;
    }
    let offset = match &b[i..] {
        [] | [b'Z'] => UtcOffset::UTC,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let num = |x: &u8, y: &u8| -> Result<i8, &'static str> {
                if x.is_ascii_digit() && y.is_ascii_digit() {
                    Ok(((x - b'0') * 10 + (y - b'0')) as i8)
                } else {
                    Err("the time zone must be Z or ±hh:mm")
                }
            };
            let (h, m) = (num(h1, h2)?, num(m1, m2)?);
            if h > 14 || m > 59 || (h == 14 && m != 0) {
                return Err("the time zone is out of range");
            }
            let sign = if *sign == b'-' { -1 } else { 1 };
            UtcOffset::from_hms(sign * h, sign * m, 0).map_err(|_| "bad time zone")?
        }
        _ => return Err("unexpected characters after the time"),
    };
    let month = u8::try_from(month)
        .ok()
        .and_then(|m| Month::try_from(m).ok())
        .ok_or("the month must be 01 to 12")?;
    let date = Date::from_calendar_date(year, month, day as u8)
        .map_err(|_| "no such day in that month")?;
    // 24:00:00 is allowed by XML Schema 1.0 and means midnight of the next day.
    let end_of_day = hour == 24 && minute == 0 && second == 0 && nanos == 0;
    let time = if end_of_day {
        Time::MIDNIGHT
    } else {
        if hour > 23 || minute > 59 || second > 59 {
            return Err("the time of day is out of range");
        }
        Time::from_hms_nano(hour as u8, minute as u8, second as u8, nanos)
            .map_err(|_| "the time of day is out of range")?
    };
    let mut dt = PrimitiveDateTime::new(date, time).assume_offset(offset);
    if end_of_day {
        dt = dt
            .checked_add(Duration::DAY)
            .ok_or("the date is out of range")?;
    }
    Ok(dt)
}

/// `eb:MessageInfo`: identity and time of a user or signal message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageInfo {
    /// `eb:Timestamp`.
    pub timestamp: Timestamp,
    /// `eb:MessageId` (an RFC 2822 msg-id without angle brackets).
    pub message_id: String,
    /// `eb:RefToMessageId`: the message this one answers.
    pub ref_to_message_id: Option<String>,
}

impl MessageInfo {
    /// Message info with a timestamp of now and no reference.
    pub fn new(message_id: impl Into<String>) -> MessageInfo {
        MessageInfo {
            timestamp: Timestamp::now(),
            message_id: message_id.into(),
            ref_to_message_id: None,
        }
    }
}

/// `eb:UserMessage`: a business message with its routing header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserMessage {
    /// The `mpc` attribute; absent means [`DEFAULT_MPC`].
    pub mpc: Option<String>,
    /// `eb:MessageInfo`.
    pub message_info: MessageInfo,
    /// `eb:PartyInfo`.
    pub party_info: PartyInfo,
    /// `eb:CollaborationInfo`.
    pub collaboration_info: CollaborationInfo,
    /// `eb:MessageProperties/eb:Property`, in order; empty = no `MessageProperties`.
    pub properties: Vec<Property>,
    /// `eb:PayloadInfo/eb:PartInfo`, in order; empty = no `PayloadInfo`.
    pub parts: Vec<PartInfo>,
}

impl UserMessage {
    /// The MPC this message travels on (the default MPC when none is named).
    pub fn effective_mpc(&self) -> &str {
        self.mpc.as_deref().unwrap_or(DEFAULT_MPC)
    }

    /// The value of the first message property with this name.
    pub fn property(&self, name: &str) -> Option<&str> {
        find_property(&self.properties, name)
    }
}

fn find_property<'a>(props: &'a [Property], name: &str) -> Option<&'a str> {
    props
        .iter()
        .find(|p| p.name == name)
        .map(|p| p.value.as_str())
}

/// `eb:PartyInfo`: who sends and who receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartyInfo {
    /// `eb:From`.
    pub from: Party,
    /// `eb:To`.
    pub to: Party,
}

/// `eb:From` or `eb:To`: a party's identifiers and its role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Party {
    /// `eb:PartyId`, at least one (the eDelivery profile allows exactly one).
    pub party_ids: Vec<PartyId>,
    /// `eb:Role`.
    pub role: String,
}

/// `eb:PartyId`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartyId {
    /// The identifier.
    pub value: String,
    /// The `type` attribute, e.g. `urn:oasis:names:tc:ebcore:partyid-type:iso6523:0088`.
    pub type_: Option<String>,
}

/// `eb:CollaborationInfo`: the business context of a user message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CollaborationInfo {
    /// `eb:AgreementRef`.
    pub agreement_ref: Option<AgreementRef>,
    /// `eb:Service`.
    pub service: Service,
    /// `eb:Action`.
    pub action: String,
    /// `eb:ConversationId`.
    pub conversation_id: String,
}

/// `eb:AgreementRef`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgreementRef {
    /// The agreement identifier.
    pub value: String,
    /// The `type` attribute.
    pub type_: Option<String>,
    /// The `pmode` attribute: the sender's PMode id, a hint only.
    pub pmode: Option<String>,
}

/// `eb:Service`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    /// The service name.
    pub value: String,
    /// The `type` attribute.
    pub type_: Option<String>,
}

/// `eb:Property` of `MessageProperties` or `PartProperties`.
///
/// The value is kept exactly as carried (it is business data, `xsd:string`):
/// use [`Property::trimmed_value`] for values that are tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Property {
    /// The `name` attribute.
    pub name: String,
    /// The `type` attribute.
    pub type_: Option<String>,
    /// The content.
    pub value: String,
}

impl Property {
    /// A property without a type.
    pub fn new(name: impl Into<String>, value: impl Into<String>) -> Property {
        Property {
            name: name.into(),
            type_: None,
            value: value.into(),
        }
    }

    /// The value without surrounding XML whitespace (pretty-printers wrap values).
    pub fn trimmed_value(&self) -> &str {
        self.value.trim_matches(is_xml_space)
    }
}

/// Whether a character is XML whitespace (space, tab, CR, LF).
pub fn is_xml_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\r' | '\n')
}

/// `eb:PartInfo`: one payload of a user message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartInfo {
    /// The `href` attribute: `cid:…` for a MIME part, `#id` for an element of the SOAP
    /// Body; absent means the SOAP Body itself is the payload.
    pub href: Option<String>,
    /// `eb:Schema`.
    pub schema: Option<Schema>,
    /// `eb:Description`.
    pub description: Option<Description>,
    /// `eb:PartProperties/eb:Property`, in order; empty = no `PartProperties`.
    pub properties: Vec<Property>,
}

impl PartInfo {
    /// A part referring to a MIME attachment by Content-ID (written as `cid:…`).
    pub fn attachment(content_id: &str) -> PartInfo {
        PartInfo {
            href: Some(format!("cid:{content_id}")),
            schema: None,
            description: None,
            properties: Vec::new(),
        }
    }

    /// The trimmed value of the first part property with this name.
    pub fn property(&self, name: &str) -> Option<&str> {
        find_property(&self.properties, name).map(|v| v.trim_matches(is_xml_space))
    }
}

/// `eb:Schema`: the schema a payload conforms to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schema {
    /// The `location` attribute.
    pub location: String,
    /// The `version` attribute.
    pub version: Option<String>,
    /// The `namespace` attribute.
    pub namespace: Option<String>,
}

/// A human description with its language (`eb:Description`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Description {
    /// The `xml:lang` attribute (may be empty).
    pub lang: String,
    /// The text, as carried.
    pub text: String,
}

/// `eb:SignalMessage`: message info plus what the signal says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignalMessage {
    /// `eb:MessageInfo`.
    pub message_info: MessageInfo,
    /// The receipt, errors or pull request.
    pub kind: SignalKind,
}

/// What a signal message says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignalKind {
    /// `eb:Receipt`.
    Receipt(Receipt),
    /// One or more `eb:Error`.
    Errors(Vec<SignalError>),
    /// `eb:PullRequest`.
    PullRequest(PullRequest),
}

/// `eb:Receipt`: non-repudiation information, other content, or both.
///
/// phase4, for one, puts its own `<phase4 …/>` element beside the
/// `NonRepudiationInformation`; a receipt without NRI (a "plain" receipt) usually
/// holds a copy of the received message's header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// `ebbp:NonRepudiationInformation`: the references of the received message's
    /// signature.
    pub non_repudiation: Option<Vec<MessagePartNrInformation>>,
    /// Every other child element, as raw XML, in order.
    ///
    /// On read this is each element exactly as carried, so prefixes declared on
    /// ancestors are not repeated in it; on write each must be self-contained XML.
    pub other: Vec<String>,
}

impl Receipt {
    /// A non-repudiation receipt.
    pub fn non_repudiation(parts: Vec<MessagePartNrInformation>) -> Receipt {
        Receipt {
            non_repudiation: Some(parts),
            other: Vec::new(),
        }
    }

    /// A plain receipt holding this raw, self-contained XML element.
    pub fn plain(xml: impl Into<String>) -> Receipt {
        Receipt {
            non_repudiation: None,
            other: vec![xml.into()],
        }
    }
}

/// `ebbp:MessagePartNRInformation`: one signed part of the received message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessagePartNrInformation {
    /// The `ebbp:MessagePartIdentifier`, when the producer wrote one.
    pub part_identifier: Option<String>,
    /// The copied `ds:Reference`.
    pub reference: Option<DsReference>,
}

/// A `ds:Reference` as copied into a non-repudiation receipt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DsReference {
    /// The `URI` attribute (`#id` or `cid:…`).
    pub uri: Option<String>,
    /// The transforms, in order.
    pub transforms: Vec<DsTransform>,
    /// The `DigestMethod/@Algorithm`.
    pub digest_method: String,
    /// The `DigestValue`, base64, with XML whitespace removed.
    pub digest_value: String,
}

/// A `ds:Transform`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DsTransform {
    /// The `Algorithm` attribute.
    pub algorithm: String,
    /// `ec:InclusiveNamespaces/@PrefixList`, when given.
    pub inclusive_prefixes: Option<String>,
}

/// `eb:PullRequest`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullRequest {
    /// The `mpc` attribute; absent means [`DEFAULT_MPC`].
    pub mpc: Option<String>,
}

/// `eb:Error` as carried in an error signal (ebMS3 Core §6.2).
///
/// Named `SignalError` to keep it apart from [`crate::EbmsError`], the error Varti's
/// own code reports; `SignalError::from_ebms_error` turns one into the other.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignalError {
    /// The `errorCode` attribute as carried (peers may send codes we do not know).
    pub error_code: String,
    /// `error_code` as a known code, when it is one.
    pub code: Option<ErrorCode>,
    /// The `severity` attribute as carried (`warning` / `failure`).
    pub severity: String,
    /// The `category` attribute.
    pub category: Option<String>,
    /// The `refToMessageInError` attribute.
    pub ref_to_message_in_error: Option<String>,
    /// The `origin` attribute (e.g. `ebMS`, `security`).
    pub origin: Option<String>,
    /// The `shortDescription` attribute.
    pub short_description: Option<String>,
    /// `eb:Description`.
    pub description: Option<Description>,
    /// `eb:ErrorDetail`.
    pub error_detail: Option<String>,
}

impl SignalError {
    /// The severity, when it is one of the two the specification defines
    /// (compared without case: some producers write `Failure`).
    pub fn severity(&self) -> Option<Severity> {
        if self.severity.eq_ignore_ascii_case("failure") {
            Some(Severity::Failure)
        } else if self.severity.eq_ignore_ascii_case("warning") {
            Some(Severity::Warning)
        } else {
            None
        }
    }

    /// The error signal Varti sends for one of its own errors.
    pub(crate) fn from_ebms_error(err: &crate::EbmsError) -> SignalError {
        let code = err.code;
        SignalError {
            error_code: code.code().to_owned(),
            code: Some(code),
            severity: code.severity().as_str().to_owned(),
            category: Some(code.category().as_str().to_owned()),
            ref_to_message_in_error: err.ref_to_message_id.clone(),
            origin: Some(origin_of(code).to_owned()),
            short_description: Some(code.short_description().to_owned()),
            description: Some(Description {
                lang: "en".to_owned(),
                text: err.detail.clone(),
            }),
            error_detail: None,
        }
    }
}

/// The `origin` ebMS3 Core §6.2.3 suggests: the module that raised the error.
fn origin_of(code: ErrorCode) -> &'static str {
    match code {
        ErrorCode::FailedAuthentication
        | ErrorCode::FailedDecryption
        | ErrorCode::PolicyNoncompliance => "security",
        ErrorCode::DysfunctionalReliability | ErrorCode::DeliveryFailure => "reliability",
        _ => "ebMS",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_follow_xsd_date_time() {
        let t = Timestamp::parse("2023-03-09T10:23:26.8542515+01:00").unwrap();
        assert_eq!(t.instant().offset(), UtcOffset::from_hms(1, 0, 0).unwrap());
        assert_eq!(t.instant().nanosecond(), 854_251_500);
        assert_eq!(t.as_str(), "2023-03-09T10:23:26.8542515+01:00");
        let naive = Timestamp::parse("2006-07-25T12:19:05").unwrap();
        assert_eq!(naive.instant().offset(), UtcOffset::UTC);
        let midnight = Timestamp::parse("2020-12-31T24:00:00Z").unwrap();
        assert_eq!(midnight.instant().year(), 2021);
        for bad in [
            "2011-02-30T10:00:00Z",
            "2006-30-30T30:99:99",
            "2006-07-25",
            "2006-07-25T12:19",
            "2006-07-25T12:19:05.Z",
            "2006-07-25T12:19:05+15:00",
            "2006-07-25T12:19:05 ",
            "06-07-25T12:19:05",
            "",
        ] {
            assert!(Timestamp::parse(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn timestamp_from_datetime_round_trips() {
        let t = Timestamp::now();
        assert_eq!(Timestamp::parse(t.as_str()).unwrap(), t);
        assert!(t.as_str().ends_with('Z'));
    }

    #[test]
    fn signal_error_from_ebms_error_carries_the_spec_attributes() {
        let e = crate::EbmsError::new(ErrorCode::FailedDecryption, "bad key").for_message("m1");
        let s = SignalError::from_ebms_error(&e);
        assert_eq!(s.error_code, "EBMS:0102");
        assert_eq!(s.severity(), Some(Severity::Failure));
        assert_eq!(s.category.as_deref(), Some("Processing"));
        assert_eq!(s.origin.as_deref(), Some("security"));
        assert_eq!(s.ref_to_message_in_error.as_deref(), Some("m1"));
    }
}
