//! Exclusive XML canonicalization (W3C `xml-exc-c14n#`, without comments), byte-exact.
//!
//! The exclusive form of one element's subtree — every reference and `SignedInfo` of an
//! AS4 message — is written by our own code from libxml2's tree (`super::exc_c14n`, which
//! says why); a debug build checks each one against libxml2's. Everything else calls
//! libxml2's `xmlC14NExecute` directly and collects the output bytes through our own
//! output-buffer callback. (The `libxml` crate's `canonicalize()` decodes each ~4 KB
//! output chunk as a string, which corrupts multi-byte UTF-8 split across chunks.)
//!
//! A subtree is selected with a visibility callback: a node is visible when it is the
//! chosen element or lies inside it; namespace nodes are judged by the element they are
//! attached to. This is the node-set of an XML-DSig same-document reference
//! (`#id` = the element with its descendants, attributes and namespaces).
//!
//! Enveloped signatures (SMP responses, see `crate::discovery`) need two more things: the
//! inclusive algorithms (c14n 1.0 and 1.1, which libxml2 also implements) and a node-set
//! that is the whole document *minus* one subtree (the `ds:Signature` itself, which the
//! enveloped-signature transform removes). [`Canonicalization`] names the algorithm and
//! `canonicalize_enveloped` selects that node-set.

use std::ffi::{c_char, c_int, c_void, CString};
use std::io::Write;

use libxml::bindings as ffi;

use super::dom::{Element, XmlDocument};
use super::exc_c14n;
use crate::error::{EbmsError, ErrorCode};

/// The exclusive c14n algorithm URI (without comments).
pub(crate) const EXC_C14N: &str = "http://www.w3.org/2001/10/xml-exc-c14n#";
/// Inclusive canonical XML 1.0 (without comments).
pub(crate) const C14N_10: &str = "http://www.w3.org/TR/2001/REC-xml-c14n-20010315";
/// Inclusive canonical XML 1.1 (without comments).
pub(crate) const C14N_11: &str = "http://www.w3.org/2006/12/xml-c14n11";

/// A canonicalization algorithm libxml2 runs for us (all without comments).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Canonicalization {
    /// Exclusive c14n 1.0 (`xml-exc-c14n#`).
    Exclusive,
    /// Inclusive c14n 1.0 (`REC-xml-c14n-20010315`).
    Inclusive10,
    /// Inclusive c14n 1.1 (`xml-c14n11`).
    Inclusive11,
}

impl Canonicalization {
    /// The algorithm an XML-DSig URI names, if it is one of ours.
    pub(crate) fn from_uri(uri: &str) -> Option<Self> {
        match uri {
            EXC_C14N => Some(Canonicalization::Exclusive),
            C14N_10 => Some(Canonicalization::Inclusive10),
            C14N_11 => Some(Canonicalization::Inclusive11),
            _ => None,
        }
    }

    fn mode(self) -> c_int {
        (match self {
            Canonicalization::Exclusive => ffi::xmlC14NMode_XML_C14N_EXCLUSIVE_1_0,
            Canonicalization::Inclusive10 => ffi::xmlC14NMode_XML_C14N_1_0,
            Canonicalization::Inclusive11 => ffi::xmlC14NMode_XML_C14N_1_1,
        }) as c_int
    }
}

/// Which nodes of the document are canonicalized.
#[derive(Clone, Copy)]
enum Selection<'a> {
    /// The whole document.
    Document,
    /// One element with everything inside it.
    Subtree(Element<'a>),
    /// The whole document except one element and everything inside it.
    Without(Element<'a>),
}

/// Canonicalizes one element and its subtree with the given algorithm (an enveloped
/// signature's `SignedInfo`).
pub(crate) fn canonicalize_element_with(
    doc: &XmlDocument,
    element: Element<'_>,
    algorithm: Canonicalization,
    prefixes: &[&str],
) -> Result<Vec<u8>, EbmsError> {
    let mut out = Vec::new();
    run_with(
        doc,
        Selection::Subtree(element),
        algorithm,
        prefixes,
        &mut out,
    )?;
    Ok(out)
}

/// Canonicalizes the whole document with the given algorithm.
pub(crate) fn canonicalize_document_with(
    doc: &XmlDocument,
    algorithm: Canonicalization,
) -> Result<Vec<u8>, EbmsError> {
    let mut out = Vec::new();
    run_with(doc, Selection::Document, algorithm, &[], &mut out)?;
    Ok(out)
}

/// Canonicalizes the whole document without `excluded` (an enveloped `ds:Signature`): the
/// node-set of a `URI=""` reference after the enveloped-signature transform.
pub(crate) fn canonicalize_enveloped(
    doc: &XmlDocument,
    excluded: Element<'_>,
    algorithm: Canonicalization,
    prefixes: &[&str],
) -> Result<Vec<u8>, EbmsError> {
    let mut out = Vec::new();
    run_with(
        doc,
        Selection::Without(excluded),
        algorithm,
        prefixes,
        &mut out,
    )?;
    Ok(out)
}

/// An attribute value escaped as canonical XML writes it (C14N 1.0 §2.3, kept by exclusive
/// c14n): `&`, `<` and `"` as entities; tab, line feed and carriage return as character
/// references, which also keeps them through a parser's attribute-value normalization;
/// everything else (`>` too) as it is. Markup written this way is its own canonical form
/// as far as its attribute values go.
pub fn escape_attribute(value: &str) -> String {
    let mut out = Vec::with_capacity(value.len());
    exc_c14n::attribute_value(&mut out, value.as_bytes());
    String::from_utf8(out).expect("only ASCII bytes are replaced, by ASCII")
}

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

/// True when `node` (as libxml2's walk passes it) is `root` or lies inside it.
///
/// # Safety
/// `node`/`parent` come from libxml2's c14n walk over a live tree; `root` is in that tree.
unsafe fn inside(root: ffi::xmlNodePtr, node: ffi::xmlNodePtr, parent: ffi::xmlNodePtr) -> bool {
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
            return true;
        }
        cur = (*cur).parent;
    }
    false
}

/// Makes libxml2's c14n walk one subtree instead of the whole document, while it lives.
///
/// `xmlC14NExecute` walks from the document's first child along `children` and `next`
/// links, asking the visibility callback about every node, and checks the namespace URIs
/// of every element it passes (a URI parse each): for a reference to `eb:Messaging`, the
/// SOAP Body or `SignedInfo`, most of that walk is the rest of the envelope. Pointing the
/// document's first child at the subtree's root, and cutting that root off from its
/// following siblings, leaves only the subtree to walk. What is written does not change:
/// nothing outside the subtree is visible, and libxml2 renders nothing for invisible
/// nodes; the root's namespace and `xml:` ancestors are still found through its parent
/// links, which stay, and the visibility callback still says the ancestors are not in
/// the node-set (`Canonicalization::Inclusive10` inherits their `xml:` attributes as it
/// must). A debug build checks every such canonical form against the whole walk.
///
/// The links are put back when this is dropped; the document cannot be used from another
/// thread meanwhile (`XmlDocument` is not `Sync`).
struct SubtreeWalk {
    doc: ffi::xmlDocPtr,
    root: ffi::xmlNodePtr,
    children: ffi::xmlNodePtr,
    next: ffi::xmlNodePtr,
}

impl SubtreeWalk {
    /// # Safety
    /// `element` belongs to `doc`; nothing else reads or writes `doc` until the walk is
    /// dropped.
    unsafe fn start(doc: &XmlDocument, element: Element<'_>) -> Self {
        let (doc, root) = (doc.as_ptr(), element.as_ptr());
        let walk = SubtreeWalk {
            doc,
            root,
            children: (*doc).children,
            next: (*root).next,
        };
        (*doc).children = root;
        (*root).next = std::ptr::null_mut();
        walk
    }
}

impl Drop for SubtreeWalk {
    fn drop(&mut self) {
        // SAFETY: the pointers were read from this live document in `start`.
        unsafe {
            (*self.doc).children = self.children;
            (*self.root).next = self.next;
        }
    }
}

unsafe extern "C" fn visible_cb(
    user: *mut c_void,
    node: ffi::xmlNodePtr,
    parent: ffi::xmlNodePtr,
) -> c_int {
    // SAFETY: user is the subtree root node; node/parent come from libxml2's walk.
    c_int::from(inside(user as ffi::xmlNodePtr, node, parent))
}

unsafe extern "C" fn invisible_cb(
    user: *mut c_void,
    node: ffi::xmlNodePtr,
    parent: ffi::xmlNodePtr,
) -> c_int {
    // SAFETY: user is the excluded element; node/parent come from libxml2's walk.
    c_int::from(!inside(user as ffi::xmlNodePtr, node, parent))
}

fn run(
    doc: &XmlDocument,
    element: Option<Element<'_>>,
    prefixes: &[&str],
    out: &mut dyn Write,
) -> Result<(), EbmsError> {
    let selection = match element {
        Some(e) => Selection::Subtree(e),
        None => Selection::Document,
    };
    run_with(doc, selection, Canonicalization::Exclusive, prefixes, out)
}

fn run_with(
    doc: &XmlDocument,
    selection: Selection<'_>,
    algorithm: Canonicalization,
    prefixes: &[&str],
    out: &mut dyn Write,
) -> Result<(), EbmsError> {
    let written = |r: std::io::Result<()>| {
        r.map_err(|e| {
            EbmsError::new(
                ErrorCode::Other,
                format!("writing canonical XML failed: {e}"),
            )
        })
    };
    if let (Selection::Subtree(element), Canonicalization::Exclusive) = (selection, algorithm) {
        // The hot path (every reference and SignedInfo of an AS4 message): our own writer,
        // unless the subtree holds a node it leaves to libxml2 (see `exc_c14n`).
        let mut native = Vec::with_capacity(4096);
        if exc_c14n::write_subtree(element, prefixes, &mut native).is_ok() {
            if cfg!(debug_assertions) {
                // Every test run in a debug build checks it against libxml2's whole walk.
                let mut libxml = Vec::new();
                execute(doc, selection, algorithm, prefixes, &mut libxml, false)?;
                assert_same(&native, "our exclusive c14n", &libxml, "libxml2");
            }
            return written(out.write_all(&native));
        }
    }
    if cfg!(debug_assertions) && matches!(selection, Selection::Subtree(_)) {
        // The walk of the subtree alone must write what the walk of the whole document
        // writes (see `SubtreeWalk`): every test run in a debug build checks it.
        let mut short = Vec::new();
        execute(doc, selection, algorithm, prefixes, &mut short, true)?;
        let mut whole = Vec::new();
        execute(doc, selection, algorithm, prefixes, &mut whole, false)?;
        assert_same(&short, "the subtree walk", &whole, "the whole walk");
        return written(out.write_all(&short));
    }
    execute(doc, selection, algorithm, prefixes, out, true)
}

/// libxml2's exclusive canonical form of `element`'s subtree, walking the whole document:
/// the reference the tests hold our own writer to.
#[cfg(test)]
pub(crate) fn libxml2_subtree(
    doc: &XmlDocument,
    element: Element<'_>,
    prefixes: &[&str],
) -> Vec<u8> {
    let mut out = Vec::new();
    execute(
        doc,
        Selection::Subtree(element),
        Canonicalization::Exclusive,
        prefixes,
        &mut out,
        false,
    )
    .unwrap();
    out
}

/// Panics, showing both, unless two ways of writing one canonical form agree (the debug
/// builds' checks above).
fn assert_same(one: &[u8], one_way: &str, other: &[u8], other_way: &str) {
    assert!(
        one == other,
        "{one_way} wrote\n{}\n{other_way} wrote\n{}",
        String::from_utf8_lossy(one),
        String::from_utf8_lossy(other)
    );
}

/// Runs libxml2's c14n; `subtree_walk` walks only a `Selection::Subtree` (see
/// [`SubtreeWalk`]) rather than the whole document.
fn execute(
    doc: &XmlDocument,
    selection: Selection<'_>,
    algorithm: Canonicalization,
    prefixes: &[&str],
    out: &mut dyn Write,
    subtree_walk: bool,
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
    // An InclusiveNamespaces PrefixList only means something to exclusive c14n.
    let list_ptr = if prefixes.is_empty() || algorithm != Canonicalization::Exclusive {
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
        let (cb, user): (ffi::xmlC14NIsVisibleCallback, *mut c_void) = match selection {
            Selection::Subtree(e) => (Some(visible_cb), e.as_ptr() as *mut c_void),
            Selection::Without(e) => (Some(invisible_cb), e.as_ptr() as *mut c_void),
            Selection::Document => (None, std::ptr::null_mut()),
        };
        let walk = match selection {
            Selection::Subtree(e) if subtree_walk => Some(SubtreeWalk::start(doc, e)),
            _ => None,
        };
        let rc = ffi::xmlC14NExecute(doc.as_ptr(), cb, user, algorithm.mode(), list_ptr, 0, buf);
        drop(walk);
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
        return Err(internal(format!(
            "libxml2 could not canonicalize the document ({algorithm:?} c14n failed)"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A subtree between siblings, under ancestors with namespaces and `xml:lang`, in a
    /// document with a comment and a processing instruction around its root.
    const DOC: &str = r#"<?xml version="1.0"?>
<!--before--><r:root xmlns:r="urn:r" xmlns:a="urn:a" xmlns="urn:d" xml:lang="lv"><a:first/><a:el z="1" a:y="&amp;&#x9;"><x>t&#xD;</x><?pi data?></a:el><a:after/></r:root><?after?>"#;

    fn subtree(doc: &XmlDocument) -> Element<'_> {
        doc.root().unwrap().children().nth(1).unwrap()
    }

    #[test]
    fn a_subtree_walked_alone_is_written_as_in_the_whole_walk_for_every_algorithm() {
        let doc = XmlDocument::parse(DOC.as_bytes()).unwrap();
        let whole_before = canonicalize_document(&doc, &[]).unwrap();
        let el = subtree(&doc);
        // Hand-derived: exclusive renders the visibly used namespaces only (the default one
        // where <x> uses it) and inherits no xml: attribute; inclusive renders every
        // namespace in scope and inherits xml:lang from the ancestor left out (sorted by
        // namespace URI: the XML namespace's http: before urn:a).
        let cases = [
            (
                Canonicalization::Exclusive,
                r#"<a:el xmlns:a="urn:a" z="1" a:y="&amp;&#x9;"><x xmlns="urn:d">t&#xD;</x><?pi data?></a:el>"#,
            ),
            (
                Canonicalization::Inclusive10,
                r#"<a:el xmlns="urn:d" xmlns:a="urn:a" xmlns:r="urn:r" z="1" xml:lang="lv" a:y="&amp;&#x9;"><x>t&#xD;</x><?pi data?></a:el>"#,
            ),
            (
                Canonicalization::Inclusive11,
                r#"<a:el xmlns="urn:d" xmlns:a="urn:a" xmlns:r="urn:r" z="1" xml:lang="lv" a:y="&amp;&#x9;"><x>t&#xD;</x><?pi data?></a:el>"#,
            ),
        ];
        for (algorithm, expected) in cases {
            let mut short = Vec::new();
            execute(
                &doc,
                Selection::Subtree(el),
                algorithm,
                &[],
                &mut short,
                true,
            )
            .unwrap();
            let mut whole = Vec::new();
            execute(
                &doc,
                Selection::Subtree(el),
                algorithm,
                &[],
                &mut whole,
                false,
            )
            .unwrap();
            assert_eq!(String::from_utf8(short).unwrap(), expected, "{algorithm:?}");
            assert_eq!(String::from_utf8(whole).unwrap(), expected, "{algorithm:?}");
        }
        // An InclusiveNamespaces PrefixList finds ancestors' namespaces through the links
        // the walk keeps.
        let listed = canonicalize_element(&doc, el, &["r", "#default"]).unwrap();
        assert!(String::from_utf8(listed)
            .unwrap()
            .starts_with(r#"<a:el xmlns="urn:d" xmlns:a="urn:a" xmlns:r="urn:r" z="1""#),);
        // The document's links are back as they were: the whole document, siblings and the
        // processing instruction after the root included, canonicalizes as before.
        assert_eq!(canonicalize_document(&doc, &[]).unwrap(), whole_before);
        let text = String::from_utf8(whole_before).unwrap();
        assert!(
            text.ends_with("<a:after xmlns:a=\"urn:a\"></a:after></r:root>\n<?after?>"),
            "{text}"
        );
    }

    #[test]
    fn the_document_element_walked_alone_leaves_what_is_around_it() {
        let doc = XmlDocument::parse(DOC.as_bytes()).unwrap();
        let root = doc.root().unwrap();
        let sub = String::from_utf8(canonicalize_element(&doc, root, &[]).unwrap()).unwrap();
        assert!(sub.starts_with("<r:root"), "{sub}");
        assert!(sub.ends_with("</r:root>"), "{sub}");
        let whole = String::from_utf8(canonicalize_document(&doc, &[]).unwrap()).unwrap();
        assert!(whole.ends_with("</r:root>\n<?after?>"), "{whole}");
    }
}
