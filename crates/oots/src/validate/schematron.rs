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
//! Because the compiled engine uses reference counting, a [`RuleSet`] is not `Send`: keep
//! one per thread (it is cheap to share within a thread).

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use xee_xpath::context::{StaticContextBuilder, Variables};
use xee_xpath::query::SequenceQuery;
use xee_xpath::{Documents, Item, Queries, Query, Sequence};
use xot::xmlname::OwnedName;
use xot::Xot;

use super::{Finding, Severity};

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
}

#[derive(Debug, Clone)]
struct Assertion {
    kind: Kind,
    id: String,
    severity: Severity,
    test: SequenceQuery,
    message: Vec<MessagePart>,
}

#[derive(Debug, Clone)]
struct Rule {
    /// The context pattern turned into a selection from the document node.
    select: SequenceQuery,
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
        let root = xot.document_element(doc).ok()?;
        let local = |xot: &Xot, n| {
            xot.element(n)
                .map(|e| xot.local_name_str(e.name()).to_string())
        };
        let root_name = local(&xot, root)?;
        let name_attr = xot.add_name("name");
        let code_attr = xot.add_name("code");
        let status_attr = xot.add_name("status");
        // Slot names and exception codes anywhere in the document.
        let mut slots = HashSet::new();
        let mut codes = Vec::new();
        let mut has_exception = false;
        let mut has_evidence_type_list = false;
        for n in xot.descendants(root) {
            match local(&xot, n).as_deref() {
                // Both EB answers carry a Requirement slot; only the evidence-types one
                // lists sdg:EvidenceTypeList under the requirement.
                Some("EvidenceTypeList") => has_evidence_type_list = true,
                Some("Slot") => {
                    if let Some(v) = xot.get_attribute(n, name_attr) {
                        slots.insert(v.to_string());
                    }
                }
                Some("Exception") => {
                    has_exception = true;
                    if let Some(c) = xot.get_attribute(n, code_attr) {
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
                let failed = xot
                    .get_attribute(root, status_attr)
                    .is_some_and(|s| s.ends_with(":Failure"));
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
        let Some(kind) = DocumentKind::detect(xml) else {
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
        let mut out = Vec::new();
        for s in sets {
            out.extend(s.validate(xml)?);
        }
        Ok(out)
    }
}

/// Splits an XSLT pattern at top-level `|` and makes each branch a selection from the
/// document node: relative branches may start anywhere (`//` prefix).
fn pattern_to_selection(pattern: &str) -> String {
    let mut branches = Vec::new();
    let (mut depth, mut quote, mut start) = (0i32, None::<char>, 0usize);
    for (i, c) in pattern.char_indices() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '"') => quote = Some(c),
            (None, '[' | '(') => depth += 1,
            (None, ']' | ')') => depth -= 1,
            (None, '|') if depth == 0 => {
                branches.push(&pattern[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    branches.push(&pattern[start..]);
    let parts: Vec<String> = branches
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
            Ok(Let { name: owned, query })
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
                                message,
                            });
                        }
                        rules.push(Rule {
                            select,
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
        Ok(RuleSet {
            name: name.to_string(),
            lets,
            patterns,
            location,
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
        let mut documents = Documents::new();
        let handle = documents
            .add_string_without_uri(xml)
            .map_err(|e| SchematronError::Document(e.to_string()))?;
        let doc = documents
            .document_node(handle)
            .ok_or_else(|| SchematronError::Document("no document node".into()))?;
        let doc_item = Item::Node(doc);
        let mut run = Run {
            documents: &mut documents,
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
        Ok(run.findings)
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
    }
}
