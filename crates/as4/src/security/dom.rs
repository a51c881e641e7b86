//! A small, safe, read-only view of a libxml2 document.
//!
//! The security layer needs libxml2 for one thing nothing else in Rust does
//! byte-exactly: exclusive XML canonicalization. It therefore parses the SOAP envelope
//! with libxml2 (through the `libxml` crate's raw FFI) and walks that tree itself, so
//! that the element it canonicalizes and digests is *the same node* it reports as
//! verified — never a second parse that could disagree (the root of signature-wrapping
//! attacks).
//!
//! Parsing is locked down: no network, no DTD loading, no entity substitution, and any
//! document with a DOCTYPE is refused before libxml2 sees it (SOAP forbids DTDs, and
//! entity declarations are the classic XML bomb).

use std::ffi::{c_char, c_int, CStr};
use std::marker::PhantomData;
use std::sync::Once;

use libxml::bindings as ffi;

use crate::error::{EbmsError, ErrorCode};

/// Largest document we hand to libxml2 (its length is a C `int`); envelopes are far smaller.
const MAX_DOCUMENT_LEN: usize = 256 * 1024 * 1024;

pub use crate::ns::WSU_NS as NS_WSU;
use crate::ns::XML_NS as NS_XML;

static INIT: Once = Once::new();

fn init_libxml() {
    // xmlInitParser must run once before threads use the parser concurrently.
    INIT.call_once(|| unsafe { ffi::xmlInitParser() });
}

/// A parsed XML document (owned libxml2 tree). Read-only.
pub struct XmlDocument {
    ptr: ffi::xmlDocPtr,
}

// SAFETY: the document is an exclusively owned tree (its dictionary too); it is never
// shared between threads by this type (no `Sync`), only moved.
unsafe impl Send for XmlDocument {}

impl Drop for XmlDocument {
    fn drop(&mut self) {
        // SAFETY: ptr came from xmlCtxtReadMemory and is freed exactly once.
        unsafe { ffi::xmlFreeDoc(self.ptr) }
    }
}

impl std::fmt::Debug for XmlDocument {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XmlDocument").finish_non_exhaustive()
    }
}

impl XmlDocument {
    /// Parses `bytes` as XML with the safe options (no network, no DTD, no entity
    /// substitution). A document carrying a DOCTYPE is refused.
    ///
    /// Errors are `EBMS:0009 InvalidHeader` with libxml2's message and line.
    pub fn parse(bytes: &[u8]) -> Result<XmlDocument, EbmsError> {
        if bytes.len() > MAX_DOCUMENT_LEN {
            return Err(EbmsError::new(
                ErrorCode::InvalidHeader,
                format!(
                    "XML document of {} bytes exceeds the {} byte limit",
                    bytes.len(),
                    MAX_DOCUMENT_LEN
                ),
            ));
        }
        // Refuse before parsing: a DTD is never legitimate in SOAP (SOAP 1.2 part 1 §5)
        // and its entity declarations are the vector of XML bombs and XXE.
        if memchr::memmem::find(bytes, b"<!DOCTYPE").is_some() {
            return Err(EbmsError::new(
                ErrorCode::InvalidHeader,
                "the XML document contains a DOCTYPE; SOAP messages must not carry a DTD",
            ));
        }
        init_libxml();
        let options = (ffi::xmlParserOption_XML_PARSE_NONET
            | ffi::xmlParserOption_XML_PARSE_NOERROR
            | ffi::xmlParserOption_XML_PARSE_NOWARNING) as c_int;
        // SAFETY: plain FFI; the context is freed on every path, the buffer outlives the call.
        unsafe {
            let ctxt = ffi::xmlNewParserCtxt();
            if ctxt.is_null() {
                return Err(EbmsError::new(
                    ErrorCode::Other,
                    "libxml2 could not allocate a parser",
                ));
            }
            let doc = ffi::xmlCtxtReadMemory(
                ctxt,
                bytes.as_ptr() as *const c_char,
                bytes.len() as c_int,
                c"varti-message.xml".as_ptr(),
                std::ptr::null(),
                options,
            );
            let well_formed = (*ctxt).wellFormed != 0;
            let err = &(*ctxt).lastError;
            let message = if err.message.is_null() {
                String::from("not well-formed")
            } else {
                CStr::from_ptr(err.message)
                    .to_string_lossy()
                    .trim()
                    .to_string()
            };
            let line = err.line;
            ffi::xmlFreeParserCtxt(ctxt);
            if doc.is_null() || !well_formed {
                if !doc.is_null() {
                    ffi::xmlFreeDoc(doc);
                }
                return Err(EbmsError::new(
                    ErrorCode::InvalidHeader,
                    format!("the XML document is not well-formed (line {line}): {message}"),
                ));
            }
            let document = XmlDocument { ptr: doc };
            if !(*doc).intSubset.is_null() || !(*doc).extSubset.is_null() {
                return Err(EbmsError::new(
                    ErrorCode::InvalidHeader,
                    "the XML document declares a DTD; SOAP messages must not carry one",
                ));
            }
            if document.root().is_none() {
                return Err(EbmsError::new(
                    ErrorCode::InvalidHeader,
                    "the XML document has no root element",
                ));
            }
            Ok(document)
        }
    }

    /// The document element.
    pub fn root(&self) -> Option<Element<'_>> {
        // SAFETY: ptr is a valid document for the lifetime of &self.
        let node = unsafe { ffi::xmlDocGetRootElement(self.ptr) };
        Element::wrap(node)
    }

    /// Every element of the document in document order (the root first).
    ///
    /// A walk along libxml2's own links (first child, next sibling, parent): it allocates
    /// nothing and keeps no stack, so a hostile document's depth costs it nothing either.
    pub fn elements(&self) -> impl Iterator<Item = Element<'_>> + '_ {
        let root = self.root();
        let mut next = root;
        std::iter::from_fn(move || {
            let current = next?;
            next = current.following_in(root?);
            Some(current)
        })
    }

    pub(crate) fn as_ptr(&self) -> ffi::xmlDocPtr {
        self.ptr
    }
}

/// An element of an [`XmlDocument`]. Cheap to copy; compares by node identity.
#[derive(Clone, Copy)]
pub struct Element<'d> {
    ptr: ffi::xmlNodePtr,
    _doc: PhantomData<&'d XmlDocument>,
}

impl PartialEq for Element<'_> {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self.ptr, other.ptr)
    }
}
impl Eq for Element<'_> {}

impl std::fmt::Debug for Element<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "<{}> in {{{}}}",
            self.local_name(),
            self.namespace().unwrap_or("")
        )
    }
}

/// Reads a libxml2 `xmlChar*` as a `&str` (libxml2 stores names and text as UTF-8).
///
/// SAFETY: `p` must be null or a NUL-terminated string living as long as `'a`.
unsafe fn xml_str<'a>(p: *const ffi::xmlChar) -> Option<&'a str> {
    if p.is_null() {
        return None;
    }
    CStr::from_ptr(p as *const c_char).to_str().ok()
}

/// Whether the libxml2 string `p` is `s`, compared byte by byte: neither measured nor
/// checked for UTF-8 first (names are compared for every element and attribute a lookup
/// passes, and equal bytes to a `&str` are valid UTF-8 anyway).
///
/// SAFETY: `p` must be null or a NUL-terminated string.
unsafe fn xml_eq(p: *const ffi::xmlChar, s: &str) -> bool {
    if p.is_null() {
        return false;
    }
    for (i, &b) in s.as_bytes().iter().enumerate() {
        // `p`'s NUL differs from every byte of `s` but a NUL, which no libxml2 name holds:
        // the walk stops at the end of `p` at the latest.
        if b == 0 || *p.add(i) != b {
            return false;
        }
    }
    *p.add(s.len()) == 0
}

impl<'d> Element<'d> {
    fn wrap(ptr: ffi::xmlNodePtr) -> Option<Element<'d>> {
        // SAFETY: ptr is null or a node of a live document.
        if ptr.is_null() || unsafe { (*ptr).type_ } != ffi::xmlElementType_XML_ELEMENT_NODE {
            return None;
        }
        Some(Element {
            ptr,
            _doc: PhantomData,
        })
    }

    pub(crate) fn as_ptr(&self) -> ffi::xmlNodePtr {
        self.ptr
    }

    /// The local name.
    pub fn local_name(&self) -> &'d str {
        // SAFETY: a live element node always has a name.
        unsafe { xml_str((*self.ptr).name).unwrap_or("") }
    }

    /// The namespace URI, if the element is in one.
    pub fn namespace(&self) -> Option<&'d str> {
        // SAFETY: ns is null or a live namespace of this document.
        unsafe {
            let ns = (*self.ptr).ns;
            if ns.is_null() {
                None
            } else {
                xml_str((*ns).href)
            }
        }
    }

    /// Whether the element has this namespace URI and local name.
    pub fn is(&self, namespace: &str, local_name: &str) -> bool {
        // SAFETY: a live element's name, and its namespace (null or live), are libxml2
        // strings.
        unsafe {
            let ns = (*self.ptr).ns;
            xml_eq((*self.ptr).name, local_name) && !ns.is_null() && xml_eq((*ns).href, namespace)
        }
    }

    /// The parent element (None for the document element).
    pub fn parent(&self) -> Option<Element<'d>> {
        // SAFETY: parent is null, the document node, or an element.
        Element::wrap(unsafe { (*self.ptr).parent })
    }

    /// The child elements, in order.
    pub fn children(&self) -> impl Iterator<Item = Element<'d>> + 'd {
        // SAFETY: children/next chain of a live node.
        let mut cur = unsafe { (*self.ptr).children };
        std::iter::from_fn(move || {
            while !cur.is_null() {
                let node = cur;
                cur = unsafe { (*node).next };
                if let Some(e) = Element::wrap(node) {
                    return Some(e);
                }
            }
            None
        })
    }

    /// The child elements with this namespace and local name.
    pub fn children_named(
        &self,
        namespace: &'d str,
        local_name: &'d str,
    ) -> impl Iterator<Item = Element<'d>> + 'd {
        self.children().filter(move |c| c.is(namespace, local_name))
    }

    /// The first child element with this namespace and local name.
    pub fn child(&self, namespace: &str, local_name: &str) -> Option<Element<'d>> {
        self.children().find(|c| c.is(namespace, local_name))
    }

    /// An attribute by local name and namespace (`None` namespace: unqualified).
    pub(crate) fn attribute_ns(&self, namespace: Option<&str>, name: &str) -> Option<&'d str> {
        // SAFETY: properties chain of a live element; attribute values are text children.
        unsafe {
            let mut attr = (*self.ptr).properties;
            while !attr.is_null() {
                let a = &*attr;
                let in_namespace = match namespace {
                    None => a.ns.is_null(),
                    Some(n) => !a.ns.is_null() && xml_eq((*a.ns).href, n),
                };
                if in_namespace && xml_eq(a.name, name) {
                    let child = a.children;
                    if child.is_null() {
                        return Some("");
                    }
                    // Without entity substitution an attribute value is one text node.
                    if (*child).next.is_null() {
                        return xml_str((*child).content);
                    }
                    return None;
                }
                attr = a.next;
            }
            None
        }
    }

    /// An unqualified attribute.
    pub fn attribute(&self, name: &str) -> Option<&'d str> {
        self.attribute_ns(None, name)
    }

    /// The identifiers this element carries for same-document references: `wsu:Id`,
    /// `Id`, `id` and `xml:id`, deduplicated.
    pub fn ids(&self) -> Vec<&'d str> {
        let mut ids: Vec<&str> = Vec::new();
        for v in [
            self.attribute_ns(Some(NS_WSU), "Id"),
            self.attribute("Id"),
            self.attribute("id"),
            self.attribute_ns(Some(NS_XML), "id"),
        ]
        .into_iter()
        .flatten()
        {
            if !ids.contains(&v) {
                ids.push(v);
            }
        }
        ids
    }

    /// The concatenated text of the element's direct text and CDATA children.
    pub fn text(&self) -> String {
        let mut out = String::new();
        // SAFETY: children chain of a live node.
        unsafe {
            let mut cur = (*self.ptr).children;
            while !cur.is_null() {
                let t = (*cur).type_;
                if t == ffi::xmlElementType_XML_TEXT_NODE
                    || t == ffi::xmlElementType_XML_CDATA_SECTION_NODE
                {
                    if let Some(s) = xml_str((*cur).content) {
                        out.push_str(s);
                    }
                }
                cur = (*cur).next;
            }
        }
        out
    }

    /// Whether a direct comment child of the element holds exactly `text` (what is
    /// between `<!--` and `-->`).
    pub(crate) fn has_comment_child(&self, text: &str) -> bool {
        // SAFETY: children chain of a live node; a comment's content is its text.
        unsafe {
            let mut cur = (*self.ptr).children;
            while !cur.is_null() {
                if (*cur).type_ == ffi::xmlElementType_XML_COMMENT_NODE
                    && xml_str((*cur).content) == Some(text)
                {
                    return true;
                }
                cur = (*cur).next;
            }
        }
        false
    }

    /// Whether `self` is `ancestor` or lies inside it.
    pub(crate) fn is_inside(&self, ancestor: &Element<'_>) -> bool {
        let mut cur = self.ptr;
        // SAFETY: parent chain of a live node ends at the document node (or null).
        unsafe {
            while !cur.is_null() {
                if std::ptr::eq(cur, ancestor.ptr) {
                    return true;
                }
                cur = (*cur).parent;
            }
        }
        false
    }

    /// A readable path such as `/Envelope/Header/Messaging`, for error messages.
    pub fn path(&self) -> String {
        let mut names = vec![self.local_name()];
        let mut cur = self.parent();
        while let Some(p) = cur {
            names.push(p.local_name());
            cur = p.parent();
        }
        names.reverse();
        format!("/{}", names.join("/"))
    }

    /// The element after this one in document order within the subtree of `root` (its
    /// first child element, else the next element sibling of it or of its nearest ancestor
    /// below `root` that has one), or `None` when the subtree is done.
    fn following_in(&self, root: Element<'d>) -> Option<Element<'d>> {
        if let Some(child) = self.children().next() {
            return Some(child);
        }
        let mut at = *self;
        loop {
            if at == root {
                return None;
            }
            if let Some(sibling) = at.next_sibling() {
                return Some(sibling);
            }
            at = at.parent()?;
        }
    }

    /// The next sibling that is an element.
    fn next_sibling(&self) -> Option<Element<'d>> {
        // SAFETY: the next chain of a live node.
        let mut cur = unsafe { (*self.ptr).next };
        while !cur.is_null() {
            if let Some(e) = Element::wrap(cur) {
                return Some(e);
            }
            cur = unsafe { (*cur).next };
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libxml_strings_compare_equal_only_to_the_same_bytes() {
        let name = b"Messaging\0";
        let p = name.as_ptr();
        // SAFETY: `p` is NUL-terminated, `empty` too; null is allowed.
        unsafe {
            assert!(xml_eq(p, "Messaging"));
            assert!(!xml_eq(p, "Messagin"), "a prefix of the name");
            assert!(!xml_eq(p, "MessagingX"), "the name is a prefix");
            assert!(!xml_eq(p, "messaging"));
            assert!(!xml_eq(p, "Mess\0ging"), "a NUL never matches");
            assert!(!xml_eq(p, ""));
            let empty = b"\0";
            assert!(xml_eq(empty.as_ptr(), ""));
            assert!(!xml_eq(std::ptr::null(), ""));
        }
    }

    #[test]
    fn elements_walks_every_element_in_document_order_and_nothing_else() {
        let doc = XmlDocument::parse(
            b"<a><b><c/>text<d><!-- note --></d></b><?pi x?><e>t<f/><g><h/></g></e></a>",
        )
        .unwrap();
        let names: Vec<_> = doc.elements().map(|e| e.local_name().to_owned()).collect();
        assert_eq!(names, ["a", "b", "c", "d", "e", "f", "g", "h"]);

        let lone = XmlDocument::parse(b"<only>text</only>").unwrap();
        assert_eq!(lone.elements().count(), 1);
    }

    #[test]
    fn elements_walks_a_deep_document_to_its_bottom_and_back() {
        let depth = 200;
        let mut xml = String::new();
        for i in 0..depth {
            xml.push_str(&format!("<n{i}>"));
        }
        xml.push_str("<leaf/>");
        for i in (0..depth).rev() {
            xml.push_str(&format!("</n{i}>"));
        }
        let doc = XmlDocument::parse(xml.as_bytes()).unwrap();
        let names: Vec<_> = doc.elements().map(|e| e.local_name().to_owned()).collect();
        assert_eq!(names.len(), depth + 1);
        assert_eq!(names[0], "n0");
        assert_eq!(names[depth - 1], format!("n{}", depth - 1));
        assert_eq!(names[depth], "leaf");
    }
}
