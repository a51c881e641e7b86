//! A native Schematron runner for ISO Schematron files with `queryBinding="xslt2"`, such as
//! the EC's OOTS business rules (`EDM-REQ-S.sch`, `EDM-REQ-C.sch`, …).
//!
//! No JVM and no XSLT: each rule file is read once into a [`RuleSet`] whose XPath
//! expressions are compiled once (by the `xee-xpath` XPath 3.1 engine) and reused for every
//! document. Semantics follow ISO Schematron as the reference XSLT skeleton implements it:
//!
//! * patterns are independent; within a pattern each node fires only the **first** rule
//!   whose context matches it;
//! * nodes visited are the document node, elements and attributes (text nodes are not
//!   visited, as with the skeleton's default templates);
//! * a context is an XSLT pattern: a relative pattern `a/b` matches any `b` child of an
//!   `a` anywhere, an absolute one (`/node()`) only from the root;
//! * `sch:let` at schema and pattern level are evaluated once per document with the
//!   document node as context; rule-level lets are evaluated per context node, in order,
//!   each seeing the earlier ones;
//! * an `assert` fails when its test's effective boolean value is false, a `report` fires
//!   when it is true; both become [`Finding`]s with the assertion's `id` as rule id, the
//!   severity from `role` or `flag`, the node's XPath as location, and the message with
//!   `sch:value-of` and `sch:name` filled in.
//!
//! How a document is evaluated: each rule file is also compiled into one plan (see
//! [`Plan`]): the rule contexts are matched natively in one walk of the document
//! ([`context`]), and every assertion of the file is evaluated in a single XPath
//! evaluation over the matched nodes. Messages and locations are computed for the failed
//! assertions only. Whenever the plan cannot decide (a rule raises an XPath error on the
//! document, a context predicate is a position), the document is evaluated rule by rule,
//! which is the reference the plan is tested against.
//!
//! Because the compiled engine uses reference counting, a [`RuleSet`] is not `Send`: keep
//! one per thread (it is cheap to share within a thread).

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use xee_xpath::context::{StaticContextBuilder, Variables};
use xee_xpath::query::SequenceQuery;
use xee_xpath::{Atomic, Documents, Item, Queries, Query, Sequence};
use xot::xmlname::{NameStrInfo as _, OwnedName};
use xot::Xot;

use super::{Finding, Severity};

mod context;

const SCH_NS: &str = "http://purl.oclc.org/dsdl/schematron";

/// A rule file or a document could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SchematronError {
    /// The rule file or directory could not be read.
    #[error("cannot read Schematron rules {path}: {source}; check the --rules directory")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The rule file is not a usable Schematron schema.
    #[error("Schematron file {file}: {message}")]
    Schema {
        /// The rule file.
        file: String,
        /// What is wrong.
        message: String,
    },
    /// An XPath expression in the rule file cannot be compiled by the engine.
    #[error("Schematron file {file}: cannot compile XPath `{expr}`: {message}")]
    XPath {
        /// The rule file.
        file: String,
        /// The expression as written in the file.
        expr: String,
        /// The engine's explanation.
        message: String,
    },
    /// The document to validate is not well-formed XML.
    #[error("the document is not well-formed XML: {0}")]
    Document(String),
}

/// How an assertion reacts to its test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Fails when the test is false.
    Assert,
    /// Fires when the test is true.
    Report,
}

/// A piece of an assertion message.
#[derive(Debug, Clone)]
enum MessagePart {
    Text(String),
    /// `sch:value-of select=…`: the string values joined by a space.
    ValueOf(SequenceQuery),
    /// `sch:name` (no path): the context node's name; with a path, the name of its result.
    Name(Option<SequenceQuery>),
}

#[derive(Debug, Clone)]
struct Let {
    name: OwnedName,
    query: SequenceQuery,
    /// The expression as written in the rule file (for the batched plan).
    source: String,
}

#[derive(Debug, Clone)]
struct Assertion {
    kind: Kind,
    id: String,
    severity: Severity,
    test: SequenceQuery,
    /// The test as written in the rule file (for the batched plan).
    test_source: String,
    message: Vec<MessagePart>,
}

#[derive(Debug, Clone)]
struct Rule {
    /// The context pattern turned into a selection from the document node.
    select: SequenceQuery,
    /// The context pattern as written in the rule file (for the batched plan).
    context: String,
    lets: Vec<Let>,
    assertions: Vec<Assertion>,
}

#[derive(Debug, Clone)]
struct Pattern {
    lets: Vec<Let>,
    rules: Vec<Rule>,
}

/// One compiled Schematron file.
#[derive(Debug, Clone)]
pub struct RuleSet {
    name: String,
    lets: Vec<Let>,
    patterns: Vec<Pattern>,
    location: SequenceQuery,
    /// Every rule of the file in one XPath evaluation (see [`Plan`]); `None` when the file
    /// cannot be put in that form, and then each rule is evaluated on its own.
    plan: Option<Plan>,
}

/// The whole rule file as one XPath expression, evaluated once per document: the XPath
/// engine's fixed cost per evaluation (a dynamic context, a copy of the document-order
/// index) is paid once instead of once per rule, per node and per assertion, and every
/// lets' value is computed once where the file declares it.
///
/// The expression binds the schema and pattern lets with `let`, selects each rule's
/// context nodes once, removes from each rule the nodes an earlier rule of its pattern
/// matched (first match wins) and keeps the nodes Schematron visits (document, elements,
/// attributes). For every rule it yields the rule's number, then for each of its nodes the
/// node followed by one `xs:boolean` per assertion: the test's effective boolean value.
/// Messages and locations are computed afterwards for the failed assertions only, exactly
/// as the rule-by-rule evaluation does. When the evaluation raises an error (a test that
/// cannot be evaluated on this document, a let that fails), the document is evaluated
/// again rule by rule, which reports each error where it occurs.
#[derive(Debug, Clone)]
struct Plan {
    query: SequenceQuery,
    /// For each rule number of the expression: its (pattern, rule) indices.
    rules: Vec<(usize, usize)>,
    /// For each rule number: the variable holding the nodes it fires on.
    node_vars: Vec<OwnedName>,
    /// Every rule's context, matched natively.
    contexts: context::Contexts,
}

/// Which kind of OOTS message a document is; decides the rule files that apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DocumentKind {
    /// EDM evidence request (`EDM-REQ`).
    EdmRequest,
    /// EDM evidence response (`EDM-RESP`).
    EdmResponse,
    /// EDM error response (`EDM-ERR`).
    EdmError,
    /// Evidence Broker "get requirements" response (`EB-REQ`).
    EbRequirements,
    /// Evidence Broker "get evidence types" response (`EB-EVI`).
    EbEvidenceTypes,
    /// Evidence Broker error response (`EB-ERR`).
    EbError,
    /// Data Service Directory response (`DSD-RESP`).
    DsdResponse,
    /// Data Service Directory error response (`DSD-ERR`).
    DsdError,
    /// LCM submission to the Evidence Broker (`EB-SUB`).
    EbSubmit,
    /// LCM submission to the Data Service Directory (`DSD-SUB`).
    DsdSubmit,
    /// LCM success response (`LCM-SUC`).
    LcmSuccess,
    /// LCM error response (`LCM-ERR`).
    LcmError,
}

impl DocumentKind {
    /// The rule-file prefix the EC uses for this kind (`EDM-REQ` → `EDM-REQ-S.sch`, …).
    pub fn prefix(self) -> &'static str {
        match self {
            DocumentKind::EdmRequest => "EDM-REQ",
            DocumentKind::EdmResponse => "EDM-RESP",
            DocumentKind::EdmError => "EDM-ERR",
            DocumentKind::EbRequirements => "EB-REQ",
            DocumentKind::EbEvidenceTypes => "EB-EVI",
            DocumentKind::EbError => "EB-ERR",
            DocumentKind::DsdResponse => "DSD-RESP",
            DocumentKind::DsdError => "DSD-ERR",
            DocumentKind::EbSubmit => "EB-SUB",
            DocumentKind::DsdSubmit => "DSD-SUB",
            DocumentKind::LcmSuccess => "LCM-SUC",
            DocumentKind::LcmError => "LCM-ERR",
        }
    }

    /// Whether a rule file named `file_stem` (without `.sch`) applies to this kind:
    /// the stem is the prefix itself or the prefix followed by `-` (`-S`, `-C`).
    pub fn applies(self, file_stem: &str) -> bool {
        let p = self.prefix();
        file_stem == p
            || (file_stem.len() > p.len()
                && file_stem.starts_with(p)
                && file_stem.as_bytes()[p.len()] == b'-')
    }

    /// Works out the kind of a RegRep document from its root element and content, or
    /// `None` when it is not an OOTS message Varti knows.
    pub fn detect(xml: &str) -> Option<DocumentKind> {
        let mut xot = Xot::new();
        let doc = xot.parse(xml).ok()?;
        Self::detect_parsed(&xot, doc)
    }

    /// [`DocumentKind::detect`] on a document already parsed.
    fn detect_parsed(xot: &Xot, doc: xot::Node) -> Option<DocumentKind> {
        let root = xot.document_element(doc).ok()?;
        let local = |xot: &Xot, n| {
            xot.element(n)
                .map(|e| xot.local_name_str(e.name()).to_string())
        };
        let root_name = local(xot, root)?;
        // A name the document never uses is on none of its attributes.
        let name_attr = xot.name("name");
        let code_attr = xot.name("code");
        let status_attr = xot.name("status");
        let attr = |n, a: Option<xot::NameId>| a.and_then(|a| xot.get_attribute(n, a));
        // Slot names and exception codes anywhere in the document.
        let mut slots = HashSet::new();
        let mut codes = Vec::new();
        let mut has_exception = false;
        let mut has_evidence_type_list = false;
        for n in xot.descendants(root) {
            match local(xot, n).as_deref() {
                // Both EB answers carry a Requirement slot; only the evidence-types one
                // lists sdg:EvidenceTypeList under the requirement.
                Some("EvidenceTypeList") => has_evidence_type_list = true,
                Some("Slot") => {
                    if let Some(v) = attr(n, name_attr) {
                        slots.insert(v.to_string());
                    }
                }
                Some("Exception") => {
                    has_exception = true;
                    if let Some(c) = attr(n, code_attr) {
                        codes.push(c.to_string());
                    }
                }
                _ => {}
            }
        }
        let code_is = |p: &str| codes.iter().any(|c| c.starts_with(p));
        Some(match root_name.as_str() {
            "QueryRequest" => DocumentKind::EdmRequest,
            "QueryResponse" if has_exception => {
                if code_is("EB:") {
                    DocumentKind::EbError
                } else if code_is("DSD:") {
                    DocumentKind::DsdError
                } else {
                    DocumentKind::EdmError
                }
            }
            "QueryResponse" => {
                if has_evidence_type_list {
                    DocumentKind::EbEvidenceTypes
                } else if slots.contains("Requirement") {
                    DocumentKind::EbRequirements
                } else if slots.contains("DataServiceEvidenceType") {
                    DocumentKind::DsdResponse
                } else {
                    DocumentKind::EdmResponse
                }
            }
            "SubmitObjectsRequest" => {
                if slots.contains("DataServiceEvidenceType") || slots.contains("EvidenceProvider") {
                    DocumentKind::DsdSubmit
                } else {
                    DocumentKind::EbSubmit
                }
            }
            "RegistryResponse" => {
                let failed = attr(root, status_attr).is_some_and(|s| s.ends_with(":Failure"));
                if failed || has_exception {
                    DocumentKind::LcmError
                } else {
                    DocumentKind::LcmSuccess
                }
            }
            _ => return None,
        })
    }
}

/// All rule files of a configured directory, compiled.
#[derive(Debug, Clone, Default)]
pub struct RuleDir {
    sets: Vec<RuleSet>,
}

impl RuleDir {
    /// Reads and compiles every `*.sch` file of `dir` (sorted by name).
    pub fn load(dir: &Path) -> Result<RuleDir, SchematronError> {
        let io = |source| SchematronError::Io {
            path: dir.to_path_buf(),
            source,
        };
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(io)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "sch"))
            .collect();
        files.sort();
        let sets = files
            .iter()
            .map(|f| RuleSet::load(f))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(RuleDir { sets })
    }

    /// The rule sets, in file-name order.
    pub fn rule_sets(&self) -> &[RuleSet] {
        &self.sets
    }

    /// The rule sets that apply to a kind of document.
    pub fn applicable(&self, kind: DocumentKind) -> Vec<&RuleSet> {
        self.sets.iter().filter(|s| kind.applies(&s.name)).collect()
    }

    /// Validates a document with the rule files that apply to it (see
    /// [`DocumentKind::detect`]). A document of no known kind gets one fatal finding
    /// `SCH-KIND`; a kind with no rule file in the directory gets one warning `SCH-NONE`.
    pub fn validate(&self, xml: &str) -> Result<Vec<Finding>, SchematronError> {
        // One parse for the detection and all the applicable files. A document that is
        // not well-formed is of no known kind.
        let parsed = parse_document(xml).ok();
        let kind = parsed
            .as_ref()
            .and_then(|(documents, doc)| DocumentKind::detect_parsed(documents.xot(), *doc));
        let Some(kind) = kind else {
            return Ok(vec![Finding::new(
                "SCH-KIND",
                Severity::Fatal,
                "/",
                "the document is not an OOTS message Varti can pick Schematron rules for \
                 (expected a RegRep QueryRequest, QueryResponse, SubmitObjectsRequest or \
                 RegistryResponse)",
            )]);
        };
        let sets = self.applicable(kind);
        if sets.is_empty() {
            return Ok(vec![Finding::new(
                "SCH-NONE",
                Severity::Warning,
                "/",
                format!(
                    "no Schematron file {}-*.sch in the rules directory applies to this \
                     document; it was not checked against business rules",
                    kind.prefix()
                ),
            )]);
        }
        let (mut documents, doc) = parsed.expect("a detected document was parsed");
        Ok(sets
            .into_iter()
            .flat_map(|s| s.validate_parsed(&mut documents, doc))
            .collect())
    }
}

/// Splits an XSLT pattern at top-level `|` and makes each branch a selection from the
/// document node: relative branches may start anywhere (`//` prefix).
fn pattern_to_selection(pattern: &str) -> String {
    let parts: Vec<String> = split_top_level(pattern, '|')
        .iter()
        .map(|b| {
            let b = b.trim();
            if b.starts_with('/') {
                format!("({b})")
            } else {
                format!("(//{b})")
            }
        })
        .collect();
    parts.join(" | ")
}

/// Splits at `sep` outside quotes, brackets and parentheses.
fn split_top_level(s: &str, sep: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut quote, mut start) = (0i32, None::<char>, 0usize);
    for (i, c) in s.char_indices() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '"') => quote = Some(c),
            (None, '[' | '(') => depth += 1,
            (None, ']' | ')') => depth -= 1,
            (None, c) if c == sep && depth == 0 => {
                parts.push(&s[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

/// Compiles XPath expressions for one rule file with its namespaces.
struct Compiler {
    file: String,
    namespaces: Vec<(String, String)>,
}

impl Compiler {
    fn compile(&self, expr: &str, vars: &[OwnedName]) -> Result<SequenceQuery, SchematronError> {
        let mut b = StaticContextBuilder::default();
        for (p, u) in &self.namespaces {
            b.add_namespace(p, u);
        }
        b.variable_names(vars.iter().cloned());
        let queries = Queries::default();
        queries
            .sequence_with_context(expr, b.build())
            .map_err(|e| SchematronError::XPath {
                file: self.file.clone(),
                expr: expr.to_string(),
                message: e.to_string(),
            })
    }
}

fn severity_of(role: Option<&str>) -> Severity {
    match role.map(|r| r.trim().to_ascii_lowercase()).as_deref() {
        Some("warning" | "warn") => Severity::Warning,
        Some("info" | "information" | "informational") => Severity::Info,
        // fatal, error, and an assertion with no role are all errors in Schematron.
        _ => Severity::Fatal,
    }
}

/// The local name of a Schematron-namespace element of the rule file, else `None`.
fn sch_name(xot: &Xot, n: xot::Node) -> Option<&str> {
    let e = xot.element(n)?;
    let (local, ns) = xot.name_ns_str(e.name());
    (ns == SCH_NS).then_some(local)
}

impl RuleSet {
    /// Reads and compiles one Schematron file. The rule set's name is the file stem
    /// (`EDM-REQ-S`), which decides which documents it applies to.
    pub fn load(path: &Path) -> Result<RuleSet, SchematronError> {
        let text = std::fs::read_to_string(path).map_err(|source| SchematronError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        RuleSet::from_str(&name, &text)
    }

    /// Compiles a Schematron schema given as text, naming it `name`.
    pub fn from_str(name: &str, text: &str) -> Result<RuleSet, SchematronError> {
        let schema_err = |m: &str| SchematronError::Schema {
            file: name.to_string(),
            message: m.to_string(),
        };
        let mut xot = Xot::new();
        let doc = xot.parse(text).map_err(|e| schema_err(&e.to_string()))?;
        let root = xot
            .document_element(doc)
            .map_err(|e| schema_err(&e.to_string()))?;
        if sch_name(&xot, root) != Some("schema") {
            return Err(schema_err(
                "the root element is not an ISO Schematron sch:schema",
            ));
        }
        let a = |xot: &mut Xot, n: &str| xot.add_name(n);
        let (qb, uri_a, prefix_a, name_a, value_a) = (
            a(&mut xot, "queryBinding"),
            a(&mut xot, "uri"),
            a(&mut xot, "prefix"),
            a(&mut xot, "name"),
            a(&mut xot, "value"),
        );
        let (context_a, test_a, id_a, role_a, flag_a, select_a, path_a) = (
            a(&mut xot, "context"),
            a(&mut xot, "test"),
            a(&mut xot, "id"),
            a(&mut xot, "role"),
            a(&mut xot, "flag"),
            a(&mut xot, "select"),
            a(&mut xot, "path"),
        );
        let abstract_a = a(&mut xot, "abstract");
        match xot.get_attribute(root, qb).map(str::to_ascii_lowercase) {
            Some(b) if b == "xslt2" || b == "xslt3" || b == "xpath2" || b == "xpath3" => {}
            // ISO's default binding is XSLT 1, but two of the EC's files (DSD-ERR-S,
            // EB-ERR) omit the attribute while belonging to an xslt2 rule set; XPath 1
            // expressions of that kind evaluate the same under XPath 2+.
            None => {}
            other => {
                return Err(schema_err(&format!(
                    "queryBinding {other:?} is not supported; this runner evaluates \
                     XPath 2+ (queryBinding=\"xslt2\")"
                )))
            }
        }
        let children: Vec<_> = xot.children(root).collect();
        let mut namespaces = Vec::new();
        for &c in &children {
            if sch_name(&xot, c) == Some("ns") {
                let p = xot.get_attribute(c, prefix_a).unwrap_or_default();
                let u = xot.get_attribute(c, uri_a).unwrap_or_default();
                namespaces.push((p.to_string(), u.to_string()));
            }
        }
        let compiler = Compiler {
            file: name.to_string(),
            namespaces,
        };
        let read_let = |xot: &Xot, n, vars: &mut Vec<OwnedName>| -> Result<Let, SchematronError> {
            let vname = xot
                .get_attribute(n, name_a)
                .ok_or_else(|| schema_err("sch:let without a name"))?;
            let value = xot
                .get_attribute(n, value_a)
                .ok_or_else(|| schema_err(&format!("sch:let {vname} has no value attribute")))?;
            let query = compiler.compile(value, vars)?;
            let owned = OwnedName::new(vname.to_string(), String::new(), String::new());
            vars.push(owned.clone());
            Ok(Let {
                name: owned,
                query,
                source: value.to_string(),
            })
        };
        let mut vars: Vec<OwnedName> = Vec::new();
        let mut lets = Vec::new();
        for &c in &children {
            if sch_name(&xot, c) == Some("let") {
                lets.push(read_let(&xot, c, &mut vars)?);
            }
        }
        let mut patterns = Vec::new();
        for &p in &children {
            if sch_name(&xot, p) != Some("pattern") {
                continue;
            }
            if xot.get_attribute(p, abstract_a) == Some("true") {
                return Err(schema_err(
                    "abstract patterns are not supported; expand them first",
                ));
            }
            let mut pvars = vars.clone();
            let mut plets = Vec::new();
            let mut rules = Vec::new();
            for r in xot.children(p).collect::<Vec<_>>() {
                match sch_name(&xot, r) {
                    Some("let") => plets.push(read_let(&xot, r, &mut pvars)?),
                    Some("rule") => {
                        let context = xot.get_attribute(r, context_a).ok_or_else(|| {
                            schema_err(
                                "an sch:rule without context (abstract rules are not supported)",
                            )
                        })?;
                        let select = compiler.compile(&pattern_to_selection(context), &pvars)?;
                        let mut rvars = pvars.clone();
                        let mut rlets = Vec::new();
                        let mut assertions = Vec::new();
                        for s in xot.children(r).collect::<Vec<_>>() {
                            let kind = match sch_name(&xot, s) {
                                Some("let") => {
                                    rlets.push(read_let(&xot, s, &mut rvars)?);
                                    continue;
                                }
                                Some("assert") => Kind::Assert,
                                Some("report") => Kind::Report,
                                _ => continue,
                            };
                            let test = xot
                                .get_attribute(s, test_a)
                                .ok_or_else(|| schema_err("an assertion without test"))?;
                            let id = xot
                                .get_attribute(s, id_a)
                                .or_else(|| xot.get_attribute(r, id_a))
                                .map(str::to_string)
                                .unwrap_or_else(|| {
                                    // No id in the file: name it by position (1-based).
                                    format!(
                                        "{name}#pattern{}.rule.{}",
                                        patterns.len() + 1,
                                        assertions.len() + 1
                                    )
                                });
                            let role = xot
                                .get_attribute(s, role_a)
                                .or_else(|| xot.get_attribute(s, flag_a))
                                .or_else(|| xot.get_attribute(r, role_a))
                                .or_else(|| xot.get_attribute(r, flag_a));
                            let mut message = Vec::new();
                            for m in xot.children(s).collect::<Vec<_>>() {
                                if let Some(t) = xot.text_str(m) {
                                    message.push(MessagePart::Text(t.to_string()));
                                    continue;
                                }
                                match sch_name(&xot, m) {
                                    Some("value-of") => {
                                        let sel =
                                            xot.get_attribute(m, select_a).ok_or_else(|| {
                                                schema_err("sch:value-of without select")
                                            })?;
                                        message.push(MessagePart::ValueOf(
                                            compiler.compile(sel, &rvars)?,
                                        ));
                                    }
                                    Some("name") => {
                                        let q = match xot.get_attribute(m, path_a) {
                                            Some(p) => Some(compiler.compile(p, &rvars)?),
                                            None => None,
                                        };
                                        message.push(MessagePart::Name(q));
                                    }
                                    _ => {}
                                }
                            }
                            assertions.push(Assertion {
                                kind,
                                id,
                                severity: severity_of(role),
                                test: compiler.compile(test, &rvars)?,
                                test_source: test.to_string(),
                                message,
                            });
                        }
                        rules.push(Rule {
                            select,
                            context: context.to_string(),
                            lets: rlets,
                            assertions,
                        });
                    }
                    _ => {}
                }
            }
            patterns.push(Pattern { lets: plets, rules });
        }
        // The location of a node as an XPath with the document's own prefixes and a
        // position among same-named siblings on every element step.
        let location = compiler.compile(LOCATION_XPATH, &[])?;
        let plan = Plan::build(&compiler, &lets, &patterns);
        Ok(RuleSet {
            name: name.to_string(),
            lets,
            patterns,
            location,
            plan,
        })
    }

    /// The rule set's name (the file stem, e.g. `EDM-REQ-S`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// How many assertions and reports the rule set has.
    pub fn assertion_count(&self) -> usize {
        self.patterns
            .iter()
            .flat_map(|p| &p.rules)
            .map(|r| r.assertions.len())
            .sum()
    }

    /// Runs every pattern on a document and returns the failed assertions and fired
    /// reports, in pattern order and, within a pattern, in document order of rules.
    /// An assertion whose test raises an XPath error is reported as failed (fatal) with
    /// the engine's message: an unevaluable rule must not pass silently.
    pub fn validate(&self, xml: &str) -> Result<Vec<Finding>, SchematronError> {
        let (mut documents, doc) = parse_document(xml)?;
        Ok(self.validate_parsed(&mut documents, doc))
    }

    /// Test support: the findings of the batched plan alone (`None` when the file has no
    /// plan or the plan handed this document to the rule-by-rule evaluation) and of the
    /// rule-by-rule evaluation alone, so that tests can hold the two to the same results.
    #[doc(hidden)]
    pub fn validate_both_ways(
        &self,
        xml: &str,
    ) -> Result<(Option<Vec<Finding>>, Vec<Finding>), SchematronError> {
        let (mut documents, doc) = parse_document(xml)?;
        let batched = self
            .plan
            .as_ref()
            .and_then(|p| p.run(self, &mut documents, doc));
        let (mut documents, doc) = parse_document(xml)?;
        Ok((batched, self.validate_rule_by_rule(&mut documents, doc)))
    }

    /// [`RuleSet::validate`] on a document already parsed into `documents`.
    fn validate_parsed(&self, documents: &mut Documents, doc: xot::Node) -> Vec<Finding> {
        if let Some(findings) = self.plan.as_ref().and_then(|p| p.run(self, documents, doc)) {
            return findings;
        }
        self.validate_rule_by_rule(documents, doc)
    }

    /// Evaluates every rule on its own: the reference semantics, used when the batched
    /// plan is not available or raised an error on this document.
    fn validate_rule_by_rule(&self, documents: &mut Documents, doc: xot::Node) -> Vec<Finding> {
        let doc_item = Item::Node(doc);
        let mut run = Run {
            documents,
            findings: Vec::new(),
        };
        let mut globals = Variables::new();
        for l in &self.lets {
            let v = run.eval(&l.query, &doc_item, &globals);
            globals.insert(l.name.clone(), v.unwrap_or_default());
        }
        for p in &self.patterns {
            let mut pvars = globals.clone();
            for l in &p.lets {
                let v = run.eval(&l.query, &doc_item, &pvars);
                pvars.insert(l.name.clone(), v.unwrap_or_default());
            }
            // First-match semantics: a node fired by an earlier rule is not tried again.
            let mut fired: HashSet<xot::Node> = HashSet::new();
            for r in &p.rules {
                let nodes = match run.eval(&r.select, &doc_item, &pvars) {
                    Ok(s) => s,
                    Err(msg) => {
                        for a in &r.assertions {
                            run.findings.push(Finding::new(
                                a.id.clone(),
                                Severity::Fatal,
                                "/",
                                format!("the rule context could not be evaluated: {msg}"),
                            ));
                        }
                        continue;
                    }
                };
                for item in nodes.iter() {
                    let Item::Node(node) = item else { continue };
                    let xot = run.documents.xot();
                    if xot.is_text(node) || !fired.insert(node) {
                        continue;
                    }
                    let is_visited = xot.is_element(node)
                        || xot.is_document(node)
                        || xot.is_attribute_node(node);
                    if !is_visited {
                        continue;
                    }
                    run.fire(self, r, &Item::Node(node), &pvars);
                }
            }
        }
        run.findings
    }
}

/// Parses a document for the XPath engine: the documents and the document node.
fn parse_document(xml: &str) -> Result<(Documents, xot::Node), SchematronError> {
    let mut documents = Documents::new();
    let handle = documents
        .add_string_without_uri(xml)
        .map_err(|e| SchematronError::Document(e.to_string()))?;
    let doc = documents
        .document_node(handle)
        .ok_or_else(|| SchematronError::Document("no document node".into()))?;
    Ok((documents, doc))
}

/// The prefix of the plan's own variable names; a rule file using it keeps the rule by
/// rule evaluation.
const PLAN_VAR: &str = "varti_plan_";

impl Plan {
    /// Writes the rule file as one expression and compiles it; `None` when the file names
    /// a variable like the plan's own or the engine does not accept the expression (the
    /// rule file then runs rule by rule, with the same results).
    fn build(compiler: &Compiler, lets: &[Let], patterns: &[Pattern]) -> Option<Plan> {
        let all_lets = lets.iter().chain(patterns.iter().flat_map(|p| {
            p.lets
                .iter()
                .chain(p.rules.iter().flat_map(|r| r.lets.iter()))
        }));
        if all_lets
            .into_iter()
            .any(|l| l.name.local_name().starts_with(PLAN_VAR))
        {
            return None;
        }
        let contexts: Vec<Vec<&str>> = patterns
            .iter()
            .map(|p| p.rules.iter().map(|r| r.context.as_str()).collect())
            .collect();
        let Some(contexts) = context::Contexts::compile(compiler, &contexts) else {
            tracing::debug!(
                file = compiler.file,
                "a rule context is of a form the native matcher does not read; \
                 the rule file is evaluated rule by rule"
            );
            return None;
        };
        let bind = |l: &Let| format!("let ${} := ({}) return ", l.name.local_name(), l.source);
        let mut expr: String = lets.iter().map(bind).collect();
        let mut rules = Vec::new();
        let mut node_vars = Vec::new();
        let mut blocks = Vec::new();
        for (pi, p) in patterns.iter().enumerate() {
            let mut rule_blocks = Vec::new();
            for (ri, r) in p.rules.iter().enumerate() {
                if r.assertions.is_empty() {
                    continue;
                }
                let k = rules.len();
                let lets: String = r.lets.iter().map(bind).collect();
                let tests: Vec<String> = r
                    .assertions
                    .iter()
                    .map(|a| format!("boolean(({}))", a.test_source))
                    .collect();
                rule_blocks.push(format!(
                    "'{k}', for ${PLAN_VAR}n in ${PLAN_VAR}r{k} return ${PLAN_VAR}n ! ({lets}(., {}))",
                    tests.join(", ")
                ));
                rules.push((pi, ri));
                node_vars.push(OwnedName::new(
                    format!("{PLAN_VAR}r{k}"),
                    String::new(),
                    String::new(),
                ));
            }
            if rule_blocks.is_empty() {
                continue;
            }
            let plets: String = p.lets.iter().map(bind).collect();
            blocks.push(format!("({plets}({}))", rule_blocks.join(", ")));
        }
        expr.push_str(&format!("({})", blocks.join(", ")));
        let query = match compiler.compile(&expr, &node_vars) {
            Ok(q) => q,
            Err(e) => {
                tracing::debug!(
                    file = compiler.file,
                    "the rule file as one expression does not compile ({e}); \
                     it is evaluated rule by rule"
                );
                return None;
            }
        };
        Some(Plan {
            query,
            rules,
            node_vars,
            contexts,
        })
    }

    /// Reads the plan's result: the (rule number, node) pairs with at least one failed
    /// assertion, in order; an error when the result does not have the expected shape.
    fn failed_nodes(
        &self,
        set: &RuleSet,
        result: &Sequence,
    ) -> Result<Vec<(usize, xot::Node)>, String> {
        let mut failed: Vec<(usize, xot::Node)> = Vec::new();
        let mut rule: Option<(usize, &Rule)> = None;
        let mut node: Option<xot::Node> = None;
        let mut seen = 0usize;
        let complete =
            |rule: Option<(usize, &Rule)>, node: Option<xot::Node>, seen: usize| match (rule, node)
            {
                (Some((_, r)), Some(_)) if seen != r.assertions.len() => Err(format!(
                    "{seen} outcomes for {} assertions",
                    r.assertions.len()
                )),
                _ => Ok(()),
            };
        for item in result.iter() {
            match item {
                Item::Atomic(Atomic::Boolean(v)) => {
                    let (Some((k, r)), Some(n)) = (rule, node) else {
                        return Err("an outcome outside a rule's node".into());
                    };
                    let a = r
                        .assertions
                        .get(seen)
                        .ok_or("more outcomes than assertions")?;
                    seen += 1;
                    let fails = match a.kind {
                        Kind::Assert => !v,
                        Kind::Report => v,
                    };
                    if fails && failed.last() != Some(&(k, n)) {
                        failed.push((k, n));
                    }
                }
                Item::Node(n) => {
                    complete(rule, node, seen)?;
                    node = Some(n);
                    seen = 0;
                }
                Item::Atomic(a) => {
                    complete(rule, node, seen)?;
                    let k = String::try_from(a.clone())
                        .ok()
                        .and_then(|k| k.parse::<usize>().ok())
                        .ok_or_else(|| format!("unexpected item {a:?}"))?;
                    let &(pi, ri) = self.rules.get(k).ok_or("no such rule")?;
                    rule = Some((k, &set.patterns[pi].rules[ri]));
                    node = None;
                    seen = 0;
                }
                Item::Function(_) => return Err("a function item".into()),
            }
        }
        complete(rule, node, seen)?;
        Ok(failed)
    }

    /// Runs the plan on a document: its findings, or `None` when the evaluation raised an
    /// error (the caller then evaluates rule by rule).
    fn run(
        &self,
        set: &RuleSet,
        documents: &mut Documents,
        doc: xot::Node,
    ) -> Option<Vec<Finding>> {
        let doc_item = Item::Node(doc);
        let mut run = Run {
            documents,
            findings: Vec::new(),
        };
        let Ok(selected) = self.contexts.select(run.documents, doc) else {
            tracing::debug!(
                file = set.name,
                "a rule context's predicate is not a plain test on this document; \
                 evaluating rule by rule"
            );
            return None;
        };
        let mut vars = Variables::new();
        for (name, &(pi, ri)) in self.node_vars.iter().zip(&self.rules) {
            let nodes: Vec<Item> = selected[pi][ri].iter().map(|&n| Item::Node(n)).collect();
            vars.insert(name.clone(), nodes.into());
        }
        let result = match run.eval(&self.query, &doc_item, &vars) {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(
                    file = set.name,
                    "the rule file raised {e} on this document; evaluating rule by rule"
                );
                return None;
            }
        };
        // The (rule number, node) pairs with at least one failed assertion, in order.
        let failed = match self.failed_nodes(set, &result) {
            Ok(f) => f,
            Err(e) => {
                tracing::debug!(
                    file = set.name,
                    "unexpected batched result ({e}); evaluating rule by rule"
                );
                return None;
            }
        };
        // Findings for the failed ones exactly as rule by rule: the lets in scope, then
        // every assertion of the rule on that node.
        let mut globals: Option<Variables> = None;
        let mut pattern_vars: Vec<Option<Variables>> = vec![None; set.patterns.len()];
        for (rule_no, n) in failed {
            let (pi, ri) = self.rules[rule_no];
            let p = &set.patterns[pi];
            if pattern_vars[pi].is_none() {
                let g = globals.get_or_insert_with(|| {
                    let mut g = Variables::new();
                    for l in &set.lets {
                        let v = run.eval(&l.query, &doc_item, &g);
                        g.insert(l.name.clone(), v.unwrap_or_default());
                    }
                    g
                });
                let mut pv = g.clone();
                for l in &p.lets {
                    let v = run.eval(&l.query, &doc_item, &pv);
                    pv.insert(l.name.clone(), v.unwrap_or_default());
                }
                pattern_vars[pi] = Some(pv);
            }
            let pv = pattern_vars[pi].as_ref().expect("just computed");
            run.fire(set, &p.rules[ri], &Item::Node(n), pv);
        }
        Some(run.findings)
    }
}

const LOCATION_XPATH: &str = "if (. instance of document-node()) then '/' else \
    concat('/', string-join(for $a in ./ancestor-or-self::node()[not(. instance of document-node())] \
    return if ($a instance of attribute()) then concat('@', name($a)) \
    else concat(name($a), '[', count($a/preceding-sibling::*[node-name(.) = node-name($a)]) + 1, ']'), '/'))";

struct Run<'d> {
    documents: &'d mut Documents,
    findings: Vec<Finding>,
}

impl Run<'_> {
    fn eval(
        &mut self,
        q: &SequenceQuery,
        item: &Item,
        vars: &Variables,
    ) -> Result<Sequence, String> {
        let docs = &*self.documents;
        let mut b = q.dynamic_context_builder(docs);
        b.context_item(item.clone());
        b.variables(vars.clone());
        let ctx = b.build();
        q.execute_with_context(self.documents, &ctx)
            .map_err(|e| e.to_string())
    }

    fn string_of(&mut self, s: &Sequence) -> String {
        let xot = self.documents.xot();
        s.iter()
            .map(|i| i.string_value(xot).unwrap_or_default())
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn fire(&mut self, set: &RuleSet, rule: &Rule, node: &Item, vars: &Variables) {
        let mut vars = vars.clone();
        for l in &rule.lets {
            let v = self.eval(&l.query, node, &vars);
            vars.insert(l.name.clone(), v.unwrap_or_default());
        }
        for a in &rule.assertions {
            let outcome = self
                .eval(&a.test, node, &vars)
                .and_then(|s| s.effective_boolean_value().map_err(|e| e.to_string()));
            let failed = match (&outcome, a.kind) {
                (Err(_), _) => true,
                (Ok(v), Kind::Assert) => !v,
                (Ok(v), Kind::Report) => *v,
            };
            if !failed {
                continue;
            }
            let location = self
                .eval(&set.location, node, &vars)
                .map(|s| self.string_of(&s))
                .unwrap_or_else(|_| "?".into());
            // An unevaluable test is fatal whatever the role: it must not pass silently.
            let (severity, message) = match outcome {
                Err(e) => (
                    Severity::Fatal,
                    format!("the rule could not be evaluated: {e}"),
                ),
                Ok(_) => (a.severity, self.message(a, node, &vars)),
            };
            self.findings
                .push(Finding::new(a.id.clone(), severity, location, message));
        }
    }

    fn message(&mut self, a: &Assertion, node: &Item, vars: &Variables) -> String {
        let mut out = String::new();
        for part in &a.message {
            match part {
                MessagePart::Text(t) => out.push_str(t),
                MessagePart::ValueOf(q) => {
                    if let Ok(s) = self.eval(q, node, vars) {
                        out.push_str(&self.string_of(&s));
                    }
                }
                MessagePart::Name(q) => {
                    let target = match q {
                        Some(q) => self.eval(q, node, vars).ok().and_then(|s| s.iter().next()),
                        None => Some(node.clone()),
                    };
                    if let Some(Item::Node(n)) = target {
                        let xot = self.documents.xot();
                        let name = xot
                            .node_name(n)
                            .map(|id| xot.local_name_str(id).to_string())
                            .unwrap_or_default();
                        out.push_str(&name);
                    }
                }
            }
        }
        // Rule files indent their messages; collapse the layout whitespace.
        out.split_whitespace().collect::<Vec<_>>().join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_patterns_match_anywhere_absolute_from_root() {
        assert_eq!(pattern_to_selection("a:b/@id"), "(//a:b/@id)");
        assert_eq!(pattern_to_selection("/node()"), "(/node())");
        assert_eq!(
            pattern_to_selection("x[@n='a|b'] | /y"),
            "(//x[@n='a|b']) | (/y)"
        );
    }

    #[test]
    fn first_matching_rule_wins_and_lets_are_seen() {
        let sch = r#"<sch:schema xmlns:sch="http://purl.oclc.org/dsdl/schematron" queryBinding="xslt2">
            <sch:ns prefix="t" uri="urn:t"/>
            <sch:let name="g" value="count(//t:i)"/>
            <sch:pattern>
              <sch:let name="p" value="2"/>
              <sch:rule context="t:i[@k='x']">
                <sch:let name="v" value="string(@k)"/>
                <sch:assert id="A1" test="$v = 'y'">first <sch:value-of select="$v"/> of <sch:value-of select="$g"/></sch:assert>
              </sch:rule>
              <sch:rule context="t:i">
                <sch:assert id="A2" role="warning" test="$p = 3">second <sch:name/></sch:assert>
              </sch:rule>
            </sch:pattern>
            <sch:pattern>
              <sch:rule context="t:r/@v"><sch:report id="R1" flag="INFO" test="matches(., '^\d+$')">digits</sch:report></sch:rule>
            </sch:pattern>
          </sch:schema>"#;
        let set = RuleSet::from_str("T", sch).unwrap();
        let f = set
            .validate(r#"<r xmlns="urn:t" v="12"><i k="x"/><i k="z"/></r>"#)
            .unwrap();
        let got: Vec<_> = f
            .iter()
            .map(|f| {
                (
                    f.rule_id.as_str(),
                    f.severity,
                    f.location.as_str(),
                    f.message.as_str(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("A1", Severity::Fatal, "/r[1]/i[1]", "first x of 2"),
                ("A2", Severity::Warning, "/r[1]/i[2]", "second i"),
                ("R1", Severity::Info, "/r[1]/@v", "digits"),
            ]
        );
        let (batched, reference) = set
            .validate_both_ways(r#"<r xmlns="urn:t" v="12"><i k="x"/><i k="z"/></r>"#)
            .unwrap();
        assert_eq!(batched.as_ref(), Some(&reference));
        assert_eq!(reference, f);
    }

    fn ids_and_locations(f: &[Finding]) -> Vec<(String, String)> {
        f.iter()
            .map(|f| (f.rule_id.clone(), f.location.clone()))
            .collect()
    }

    #[test]
    fn an_unevaluable_test_is_reported_by_the_rule_by_rule_evaluation() {
        let sch = r#"<sch:schema xmlns:sch="http://purl.oclc.org/dsdl/schematron" queryBinding="xslt2">
            <sch:pattern>
              <sch:rule context="a/b"><sch:assert id="E" test="xs:integer(@n) gt 0">n</sch:assert></sch:rule>
            </sch:pattern>
          </sch:schema>"#;
        let set = RuleSet::from_str("T", sch).unwrap();
        let doc = r#"<a><b n="1"/><b n="x"/></a>"#;
        // The cast fails on the second b: the batched evaluation hands the document back.
        let (batched, reference) = set.validate_both_ways(doc).unwrap();
        assert!(batched.is_none());
        let f = set.validate(doc).unwrap();
        assert_eq!(f, reference);
        assert_eq!(ids_and_locations(&f), [("E".into(), "/a[1]/b[2]".into())]);
        assert!(f[0].message.contains("could not be evaluated"), "{f:?}");
    }

    #[test]
    fn contexts_match_natively_like_the_xpath_selections() {
        // Absolute and relative branches, attributes, a nested-path predicate, `and`,
        // a name in no namespace, first match within a pattern, and a second pattern
        // seeing the same nodes again.
        let sch = r#"<sch:schema xmlns:sch="http://purl.oclc.org/dsdl/schematron" queryBinding="xslt2">
            <sch:ns prefix="t" uri="urn:t"/>
            <sch:pattern>
              <sch:rule context="t:s[@name='A' and @k]/t:v | /t:r/@x"><sch:report id="P1" test="true()">1</sch:report></sch:rule>
              <sch:rule context="t:s[t:v[@q='1']]"><sch:report id="P2" test="true()">2</sch:report></sch:rule>
              <sch:rule context="t:v"><sch:report id="P3" test=". = 'z'">3</sch:report></sch:rule>
              <sch:rule context="/node()"><sch:report id="P4" test="true()">4</sch:report></sch:rule>
            </sch:pattern>
            <sch:pattern>
              <sch:rule context="plain/@*"><sch:report id="Q1" test="true()">q</sch:report></sch:rule>
              <sch:rule context="/"><sch:report id="Q2" test="true()">root</sch:report></sch:rule>
            </sch:pattern>
          </sch:schema>"#;
        let set = RuleSet::from_str("T", sch).unwrap();
        let doc = r#"<r xmlns="urn:t" x="1"><s name="A" k=""><v>a</v></s><s name="A"><v q="1">z</v></s><s name="B'"><v>z</v></s><plain xmlns="" a="1" b="2"/></r>"#;
        let (batched, reference) = set.validate_both_ways(doc).unwrap();
        assert_eq!(batched.as_ref(), Some(&reference));
        let got = ids_and_locations(&reference);
        let want: Vec<(String, String)> = [
            ("P1", "/r[1]/@x"),
            ("P1", "/r[1]/s[1]/v[1]"),
            ("P2", "/r[1]/s[2]"),
            ("P3", "/r[1]/s[2]/v[1]"),
            ("P3", "/r[1]/s[3]/v[1]"),
            ("P4", "/r[1]"),
            ("Q1", "/r[1]/plain[1]/@a"),
            ("Q1", "/r[1]/plain[1]/@b"),
            ("Q2", "/"),
        ]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
        // Within a pattern, findings come rule by rule, each rule's nodes in document order.
        assert_eq!(got, want);
    }

    #[test]
    fn a_position_predicate_keeps_the_xpath_selection() {
        let sch = r#"<sch:schema xmlns:sch="http://purl.oclc.org/dsdl/schematron" queryBinding="xslt2">
            <sch:pattern>
              <sch:rule context="a/b[2]"><sch:report id="N" test="true()">n</sch:report></sch:rule>
            </sch:pattern>
          </sch:schema>"#;
        let set = RuleSet::from_str("T", sch).unwrap();
        let doc = r#"<a><b/><b/></a>"#;
        let (batched, reference) = set.validate_both_ways(doc).unwrap();
        assert!(batched.is_none());
        assert_eq!(
            ids_and_locations(&reference),
            [("N".into(), "/a[1]/b[2]".into())]
        );
    }
}
