//! A small namespace-resolved XML tree: what every EDM document is read into first and
//! written out from last.
//!
//! Names are kept as (namespace, local name) pairs, never as prefixes, so documents using
//! any prefixes compare equal when they mean the same thing. The `xsi:type` attribute holds
//! a QName; its value is resolved at parse time and stored in Clark notation
//! (`{namespace}local`), then written back with whatever prefix the writer picks.
//!
//! Not kept: comments, processing instructions, the XML declaration, namespace declarations
//! (recomputed on output) and whitespace-only text between elements. Everything else is.
//!
//! Hostile input is refused with an [`EdmError`], never a panic: DOCTYPE declarations (and
//! with them every custom entity) are refused, only the predefined and character references
//! are expanded, nesting depth and element count are bounded.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use quick_xml::events::Event;
use quick_xml::name::ResolveResult;
use quick_xml::NsReader;
use varti_as4::security::c14n::escape_attribute;

use super::EdmError;

/// `urn:oasis:names:tc:ebxml-regrep:xsd:rim:4.0`
pub(crate) const NS_RIM: &str = "urn:oasis:names:tc:ebxml-regrep:xsd:rim:4.0";
/// `urn:oasis:names:tc:ebxml-regrep:xsd:query:4.0`
pub(crate) const NS_QUERY: &str = "urn:oasis:names:tc:ebxml-regrep:xsd:query:4.0";
/// `urn:oasis:names:tc:ebxml-regrep:xsd:rs:4.0`
pub(crate) const NS_RS: &str = "urn:oasis:names:tc:ebxml-regrep:xsd:rs:4.0";
/// The SDG profile: `http://data.europa.eu/p4s`
pub(crate) const NS_SDG: &str = "http://data.europa.eu/p4s";
/// `http://www.w3.org/2001/XMLSchema-instance`
pub(crate) const NS_XSI: &str = "http://www.w3.org/2001/XMLSchema-instance";
/// `http://www.w3.org/1999/xlink`
pub(crate) const NS_XLINK: &str = "http://www.w3.org/1999/xlink";
/// `http://www.w3.org/XML/1998/namespace` (the `xml:` prefix, always bound)
pub const NS_XML: &str = "http://www.w3.org/XML/1998/namespace";

/// Largest document accepted (EDM documents are small; evidence travels as attachments).
pub(crate) const MAX_DOCUMENT_BYTES: usize = 16 * 1024 * 1024;
/// Deepest element nesting accepted.
pub const MAX_DEPTH: usize = 64;
/// Most elements accepted in one document.
pub const MAX_ELEMENTS: usize = 200_000;

/// A namespace-qualified name; `ns` is empty for names in no namespace.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct QName {
    /// Namespace URI, or "" for none.
    pub ns: String,
    /// Local part.
    pub local: String,
}

impl QName {
    /// A name in namespace `ns`.
    pub fn new(ns: &str, local: &str) -> Self {
        QName {
            ns: ns.to_owned(),
            local: local.to_owned(),
        }
    }
    /// A name in no namespace (plain attributes such as `id`).
    pub fn plain(local: &str) -> Self {
        QName::new("", local)
    }
    /// Whether this is `local` in namespace `ns`.
    pub fn is(&self, ns: &str, local: &str) -> bool {
        self.ns == ns && self.local == local
    }
    /// Clark notation: `{ns}local`, or just `local` without a namespace.
    pub(crate) fn to_clark(&self) -> String {
        if self.ns.is_empty() {
            self.local.clone()
        } else {
            format!("{{{}}}{}", self.ns, self.local)
        }
    }
    /// Reads Clark notation back (see [`QName::to_clark`]).
    pub(crate) fn from_clark(s: &str) -> Self {
        // The last `}`: a namespace name may hold one (the EDM fuzz target found
        // `xmlns:a="}urn:x"`), a local name cannot.
        match s.strip_prefix('{').and_then(|r| r.rsplit_once('}')) {
            Some((ns, local)) => QName::new(ns, local),
            None => QName::plain(s),
        }
    }
}

/// One attribute (namespace declarations are not attributes here).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attribute {
    /// Its qualified name.
    pub name: QName,
    /// Its value, unescaped (for `xsi:type`: Clark notation).
    pub value: String,
}

/// A child of an element.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    /// A child element.
    Element(Element),
    /// Character data (text and CDATA, unescaped).
    Text(String),
}

/// An element with its attributes (in document order) and children.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Element {
    /// Its qualified name.
    pub name: QName,
    /// Its attributes, in document order.
    pub attributes: Vec<Attribute>,
    /// Its children, in document order.
    pub children: Vec<Node>,
}

impl Element {
    /// An empty element called `local` in namespace `ns`.
    pub fn new(ns: &str, local: &str) -> Self {
        Element {
            name: QName::new(ns, local),
            attributes: Vec::new(),
            children: Vec::new(),
        }
    }

    /// Adds an attribute (builder style).
    pub(crate) fn with_attr(mut self, name: QName, value: impl Into<String>) -> Self {
        self.set_attr(name, value);
        self
    }

    /// Adds a child element (builder style).
    pub(crate) fn with_child(mut self, child: Element) -> Self {
        self.children.push(Node::Element(child));
        self
    }

    /// Adds text content (builder style).
    pub(crate) fn with_text(mut self, text: impl Into<String>) -> Self {
        self.children.push(Node::Text(text.into()));
        self
    }

    /// Sets (or replaces) an attribute.
    pub(crate) fn set_attr(&mut self, name: QName, value: impl Into<String>) {
        let value = value.into();
        match self.attributes.iter_mut().find(|a| a.name == name) {
            Some(a) => a.value = value,
            None => self.attributes.push(Attribute { name, value }),
        }
    }

    /// The value of the attribute `local` in namespace `ns` ("" for plain attributes).
    pub fn attr(&self, ns: &str, local: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|a| a.name.is(ns, local))
            .map(|a| a.value.as_str())
    }

    /// The resolved `xsi:type` of this element, if any.
    pub(crate) fn xsi_type(&self) -> Option<QName> {
        self.attr(NS_XSI, "type").map(QName::from_clark)
    }

    /// The child elements, in order.
    pub fn elements(&self) -> impl Iterator<Item = &Element> {
        self.children.iter().filter_map(|n| match n {
            Node::Element(e) => Some(e),
            Node::Text(_) => None,
        })
    }

    /// The child elements called `local` in namespace `ns`.
    pub fn children_named<'a>(
        &'a self,
        ns: &'a str,
        local: &'a str,
    ) -> impl Iterator<Item = &'a Element> + 'a {
        self.elements().filter(move |e| e.name.is(ns, local))
    }

    /// The first child element called `local` in namespace `ns`.
    pub fn child(&self, ns: &str, local: &str) -> Option<&Element> {
        self.elements().find(|e| e.name.is(ns, local))
    }

    /// The concatenated text children of this element (not of descendants).
    pub fn text(&self) -> String {
        let mut s = String::new();
        for n in &self.children {
            if let Node::Text(t) = n {
                s.push_str(t);
            }
        }
        s
    }

    /// Whether this element has any non-whitespace text child.
    pub(crate) fn has_significant_text(&self) -> bool {
        self.children
            .iter()
            .any(|n| matches!(n, Node::Text(t) if !t.trim().is_empty()))
    }

    /// A copy for comparing meaning: attributes sorted by name (their order carries no
    /// meaning in XML) and whitespace-only text dropped (an empty container written over
    /// several lines, `<rim:RegistryObjectList>\n</rim:RegistryObjectList>`, means the
    /// same as `<rim:RegistryObjectList/>`).
    pub fn canonical(&self) -> Element {
        let mut attributes = self.attributes.clone();
        attributes.sort_by(|a, b| a.name.cmp(&b.name));
        Element {
            name: self.name.clone(),
            attributes,
            children: self
                .children
                .iter()
                .filter(|n| !matches!(n, Node::Text(t) if t.trim().is_empty()))
                .map(|n| match n {
                    Node::Element(e) => Node::Element(e.canonical()),
                    Node::Text(t) => Node::Text(t.clone()),
                })
                .collect(),
        }
    }
}

fn xml_err(e: impl std::fmt::Display, pos: u64) -> EdmError {
    EdmError::Xml(format!("{e} (near byte {pos})"))
}

/// Parses a document into its root element. See the module doc for what is kept.
pub fn parse(input: &[u8]) -> Result<Element, EdmError> {
    if input.len() > MAX_DOCUMENT_BYTES {
        return Err(EdmError::TooLarge {
            size: input.len(),
            limit: MAX_DOCUMENT_BYTES,
        });
    }
    // A UTF-8 byte order mark is allowed and ignored.
    let input = input.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(input);
    let text = std::str::from_utf8(input).map_err(|e| {
        EdmError::Encoding(format!(
            "the document is not UTF-8 ({e}); EDM documents must be UTF-8 encoded"
        ))
    })?;
    let mut reader = NsReader::from_str(text);
    reader.config_mut().expand_empty_elements = true;
    reader.config_mut().check_end_names = true;

    let mut stack: Vec<Element> = Vec::new();
    let mut root: Option<Element> = None;
    let mut count = 0usize;
    loop {
        let pos = reader.buffer_position();
        let (ns, event) = reader.read_resolved_event().map_err(|e| xml_err(e, pos))?;
        match event {
            Event::Start(start) => {
                count += 1;
                if count > MAX_ELEMENTS {
                    return Err(EdmError::Limit(format!(
                        "more than {MAX_ELEMENTS} elements"
                    )));
                }
                if stack.len() >= MAX_DEPTH {
                    return Err(EdmError::Limit(format!(
                        "elements nested deeper than {MAX_DEPTH}"
                    )));
                }
                if root.is_some() {
                    return Err(EdmError::Xml("content after the root element".into()));
                }
                let ns = resolved_ns(&ns, start.name().as_ref())?;
                let local = utf8(start.local_name().as_ref())?;
                check_name(&ns, &local, start.name().as_ref(), pos)?;
                let mut el = Element {
                    name: QName { ns, local },
                    attributes: Vec::new(),
                    children: Vec::new(),
                };
                for attr in start.attributes().with_checks(true) {
                    let attr = attr.map_err(|e| xml_err(e, pos))?;
                    if attr.key.as_namespace_binding().is_some() {
                        // quick-xml binds a namespace to the value as written, without
                        // undoing references or normalizing whitespace as XML requires, so
                        // `urn:a&#x3A;b` or a line break would name another namespace here
                        // than for any conforming reader (and the writer, which escapes,
                        // could not round-trip it). Namespace names are URIs, which hold
                        // none of these: refuse them rather than read a different document.
                        if attr
                            .value
                            .iter()
                            .any(|b| matches!(b, b'&' | b'<' | b'\t' | b'\n' | b'\r'))
                        {
                            return Err(EdmError::Xml(format!(
                                "the namespace declaration {}=\"{}\" holds a reference, `<` or \
                                 a line break or tab; write the namespace URI as plain text \
                                 (near byte {pos})",
                                String::from_utf8_lossy(attr.key.as_ref()),
                                String::from_utf8_lossy(&attr.value)
                            )));
                        }
                        continue;
                    }
                    let (ans, alocal) = reader.resolve_attribute(attr.key);
                    let ans = resolved_ns(&ans, attr.key.as_ref())?;
                    let name = QName {
                        ns: ans,
                        local: utf8(alocal.as_ref())?,
                    };
                    check_name(&name.ns, &name.local, attr.key.as_ref(), pos)?;
                    let mut value = attr
                        .unescape_value()
                        .map_err(|e| xml_err(e, pos))?
                        .into_owned();
                    if name.is(NS_XSI, "type") {
                        value = resolve_qname_value(&reader, &value)?.to_clark();
                    }
                    el.attributes.push(Attribute { name, value });
                }
                stack.push(el);
            }
            Event::End(_) => {
                let mut el = stack
                    .pop()
                    .ok_or_else(|| EdmError::Xml("unbalanced end tag".into()))?;
                // Whitespace between child elements is layout, not content.
                if el.children.iter().any(|n| matches!(n, Node::Element(_))) {
                    el.children
                        .retain(|n| !matches!(n, Node::Text(t) if t.trim().is_empty()));
                }
                match stack.last_mut() {
                    Some(parent) => parent.children.push(Node::Element(el)),
                    None => root = Some(el),
                }
            }
            Event::Text(t) => {
                let s = t.unescape().map_err(|e| xml_err(e, pos))?;
                match stack.last_mut() {
                    Some(parent) => push_text(parent, &s),
                    None if s.trim().is_empty() => {}
                    None => return Err(EdmError::Xml("text outside the root element".into())),
                }
            }
            Event::CData(c) => {
                let s = utf8(&c.into_inner())?;
                match stack.last_mut() {
                    Some(parent) => push_text(parent, &s),
                    None => return Err(EdmError::Xml("CDATA outside the root element".into())),
                }
            }
            Event::DocType(_) => {
                return Err(EdmError::Doctype);
            }
            Event::Decl(d) => {
                if let Some(enc) = d.encoding() {
                    let enc = enc.map_err(|e| xml_err(e, pos))?;
                    let enc = String::from_utf8_lossy(&enc).to_ascii_uppercase();
                    if enc != "UTF-8" && enc != "UTF8" {
                        return Err(EdmError::Encoding(format!(
                            "declared encoding {enc} is not supported; EDM documents must be UTF-8"
                        )));
                    }
                }
            }
            Event::Comment(_) | Event::PI(_) => {}
            Event::Empty(_) => unreachable!("expand_empty_elements is set"),
            Event::Eof => break,
        }
    }
    if !stack.is_empty() {
        return Err(EdmError::Xml(
            "the document ends before its root element is closed".into(),
        ));
    }
    root.ok_or_else(|| EdmError::Xml("the document has no root element".into()))
}

/// The namespace of `xmlns` declarations, which no element or attribute may be in.
const NS_XMLNS: &str = "http://www.w3.org/2000/xmlns/";

/// Refuses a name quick-xml lets through but XML does not: `</>` (read as an empty
/// element without a name), `a:b:c` (a second colon, left in the local name) and the
/// reserved `xmlns` prefix (Namespaces in XML §3). Varti could not write such a name back
/// (found by the EDM fuzz target).
fn check_name(ns: &str, local: &str, raw: &[u8], pos: u64) -> Result<(), EdmError> {
    if local.is_empty() || local.contains(':') || ns == NS_XMLNS {
        return Err(EdmError::Xml(format!(
            "`{}` is not a namespace-well-formed name (near byte {pos})",
            String::from_utf8_lossy(raw)
        )));
    }
    Ok(())
}

fn push_text(parent: &mut Element, s: &str) {
    if let Some(Node::Text(prev)) = parent.children.last_mut() {
        prev.push_str(s);
    } else {
        parent.children.push(Node::Text(s.to_owned()));
    }
}

fn utf8(b: &[u8]) -> Result<String, EdmError> {
    String::from_utf8(b.to_vec()).map_err(|_| EdmError::Encoding("a name is not UTF-8".into()))
}

fn resolved_ns(r: &ResolveResult, raw: &[u8]) -> Result<String, EdmError> {
    match r {
        ResolveResult::Bound(ns) => utf8(ns.as_ref()),
        ResolveResult::Unbound => Ok(String::new()),
        ResolveResult::Unknown(p) => Err(EdmError::Xml(format!(
            "namespace prefix '{}' of '{}' is not declared",
            String::from_utf8_lossy(p),
            String::from_utf8_lossy(raw)
        ))),
    }
}

/// Resolves a QName-valued attribute (`rim:AnyValueType`) against the namespaces in scope.
fn resolve_qname_value(reader: &NsReader<&[u8]>, value: &str) -> Result<QName, EdmError> {
    let value = value.trim();
    // A QName is `prefix:local` or `local`, neither part empty nor holding `:`, braces or
    // white space, and `xmlns` is no prefix (Namespaces in XML §3). quick-xml would resolve
    // `xmlns:a:T` to the reserved xmlns namespace with local name `a:T`, which no writer
    // can declare (found by the EDM fuzz target).
    let parts: Vec<&str> = value.split(':').collect();
    let bad_part =
        |p: &&str| p.is_empty() || p.chars().any(|c| c == '{' || c == '}' || c.is_whitespace());
    if parts.len() > 2 || parts.iter().any(bad_part) || (parts.len() == 2 && parts[0] == "xmlns") {
        return Err(EdmError::Xml(format!(
            "xsi:type `{value}` is not a QName (prefix:LocalName, with a declared prefix)"
        )));
    }
    let (r, local) = reader.resolve_element(quick_xml::name::QName(value.as_bytes()));
    let ns = resolved_ns(&r, value.as_bytes())?;
    Ok(QName {
        ns,
        local: utf8(local.as_ref())?,
    })
}

/// The prefixes Varti writes for the namespaces it knows; others get `ns1`, `ns2`, …
const KNOWN_PREFIXES: &[(&str, &str)] = &[
    (NS_QUERY, "query"),
    (NS_RIM, "rim"),
    (NS_RS, "rs"),
    (NS_SDG, "sdg"),
    (NS_XSI, "xsi"),
    (NS_XLINK, "xlink"),
];

/// Writes a document: XML declaration, then `root` with every namespace it uses declared
/// on the root element, child-only elements indented by two spaces.
pub fn write(root: &Element) -> String {
    let mut used = Vec::new();
    collect_namespaces(root, &mut used);
    let mut prefixes: BTreeMap<String, String> = BTreeMap::new();
    let mut n = 0;
    for ns in &used {
        if ns == NS_XML || ns.is_empty() || prefixes.contains_key(ns) {
            continue;
        }
        let p = match KNOWN_PREFIXES.iter().find(|(k, _)| k == ns) {
            Some((_, p)) => (*p).to_owned(),
            None => {
                n += 1;
                format!("ns{n}")
            }
        };
        prefixes.insert(ns.clone(), p);
    }
    prefixes.insert(NS_XML.to_owned(), "xml".to_owned());
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    write_element(root, &prefixes, 0, true, &mut out);
    out.push('\n');
    out
}

fn collect_namespaces(el: &Element, used: &mut Vec<String>) {
    let mut add = |ns: &str| {
        if !used.iter().any(|u| u == ns) {
            used.push(ns.to_owned());
        }
    };
    add(&el.name.ns);
    for a in &el.attributes {
        add(&a.name.ns);
        if a.name.is(NS_XSI, "type") {
            add(&QName::from_clark(&a.value).ns);
        }
    }
    for c in el.elements() {
        collect_namespaces(c, used);
    }
}

fn qualified(name: &QName, prefixes: &BTreeMap<String, String>) -> String {
    if name.ns.is_empty() {
        name.local.clone()
    } else {
        // Every namespace in the tree was collected, so the prefix exists.
        let p = prefixes.get(&name.ns).map(String::as_str).unwrap_or("ns0");
        format!("{p}:{}", name.local)
    }
}

fn write_element(
    el: &Element,
    prefixes: &BTreeMap<String, String>,
    depth: usize,
    is_root: bool,
    out: &mut String,
) {
    let tag = qualified(&el.name, prefixes);
    let _ = write!(out, "<{tag}");
    if is_root {
        for (ns, p) in prefixes {
            if p != "xml" {
                let _ = write!(out, " xmlns:{p}=\"{}\"", escape_attribute(ns));
            }
        }
    }
    for a in &el.attributes {
        let value = if a.name.is(NS_XSI, "type") {
            qualified(&QName::from_clark(&a.value), prefixes)
        } else {
            a.value.clone()
        };
        let _ = write!(
            out,
            " {}=\"{}\"",
            qualified(&a.name, prefixes),
            escape_attribute(&value)
        );
    }
    if el.children.is_empty() {
        out.push_str("/>");
        return;
    }
    out.push('>');
    let only_elements = el.children.iter().all(|n| matches!(n, Node::Element(_)));
    for c in &el.children {
        match c {
            Node::Element(e) => {
                if only_elements {
                    out.push('\n');
                    out.push_str(&"  ".repeat(depth + 1));
                }
                write_element(e, prefixes, depth + 1, false, out);
            }
            Node::Text(t) => out.push_str(&escape_text(t)),
        }
    }
    if only_elements {
        out.push('\n');
        out.push_str(&"  ".repeat(depth));
    }
    let _ = write!(out, "</{tag}>");
}

fn escape_text(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '\r' => o.push_str("&#xD;"),
            _ => o.push(c),
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_do_not_matter() {
        let a = parse(br#"<a:x xmlns:a="urn:t" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:type="a:T"><a:y k="1">v</a:y></a:x>"#).unwrap();
        let b = parse(
            br#"<x xmlns="urn:t" xmlns:i="http://www.w3.org/2001/XMLSchema-instance" i:type="T">
            <y k="1">v</y>
        </x>"#,
        )
        .unwrap();
        assert_eq!(a, b);
        assert_eq!(a.xsi_type(), Some(QName::new("urn:t", "T")));
        assert_eq!(parse(write(&a).as_bytes()).unwrap(), a);
    }

    #[test]
    fn doctype_and_entities_are_refused() {
        let bomb = br#"<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa">]><x>&a;</x>"#;
        assert!(matches!(parse(bomb), Err(EdmError::Doctype)));
        assert!(parse(b"<x>&unknown;</x>").is_err());
        assert!(parse(b"<p:x/>").is_err());
    }

    #[test]
    fn depth_is_bounded() {
        let deep = "<a>".repeat(MAX_DEPTH + 1) + &"</a>".repeat(MAX_DEPTH + 1);
        assert!(matches!(parse(deep.as_bytes()), Err(EdmError::Limit(_))));
    }

    #[test]
    fn text_round_trips_with_escapes() {
        let el = Element::new("urn:t", "x")
            .with_attr(QName::plain("a"), "q\"<&\n")
            .with_text("a < b & c\r\n");
        assert_eq!(parse(write(&el).as_bytes()).unwrap(), el);
    }

    /// Found by the `edm` fuzz target (fuzz/regressions/edm/): a namespace declaration
    /// with a reference or a tab was bound as written, so what Varti wrote of the document
    /// read back with another namespace.
    #[test]
    fn namespace_declarations_with_references_or_breaks_are_refused() {
        for decl in [
            "urn:a&#x9;b",
            "urn:a&amp;b",
            "urn:a\tb",
            "urn:a\nb",
            "urn:a\r\nb",
        ] {
            let doc = format!("<a:x xmlns:a=\"{decl}\"/>");
            let e = parse(doc.as_bytes()).unwrap_err();
            assert!(
                e.to_string().contains("namespace declaration"),
                "{decl}: {e}"
            );
            let doc = format!("<x xmlns=\"{decl}\"/>");
            assert!(parse(doc.as_bytes()).is_err(), "{decl}");
        }
        assert!(parse(b"<a:x xmlns:a=\"urn:a b\"/>").is_ok());
    }

    /// Found by the `edm` fuzz target (fuzz/regressions/edm/): an `xsi:type` with the
    /// reserved `xmlns` prefix resolved to a namespace no document may declare, and a
    /// namespace name holding `}` was cut short when read back from Clark notation.
    #[test]
    fn xsi_type_must_be_a_qname_and_any_namespace_round_trips() {
        let xsi = "xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\"";
        for t in ["xmlns:a:T", "xmlns:T", "a:b:T", ":T", "a:", "a:{T}"] {
            let doc = format!("<a:x xmlns:a=\"urn:a\" {xsi} xsi:type=\"{t}\"/>");
            assert!(parse(doc.as_bytes()).is_err(), "{t}");
        }
        let doc = format!("<a:x xmlns:a=\"}}urn:{{a}}\" {xsi} xsi:type=\"a:T\"/>");
        let el = parse(doc.as_bytes()).unwrap();
        assert_eq!(el.xsi_type(), Some(QName::new("}urn:{a}", "T")));
        assert_eq!(parse(write(&el).as_bytes()).unwrap(), el);
    }

    /// Found by the `edm` fuzz target (fuzz/regressions/edm/): quick-xml reads `</>` as
    /// an empty element without a name and `<xmlns:a:b>` as element `a:b` in the reserved
    /// xmlns namespace; Varti wrote both back as XML it could not read.
    #[test]
    fn names_must_be_namespace_well_formed() {
        for doc in [
            "<x></></x>",
            "<x><xmlns:a:b/></x>",
            "<x xmlns:a=\"urn:a\"><a:b:c/></x>",
            "<x xmlns:a=\"urn:a\" a:b:c=\"1\"/>",
        ] {
            assert!(parse(doc.as_bytes()).is_err(), "{doc}");
        }
    }
}
