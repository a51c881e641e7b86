//! Exclusive c14n: byte-exact against `xmllint --exc-c14n` (libxml2's own CLI, an
//! independent code path from our output-buffer plumbing), subtrees with PrefixList,
//! and the hardened parser.

use std::io::Write;
use std::process::Command;

use varti_as4::security::c14n::{canonicalize_bytes, canonicalize_document, canonicalize_element};
use varti_as4::security::dom::XmlDocument;
use varti_as4::ErrorCode;

/// Runs `xmllint --exc-c14n` on `xml` in a temp file. xmllint keeps comments with this
/// flag, so golden documents must not contain any.
fn xmllint_exc_c14n(xml: &[u8]) -> Vec<u8> {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(xml).unwrap();
    let out = Command::new("xmllint")
        .arg("--exc-c14n")
        .arg(f.path())
        .output()
        .expect("xmllint must be installed (apt-get install libxml2-utils)");
    assert!(
        out.status.success(),
        "xmllint failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

const SMALL: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<a:root xmlns:a="urn:a" xmlns:b="urn:b" xmlns:c="urn:c" xmlns="urn:d" xml:lang="fr">
  <a:x b:q="2"   z='1'><c:y>é &amp; &lt; "q" &#x20AC;</c:y><![CDATA[<cd> & ]]>
  <empty/><d attr="&#9;tab&#10;nl"/></a:x>
</a:root>"#;

#[test]
fn whole_document_matches_xmllint() {
    let ours = canonicalize_bytes(SMALL.as_bytes(), &[]).unwrap();
    assert_eq!(ours, xmllint_exc_c14n(SMALL.as_bytes()));
    // Sanity: canonical form really changed things (attribute order, CDATA, empty tags).
    let s = String::from_utf8(ours).unwrap();
    assert!(s.contains(r#"<empty xmlns="urn:d"></empty>"#), "{s}");
    assert!(s.contains("&lt;cd&gt; &amp; "), "{s}");
}

#[test]
fn large_non_ascii_document_is_byte_exact_across_chunk_boundaries() {
    // > 100 KB of multi-byte text whose characters straddle every 4 KB boundary at some
    // offset (1-, 2-, 3- and 4-byte UTF-8 sequences mixed, odd lengths).
    let mut xml = String::from(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<doc xmlns=\"urn:x\" xmlns:u=\"urn:unused\">",
    );
    let samples = [
        "žluťoučký kůň",
        "日本語のテキスト",
        "emoji 😀🎉",
        "Ελληνικά",
        "a",
        "ß€",
    ];
    let mut i = 0;
    while xml.len() < 150_000 {
        let s = samples[i % samples.len()];
        xml.push_str(&format!(
            "<p n=\"{i}\" t=\"{s}\">{s}{}</p>\n",
            "x".repeat(i % 7)
        ));
        i += 1;
    }
    xml.push_str("</doc>");
    let ours = canonicalize_bytes(xml.as_bytes(), &[]).unwrap();
    assert!(ours.len() > 100_000);
    let expected = xmllint_exc_c14n(xml.as_bytes());
    assert!(ours == expected, "large document differs from xmllint");
    assert!(std::str::from_utf8(&ours).is_ok());
}

#[test]
fn element_subtree_with_prefix_list() {
    // Hand-derived from the exc-c14n rules: `b` is declared on an ancestor and unused in
    // the subtree, so only the PrefixList brings it in; `a` is visibly used; `c` is
    // used deeper and rendered there; the default namespace is unused and omitted.
    let xml = r#"<r:root xmlns:r="urn:r" xmlns:a="urn:a" xmlns:b="urn:b" xmlns:c="urn:c" xmlns="urn:d"><a:el z="1" a:y="2"><c:in>t</c:in></a:el></r:root>"#;
    let doc = XmlDocument::parse(xml.as_bytes()).unwrap();
    let el = doc.root().unwrap().children().next().unwrap();
    let plain = canonicalize_element(&doc, el, &[]).unwrap();
    assert_eq!(
        String::from_utf8(plain).unwrap(),
        r#"<a:el xmlns:a="urn:a" z="1" a:y="2"><c:in xmlns:c="urn:c">t</c:in></a:el>"#
    );
    let with_list = canonicalize_element(&doc, el, &["b", "#default"]).unwrap();
    assert_eq!(
        String::from_utf8(with_list).unwrap(),
        r#"<a:el xmlns="urn:d" xmlns:a="urn:a" xmlns:b="urn:b" z="1" a:y="2"><c:in xmlns:c="urn:c">t</c:in></a:el>"#
    );
    // Inclusive prefixes only matter when in scope: "zz" is not declared anywhere.
    let unknown = canonicalize_element(&doc, el, &["zz"]).unwrap();
    assert!(!String::from_utf8(unknown).unwrap().contains("zz"));
}

#[test]
fn element_subtree_equals_document_c14n_of_the_extracted_element() {
    // Exclusive c14n of a subtree must not depend on its ancestors (without PrefixList).
    let inner =
        r#"<e:Messaging xmlns:e="urn:e" xmlns:w="urn:w" w:Id="m"><e:A>ü</e:A></e:Messaging>"#;
    let wrapped = format!(
        r#"<S:Envelope xmlns:S="urn:s" xmlns:e="urn:e"><S:Header>{inner}</S:Header></S:Envelope>"#
    );
    let doc = XmlDocument::parse(wrapped.as_bytes()).unwrap();
    let header = doc.root().unwrap().children().next().unwrap();
    let messaging = header.children().next().unwrap();
    let sub = canonicalize_element(&doc, messaging, &[]).unwrap();
    assert_eq!(sub, xmllint_exc_c14n(inner.as_bytes()));
    // And the whole document still matches xmllint.
    assert_eq!(
        canonicalize_document(&doc, &[]).unwrap(),
        xmllint_exc_c14n(wrapped.as_bytes())
    );
}

#[test]
fn comments_are_dropped() {
    let with = b"<a><!-- c --><b/></a>";
    let without = b"<a><b/></a>";
    assert_eq!(
        canonicalize_bytes(with, &[]).unwrap(),
        xmllint_exc_c14n(without)
    );
}

#[test]
fn doctype_and_entities_are_refused() {
    let bomb = br#"<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;">]><lolz>&lol2;</lolz>"#;
    let err = XmlDocument::parse(bomb).unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidHeader);
    assert!(err.detail.contains("DOCTYPE"), "{}", err.detail);
    let xxe = br#"<!DOCTYPE x SYSTEM "http://example.invalid/x.dtd"><x/>"#;
    assert!(XmlDocument::parse(xxe).is_err());
    // An undeclared entity is simply not well-formed.
    let err = XmlDocument::parse(b"<x>&undeclared;</x>").unwrap_err();
    assert!(err.detail.contains("not well-formed"), "{}", err.detail);
    let err = XmlDocument::parse(b"<x><y></x>").unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidHeader);
}
