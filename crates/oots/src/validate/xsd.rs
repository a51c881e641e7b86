//! XSD validation with the official schemas (RegRep 4 `query`/`rs`/`rim` and the SDG
//! profile), read from a directory a deployment configures.
//!
//! The EC's driver schema imports the RegRep schemas from docs.oasis-open.org; Varti never
//! fetches schemas from the network. Instead it finds the schema files by name under the
//! configured directory and compiles a small in-memory driver that imports each from its
//! local path (XML, XLink and WS-Addressing first, because `rim.xsd` imports those
//! namespaces without a location).

use std::path::{Path, PathBuf};

use libxml::parser::{Parser, ParserOptions};
use libxml::schemas::{SchemaParserContext, SchemaValidationContext};

use super::{Finding, Severity};
use crate::edm::xml;

/// Rule id of schema findings.
pub(crate) const XSD_RULE: &str = "XSD";

/// The schema files the driver needs: (namespace, file name).
const SCHEMA_FILES: &[(&str, &str)] = &[
    ("http://www.w3.org/XML/1998/namespace", "xml.xsd"),
    ("http://www.w3.org/1999/xlink", "xlink.xsd"),
    ("http://www.w3.org/2005/08/addressing", "ws-addr.xsd"),
    ("urn:oasis:names:tc:ebxml-regrep:xsd:rim:4.0", "rim.xsd"),
    ("urn:oasis:names:tc:ebxml-regrep:xsd:rs:4.0", "rs.xsd"),
    ("urn:oasis:names:tc:ebxml-regrep:xsd:query:4.0", "query.xsd"),
    (
        "http://data.europa.eu/p4s",
        "SDG-GenericMetadataProfile-v1.0.0.xsd",
    ),
];

/// Why the schemas could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum XsdError {
    /// A schema file is missing from the directory.
    #[error("schema file {file} not found under {dir}; point the schema directory at the EDM xsd/ folder (with regrep4/, sdg/ and xml/)")]
    Missing {
        /// The file looked for.
        file: &'static str,
        /// The directory searched.
        dir: PathBuf,
    },
    /// The schemas do not compile.
    #[error("the schemas under {dir} do not compile: {messages}")]
    Compile {
        /// The directory.
        dir: PathBuf,
        /// libxml2's messages.
        messages: String,
    },
}

/// A compiled set of EDM schemas. Not shareable between threads (libxml2 validation
/// contexts are not); make one per worker.
pub struct XsdValidator {
    ctx: SchemaValidationContext,
}

impl std::fmt::Debug for XsdValidator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("XsdValidator")
    }
}

fn find_file(dir: &Path, name: &str, depth: usize) -> Option<PathBuf> {
    let direct = dir.join(name);
    if direct.is_file() {
        return Some(direct);
    }
    if depth == 0 {
        return None;
    }
    let mut subdirs: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    subdirs.sort();
    subdirs.iter().find_map(|d| find_file(d, name, depth - 1))
}

fn file_uri(path: &Path) -> String {
    let abs = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let mut uri = String::from("file://");
    for b in abs.to_string_lossy().bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'/' | b'-' | b'_' | b'.' | b'~' => {
                uri.push(b as char)
            }
            _ => uri.push_str(&format!("%{b:02X}")),
        }
    }
    uri
}

impl XsdValidator {
    /// Compiles the schemas found under `dir`.
    pub fn load(dir: &Path) -> Result<Self, XsdError> {
        let mut driver = String::from(
            "<xs:schema xmlns:xs=\"http://www.w3.org/2001/XMLSchema\" \
             targetNamespace=\"urn:varti:edm:driver\">\n",
        );
        for (ns, file) in SCHEMA_FILES {
            let path = find_file(dir, file, 3).ok_or_else(|| XsdError::Missing {
                file,
                dir: dir.to_path_buf(),
            })?;
            driver.push_str(&format!(
                "  <xs:import namespace=\"{ns}\" schemaLocation=\"{}\"/>\n",
                file_uri(&path)
            ));
        }
        driver.push_str("</xs:schema>\n");
        let mut parser = SchemaParserContext::from_buffer(driver.as_bytes());
        let ctx = SchemaValidationContext::from_parser(&mut parser).map_err(|errs| {
            XsdError::Compile {
                dir: dir.to_path_buf(),
                messages: errs
                    .iter()
                    .filter_map(|e| e.message.as_deref())
                    .map(str::trim)
                    .collect::<Vec<_>>()
                    .join("; "),
            }
        })?;
        Ok(XsdValidator { ctx })
    }

    /// Validates a document; every schema error becomes a fatal finding located by line.
    /// A document that is not well-formed, or has a DOCTYPE, is one fatal finding (the
    /// document never reaches libxml2's parser then).
    pub fn validate(&mut self, document: &[u8]) -> Vec<Finding> {
        // Refuse DOCTYPE/entities and bound the size before libxml2 sees the bytes.
        if let Err(e) = xml::parse(document) {
            return vec![Finding::new(
                XSD_RULE,
                Severity::Fatal,
                "/",
                format!("cannot be schema-validated: {e}"),
            )];
        }
        let options = ParserOptions {
            no_net: true,
            ..Default::default()
        };
        let doc = match Parser::default().parse_string_with_options(document, options) {
            Ok(d) => d,
            Err(e) => {
                return vec![Finding::new(
                    XSD_RULE,
                    Severity::Fatal,
                    "/",
                    format!("libxml2 cannot parse the document: {e:?}"),
                )]
            }
        };
        match self.ctx.validate_document(&doc) {
            Ok(()) => Vec::new(),
            Err(errors) => errors
                .into_iter()
                .map(|e| {
                    let location = match (e.line, e.col) {
                        (Some(l), Some(c)) if c > 0 => format!("line {l}, column {c}"),
                        (Some(l), _) => format!("line {l}"),
                        _ => "/".to_owned(),
                    };
                    Finding::new(
                        XSD_RULE,
                        Severity::Fatal,
                        location,
                        e.message
                            .as_deref()
                            .unwrap_or("schema validation failed")
                            .trim()
                            .to_owned(),
                    )
                })
                .collect(),
        }
    }
}
