//! Rule contexts matched natively, in one walk of the document.
//!
//! Evaluating each rule's context as an XPath selection from the document node (`//a/b`)
//! makes the XPath engine go over the whole tree once per rule, which is where most of a
//! validation's time went. An XSLT pattern is really a test on one node ("a `b` whose
//! parent is an `a`"), so the runner walks the visited nodes once in document order and,
//! per pattern, gives each node to the first rule whose context it matches: the
//! first-match semantics of ISO Schematron, without any selection.
//!
//! Only the pattern forms the EC's rule files use are read: `|`-separated branches of
//! `/`-separated steps, absolute or relative, each step an element or `@`attribute name test
//! (`prefix:name`, `name`, `*`, `node()`) with predicates. Predicates of the forms
//! `@name`, `@name = 'literal'` and their `and` are decided natively (an attribute's value
//! against a string is a codepoint comparison in XPath); any other predicate is evaluated
//! by the XPath engine on the step's node, and a numeric result (a position, which means
//! something else in a pattern) makes the caller fall back to the XPath selections. A
//! context outside these forms keeps its rule file on the XPath selections.

use xee_xpath::context::Variables;
use xee_xpath::query::SequenceQuery;
use xee_xpath::{Atomic, Documents, Item};
use xot::{NameId, Node, Xot};

use super::{split_top_level, Compiler};

const XML_NS: &str = "http://www.w3.org/XML/1998/namespace";

/// A name a step or predicate tests, as (namespace URI, local name).
type QName = (String, String);

#[derive(Debug, Clone)]
enum NameTest {
    /// `*`, `node()` or `@*`: any element (child steps) or attribute (`@` steps).
    Any,
    /// An index into [`Contexts::names`].
    Name(usize),
}

#[derive(Debug, Clone)]
enum Predicate {
    /// `@name`: the attribute is present.
    HasAttribute(usize),
    /// `@name = 'literal'`: the attribute is present with exactly that value.
    AttributeIs(usize, String),
    /// `p and q`.
    And(Box<Predicate>, Box<Predicate>),
    /// Anything else, by the XPath engine with the step's node as context.
    XPath(SequenceQuery),
}

#[derive(Debug, Clone)]
struct Step {
    attribute: bool,
    test: NameTest,
    predicates: Vec<Predicate>,
}

/// One `|` branch of a context: its steps, first to last.
#[derive(Debug, Clone)]
struct Branch {
    /// Starts with `/`: the first step's node is a child of the document node (with no
    /// steps at all, the branch is `/`, the document node itself).
    absolute: bool,
    steps: Vec<Step>,
}

/// The contexts of every rule of a rule file, ready to match.
#[derive(Debug, Clone)]
pub(super) struct Contexts {
    names: Vec<QName>,
    /// Per pattern, per rule: the context's branches.
    patterns: Vec<Vec<Vec<Branch>>>,
}

/// The predicate could not be decided natively on this document (a numeric result, an
/// XPath error): evaluate the selections with the XPath engine instead.
pub(super) struct Undecided;

/// The resolved names of [`Contexts::names`] in one document (`None`: the document never
/// uses that name, so nothing matches it).
struct Names(Vec<Option<NameId>>);

impl Contexts {
    /// Reads every rule's context (`contexts[pattern][rule]`); `None` when one of them is
    /// not of a form this matcher reads.
    pub(super) fn compile(compiler: &Compiler, contexts: &[Vec<&str>]) -> Option<Contexts> {
        let mut c = Contexts {
            names: Vec::new(),
            patterns: Vec::new(),
        };
        for rules in contexts {
            let mut p = Vec::new();
            for context in rules {
                let branches = split_top_level(context, '|')
                    .into_iter()
                    .map(|b| c.branch(compiler, b.trim()))
                    .collect::<Option<Vec<_>>>()?;
                p.push(branches);
            }
            c.patterns.push(p);
        }
        Some(c)
    }

    fn name(&mut self, compiler: &Compiler, qname: &str) -> Option<usize> {
        let (ns, local) = match qname.split_once(':') {
            Some(("xml", local)) => (XML_NS.to_string(), local),
            Some((prefix, local)) => (
                compiler
                    .namespaces
                    .iter()
                    .find(|(p, _)| p == prefix)?
                    .1
                    .clone(),
                local,
            ),
            // An unprefixed name in an XPath 2 pattern is in no namespace.
            None => (String::new(), qname),
        };
        let valid = |s: &str| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.'))
        };
        if !valid(local) {
            return None;
        }
        let key = (ns, local.to_string());
        Some(match self.names.iter().position(|n| *n == key) {
            Some(i) => i,
            None => {
                self.names.push(key);
                self.names.len() - 1
            }
        })
    }

    fn branch(&mut self, compiler: &Compiler, text: &str) -> Option<Branch> {
        let (absolute, rest) = match text.strip_prefix('/') {
            Some(r) => (true, r),
            None => (false, text),
        };
        if absolute && rest.trim().is_empty() {
            return Some(Branch {
                absolute,
                steps: Vec::new(),
            });
        }
        let steps = split_top_level(rest, '/')
            .into_iter()
            .map(|s| self.step(compiler, s.trim()))
            .collect::<Option<Vec<_>>>()?;
        Some(Branch { absolute, steps })
    }

    fn step(&mut self, compiler: &Compiler, text: &str) -> Option<Step> {
        // `//` inside a pattern gives an empty step: not a form read here.
        let (attribute, text) = match text.strip_prefix('@') {
            Some(t) => (true, t),
            None => (false, text),
        };
        let name_end = text.find('[').unwrap_or(text.len());
        let (name, mut preds) = (text[..name_end].trim(), &text[name_end..]);
        let test = match name {
            "*" => NameTest::Any,
            "node()" if !attribute => NameTest::Any,
            n => NameTest::Name(self.name(compiler, n)?),
        };
        let mut predicates = Vec::new();
        while !preds.is_empty() {
            let close = matching_bracket(preds)?;
            predicates.push(self.predicate(compiler, preds[1..close].trim())?);
            preds = preds[close + 1..].trim_start();
        }
        Some(Step {
            attribute,
            test,
            predicates,
        })
    }

    fn predicate(&mut self, compiler: &Compiler, text: &str) -> Option<Predicate> {
        // Positions and variables mean something else (or something more) in a pattern.
        if text.contains("position(") || text.contains("last(") || text.contains('$') {
            return None;
        }
        if let Some(p) = self.native_predicate(compiler, text) {
            return Some(p);
        }
        // A number literal is a position predicate.
        if text.parse::<f64>().is_ok() {
            return None;
        }
        compiler.compile(text, &[]).ok().map(Predicate::XPath)
    }

    fn native_predicate(&mut self, compiler: &Compiler, text: &str) -> Option<Predicate> {
        let parts = split_top_level_word(text, "and");
        if parts.len() > 1 {
            let mut it = parts.into_iter();
            let first = self.native_predicate(compiler, it.next()?.trim())?;
            return it.try_fold(first, |acc, p| {
                let next = self.native_predicate(compiler, p.trim())?;
                Some(Predicate::And(Box::new(acc), Box::new(next)))
            });
        }
        let attr = text.strip_prefix('@')?;
        match attr.split_once('=') {
            None => Some(Predicate::HasAttribute(self.name(compiler, attr.trim())?)),
            Some((name, literal)) => {
                let name = name.trim();
                // `!=`, `<=`, `>=` are not equality.
                if name.ends_with(['!', '<', '>']) {
                    return None;
                }
                let literal = string_literal(literal.trim())?;
                Some(Predicate::AttributeIs(self.name(compiler, name)?, literal))
            }
        }
    }

    /// Per pattern, per rule: the visited nodes (document node, elements, attributes) the
    /// rule fires on, in document order, each given to the first rule of its pattern whose
    /// context it matches.
    pub(super) fn select(
        &self,
        documents: &mut Documents,
        doc: Node,
    ) -> Result<Vec<Vec<Vec<Node>>>, Undecided> {
        let names = self.resolve(documents.xot());
        let mut visited = vec![doc];
        {
            let xot = documents.xot();
            for n in xot.descendants(doc) {
                if xot.is_element(n) {
                    visited.push(n);
                    visited.extend(xot.attribute_nodes(n));
                }
            }
        }
        let mut out: Vec<Vec<Vec<Node>>> = self
            .patterns
            .iter()
            .map(|p| vec![Vec::new(); p.len()])
            .collect();
        for &n in &visited {
            for (pi, rules) in self.patterns.iter().enumerate() {
                for (ri, branches) in rules.iter().enumerate() {
                    let mut hit = false;
                    for b in branches {
                        if self.branch_matches(b, n, documents, &names)? {
                            hit = true;
                            break;
                        }
                    }
                    if hit {
                        out[pi][ri].push(n);
                        break;
                    }
                }
            }
        }
        Ok(out)
    }

    fn resolve(&self, xot: &Xot) -> Names {
        Names(
            self.names
                .iter()
                .map(|(ns, local)| {
                    let ns = if ns.is_empty() {
                        Some(xot.no_namespace())
                    } else {
                        xot.namespace(ns)
                    };
                    ns.and_then(|ns| xot.name_ns(local, ns))
                })
                .collect(),
        )
    }

    fn branch_matches(
        &self,
        b: &Branch,
        node: Node,
        documents: &mut Documents,
        names: &Names,
    ) -> Result<bool, Undecided> {
        let xot = documents.xot();
        if b.steps.is_empty() {
            return Ok(xot.is_document(node));
        }
        // Cheap name checks up the ancestry first; predicates only when the names fit.
        let mut cur = Some(node);
        for step in b.steps.iter().rev() {
            let Some(n) = cur else { return Ok(false) };
            if !step_name_matches(xot, step, n, names) {
                return Ok(false);
            }
            cur = xot.parent(n);
        }
        if b.absolute && !cur.is_some_and(|p| xot.is_document(p)) {
            return Ok(false);
        }
        let mut n = node;
        for step in b.steps.iter().rev() {
            for p in &step.predicates {
                if !predicate_holds(p, n, documents, names)? {
                    return Ok(false);
                }
            }
            n = match documents.xot().parent(n) {
                Some(p) => p,
                None => break,
            };
        }
        Ok(true)
    }
}

fn step_name_matches(xot: &Xot, step: &Step, n: Node, names: &Names) -> bool {
    let name = if step.attribute {
        match xot.attribute_node(n) {
            Some(a) => a.name(),
            None => return false,
        }
    } else {
        match xot.element(n) {
            Some(e) => e.name(),
            None => return false,
        }
    };
    match step.test {
        NameTest::Any => true,
        NameTest::Name(i) => names.0[i] == Some(name),
    }
}

fn attribute<'x>(xot: &'x Xot, n: Node, names: &Names, i: usize) -> Option<&'x str> {
    xot.get_attribute(n, names.0[i]?)
}

fn predicate_holds(
    p: &Predicate,
    n: Node,
    documents: &mut Documents,
    names: &Names,
) -> Result<bool, Undecided> {
    Ok(match p {
        Predicate::HasAttribute(i) => attribute(documents.xot(), n, names, *i).is_some(),
        Predicate::AttributeIs(i, v) => {
            attribute(documents.xot(), n, names, *i) == Some(v.as_str())
        }
        Predicate::And(a, b) => {
            predicate_holds(a, n, documents, names)? && predicate_holds(b, n, documents, names)?
        }
        Predicate::XPath(q) => {
            let mut b = xee_xpath::Query::dynamic_context_builder(q, documents);
            b.context_item(Item::Node(n));
            b.variables(Variables::new());
            let ctx = b.build();
            let s = xee_xpath::Query::execute_with_context(q, documents, &ctx)
                .map_err(|_| Undecided)?;
            let mut items = s.iter();
            if let (Some(Item::Atomic(a)), None) = (items.next(), items.next()) {
                if !matches!(
                    a,
                    Atomic::Boolean(_) | Atomic::String(..) | Atomic::Untyped(_)
                ) {
                    // A number is a position test; anything else is not read here.
                    return Err(Undecided);
                }
            }
            s.effective_boolean_value().map_err(|_| Undecided)?
        }
    })
}

/// The index of the `]` closing the `[` at the start of `s`, quotes respected.
fn matching_bracket(s: &str) -> Option<usize> {
    if !s.starts_with('[') {
        return None;
    }
    let (mut depth, mut quote) = (0i32, None::<char>);
    for (i, c) in s.char_indices() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '"') => quote = Some(c),
            (None, '[' | '(') => depth += 1,
            (None, ']' | ')') => {
                depth -= 1;
                if depth == 0 {
                    return (c == ']').then_some(i);
                }
            }
            _ => {}
        }
    }
    None
}

/// Splits at a top-level keyword surrounded by whitespace (`a and b`).
fn split_top_level_word<'a>(s: &'a str, word: &str) -> Vec<&'a str> {
    let mut out = Vec::new();
    let (mut depth, mut quote, mut start) = (0i32, None::<char>, 0usize);
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < s.len() {
        let c = bytes[i] as char;
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '"') => quote = Some(c),
            (None, '[' | '(') => depth += 1,
            (None, ']' | ')') => depth -= 1,
            (None, c) if depth == 0 && c.is_ascii_whitespace() => {
                let after = &s[i + 1..];
                if after.starts_with(word)
                    && after[word.len()..].starts_with(|c: char| c.is_ascii_whitespace())
                {
                    out.push(&s[start..i]);
                    i += 1 + word.len();
                    start = i;
                    continue;
                }
            }
            _ => {}
        }
        i += 1;
    }
    out.push(&s[start..]);
    out
}

/// The value of an XPath string literal (`'a''b'` is `a'b`), or `None` when `s` is not
/// exactly one literal.
fn string_literal(s: &str) -> Option<String> {
    let q = s.chars().next().filter(|c| *c == '\'' || *c == '"')?;
    let inner = s.strip_prefix(q)?.strip_suffix(q)?;
    let doubled = format!("{q}{q}");
    let single = q.to_string();
    // A lone quote inside would end the literal early.
    if inner.replace(&doubled, "").contains(q) {
        return None;
    }
    Some(inner.replace(&doubled, &single))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_brackets_and_words() {
        assert_eq!(string_literal("'a''b'").as_deref(), Some("a'b"));
        assert_eq!(string_literal("'a'b'"), None);
        assert_eq!(string_literal("\"x\"").as_deref(), Some("x"));
        assert_eq!(matching_bracket("[a[b]]/c"), Some(5));
        assert_eq!(matching_bracket("[']']x"), Some(4));
        assert_eq!(
            split_top_level_word("@a and @b = 'x and y'", "and"),
            ["@a", " @b = 'x and y'"]
        );
        assert_eq!(split_top_level_word("@band", "and"), ["@band"]);
    }
}
