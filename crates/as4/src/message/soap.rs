//! The SOAP envelope of an AS4 message: written as SOAP 1.2, read as 1.2 or 1.1.
//!
//! **Writing** ([`build_envelope`]) uses fixed prefixes (`S12`, `eb`, `wsu`, `ebbp`,
//! `ds`, `ec`), each declared on the element that needs it and nowhere else, no
//! whitespace between elements, `S12:mustUnderstand="true"` on `eb:Messaging`, and
//! `wsu:Id`s where the signer needs them. The caller may put pre-serialized header
//! blocks (the `wsse:Security` header) before `eb:Messaging`. The Body is empty
//! unless a payload is given: AS4 carries payloads as MIME parts.
//!
//! **Reading** ([`parse_envelope`]) accepts any prefixes, namespace declarations
//! anywhere, comments and whitespace, and the children of each ebMS element in any
//! order (duplicates are refused). Hostile input is refused before it costs much:
//! DTDs (hence XXE and entity-expansion bombs) are refused outright, entity
//! references other than the five predefined ones are errors (never expanded), and
//! [`ParseLimits`] bound the document size, nesting depth, element count and the
//! size of the SOAP Header. Only the `eb:Messaging` block is turned into a tree; other
//! header blocks and the Body are only scanned.
//!
//! Every refusal is an [`EbmsError`]. The code follows the meaning ebMS3 Core §6.7.1
//! gives the codes: EBMS:0009 *InvalidHeader* is for a header that "is either not well
//! formed as an XML document, or does not conform to the ebMS packaging rules" — so
//! malformed XML, a missing `eb:Messaging`, and anything the ebMS3 schema forbids (a
//! missing required element, an empty `NonEmptyString`, a timestamp that is not an
//! `xsd:dateTime`, two `UserMessage`s) are 0009. EBMS:0001/0003/0004 are defined as
//! applying "although the message document is well formed and schema valid", so they
//! are for value-level problems found later (PMode matching, payload references), not
//! for this layer.

use std::borrow::Cow;
use std::ops::Range;

use quick_xml::events::attributes::Attribute;
use quick_xml::events::{BytesEnd, BytesStart, BytesText, Event};
use quick_xml::name::{QName, ResolveResult};
use quick_xml::{NsReader, Writer};

use super::model::*;
use crate::error::{EbmsError, ErrorCode};

/// The namespace of exclusive c14n's `InclusiveNamespaces` element (`ec:`).
pub use crate::ns::EXC_C14N_NS;

/// The SOAP version of an envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SoapVersion {
    /// SOAP 1.1 (`http://schemas.xmlsoap.org/soap/envelope/`): read, never written.
    Soap11,
    /// SOAP 1.2 (`http://www.w3.org/2003/05/soap-envelope`): what AS4 requires.
    Soap12,
}

impl SoapVersion {
    /// The envelope namespace of this version.
    pub fn namespace(self) -> &'static str {
        match self {
            SoapVersion::Soap11 => SOAP11_NS,
            SoapVersion::Soap12 => SOAP12_NS,
        }
    }
}

/// Bounds on what [`parse_envelope_with_limits`] will read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseLimits {
    /// The largest envelope, in bytes (the SOAP root part, Body included).
    pub max_envelope_bytes: usize,
    /// The deepest element nesting (the Envelope is depth 1).
    pub max_depth: usize,
    /// The most elements in the whole envelope.
    pub max_elements: usize,
    /// The largest SOAP Header, in bytes, from `<Header` to `</Header>`.
    pub max_header_bytes: usize,
    /// The most attributes (namespace declarations included) on one element.
    /// Without this bound, checking attribute names for duplicates is quadratic.
    pub max_attributes: usize,
}

impl Default for ParseLimits {
    /// Generous for real AS4 traffic (a signed and encrypted header is a few tens of
    /// KiB), small enough that a hostile envelope costs little.
    fn default() -> Self {
        ParseLimits {
            max_envelope_bytes: 64 * 1024 * 1024,
            max_depth: 64,
            max_elements: 20_000,
            max_header_bytes: 1024 * 1024,
            max_attributes: 128,
        }
    }
}

/// A namespace-qualified element name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QualifiedName {
    /// The namespace URI (`None` for an element in no namespace).
    pub namespace: Option<String>,
    /// The local name.
    pub local_name: String,
}

impl QualifiedName {
    /// Whether this is `{namespace}local_name`.
    pub fn is(&self, namespace: &str, local_name: &str) -> bool {
        self.namespace.as_deref() == Some(namespace) && self.local_name == local_name
    }
}

/// What the SOAP Body holds, as far as the ebMS layer cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BodyInfo {
    /// The Body's `wsu:Id`, which the signature refers to.
    pub id: Option<String>,
    /// True when the Body has no element and no text other than whitespace
    /// (the AS4 norm: payloads travel as MIME parts).
    pub is_empty: bool,
    /// The first child element, e.g. a business document or a SOAP Fault.
    pub first_child: Option<QualifiedName>,
}

impl BodyInfo {
    /// Whether the Body carries a SOAP Fault.
    pub fn is_fault(&self) -> bool {
        self.first_child.as_ref().is_some_and(|c| {
            c.local_name == "Fault"
                && c.namespace
                    .as_deref()
                    .is_some_and(|ns| ns == SOAP11_NS || ns == SOAP12_NS)
        })
    }
}

/// A parsed SOAP envelope: its ebMS header and what surrounds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// The SOAP version the peer used.
    pub soap_version: SoapVersion,
    /// The `eb:Messaging` header, validated.
    pub messaging: Messaging,
    /// Whether `eb:Messaging` carried `mustUnderstand` = `true`/`1` (ebMS3 requires it;
    /// some senders omit it, which is reported here rather than refused).
    pub messaging_must_understand: bool,
    /// The SOAP Body.
    pub body: BodyInfo,
    /// The names of all SOAP header blocks, in document order.
    pub header_blocks: Vec<QualifiedName>,
    /// Whether a `wsse:Security` header block is present.
    pub has_security_header: bool,
}

/// What [`build_envelope`] writes around the `eb:Messaging` header.
#[derive(Debug, Clone, Default)]
pub struct BuildOptions<'a> {
    /// The `wsu:Id` of the SOAP Body (the signer refers to it).
    pub body_id: Option<&'a str>,
    /// Pre-serialized header blocks written verbatim before `eb:Messaging`, e.g. the
    /// `wsse:Security` header. Each must be well-formed XML declaring its own
    /// namespaces (the `S12` prefix is in scope).
    pub extra_headers: Vec<&'a str>,
    /// Pre-serialized XML written verbatim inside the Body; `None` = empty Body.
    pub body_payload: Option<&'a str>,
}

// ---------------------------------------------------------------------------------
// Building
// ---------------------------------------------------------------------------------

/// Writes a SOAP 1.2 envelope with this `eb:Messaging` header.
///
/// The header is validated first with [`validate_messaging`], so Varti never sends
/// what it would refuse; a value that XML 1.0 cannot carry (a control character) is
/// refused too.
pub fn build_envelope(
    messaging: &Messaging,
    options: &BuildOptions<'_>,
) -> Result<String, EbmsError> {
    validate_messaging(messaging)?;
    let mut w = XmlOut::default();
    w.raw("<?xml version=\"1.0\" encoding=\"UTF-8\"?>");
    w.start("S12:Envelope", &[("xmlns:S12", SOAP12_NS)])?;
    w.start("S12:Header", &[])?;
    for block in &options.extra_headers {
        w.raw(block);
    }
    write_messaging(&mut w, messaging)?;
    w.end("S12:Header");
    let mut body_attrs = Vec::new();
    if let Some(id) = options.body_id {
        body_attrs.push(("xmlns:wsu", WSU_NS));
        body_attrs.push(("wsu:Id", id));
    }
    match options.body_payload {
        Some(payload) => {
            w.start("S12:Body", &body_attrs)?;
            w.raw(payload);
            w.end("S12:Body");
        }
        None => w.empty("S12:Body", &body_attrs)?,
    }
    w.end("S12:Envelope");
    String::from_utf8(w.w.into_inner()).map_err(|_| {
        // Everything written came from &str, so this cannot happen; say so if it does.
        EbmsError::new(
            ErrorCode::Other,
            "internal error: the built envelope is not UTF-8",
        )
    })
}

fn write_messaging(w: &mut XmlOut, m: &Messaging) -> Result<(), EbmsError> {
    let mut attrs = vec![("xmlns:eb", EBMS_NS)];
    if m.id.is_some() {
        attrs.push(("xmlns:wsu", WSU_NS));
    }
    attrs.push(("S12:mustUnderstand", "true"));
    if let Some(id) = &m.id {
        attrs.push(("wsu:Id", id));
    }
    w.start("eb:Messaging", &attrs)?;
    if let Some(um) = &m.user_message {
        write_user_message(w, um)?;
    }
    for s in &m.signals {
        write_signal(w, s)?;
    }
    w.end("eb:Messaging");
    Ok(())
}

fn write_message_info(w: &mut XmlOut, mi: &MessageInfo) -> Result<(), EbmsError> {
    w.start("eb:MessageInfo", &[])?;
    w.leaf("eb:Timestamp", &[], mi.timestamp.as_str())?;
    w.leaf("eb:MessageId", &[], &mi.message_id)?;
    if let Some(r) = &mi.ref_to_message_id {
        w.leaf("eb:RefToMessageId", &[], r)?;
    }
    w.end("eb:MessageInfo");
    Ok(())
}

fn write_user_message(w: &mut XmlOut, um: &UserMessage) -> Result<(), EbmsError> {
    let mut attrs = Vec::new();
    if let Some(mpc) = &um.mpc {
        attrs.push(("mpc", mpc.as_str()));
    }
    w.start("eb:UserMessage", &attrs)?;
    write_message_info(w, &um.message_info)?;
    w.start("eb:PartyInfo", &[])?;
    for (name, party) in [
        ("eb:From", &um.party_info.from),
        ("eb:To", &um.party_info.to),
    ] {
        w.start(name, &[])?;
        for pid in &party.party_ids {
            w.leaf("eb:PartyId", &opt_attr("type", &pid.type_), &pid.value)?;
        }
        w.leaf("eb:Role", &[], &party.role)?;
        w.end(name);
    }
    w.end("eb:PartyInfo");
    let ci = &um.collaboration_info;
    w.start("eb:CollaborationInfo", &[])?;
    if let Some(a) = &ci.agreement_ref {
        let mut attrs = opt_attr("type", &a.type_);
        attrs.extend(opt_attr("pmode", &a.pmode));
        w.leaf("eb:AgreementRef", &attrs, &a.value)?;
    }
    w.leaf(
        "eb:Service",
        &opt_attr("type", &ci.service.type_),
        &ci.service.value,
    )?;
    w.leaf("eb:Action", &[], &ci.action)?;
    w.leaf("eb:ConversationId", &[], &ci.conversation_id)?;
    w.end("eb:CollaborationInfo");
    if !um.properties.is_empty() {
        write_properties(w, "eb:MessageProperties", &um.properties)?;
    }
    if !um.parts.is_empty() {
        w.start("eb:PayloadInfo", &[])?;
        for part in &um.parts {
            w.start("eb:PartInfo", &opt_attr("href", &part.href))?;
            if let Some(s) = &part.schema {
                let mut attrs = vec![("location", s.location.as_str())];
                attrs.extend(opt_attr("version", &s.version));
                attrs.extend(opt_attr("namespace", &s.namespace));
                w.empty("eb:Schema", &attrs)?;
            }
            if let Some(d) = &part.description {
                w.leaf("eb:Description", &[("xml:lang", &d.lang)], &d.text)?;
            }
            if !part.properties.is_empty() {
                write_properties(w, "eb:PartProperties", &part.properties)?;
            }
            w.end("eb:PartInfo");
        }
        w.end("eb:PayloadInfo");
    }
    w.end("eb:UserMessage");
    Ok(())
}

fn write_properties(w: &mut XmlOut, container: &str, props: &[Property]) -> Result<(), EbmsError> {
    w.start(container, &[])?;
    for p in props {
        let mut attrs = vec![("name", p.name.as_str())];
        attrs.extend(opt_attr("type", &p.type_));
        w.leaf("eb:Property", &attrs, &p.value)?;
    }
    w.end(container);
    Ok(())
}

fn write_signal(w: &mut XmlOut, s: &SignalMessage) -> Result<(), EbmsError> {
    w.start("eb:SignalMessage", &[])?;
    write_message_info(w, &s.message_info)?;
    match &s.kind {
        SignalKind::PullRequest(p) => w.empty("eb:PullRequest", &opt_attr("mpc", &p.mpc))?,
        SignalKind::Receipt(receipt) => {
            w.start("eb:Receipt", &[])?;
            if let Some(parts) = &receipt.non_repudiation {
                w.start(
                    "ebbp:NonRepudiationInformation",
                    &[("xmlns:ebbp", EBBP_NS), ("xmlns:ds", DS_NS)],
                )?;
                for part in parts {
                    write_nr_part(w, part)?;
                }
                w.end("ebbp:NonRepudiationInformation");
            }
            for raw in &receipt.other {
                w.raw(raw);
            }
            w.end("eb:Receipt");
        }
        SignalKind::Errors(errors) => {
            for e in errors {
                let mut attrs = vec![
                    ("errorCode", e.error_code.as_str()),
                    ("severity", e.severity.as_str()),
                ];
                attrs.extend(opt_attr("category", &e.category));
                attrs.extend(opt_attr("refToMessageInError", &e.ref_to_message_in_error));
                attrs.extend(opt_attr("origin", &e.origin));
                attrs.extend(opt_attr("shortDescription", &e.short_description));
                w.start("eb:Error", &attrs)?;
                if let Some(d) = &e.description {
                    w.leaf("eb:Description", &[("xml:lang", &d.lang)], &d.text)?;
                }
                if let Some(d) = &e.error_detail {
                    w.leaf("eb:ErrorDetail", &[], d)?;
                }
                w.end("eb:Error");
            }
        }
    }
    w.end("eb:SignalMessage");
    Ok(())
}

fn write_nr_part(w: &mut XmlOut, part: &MessagePartNrInformation) -> Result<(), EbmsError> {
    w.start("ebbp:MessagePartNRInformation", &[])?;
    if let Some(id) = &part.part_identifier {
        w.leaf("ebbp:MessagePartIdentifier", &[], id)?;
    }
    if let Some(r) = &part.reference {
        w.start("ds:Reference", &opt_attr("URI", &r.uri))?;
        if !r.transforms.is_empty() {
            w.start("ds:Transforms", &[])?;
            for t in &r.transforms {
                let attrs = [("Algorithm", t.algorithm.as_str())];
                match &t.inclusive_prefixes {
                    Some(list) => {
                        w.start("ds:Transform", &attrs)?;
                        w.empty(
                            "ec:InclusiveNamespaces",
                            &[("xmlns:ec", EXC_C14N_NS), ("PrefixList", list)],
                        )?;
                        w.end("ds:Transform");
                    }
                    None => w.empty("ds:Transform", &attrs)?,
                }
            }
            w.end("ds:Transforms");
        }
        w.empty("ds:DigestMethod", &[("Algorithm", &r.digest_method)])?;
        w.leaf("ds:DigestValue", &[], &r.digest_value)?;
        w.end("ds:Reference");
    }
    w.end("ebbp:MessagePartNRInformation");
    Ok(())
}

fn opt_attr<'a>(name: &'a str, value: &'a Option<String>) -> Vec<(&'a str, &'a str)> {
    value.as_deref().map(|v| (name, v)).into_iter().collect()
}

/// A thin layer over quick-xml's writer that escapes the way a round trip needs.
struct XmlOut {
    w: Writer<Vec<u8>>,
}

impl Default for XmlOut {
    fn default() -> Self {
        XmlOut {
            w: Writer::new(Vec::new()),
        }
    }
}

impl XmlOut {
    fn open(name: &str, attrs: &[(&str, &str)]) -> Result<BytesStart<'static>, EbmsError> {
        let mut start = BytesStart::new(name.to_owned());
        for (k, v) in attrs {
            start.push_attribute(Attribute {
                key: QName(k.as_bytes()),
                value: Cow::Owned(escape(v, true, k)?.into_bytes()),
            });
        }
        Ok(start)
    }

    fn start(&mut self, name: &str, attrs: &[(&str, &str)]) -> Result<(), EbmsError> {
        let e = Self::open(name, attrs)?;
        self.emit(Event::Start(e));
        Ok(())
    }

    fn empty(&mut self, name: &str, attrs: &[(&str, &str)]) -> Result<(), EbmsError> {
        let e = Self::open(name, attrs)?;
        self.emit(Event::Empty(e));
        Ok(())
    }

    fn end(&mut self, name: &str) {
        self.emit(Event::End(BytesEnd::new(name.to_owned())));
    }

    fn leaf(&mut self, name: &str, attrs: &[(&str, &str)], text: &str) -> Result<(), EbmsError> {
        self.start(name, attrs)?;
        let escaped = escape(text, false, name)?;
        self.emit(Event::Text(BytesText::from_escaped(escaped)));
        self.end(name);
        Ok(())
    }

    fn raw(&mut self, xml: &str) {
        self.w.get_mut().extend_from_slice(xml.as_bytes());
    }

    fn emit(&mut self, event: Event<'_>) {
        // Writing into a Vec cannot fail.
        let _ = self.w.write_event(event);
    }
}

/// Escapes text or an attribute value so that any XML 1.0 parser reads back exactly
/// the same string: markup characters become entities, and CR (which parsers turn
/// into LF) plus, in attributes, TAB and LF (which attribute normalization turns into
/// spaces) become character references.
fn escape(s: &str, attribute: bool, what: &str) -> Result<String, EbmsError> {
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' if attribute => out.push_str("&quot;"),
            '\r' => out.push_str("&#13;"),
            '\t' if attribute => out.push_str("&#9;"),
            '\n' if attribute => out.push_str("&#10;"),
            c if is_xml_char(c) => out.push(c),
            c => {
                return Err(EbmsError::new(
                    ErrorCode::InvalidHeader,
                    format!(
                        "cannot write {what}: it contains U+{:04X}, which XML 1.0 cannot carry; \
                         remove control characters from the value",
                        c as u32
                    ),
                ))
            }
        }
    }
    Ok(out)
}

/// The XML 1.0 `Char` production.
fn is_xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}

// ---------------------------------------------------------------------------------
// Parsing: XML events to a small tree of the eb:Messaging block
// ---------------------------------------------------------------------------------

/// Parses a SOAP envelope with the default [`ParseLimits`].
pub fn parse_envelope(xml: &[u8]) -> Result<Envelope, EbmsError> {
    parse_envelope_with_limits(xml, &ParseLimits::default())
}

/// Parses a SOAP envelope (1.2 or 1.1) and validates its `eb:Messaging` header.
///
/// Leading BOM, whitespace and comments are skipped, also before the XML
/// declaration (some producers prepend a licence comment).
pub fn parse_envelope_with_limits(xml: &[u8], limits: &ParseLimits) -> Result<Envelope, EbmsError> {
    let scan = scan(xml, limits)?;
    let messaging_elem = scan.messaging.ok_or_else(|| {
        invalid(
            "the SOAP Header has no eb:Messaging block (namespace \
             http://docs.oasis-open.org/ebxml-msg/ebms/v3.0/ns/core/200704/): this is not an \
             ebMS3 message",
        )
    })?;
    let must_understand = messaging_elem
        .attr_ns(scan.version.namespace(), "mustUnderstand")
        .is_some_and(|v| matches!(v.trim(), "true" | "1"));
    let messaging = convert_messaging(&messaging_elem, xml)
        .and_then(|m| validate_messaging(&m).map(|()| m))
        .map_err(|e| attribute_to_message(e, &messaging_elem))?;
    let has_security_header = scan.header_blocks.iter().any(|b| b.is(WSSE_NS, "Security"));
    Ok(Envelope {
        soap_version: scan.version,
        messaging,
        messaging_must_understand: must_understand,
        body: scan.body,
        header_blocks: scan.header_blocks,
        has_security_header,
    })
}

/// Parses a standalone `ebbp:NonRepudiationInformation` element (as found in a
/// receipt), with the same protections as [`parse_envelope`].
pub fn parse_non_repudiation_information(
    xml: &[u8],
) -> Result<Vec<MessagePartNrInformation>, EbmsError> {
    let root = scan_fragment(xml, &ParseLimits::default())?;
    if !root.is(EBBP_NS, "NonRepudiationInformation") {
        return Err(invalid(format!(
            "expected ebbp:NonRepudiationInformation ({EBBP_NS}) but the root element is {}",
            root.describe()
        )));
    }
    convert_nri(&root)
}

fn invalid(detail: impl Into<String>) -> EbmsError {
    EbmsError::new(ErrorCode::InvalidHeader, detail)
}

/// When the header's MessageId could be read and is a valid id, the error refers to it,
/// so the error signal Varti answers with carries `refToMessageInError`.
fn attribute_to_message(err: EbmsError, messaging: &Elem) -> EbmsError {
    if err.ref_to_message_id.is_some() {
        return err;
    }
    let id = messaging
        .children
        .iter()
        .filter(|c| c.is(EBMS_NS, "UserMessage") || c.is(EBMS_NS, "SignalMessage"))
        .flat_map(|c| c.children.iter().filter(|mi| mi.is(EBMS_NS, "MessageInfo")))
        .flat_map(|mi| mi.children.iter().filter(|id| id.is(EBMS_NS, "MessageId")))
        .map(|id| id.text.trim_matches(is_xml_space))
        .find(|id| super::id::check(id).is_ok());
    match id {
        Some(id) => err.for_message(id),
        None => err,
    }
}

/// An element of the `eb:Messaging` tree.
#[derive(Debug, Default)]
struct Elem {
    ns: Option<String>,
    local: String,
    prefixed: String,
    attrs: Vec<Attr>,
    children: Vec<Elem>,
    /// Character data directly in this element, concatenated.
    text: String,
    /// Byte range of the whole element, tags included.
    outer: Range<usize>,
}

#[derive(Debug)]
struct Attr {
    ns: Option<String>,
    local: String,
    value: String,
}

impl Elem {
    fn is(&self, ns: &str, local: &str) -> bool {
        self.ns.as_deref() == Some(ns) && self.local == local
    }

    fn describe(&self) -> String {
        match &self.ns {
            Some(ns) => format!("<{}> (namespace {ns})", self.prefixed),
            None => format!("<{}> (no namespace)", self.prefixed),
        }
    }

    /// An unqualified attribute.
    fn attr(&self, local: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|a| a.ns.is_none() && a.local == local)
            .map(|a| a.value.as_str())
    }

    fn attr_ns(&self, ns: &str, local: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|a| a.ns.as_deref() == Some(ns) && a.local == local)
            .map(|a| a.value.as_str())
    }

    fn required_attr(&self, local: &str) -> Result<&str, EbmsError> {
        self.attr(local).ok_or_else(|| {
            invalid(format!(
                "{} has no `{local}` attribute, which the schema requires",
                self.describe()
            ))
        })
    }
}

struct Scan {
    version: SoapVersion,
    messaging: Option<Elem>,
    header_blocks: Vec<QualifiedName>,
    body: BodyInfo,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Region {
    Header,
    Body,
    Other,
}

/// Strips a UTF-8 BOM; refuses the UTF-16/32 ones (AS4 messages are UTF-8).
fn strip_bom(xml: &[u8]) -> Result<&[u8], EbmsError> {
    if let Some(rest) = xml.strip_prefix(b"\xEF\xBB\xBF") {
        return Ok(rest);
    }
    if xml.starts_with(b"\xFE\xFF") || xml.starts_with(b"\xFF\xFE") {
        return Err(invalid(
            "the envelope is UTF-16 encoded; AS4 requires UTF-8 (re-encode it as UTF-8)",
        ));
    }
    Ok(xml)
}

fn new_reader(xml: &[u8]) -> NsReader<&[u8]> {
    let mut reader = NsReader::from_reader(xml);
    let config = reader.config_mut();
    config.expand_empty_elements = true;
    config.check_end_names = true;
    config.trim_text(false);
    reader
}

fn xml_error(reader: &NsReader<&[u8]>, base: usize, e: impl std::fmt::Display) -> EbmsError {
    invalid(format!(
        "the envelope is not well-formed XML at byte {}: {e}",
        base + reader.error_position() as usize
    ))
}

/// Reads the whole envelope once, checking limits as it goes.
fn scan(xml: &[u8], limits: &ParseLimits) -> Result<Scan, EbmsError> {
    if xml.len() > limits.max_envelope_bytes {
        return Err(invalid(format!(
            "the envelope is {} bytes, more than the limit of {} (ParseLimits::max_envelope_bytes)",
            xml.len(),
            limits.max_envelope_bytes
        )));
    }
    let input = strip_bom(xml)?;
    let base = xml.len() - input.len();
    let mut reader = new_reader(input);

    let mut version = None;
    let mut depth = 0usize;
    let mut elements = 0usize;
    let mut root_done = false;
    let mut seen_header = false;
    let mut seen_body = false;
    let mut region = Region::Other;
    let mut header_start = 0usize;
    let mut header_blocks = Vec::new();
    let mut messaging: Option<Elem> = None;
    // The open elements of the eb:Messaging tree being built.
    let mut open: Vec<Elem> = Vec::new();
    let mut body = BodyInfo {
        id: None,
        is_empty: true,
        first_child: None,
    };

    loop {
        let before = reader.buffer_position() as usize;
        let event = match reader.read_event() {
            Ok(event) => event,
            Err(e) => return Err(xml_error(&reader, base, e)),
        };
        let after = reader.buffer_position() as usize;
        if region == Region::Header && after - header_start > limits.max_header_bytes {
            return Err(invalid(format!(
                "the SOAP Header is larger than {} bytes (ParseLimits::max_header_bytes); \
                 a legitimate ebMS header is far smaller",
                limits.max_header_bytes
            )));
        }
        match event {
            Event::DocType(_) => {
                return Err(invalid(
                    "the envelope contains a DOCTYPE: DTDs and entity declarations are refused \
                     (SOAP forbids them, and they enable XXE and entity-expansion attacks)",
                ))
            }
            Event::Decl(d) => {
                if depth > 0 || root_done {
                    return Err(invalid("an XML declaration appears inside the document"));
                }
                if let Some(Ok(enc)) = d.encoding() {
                    if !enc.eq_ignore_ascii_case(b"utf-8") {
                        return Err(invalid(format!(
                            "the envelope declares encoding {:?}; AS4 requires UTF-8",
                            String::from_utf8_lossy(&enc)
                        )));
                    }
                }
            }
            Event::Start(start) => {
                depth += 1;
                elements += 1;
                if depth > limits.max_depth {
                    return Err(invalid(format!(
                        "elements are nested deeper than {} levels (ParseLimits::max_depth)",
                        limits.max_depth
                    )));
                }
                if elements > limits.max_elements {
                    return Err(invalid(format!(
                        "the envelope has more than {} elements (ParseLimits::max_elements)",
                        limits.max_elements
                    )));
                }
                if root_done {
                    return Err(invalid("there is more than one root element"));
                }
                check_attribute_count(&start, limits)?;
                let (resolved, _) = reader.resolve_element(start.name());
                let name = qualified(&resolved, &start, base, before)?;
                match (depth, region) {
                    (1, _) => {
                        version = Some(if name.is(SOAP12_NS, "Envelope") {
                            SoapVersion::Soap12
                        } else if name.is(SOAP11_NS, "Envelope") {
                            SoapVersion::Soap11
                        } else {
                            return Err(invalid(format!(
                                "the root element is {} but a SOAP Envelope ({SOAP12_NS}) was \
                                 expected: this is not a SOAP message",
                                describe_name(&name, &start)
                            )));
                        });
                    }
                    (2, _) => {
                        let env_ns = version.map(SoapVersion::namespace).unwrap_or(SOAP12_NS);
                        if name.is(env_ns, "Header") && !seen_header && !seen_body {
                            seen_header = true;
                            region = Region::Header;
                            header_start = before;
                        } else if name.is(env_ns, "Body") && !seen_body {
                            seen_body = true;
                            region = Region::Body;
                            let attrs = read_attrs(&reader, &start, base)?;
                            body.id = attrs
                                .iter()
                                .find(|a| a.ns.as_deref() == Some(WSU_NS) && a.local == "Id")
                                .map(|a| a.value.clone());
                        } else {
                            return Err(invalid(format!(
                                "unexpected {} in the SOAP Envelope: only one Header followed by \
                                 one Body is allowed",
                                describe_name(&name, &start)
                            )));
                        }
                    }
                    (3, Region::Header) => {
                        if name.is(EBMS_NS, "Messaging") {
                            if messaging.is_some() {
                                return Err(invalid(
                                    "the SOAP Header has two eb:Messaging blocks; an ebMS3 \
                                     message has exactly one",
                                ));
                            }
                            open.push(new_elem(&reader, &start, &name, base, before)?);
                        }
                        header_blocks.push(name.to_owned());
                    }
                    (3, Region::Body) => {
                        body.is_empty = false;
                        if body.first_child.is_none() {
                            body.first_child = Some(name.to_owned());
                        }
                    }
                    (_, Region::Header) if !open.is_empty() => {
                        open.push(new_elem(&reader, &start, &name, base, before)?);
                    }
                    _ => {}
                }
            }
            Event::End(_) => {
                if depth >= 3 && region == Region::Header && !open.is_empty() {
                    let mut done = open.pop().unwrap_or_default();
                    done.outer.end = base + after;
                    match open.last_mut() {
                        Some(parent) => parent.children.push(done),
                        None => messaging = Some(done),
                    }
                }
                if depth == 2 {
                    region = Region::Other;
                }
                depth -= 1;
                if depth == 0 {
                    root_done = true;
                }
            }
            Event::Text(text) => {
                let raw = text.into_inner();
                // Whitespace matters inside ebMS leaves (a property may be "\t").
                if is_blank(&raw) && open.is_empty() {
                    continue;
                }
                match (depth, region) {
                    (0, _) => return Err(invalid("there is text outside the root element")),
                    (1, _) | (2, Region::Header) => {
                        return Err(invalid(
                            "there is text directly in the SOAP Envelope or Header, where only \
                             elements are allowed",
                        ))
                    }
                    (2, Region::Body) => body.is_empty = false,
                    _ => {
                        if let Some(top) = open.last_mut() {
                            top.text.push_str(&text_value(&raw, base + before)?);
                        }
                    }
                }
            }
            Event::CData(cdata) => {
                let raw = cdata.into_inner();
                match (depth, region) {
                    (2, Region::Body) => body.is_empty &= is_blank(&raw),
                    _ => {
                        if let Some(top) = open.last_mut() {
                            let s = utf8(&raw, base + before)?;
                            let s = normalize_eol(s);
                            check_chars(&s, base + before)?;
                            top.text.push_str(&s);
                        }
                    }
                }
            }
            Event::Comment(_) | Event::PI(_) => {}
            // Never produced: empty elements are expanded into Start and End.
            Event::Empty(_) => return Err(invalid("internal error: unexpanded empty element")),
            Event::Eof => break,
        }
    }
    let version = version.ok_or_else(|| invalid("the input holds no XML element"))?;
    if !root_done {
        return Err(invalid(
            "the envelope ends before its root element is closed",
        ));
    }
    if !seen_body {
        return Err(invalid(
            "the SOAP Envelope has no Body, which SOAP requires",
        ));
    }
    Ok(Scan {
        version,
        messaging,
        header_blocks,
        body,
    })
}

/// Reads a standalone XML fragment (one root element) into a tree.
fn scan_fragment(xml: &[u8], limits: &ParseLimits) -> Result<Elem, EbmsError> {
    if xml.len() > limits.max_header_bytes {
        return Err(invalid(format!(
            "the fragment is larger than {} bytes (ParseLimits::max_header_bytes)",
            limits.max_header_bytes
        )));
    }
    let input = strip_bom(xml)?;
    let base = xml.len() - input.len();
    let mut reader = new_reader(input);
    let mut open: Vec<Elem> = Vec::new();
    let mut root = None;
    let mut elements = 0;
    loop {
        let before = reader.buffer_position() as usize;
        let event = match reader.read_event() {
            Ok(event) => event,
            Err(e) => return Err(xml_error(&reader, base, e)),
        };
        let after = reader.buffer_position() as usize;
        match event {
            Event::DocType(_) => {
                return Err(invalid("DTDs and entity declarations are refused"));
            }
            Event::Start(start) => {
                elements += 1;
                if open.len() >= limits.max_depth || elements > limits.max_elements {
                    return Err(invalid(
                        "the fragment is nested too deep or has too many elements",
                    ));
                }
                if root.is_some() {
                    return Err(invalid("there is more than one root element"));
                }
                check_attribute_count(&start, limits)?;
                let (resolved, _) = reader.resolve_element(start.name());
                let name = qualified(&resolved, &start, base, before)?;
                open.push(new_elem(&reader, &start, &name, base, before)?);
            }
            Event::End(_) => {
                let mut done = open.pop().unwrap_or_default();
                done.outer.end = base + after;
                match open.last_mut() {
                    Some(parent) => parent.children.push(done),
                    None => root = Some(done),
                }
            }
            Event::Text(text) => {
                let raw = text.into_inner();
                // Whitespace matters inside ebMS leaves (a property may be "\t").
                if is_blank(&raw) && open.is_empty() {
                    continue;
                }
                match open.last_mut() {
                    Some(top) => top.text.push_str(&text_value(&raw, base + before)?),
                    None => return Err(invalid("there is text outside the root element")),
                }
            }
            Event::CData(c) => {
                if let Some(top) = open.last_mut() {
                    top.text
                        .push_str(&normalize_eol(utf8(&c.into_inner(), base + before)?));
                }
            }
            Event::Decl(_) | Event::Comment(_) | Event::PI(_) => {}
            Event::Empty(_) => return Err(invalid("internal error: unexpanded empty element")),
            Event::Eof => break,
        }
    }
    root.ok_or_else(|| invalid("the input holds no complete XML element"))
}

/// Counts attributes without the (quadratic) duplicate check, to bound it.
fn check_attribute_count(start: &BytesStart<'_>, limits: &ParseLimits) -> Result<(), EbmsError> {
    let count = start
        .attributes()
        .with_checks(false)
        .take(limits.max_attributes + 1)
        .count();
    if count > limits.max_attributes {
        return Err(invalid(format!(
            "element <{}> has more than {} attributes (ParseLimits::max_attributes)",
            String::from_utf8_lossy(start.name().into_inner()),
            limits.max_attributes
        )));
    }
    Ok(())
}

fn is_blank(raw: &[u8]) -> bool {
    raw.iter()
        .all(|b| matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
}

/// An element's qualified name as read, borrowed from the reader for one event: most
/// elements of an envelope (the security header's) are only looked at, and owning their
/// names cost two strings each.
struct NameRef<'a> {
    namespace: Option<&'a str>,
    local_name: &'a str,
}

impl NameRef<'_> {
    fn is(&self, namespace: &str, local_name: &str) -> bool {
        self.namespace == Some(namespace) && self.local_name == local_name
    }

    fn to_owned(&self) -> QualifiedName {
        QualifiedName {
            namespace: self.namespace.map(str::to_owned),
            local_name: self.local_name.to_owned(),
        }
    }
}

fn qualified<'a>(
    resolved: &'a ResolveResult<'_>,
    start: &'a BytesStart<'_>,
    base: usize,
    at: usize,
) -> Result<NameRef<'a>, EbmsError> {
    let text = |bytes: &'a [u8]| utf8(bytes, base + at);
    let local_name = text(start.local_name().into_inner())?;
    let namespace = match resolved {
        ResolveResult::Bound(ns) => Some(text(ns.into_inner())?),
        ResolveResult::Unbound => None,
        ResolveResult::Unknown(prefix) => {
            return Err(invalid(format!(
                "element <{}> at byte {} uses the prefix `{}`, which is not declared",
                String::from_utf8_lossy(start.name().into_inner()),
                base + at,
                String::from_utf8_lossy(prefix)
            )))
        }
    };
    Ok(NameRef {
        namespace,
        local_name,
    })
}

fn describe_name(name: &NameRef<'_>, start: &BytesStart<'_>) -> String {
    let prefixed = String::from_utf8_lossy(start.name().into_inner());
    match name.namespace {
        Some(ns) => format!("<{prefixed}> (namespace {ns})"),
        None => format!("<{prefixed}> (no namespace)"),
    }
}

fn new_elem(
    reader: &NsReader<&[u8]>,
    start: &BytesStart<'_>,
    name: &NameRef<'_>,
    base: usize,
    before: usize,
) -> Result<Elem, EbmsError> {
    Ok(Elem {
        ns: name.namespace.map(str::to_owned),
        local: name.local_name.to_owned(),
        prefixed: String::from_utf8_lossy(start.name().into_inner()).into_owned(),
        attrs: read_attrs(reader, start, base)?,
        children: Vec::new(),
        text: String::new(),
        outer: base + before..base + before,
    })
}

/// The attributes of an element, namespace-resolved and normalized as XML 1.0
/// §3.3.3 says (literal TAB/CR/LF become spaces; character references are kept).
fn read_attrs(
    reader: &NsReader<&[u8]>,
    start: &BytesStart<'_>,
    base: usize,
) -> Result<Vec<Attr>, EbmsError> {
    let mut out = Vec::new();
    for attr in start.attributes() {
        let attr = attr.map_err(|e| {
            invalid(format!(
                "malformed attribute in <{}>: {e}",
                String::from_utf8_lossy(start.name().into_inner())
            ))
        })?;
        let key = attr.key;
        if key.as_namespace_binding().is_some() {
            continue;
        }
        let (resolved, local) = reader.resolve_attribute(key);
        let ns = match resolved {
            ResolveResult::Bound(ns) => Some(utf8(ns.into_inner(), base)?.to_owned()),
            ResolveResult::Unbound => None,
            ResolveResult::Unknown(prefix) => {
                return Err(invalid(format!(
                    "attribute `{}` uses the prefix `{}`, which is not declared",
                    String::from_utf8_lossy(key.into_inner()),
                    String::from_utf8_lossy(&prefix)
                )))
            }
        };
        let raw = utf8(&attr.value, base)?;
        let normalized: String = normalize_eol(raw)
            .chars()
            .map(|c| if matches!(c, '\t' | '\n') { ' ' } else { c })
            .collect();
        let value = unescape(&normalized, base)?;
        out.push(Attr {
            ns,
            local: utf8(local.into_inner(), base)?.to_owned(),
            value,
        });
    }
    Ok(out)
}

fn utf8(bytes: &[u8], at: usize) -> Result<&str, EbmsError> {
    std::str::from_utf8(bytes)
        .map_err(|_| invalid(format!("the envelope is not valid UTF-8 near byte {at}")))
}

/// XML 1.0 §2.11: CR LF and lone CR are read as LF.
fn normalize_eol(s: &str) -> Cow<'_, str> {
    if s.contains('\r') {
        Cow::Owned(s.replace("\r\n", "\n").replace('\r', "\n"))
    } else {
        Cow::Borrowed(s)
    }
}

/// Unescapes the five predefined entities and character references. Any other
/// entity reference is an error: without a DTD it cannot be declared, and Varti
/// never expands custom entities.
fn unescape(s: &str, at: usize) -> Result<String, EbmsError> {
    let value = quick_xml::escape::unescape(s).map_err(|e| {
        invalid(format!(
            "bad entity or character reference near byte {at}: {e}"
        ))
    })?;
    check_chars(&value, at)?;
    Ok(value.into_owned())
}

fn check_chars(s: &str, at: usize) -> Result<(), EbmsError> {
    match s.chars().find(|c| !is_xml_char(*c)) {
        Some(c) => Err(invalid(format!(
            "the character U+{:04X} near byte {at} is not allowed in XML 1.0",
            c as u32
        ))),
        None => Ok(()),
    }
}

fn text_value(raw: &[u8], at: usize) -> Result<String, EbmsError> {
    let s = normalize_eol(utf8(raw, at)?);
    unescape(&s, at)
}

// ---------------------------------------------------------------------------------
// From the tree to the model (the ebMS3 schema's structure)
// ---------------------------------------------------------------------------------

/// Picks the children of an ebMS element by name, refusing duplicates and names
/// the schema does not allow. The schema fixes an order; we accept any, since order
/// carries no meaning here and peers are known to differ.
struct Children<'a> {
    parent: &'a Elem,
    found: Vec<(&'static str, Vec<&'a Elem>)>,
}

impl<'a> Children<'a> {
    /// `allowed` are the child local names in `ns`; `foreign_ok` says whether the
    /// schema has an `xsd:any namespace="##other"` here (such children are skipped).
    fn of(
        parent: &'a Elem,
        ns: &str,
        allowed: &[&'static str],
        foreign_ok: bool,
    ) -> Result<Children<'a>, EbmsError> {
        if !parent.text.trim_matches(is_xml_space).is_empty() {
            return Err(invalid(format!(
                "{} contains text ({:?}) where only elements are allowed",
                parent.describe(),
                truncate(&parent.text)
            )));
        }
        let mut found: Vec<(&'static str, Vec<&Elem>)> =
            allowed.iter().map(|n| (*n, Vec::new())).collect();
        for child in &parent.children {
            if child.ns.as_deref() == Some(ns) {
                if let Some(slot) = found.iter_mut().find(|(n, _)| *n == child.local) {
                    slot.1.push(child);
                    continue;
                }
            } else if foreign_ok && child.ns.is_some() && child.ns.as_deref() != Some(EBMS_NS) {
                continue;
            }
            return Err(invalid(format!(
                "{} is not allowed in {}",
                child.describe(),
                parent.describe()
            )));
        }
        Ok(Children { parent, found })
    }

    fn all(&self, name: &str) -> &[&'a Elem] {
        self.found
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_slice())
            .unwrap_or(&[])
    }

    fn optional(&self, name: &str) -> Result<Option<&'a Elem>, EbmsError> {
        match self.all(name) {
            [] => Ok(None),
            [one] => Ok(Some(one)),
            _ => Err(invalid(format!(
                "{} has more than one {name} element; the schema allows one",
                self.parent.describe()
            ))),
        }
    }

    fn required(&self, name: &str) -> Result<&'a Elem, EbmsError> {
        self.optional(name)?.ok_or_else(|| {
            invalid(format!(
                "{} has no {name} element, which the ebMS3 schema requires",
                self.parent.describe()
            ))
        })
    }
}

fn truncate(s: &str) -> String {
    let t = s.trim_matches(is_xml_space);
    match t.char_indices().nth(40) {
        Some((i, _)) => format!("{}…", &t[..i]),
        None => t.to_owned(),
    }
}

/// The text of an element that has only text, as carried.
fn leaf_text(e: &Elem) -> Result<String, EbmsError> {
    if let Some(child) = e.children.first() {
        return Err(invalid(format!(
            "{} must contain only text but contains {}",
            e.describe(),
            child.describe()
        )));
    }
    Ok(e.text.clone())
}

/// The text of an identifier-like element, without surrounding whitespace.
///
/// Why trim: pretty-printing producers wrap these values onto their own lines (see
/// phase4's `UserMessage12.xml`: `<eb:PartyId …>\n\t\t5209999001264</eb:PartyId>`),
/// the whitespace carries no meaning for an identifier, and an untrimmed value could
/// never match a PMode. Property values, which are business data, are not trimmed.
fn token(e: &Elem) -> Result<String, EbmsError> {
    Ok(leaf_text(e)?.trim_matches(is_xml_space).to_owned())
}

fn opt(s: Option<&str>) -> Option<String> {
    s.map(str::to_owned)
}

fn convert_messaging(e: &Elem, xml: &[u8]) -> Result<Messaging, EbmsError> {
    // Messaging has xsd:any ##other after its ebMS children.
    let c = Children::of(e, EBMS_NS, &["UserMessage", "SignalMessage"], true)?;
    let user_message = match c.all("UserMessage") {
        [] => None,
        [one] => Some(convert_user_message(one)?),
        many => {
            // ebMS3 Core §5.2.1 and the AS4 profile: one UserMessage per message
            // (bundling is not used); more breaks the packaging rules: 0009.
            return Err(invalid(format!(
                "eb:Messaging holds {} UserMessage elements; AS4 allows one per message \
                 (send them as separate messages)",
                many.len()
            )));
        }
    };
    let signals = c
        .all("SignalMessage")
        .iter()
        .map(|s| convert_signal(s, xml))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Messaging {
        id: opt(e.attr_ns(WSU_NS, "Id").or_else(|| e.attr("id"))),
        user_message,
        signals,
    })
}

fn convert_message_info(e: &Elem) -> Result<MessageInfo, EbmsError> {
    let c = Children::of(
        e,
        EBMS_NS,
        &["Timestamp", "MessageId", "RefToMessageId"],
        false,
    )?;
    let lexical = token(c.required("Timestamp")?)?;
    // The schema types Timestamp as xsd:dateTime: a value outside that lexical space
    // (such as 2006-30-30T30:99:99) makes the header schema-invalid, hence 0009.
    let timestamp =
        Timestamp::parse(&lexical).map_err(|why| invalid(format!("eb:Timestamp: {why}")))?;
    Ok(MessageInfo {
        timestamp,
        message_id: token(c.required("MessageId")?)?,
        ref_to_message_id: c.optional("RefToMessageId")?.map(token).transpose()?,
    })
}

fn convert_user_message(e: &Elem) -> Result<UserMessage, EbmsError> {
    let c = Children::of(
        e,
        EBMS_NS,
        &[
            "MessageInfo",
            "PartyInfo",
            "CollaborationInfo",
            "MessageProperties",
            "PayloadInfo",
        ],
        false,
    )?;
    let message_info = convert_message_info(c.required("MessageInfo")?)?;
    let pi = Children::of(c.required("PartyInfo")?, EBMS_NS, &["From", "To"], false)?;
    let party_info = PartyInfo {
        from: convert_party(pi.required("From")?)?,
        to: convert_party(pi.required("To")?)?,
    };
    let ci = c.required("CollaborationInfo")?;
    let cc = Children::of(
        ci,
        EBMS_NS,
        &["AgreementRef", "Service", "Action", "ConversationId"],
        false,
    )?;
    let service = cc.required("Service")?;
    let collaboration_info = CollaborationInfo {
        agreement_ref: cc
            .optional("AgreementRef")?
            .map(|a| {
                Ok::<_, EbmsError>(AgreementRef {
                    value: token(a)?,
                    type_: opt(a.attr("type")),
                    pmode: opt(a.attr("pmode")),
                })
            })
            .transpose()?,
        service: Service {
            value: token(service)?,
            type_: opt(service.attr("type")),
        },
        action: token(cc.required("Action")?)?,
        conversation_id: token(cc.required("ConversationId")?)?,
    };
    let properties = match c.optional("MessageProperties")? {
        Some(p) => convert_properties(p)?,
        None => Vec::new(),
    };
    let parts = match c.optional("PayloadInfo")? {
        Some(p) => {
            let pc = Children::of(p, EBMS_NS, &["PartInfo"], false)?;
            let parts = pc.all("PartInfo");
            if parts.is_empty() {
                return Err(invalid("eb:PayloadInfo is empty; the schema requires at least one eb:PartInfo (omit PayloadInfo when there is no payload)"));
            }
            parts
                .iter()
                .map(|p| convert_part(p))
                .collect::<Result<_, _>>()?
        }
        None => Vec::new(),
    };
    Ok(UserMessage {
        mpc: opt(e.attr("mpc")),
        message_info,
        party_info,
        collaboration_info,
        properties,
        parts,
    })
}

fn convert_party(e: &Elem) -> Result<Party, EbmsError> {
    let c = Children::of(e, EBMS_NS, &["PartyId", "Role"], false)?;
    let party_ids = c
        .all("PartyId")
        .iter()
        .map(|p| {
            Ok(PartyId {
                value: token(p)?,
                type_: opt(p.attr("type")),
            })
        })
        .collect::<Result<Vec<_>, EbmsError>>()?;
    Ok(Party {
        party_ids,
        role: token(c.required("Role")?)?,
    })
}

fn convert_properties(e: &Elem) -> Result<Vec<Property>, EbmsError> {
    let c = Children::of(e, EBMS_NS, &["Property"], false)?;
    let props = c.all("Property");
    if props.is_empty() {
        return Err(invalid(format!(
            "{} is empty; the schema requires at least one eb:Property (omit the element instead)",
            e.describe()
        )));
    }
    props
        .iter()
        .map(|p| {
            Ok(Property {
                name: p.required_attr("name")?.to_owned(),
                type_: opt(p.attr("type")),
                value: leaf_text(p)?,
            })
        })
        .collect()
}

fn convert_part(e: &Elem) -> Result<PartInfo, EbmsError> {
    let c = Children::of(
        e,
        EBMS_NS,
        &["Schema", "Description", "PartProperties"],
        false,
    )?;
    let schema = c
        .optional("Schema")?
        .map(|s| {
            Ok::<_, EbmsError>(Schema {
                location: s.required_attr("location")?.to_owned(),
                version: opt(s.attr("version")),
                namespace: opt(s.attr("namespace")),
            })
        })
        .transpose()?;
    Ok(PartInfo {
        href: e
            .attr("href")
            .map(|h| h.trim_matches(is_xml_space).to_owned()),
        schema,
        description: c
            .optional("Description")?
            .map(convert_description)
            .transpose()?,
        properties: match c.optional("PartProperties")? {
            Some(p) => convert_properties(p)?,
            None => Vec::new(),
        },
    })
}

fn convert_description(e: &Elem) -> Result<Description, EbmsError> {
    Ok(Description {
        lang: e.attr_ns(XML_NS, "lang").unwrap_or_default().to_owned(),
        text: leaf_text(e)?,
    })
}

fn convert_signal(e: &Elem, xml: &[u8]) -> Result<SignalMessage, EbmsError> {
    // SignalMessage has xsd:any ##other after its ebMS children.
    let c = Children::of(
        e,
        EBMS_NS,
        &["MessageInfo", "PullRequest", "Receipt", "Error"],
        true,
    )?;
    let message_info = convert_message_info(c.required("MessageInfo")?)?;
    let pull = c.optional("PullRequest")?;
    let receipt = c.optional("Receipt")?;
    let errors = c.all("Error");
    // ebMS3 Core §5.2.3: a signal is a PullRequest, a Receipt, or one or more Errors.
    let kind =
        match (pull, receipt, errors.is_empty()) {
            (Some(p), None, true) => {
                Children::of(p, EBMS_NS, &[], false)?;
                SignalKind::PullRequest(PullRequest {
                    mpc: opt(p.attr("mpc")),
                })
            }
            (None, Some(r), true) => SignalKind::Receipt(convert_receipt(r, xml)?),
            (None, None, false) => SignalKind::Errors(
                errors
                    .iter()
                    .map(|e| convert_error(e))
                    .collect::<Result<_, _>>()?,
            ),
            (None, None, true) => {
                return Err(invalid(
                    "eb:SignalMessage has no PullRequest, Receipt or Error: it signals nothing",
                ))
            }
            _ => return Err(invalid(
                "eb:SignalMessage mixes PullRequest, Receipt and Error; a signal is exactly one \
                 of them (send separate signals)",
            )),
        };
    Ok(SignalMessage { message_info, kind })
}

fn convert_receipt(e: &Elem, xml: &[u8]) -> Result<Receipt, EbmsError> {
    if !e.text.trim_matches(is_xml_space).is_empty() {
        return Err(invalid(
            "eb:Receipt contains text where only elements are allowed",
        ));
    }
    let mut receipt = Receipt {
        non_repudiation: None,
        other: Vec::new(),
    };
    for child in &e.children {
        if child.is(EBBP_NS, "NonRepudiationInformation") {
            if receipt.non_repudiation.is_some() {
                return Err(invalid(
                    "eb:Receipt holds two ebbp:NonRepudiationInformation elements",
                ));
            }
            receipt.non_repudiation = Some(convert_nri(child)?);
        } else if child.ns.as_deref() == Some(EBMS_NS) {
            // Receipt content is xsd:any namespace="##other".
            return Err(invalid(format!(
                "{} is not allowed in eb:Receipt",
                child.describe()
            )));
        } else {
            let raw = xml
                .get(child.outer.clone())
                .map(String::from_utf8_lossy)
                .unwrap_or_default();
            receipt.other.push(raw.into_owned());
        }
    }
    Ok(receipt)
}

fn convert_nri(e: &Elem) -> Result<Vec<MessagePartNrInformation>, EbmsError> {
    let c = Children::of(e, EBBP_NS, &["MessagePartNRInformation"], false)?;
    let parts = c.all("MessagePartNRInformation");
    if parts.is_empty() {
        return Err(invalid(
            "ebbp:NonRepudiationInformation lists no MessagePartNRInformation",
        ));
    }
    parts
        .iter()
        .map(|p| {
            let mut part_identifier = None;
            let mut reference = None;
            if !p.text.trim_matches(is_xml_space).is_empty() {
                return Err(invalid("ebbp:MessagePartNRInformation contains stray text"));
            }
            for child in &p.children {
                if child.is(EBBP_NS, "MessagePartIdentifier") && part_identifier.is_none() {
                    part_identifier = Some(token(child)?);
                } else if child.is(DS_NS, "Reference") && reference.is_none() {
                    reference = Some(convert_reference(child)?);
                } else {
                    return Err(invalid(format!(
                        "{} is not allowed in ebbp:MessagePartNRInformation",
                        child.describe()
                    )));
                }
            }
            if part_identifier.is_none() && reference.is_none() {
                return Err(invalid(
                    "ebbp:MessagePartNRInformation holds neither a ds:Reference nor a \
                     MessagePartIdentifier",
                ));
            }
            Ok(MessagePartNrInformation {
                part_identifier,
                reference,
            })
        })
        .collect()
}

fn convert_reference(e: &Elem) -> Result<DsReference, EbmsError> {
    let c = Children::of(
        e,
        DS_NS,
        &["Transforms", "DigestMethod", "DigestValue"],
        false,
    )?;
    let transforms = match c.optional("Transforms")? {
        Some(t) => Children::of(t, DS_NS, &["Transform"], false)?
            .all("Transform")
            .iter()
            .map(|t| {
                // Transform parameters other than InclusiveNamespaces are not needed to
                // compare a receipt with a signature, so they are not kept.
                let prefixes = t
                    .children
                    .iter()
                    .find(|p| p.is(EXC_C14N_NS, "InclusiveNamespaces"))
                    .map(|p| p.attr("PrefixList").unwrap_or_default().to_owned());
                Ok(DsTransform {
                    algorithm: t.required_attr("Algorithm")?.to_owned(),
                    inclusive_prefixes: prefixes,
                })
            })
            .collect::<Result<_, EbmsError>>()?,
        None => Vec::new(),
    };
    let digest_value: String = leaf_text(c.required("DigestValue")?)?
        .chars()
        .filter(|c| !is_xml_space(*c))
        .collect();
    Ok(DsReference {
        uri: opt(e.attr("URI")),
        transforms,
        digest_method: c
            .required("DigestMethod")?
            .required_attr("Algorithm")?
            .to_owned(),
        digest_value,
    })
}

fn convert_error(e: &Elem) -> Result<SignalError, EbmsError> {
    let c = Children::of(e, EBMS_NS, &["Description", "ErrorDetail"], false)?;
    let error_code = e
        .required_attr("errorCode")?
        .trim_matches(is_xml_space)
        .to_owned();
    Ok(SignalError {
        code: ErrorCode::from_code(&error_code),
        error_code,
        severity: e
            .required_attr("severity")?
            .trim_matches(is_xml_space)
            .to_owned(),
        category: opt(e.attr("category")),
        ref_to_message_in_error: opt(e.attr("refToMessageInError")),
        origin: opt(e.attr("origin")),
        short_description: opt(e.attr("shortDescription")),
        description: c
            .optional("Description")?
            .map(convert_description)
            .transpose()?,
        error_detail: c.optional("ErrorDetail")?.map(leaf_text).transpose()?,
    })
}

// ---------------------------------------------------------------------------------
// Validation shared by reading and writing
// ---------------------------------------------------------------------------------

/// Checks the rules of the ebMS3 schema and the AS4 profile that the model's types
/// cannot express (non-empty identifiers, at least one party id, a non-empty header).
/// Used on every parsed header and before every build.
pub fn validate_messaging(m: &Messaging) -> Result<(), EbmsError> {
    if m.user_message.is_none() && m.signals.is_empty() {
        // The schema would allow an empty Messaging, but it carries no message at all;
        // ebMS3 packaging needs a UserMessage or a SignalMessage: 0009.
        return Err(invalid(
            "eb:Messaging is empty: it must hold a UserMessage or a SignalMessage",
        ));
    }
    if let Some(um) = &m.user_message {
        let id = &um.message_info.message_id;
        validate_message_info(&um.message_info, "UserMessage").map_err(|e| with_id(e, id))?;
        validate_user_message(um).map_err(|e| with_id(e, id))?;
    }
    for s in &m.signals {
        let id = &s.message_info.message_id;
        validate_message_info(&s.message_info, "SignalMessage").map_err(|e| with_id(e, id))?;
        if let SignalKind::Errors(errors) = &s.kind {
            if errors.is_empty() {
                return Err(with_id(
                    invalid("an error signal must hold at least one eb:Error"),
                    id,
                ));
            }
            for e in errors {
                if e.error_code.is_empty() || e.severity.is_empty() {
                    return Err(with_id(
                        invalid("eb:Error needs a non-empty errorCode and severity"),
                        id,
                    ));
                }
            }
        }
        if let SignalKind::Receipt(r) = &s.kind {
            if r.non_repudiation.as_ref().is_some_and(Vec::is_empty) {
                return Err(with_id(
                    invalid("NonRepudiationInformation must list at least one part"),
                    id,
                ));
            }
            if r.non_repudiation.is_none() && r.other.is_empty() {
                return Err(with_id(
                    invalid(
                        "eb:Receipt is empty; it must hold ebbp:NonRepudiationInformation or a \
                         copy of the received message's header",
                    ),
                    id,
                ));
            }
        }
    }
    Ok(())
}

/// Refers the error to message `id`, unless it is not a valid message id (an error
/// signal must not echo it).
fn with_id(e: EbmsError, id: &str) -> EbmsError {
    if super::id::check(id).is_err() {
        e
    } else {
        e.for_message(id)
    }
}

fn validate_message_info(mi: &MessageInfo, what: &str) -> Result<(), EbmsError> {
    // The schema types MessageId as a non-empty string; an empty one is schema-invalid.
    if mi.message_id.is_empty() {
        return Err(invalid(format!(
            "the {what}'s eb:MessageId is empty; give every message a unique id such as \
             <uuid>@<your-domain>"
        )));
    }
    if mi.ref_to_message_id.as_deref() == Some("") {
        return Err(invalid(format!(
            "the {what}'s eb:RefToMessageId is empty; omit it or name the message referred to"
        )));
    }
    // ebMS3 Core §5.2.2.1: both are RFC 2822 message ids; a value outside that syntax
    // (`../x`) is refused before it reaches the store, file names or logs.
    if let Err(why) = super::id::check(&mi.message_id) {
        return Err(invalid(format!("the {what}'s eb:MessageId: {why}")));
    }
    if let Some(Err(why)) = mi.ref_to_message_id.as_deref().map(super::id::check) {
        return Err(invalid(format!("the {what}'s eb:RefToMessageId: {why}")));
    }
    Ok(())
}

fn validate_user_message(um: &UserMessage) -> Result<(), EbmsError> {
    for (side, party) in [("From", &um.party_info.from), ("To", &um.party_info.to)] {
        // PartyId is a non-empty string and From/To need at least one (schema).
        if party.party_ids.is_empty() {
            return Err(invalid(format!(
                "eb:{side} has no eb:PartyId; name the party (e.g. with an ebCore party id)"
            )));
        }
        if party.party_ids.iter().any(|p| p.value.is_empty()) {
            return Err(invalid(format!("eb:{side} has an empty eb:PartyId")));
        }
        if party.role.is_empty() {
            return Err(invalid(format!(
                "eb:{side}/eb:Role is empty; use the agreed role or {ROLE_DEFAULT}"
            )));
        }
    }
    let ci = &um.collaboration_info;
    // Without a service and action no PMode can match: treated as missing (schema).
    if ci.service.value.is_empty() {
        return Err(invalid("eb:Service is empty; name the business service"));
    }
    if ci.action.is_empty() {
        return Err(invalid("eb:Action is empty; name the business action"));
    }
    if let Some(a) = &ci.agreement_ref {
        if a.value.is_empty() {
            return Err(invalid(
                "eb:AgreementRef is empty; omit it or name the agreement",
            ));
        }
    }
    let all_props = um
        .properties
        .iter()
        .chain(um.parts.iter().flat_map(|p| p.properties.iter()));
    for p in all_props {
        if p.name.is_empty() {
            return Err(invalid("an eb:Property has an empty name"));
        }
    }
    Ok(())
}
