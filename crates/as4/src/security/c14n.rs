//! Exclusive XML canonicalization (W3C `xml-exc-c14n#`, without comments), byte-exact.
//!
//! We call libxml2's `xmlC14NExecute` directly and collect the output bytes through our
//! own output-buffer callback. (The `libxml` crate's `canonicalize()` decodes each ~4 KB
//! output chunk as a string, which corrupts multi-byte UTF-8 split across chunks.)
//!
//! A subtree is selected with a visibility callback: a node is visible when it is the
//! chosen element or lies inside it; namespace nodes are judged by the element they are
//! attached to. This is the node-set of an XML-DSig same-document reference
//! (`#id` = the element with its descendants, attributes and namespaces).

use std::ffi::{c_char, c_int, c_void, CString};
use std::io::Write;

use libxml::bindings as ffi;

use super::dom::{Element, XmlDocument};
use crate::error::{EbmsError, ErrorCode};

/// The exclusive c14n algorithm URI (without comments).
pub(crate) const EXC_C14N: &str = "http://www.w3.org/2001/10/xml-exc-c14n#";

/// Canonicalizes the whole document with exclusive c14n; `prefixes` is the
/// InclusiveNamespaces PrefixList (`#default` names the default namespace).
pub fn canonicalize_document(doc: &XmlDocument, prefixes: &[&str]) -> Result<Vec<u8>, EbmsError> {
    let mut out = Vec::new();
    run(doc, None, prefixes, &mut out)?;
    Ok(out)
}

/// Canonicalizes one element and its subtree with exclusive c14n.
pub fn canonicalize_element(
    doc: &XmlDocument,
    element: Element<'_>,
    prefixes: &[&str],
) -> Result<Vec<u8>, EbmsError> {
    let mut out = Vec::new();
    run(doc, Some(element), prefixes, &mut out)?;
    Ok(out)
}

/// Canonicalizes one element into a writer (e.g. a digest), without buffering the output.
pub(crate) fn canonicalize_element_into(
    doc: &XmlDocument,
    element: Element<'_>,
    prefixes: &[&str],
    sink: &mut dyn Write,
) -> Result<(), EbmsError> {
    run(doc, Some(element), prefixes, sink)
}

/// Parses `xml` (safely, see [`XmlDocument::parse`]) and canonicalizes the whole document.
pub fn canonicalize_bytes(xml: &[u8], prefixes: &[&str]) -> Result<Vec<u8>, EbmsError> {
    let doc = XmlDocument::parse(xml)?;
    canonicalize_document(&doc, prefixes)
}

/// Splits an InclusiveNamespaces `PrefixList` attribute value (whitespace-separated).
pub(crate) fn parse_prefix_list(value: &str) -> Vec<&str> {
    value.split_ascii_whitespace().collect()
}

struct Sink<'a> {
    out: &'a mut dyn Write,
    failed: Option<std::io::Error>,
}

unsafe extern "C" fn write_cb(ctx: *mut c_void, buf: *const c_char, len: c_int) -> c_int {
    // SAFETY: ctx is the &mut Sink we passed to xmlOutputBufferCreateIO; buf holds len bytes.
    let sink = &mut *(ctx as *mut Sink<'_>);
    if len <= 0 {
        return 0;
    }
    let bytes = std::slice::from_raw_parts(buf as *const u8, len as usize);
    match sink.out.write_all(bytes) {
        Ok(()) => len,
        Err(e) => {
            sink.failed = Some(e);
            -1
        }
    }
}

unsafe extern "C" fn visible_cb(
    user: *mut c_void,
    node: ffi::xmlNodePtr,
    parent: ffi::xmlNodePtr,
) -> c_int {
    // SAFETY: user is the subtree root node; node/parent come from libxml2's walk.
    let root = user as ffi::xmlNodePtr;
    let mut cur = if node.is_null() {
        parent
    } else if (*node).type_ == ffi::xmlElementType_XML_NAMESPACE_DECL {
        // Namespace nodes are xmlNs structs (no parent field): judge by the element.
        parent
    } else {
        node
    };
    while !cur.is_null() {
        if std::ptr::eq(cur, root) {
            return 1;
        }
        cur = (*cur).parent;
    }
    0
}

fn run(
    doc: &XmlDocument,
    element: Option<Element<'_>>,
    prefixes: &[&str],
    out: &mut dyn Write,
) -> Result<(), EbmsError> {
    let internal = |what: String| EbmsError::new(ErrorCode::Other, what);
    let owned: Vec<CString> = prefixes
        .iter()
        .map(|p| CString::new(*p))
        .collect::<Result<_, _>>()
        .map_err(|_| internal("a c14n PrefixList entry contains a NUL byte".into()))?;
    let mut list: Vec<*mut ffi::xmlChar> = owned
        .iter()
        .map(|c| c.as_ptr() as *mut ffi::xmlChar)
        .collect();
    list.push(std::ptr::null_mut());
    let list_ptr = if prefixes.is_empty() {
        std::ptr::null_mut()
    } else {
        list.as_mut_ptr()
    };

    let mut sink = Sink { out, failed: None };
    // SAFETY: the output buffer writes into `sink`, which outlives it (closed below);
    // the prefix list and the document outlive the call; libxml2 only reads them.
    let rc = unsafe {
        let buf = ffi::xmlOutputBufferCreateIO(
            Some(write_cb),
            None,
            &mut sink as *mut Sink<'_> as *mut c_void,
            std::ptr::null_mut(),
        );
        if buf.is_null() {
            return Err(internal(
                "libxml2 could not allocate an output buffer".into(),
            ));
        }
        let (cb, user): (ffi::xmlC14NIsVisibleCallback, *mut c_void) = match element {
            Some(e) => (Some(visible_cb), e.as_ptr() as *mut c_void),
            None => (None, std::ptr::null_mut()),
        };
        let rc = ffi::xmlC14NExecute(
            doc.as_ptr(),
            cb,
            user,
            ffi::xmlC14NMode_XML_C14N_EXCLUSIVE_1_0 as c_int,
            list_ptr,
            0,
            buf,
        );
        // Flushes the remaining bytes through write_cb, then frees the buffer.
        let close = ffi::xmlOutputBufferClose(buf);
        if rc < 0 {
            rc
        } else {
            close
        }
    };
    if let Some(e) = sink.failed {
        return Err(internal(format!("writing canonical XML failed: {e}")));
    }
    if rc < 0 {
        return Err(internal(
            "libxml2 could not canonicalize the document (exclusive c14n failed)".into(),
        ));
    }
    Ok(())
}
