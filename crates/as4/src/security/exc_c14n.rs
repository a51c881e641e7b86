//! Exclusive canonicalization of one element and its subtree, written from libxml2's tree
//! by our own code (W3C `xml-exc-c14n#` without comments, over Canonical XML 1.0 §2.3).
//!
//! Why not libxml2's own: `xmlC14NExecute` builds two lists per element, parses every
//! namespace URI it meets as a URI, and asks a visibility callback about every node; on a
//! small message that made its allocations a quarter of each server's (DHAT). The subtree
//! of a same-document reference needs none of that: every node inside it is in the
//! node-set, comments excepted. [`super::c14n`] calls this for exclusive c14n of a
//! subtree, and libxml2 for everything else (whole documents, enveloped signatures, the
//! inclusive algorithms) and for a subtree holding a node this writer does not know
//! ([`Unsupported`]). A debug build writes every subtree both ways and compares them.
//!
//! What it writes, per element in document order:
//! - the start tag with its qualified name;
//! - the namespace declarations exclusive c14n renders: each namespace the element or one
//!   of its attributes uses (its prefix), and each prefix of the InclusiveNamespaces
//!   PrefixList in scope there, unless the nearest element written above it rendered the
//!   same prefix with the same name; `xmlns=""` when an element without a namespace sits
//!   under one whose rendered default namespace is not empty; never the `xml` prefix;
//!   sorted by prefix, the default first;
//! - its attributes sorted by namespace name then local name (those without a namespace
//!   first); values escaped (`&amp;` `&lt;` `&quot;` `&#x9;` `&#xA;` `&#xD;`);
//! - its content: text and CDATA escaped (`&amp;` `&lt;` `&gt;` `&#xD;`), processing
//!   instructions as `<?target data?>`, comments left out;
//! - the end tag, also for an empty element.

use std::ffi::CStr;

use libxml::bindings as ffi;

use super::dom::Element;

/// The subtree holds a node this writer does not render (an entity reference, say): the
/// caller lets libxml2 canonicalize it.
#[derive(Debug)]
pub(crate) struct Unsupported;

/// A libxml2 string's bytes (empty for null).
///
/// # Safety
/// `p` is null or NUL-terminated and lives as long as `'a`.
unsafe fn bytes<'a>(p: *const ffi::xmlChar) -> &'a [u8] {
    if p.is_null() {
        b""
    } else {
        CStr::from_ptr(p as *const std::ffi::c_char).to_bytes()
    }
}

/// A namespace declaration: prefix (empty for the default) and name.
type Decl<'a> = (&'a [u8], &'a [u8]);

/// Writes the exclusive canonical form of `apex` and its subtree into `out`. `prefixes` is
/// the InclusiveNamespaces PrefixList (`#default` names the default namespace).
pub(crate) fn write_subtree<'d>(
    apex: Element<'d>,
    prefixes: &[&str],
    out: &mut Vec<u8>,
) -> Result<(), Unsupported> {
    let inclusive: Vec<&[u8]> = prefixes
        .iter()
        .map(|p| {
            if *p == "#default" {
                &b""[..]
            } else {
                p.as_bytes()
            }
        })
        .collect();
    let mut writer = Writer {
        out,
        inclusive,
        rendered: Vec::new(),
        marks: Vec::new(),
        decls: Vec::new(),
        attrs: Vec::new(),
    };
    let apex = apex.as_ptr();
    // SAFETY: `apex` is an element of a live document that nothing changes while the
    // `Element` borrow lasts; every pointer followed below is one of its links.
    unsafe {
        let mut node = apex;
        loop {
            let mut descend = false;
            match (*node).type_ {
                ffi::xmlElementType_XML_ELEMENT_NODE => {
                    writer.start(node)?;
                    if (*node).children.is_null() {
                        writer.end(node);
                    } else {
                        descend = true;
                    }
                }
                ffi::xmlElementType_XML_TEXT_NODE | ffi::xmlElementType_XML_CDATA_SECTION_NODE => {
                    text(writer.out, bytes((*node).content));
                }
                ffi::xmlElementType_XML_PI_NODE => {
                    writer.out.extend_from_slice(b"<?");
                    writer.out.extend_from_slice(bytes((*node).name));
                    let data = bytes((*node).content);
                    if !data.is_empty() {
                        writer.out.push(b' ');
                        writer.out.extend_from_slice(data);
                    }
                    writer.out.extend_from_slice(b"?>");
                }
                ffi::xmlElementType_XML_COMMENT_NODE => {}
                _ => return Err(Unsupported),
            }
            if descend {
                node = (*node).children;
                continue;
            }
            // Next in document order: the next sibling, or up, closing each element left.
            loop {
                if node == apex {
                    return Ok(());
                }
                if !(*node).next.is_null() {
                    node = (*node).next;
                    break;
                }
                node = (*node).parent;
                writer.end(node);
            }
        }
    }
}

/// The writer's state; `'d` is the document's borrow, whose strings it keeps.
struct Writer<'o, 'p, 'd> {
    out: &'o mut Vec<u8>,
    /// The PrefixList, its `#default` as the empty prefix.
    inclusive: Vec<&'p [u8]>,
    /// The declarations rendered by the elements open in the output, outermost first.
    rendered: Vec<Decl<'d>>,
    /// Where each open element's declarations start in `rendered`.
    marks: Vec<usize>,
    /// Scratch for one start tag (kept between elements: no allocation per element).
    decls: Vec<Decl<'d>>,
    attrs: Vec<(&'d [u8], &'d [u8], ffi::xmlAttrPtr)>,
}

impl<'d> Writer<'_, '_, 'd> {
    /// The namespace name the output has in effect for `prefix`, if any.
    fn in_effect(&self, prefix: &[u8]) -> Option<&[u8]> {
        self.rendered
            .iter()
            .rev()
            .find(|(p, _)| *p == prefix)
            .map(|(_, uri)| *uri)
    }

    /// # Safety
    /// `node` is an element of the document `'d` borrows.
    unsafe fn start(&mut self, node: ffi::xmlNodePtr) -> Result<(), Unsupported> {
        // The declarations this element needs, before the "already in effect" check.
        let mut wanted = std::mem::take(&mut self.decls);
        let mut attrs = std::mem::take(&mut self.attrs);
        wanted.clear();
        attrs.clear();
        let ns = (*node).ns;
        if ns.is_null() {
            // No namespace: `xmlns=""` if the output has a default one in effect.
            wanted.push((b"", b""));
        } else {
            wanted.push((bytes((*ns).prefix), bytes((*ns).href)));
        }
        let mut attr = (*node).properties;
        while !attr.is_null() {
            let ans = (*attr).ns;
            let uri = if ans.is_null() {
                &b""[..]
            } else {
                let prefix = bytes((*ans).prefix);
                if prefix.is_empty() {
                    // An attribute in a namespace always has a prefix in XML.
                    return Err(Unsupported);
                }
                wanted.push((prefix, bytes((*ans).href)));
                bytes((*ans).href)
            };
            attrs.push((uri, bytes((*attr).name), attr));
            attr = (*attr).next;
        }
        for &prefix in &self.inclusive {
            match in_scope(node, prefix) {
                Some(decl) => wanted.push(decl),
                // The default namespace listed but none in scope: as an unused default.
                None if prefix.is_empty() => wanted.push((b"", b"")),
                None => {}
            }
        }
        wanted.retain(|(prefix, _)| *prefix != b"xml");
        wanted.sort_unstable();
        wanted.dedup();
        if wanted.windows(2).any(|w| w[0].0 == w[1].0) {
            // One prefix with two names on one element: not well-formed namespaces.
            return Err(Unsupported);
        }

        self.marks.push(self.rendered.len());
        self.out.push(b'<');
        qname(self.out, ns, bytes((*node).name));
        for &(prefix, uri) in &wanted {
            let effect = self.in_effect(prefix);
            let render = if uri.is_empty() {
                // `xmlns=""` undoes a default in effect; nothing else to undo.
                prefix.is_empty() && effect.is_some_and(|e| !e.is_empty())
            } else {
                effect != Some(uri)
            };
            if !render {
                continue;
            }
            if prefix.is_empty() {
                self.out.extend_from_slice(b" xmlns=\"");
            } else {
                self.out.extend_from_slice(b" xmlns:");
                self.out.extend_from_slice(prefix);
                self.out.extend_from_slice(b"=\"");
            }
            attribute_value(self.out, uri);
            self.out.push(b'"');
            self.rendered.push((prefix, uri));
        }
        attrs.sort_unstable_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
        for &(_, _, attr) in &attrs {
            self.out.push(b' ');
            qname(self.out, (*attr).ns, bytes((*attr).name));
            self.out.extend_from_slice(b"=\"");
            let mut child = (*attr).children;
            while !child.is_null() {
                if (*child).type_ != ffi::xmlElementType_XML_TEXT_NODE {
                    return Err(Unsupported);
                }
                attribute_value(self.out, bytes((*child).content));
                child = (*child).next;
            }
            self.out.push(b'"');
        }
        self.out.push(b'>');
        self.decls = wanted;
        self.attrs = attrs;
        Ok(())
    }

    /// # Safety
    /// `node` is the element last started and not yet ended.
    unsafe fn end(&mut self, node: ffi::xmlNodePtr) {
        self.out.extend_from_slice(b"</");
        qname(self.out, (*node).ns, bytes((*node).name));
        self.out.push(b'>');
        let mark = self.marks.pop().unwrap_or(0);
        self.rendered.truncate(mark);
    }
}

/// The declaration in scope at `node` for `prefix` (empty: the default), from its own
/// declarations or its ancestors', as the document's strings; `None` when the prefix is
/// unbound there or bound to the empty name.
///
/// # Safety
/// `node` is an element of the document `'d` borrows.
unsafe fn in_scope<'d>(node: ffi::xmlNodePtr, prefix: &[u8]) -> Option<Decl<'d>> {
    let mut cur = node;
    while !cur.is_null() && (*cur).type_ == ffi::xmlElementType_XML_ELEMENT_NODE {
        let mut ns = (*cur).nsDef;
        while !ns.is_null() {
            let p = bytes((*ns).prefix);
            if p == prefix {
                let uri = bytes((*ns).href);
                return (!uri.is_empty()).then_some((p, uri));
            }
            ns = (*ns).next;
        }
        cur = (*cur).parent;
    }
    None
}

/// `prefix:name`, or `name` without a prefix.
///
/// # Safety
/// `ns` is null or a namespace of a live document.
unsafe fn qname(out: &mut Vec<u8>, ns: ffi::xmlNsPtr, name: &[u8]) {
    if !ns.is_null() {
        let prefix = bytes((*ns).prefix);
        if !prefix.is_empty() {
            out.extend_from_slice(prefix);
            out.push(b':');
        }
    }
    out.extend_from_slice(name);
}

/// Text content as canonical XML writes it.
fn text(out: &mut Vec<u8>, s: &[u8]) {
    escape(out, s, |b| match b {
        b'&' => Some(&b"&amp;"[..]),
        b'<' => Some(b"&lt;"),
        b'>' => Some(b"&gt;"),
        b'\r' => Some(b"&#xD;"),
        _ => None,
    });
}

/// An attribute value (or a namespace name) as canonical XML writes it; also
/// [`super::c14n::escape_attribute`], for markup written in canonical form.
pub(crate) fn attribute_value(out: &mut Vec<u8>, s: &[u8]) {
    escape(out, s, |b| match b {
        b'&' => Some(&b"&amp;"[..]),
        b'<' => Some(b"&lt;"),
        b'"' => Some(b"&quot;"),
        b'\t' => Some(b"&#x9;"),
        b'\n' => Some(b"&#xA;"),
        b'\r' => Some(b"&#xD;"),
        _ => None,
    });
}

/// Copies `s`, replacing each byte `entity` names (all ASCII, so never inside a UTF-8
/// sequence), in runs between those bytes.
fn escape(out: &mut Vec<u8>, s: &[u8], entity: impl Fn(u8) -> Option<&'static [u8]>) {
    let mut from = 0;
    for (i, &b) in s.iter().enumerate() {
        if let Some(e) = entity(b) {
            out.extend_from_slice(&s[from..i]);
            out.extend_from_slice(e);
            from = i + 1;
        }
    }
    out.extend_from_slice(&s[from..]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::security::c14n;
    use crate::security::dom::XmlDocument;

    /// Documents that exercise each rule: namespaces used, unused, redeclared with the
    /// same and another name, undeclared defaults, `xml:` attributes, attribute order
    /// by namespace name, escapes, CDATA, comments and processing instructions.
    const DOCS: &[&str] = &[
        r#"<r:root xmlns:r="urn:r" xmlns:a="urn:a" xmlns="urn:d" xml:lang="lv"><a:first/><a:el z="1" a:y="&amp;&#x9;&quot;&lt;>" b:x="2" xmlns:b="urn:0"><x>t&#xD;&amp;&lt;&gt;"'</x><?pi data?><?empty?><!-- gone --></a:el><a:after/></r:root>"#,
        r#"<root xmlns="urn:d"><inner xmlns=""><deeper/><p:x xmlns:p="urn:p"><q xmlns="urn:q"><q2/></q></p:x></inner><same xmlns="urn:d"/></root>"#,
        r#"<p:a xmlns:p="urn:1" xmlns:unused="urn:u"><p:b><p:c xmlns:p="urn:2"><p:d xmlns:p="urn:1"/></p:c></p:b><n xmlns:p="urn:1" p:at="v" at="w" xml:space="preserve"/></p:a>"#,
        r#"<e:Envelope xmlns:e="http://www.w3.org/2003/05/soap-envelope"><e:Body xmlns:w="urn:wsu" w:Id="body"><![CDATA[a<b>&c]]>text
  with lines&#xD;
</e:Body></e:Envelope>"#,
        r#"<a xmlns="urn:d" xmlns:s="urn:s"><b xmlns=""><c s:x="1"/></b><s:d>ü — Ā 𝄞</s:d></a>"#,
    ];

    #[test]
    fn every_subtree_is_written_as_libxml2_writes_it() {
        let prefix_lists: &[&[&str]] = &[&[], &["#default"], &["a", "p"], &["#default", "s", "zz"]];
        for xml in DOCS {
            let doc = XmlDocument::parse(xml.as_bytes()).unwrap();
            for element in doc.elements() {
                for prefixes in prefix_lists {
                    let mut ours = Vec::new();
                    write_subtree(element, prefixes, &mut ours).unwrap();
                    let theirs = c14n::libxml2_subtree(&doc, element, prefixes);
                    assert_eq!(
                        String::from_utf8_lossy(&ours),
                        String::from_utf8_lossy(&theirs),
                        "<{}> with PrefixList {prefixes:?} in {xml}",
                        element.local_name()
                    );
                }
            }
        }
    }
}
