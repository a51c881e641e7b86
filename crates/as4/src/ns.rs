//! XML namespace URIs, in one place.
//!
//! Every module that reads or writes AS4 XML uses these; the older per-module names
//! (`model::EBMS_NS`, `verify::NS_EBMS`, `token::NS_DS`, …) are re-exports of them.

/// The ebMS3 header namespace (`eb:`).
pub const EBMS_NS: &str = "http://docs.oasis-open.org/ebxml-msg/ebms/v3.0/ns/core/200704/";
/// The SOAP 1.2 envelope namespace (`S12:`), the only one Varti writes.
pub const SOAP12_NS: &str = "http://www.w3.org/2003/05/soap-envelope";
/// The SOAP 1.1 envelope namespace (`S11:`), read for peers that still send it.
pub const SOAP11_NS: &str = "http://schemas.xmlsoap.org/soap/envelope/";
/// The WS-Security utility namespace (`wsu:`), home of `wsu:Id`.
pub const WSU_NS: &str =
    "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd";
/// The WS-Security 1.0 extension namespace (`wsse:`), home of `wsse:Security`.
pub const WSSE_NS: &str =
    "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd";
/// The WS-Security 1.1 extension namespace (`wsse11:`).
pub(crate) const WSSE11_NS: &str =
    "http://docs.oasis-open.org/wss/oasis-wss-wssecurity-secext-1.1.xsd";
/// The ebBP signals namespace (`ebbp:`) of `NonRepudiationInformation`.
pub const EBBP_NS: &str = "http://docs.oasis-open.org/ebxml-bp/ebbp-signals-2.0";
/// The XML-DSig namespace (`ds:`).
pub const DS_NS: &str = "http://www.w3.org/2000/09/xmldsig#";
/// XML-DSig 1.1 (`dsig11:`).
pub(crate) const DSIG11_NS: &str = "http://www.w3.org/2009/xmldsig11#";
/// RFC 9231 additional algorithms (`dsig-more:`).
pub(crate) const DSIG_MORE_NS: &str = "http://www.w3.org/2021/04/xmldsig-more#";
/// XML Encryption 1.0 (`xenc:`).
pub(crate) const XENC_NS: &str = "http://www.w3.org/2001/04/xmlenc#";
/// XML Encryption 1.1 (`xenc11:`).
pub(crate) const XENC11_NS: &str = "http://www.w3.org/2009/xmlenc11#";
/// Exclusive c14n, home of `ec:InclusiveNamespaces`.
pub const EXC_C14N_NS: &str = "http://www.w3.org/2001/10/xml-exc-c14n#";
/// The namespace bound to the `xml:` prefix (`xml:lang`, `xml:id`).
pub const XML_NS: &str = "http://www.w3.org/XML/1998/namespace";
