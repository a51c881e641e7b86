//! Validation of EDM documents. Every check reports [`Finding`]s; a document is acceptable
//! when no finding is [`Severity::Fatal`].

pub mod codelist;
pub mod model;
pub mod schematron;
pub mod xsd;

use serde::Serialize;

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Breaks the model or schema: the document must be refused.
    Fatal,
    /// Likely wrong, but the document is usable.
    Warning,
    /// For information.
    Info,
}

impl std::fmt::Display for Severity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Severity::Fatal => "fatal",
            Severity::Warning => "warning",
            Severity::Info => "info",
        })
    }
}

/// One problem found in a document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// The rule that failed, e.g. `VARTI-EDM-REQ-004` (own model) or `XSD` (schema).
    pub rule_id: String,
    /// How bad it is.
    pub severity: Severity,
    /// Where: an XPath-like path (`/query:QueryRequest/rim:Slot[@name='Procedure']`) or,
    /// for schema findings, `line N`.
    pub location: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl Finding {
    /// A finding.
    pub fn new(
        rule_id: impl Into<String>,
        severity: Severity,
        location: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Finding {
            rule_id: rule_id.into(),
            severity,
            location: location.into(),
            message: message.into(),
        }
    }
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "[{}] {} at {}: {}",
            self.severity, self.rule_id, self.location, self.message
        )
    }
}

/// Whether any finding is fatal.
pub fn has_fatal(findings: &[Finding]) -> bool {
    findings.iter().any(|f| f.severity == Severity::Fatal)
}
