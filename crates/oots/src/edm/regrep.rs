//! The ebXML RegRep 4 building blocks the EDM uses: slots and their values, registry
//! objects, classifications, repository item references and `rs:Exception`.
//!
//! Every type reads from and writes to the generic [`Element`] tree. Whatever the typed
//! model does not know is kept verbatim (`Other` variants, `other_attributes`), so a
//! document read and written again loses nothing but layout and comments.

use super::xml::{Attribute, Element, Node, QName, NS_RIM, NS_RS, NS_XLINK, NS_XML, NS_XSI};
use super::EdmError;

/// `rim:Slot`: a named, typed value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    /// The `name` attribute.
    pub name: String,
    /// The optional `type` attribute.
    pub slot_type: Option<String>,
    /// The `rim:SlotValue`, absent in abridged samples.
    pub value: Option<SlotValue>,
}

/// One `rim:LocalizedString` of an international string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalizedString {
    /// `xml:lang`.
    pub lang: Option<String>,
    /// `value`.
    pub value: String,
}

/// A `rim:SlotValue` (or a collection's `rim:Element`) by its `xsi:type`. Simple values
/// keep their lexical form, so a wrongly typed value still reads and can be reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotValue {
    /// `rim:StringValueType`
    String(String),
    /// `rim:BooleanValueType` (lexical form; see `SlotValue::as_bool`)
    Boolean(String),
    /// `rim:DateTimeValueType` (lexical form)
    DateTime(String),
    /// `rim:IntegerValueType` (lexical form)
    Integer(String),
    /// `rim:FloatValueType` (lexical form)
    Float(String),
    /// `rim:DurationValueType` (lexical form)
    Duration(String),
    /// `rim:InternationalStringValueType`
    InternationalString(Vec<LocalizedString>),
    /// `rim:CollectionValueType`
    Collection {
        /// The `collectionType` attribute.
        collection_type: Option<String>,
        /// The `rim:Element` items.
        elements: Vec<SlotValue>,
    },
    /// `rim:AnyValueType`: arbitrary XML (the SDG profile's `sdg:Agent`, `sdg:Person` …).
    Any(Vec<Element>),
    /// `rim:SlotValueType`: a nested slot.
    Slot(Box<Slot>),
    /// Anything else (unknown type, unexpected shape), kept verbatim as the whole
    /// `rim:SlotValue` / `rim:Element` element.
    Other(Element),
}

const SIMPLE_TYPES: &[&str] = &[
    "StringValueType",
    "BooleanValueType",
    "DateTimeValueType",
    "IntegerValueType",
    "FloatValueType",
    "DurationValueType",
];

impl SlotValue {
    /// The lexical value of a simple value (string, boolean, date-time, number, duration).
    pub fn as_str(&self) -> Option<&str> {
        match self {
            SlotValue::String(s)
            | SlotValue::Boolean(s)
            | SlotValue::DateTime(s)
            | SlotValue::Integer(s)
            | SlotValue::Float(s)
            | SlotValue::Duration(s) => Some(s),
            _ => None,
        }
    }

    /// A boolean value read as `xs:boolean` (`true`/`false`/`1`/`0`); None when not a
    /// boolean value or not a valid lexical form.
    pub(crate) fn as_bool(&self) -> Option<bool> {
        match self {
            SlotValue::Boolean(s) => match s.trim() {
                "true" | "1" => Some(true),
                "false" | "0" => Some(false),
                _ => None,
            },
            _ => None,
        }
    }

    /// The `xsi:type` local name in the rim namespace that this value is written with.
    pub(crate) fn type_name(&self) -> Option<&'static str> {
        Some(match self {
            SlotValue::String(_) => "StringValueType",
            SlotValue::Boolean(_) => "BooleanValueType",
            SlotValue::DateTime(_) => "DateTimeValueType",
            SlotValue::Integer(_) => "IntegerValueType",
            SlotValue::Float(_) => "FloatValueType",
            SlotValue::Duration(_) => "DurationValueType",
            SlotValue::InternationalString(_) => "InternationalStringValueType",
            SlotValue::Collection { .. } => "CollectionValueType",
            SlotValue::Any(_) => "AnyValueType",
            SlotValue::Slot(_) => "SlotValueType",
            SlotValue::Other(_) => return None,
        })
    }

    /// The elements of an any-value; for a collection, those of all its any-value items.
    pub(crate) fn any_elements(&self) -> Vec<&Element> {
        match self {
            SlotValue::Any(els) => els.iter().collect(),
            SlotValue::Collection { elements, .. } => {
                elements.iter().flat_map(|e| e.any_elements()).collect()
            }
            _ => Vec::new(),
        }
    }

    /// Reads a `rim:SlotValue` or a collection's `rim:Element`.
    pub(crate) fn from_element(el: &Element) -> SlotValue {
        Self::read(el).unwrap_or_else(|| SlotValue::Other(el.clone()))
    }

    // None: not in a shape the typed model knows; the caller keeps it verbatim.
    fn read(el: &Element) -> Option<SlotValue> {
        let ty = el.xsi_type()?;
        if ty.ns != NS_RIM {
            return None;
        }
        let extra_attrs = |allowed: &[&str]| {
            el.attributes
                .iter()
                .any(|a| !a.name.is(NS_XSI, "type") && !allowed.iter().any(|l| a.name.is("", l)))
        };
        let local = ty.local.as_str();
        if SIMPLE_TYPES.contains(&local) {
            if extra_attrs(&[]) || el.has_significant_text() || el.elements().count() != 1 {
                return None;
            }
            let v = el.child(NS_RIM, "Value")?;
            if !v.attributes.is_empty() || v.elements().next().is_some() {
                return None;
            }
            let s = v.text();
            return Some(match local {
                "StringValueType" => SlotValue::String(s),
                "BooleanValueType" => SlotValue::Boolean(s),
                "DateTimeValueType" => SlotValue::DateTime(s),
                "IntegerValueType" => SlotValue::Integer(s),
                "FloatValueType" => SlotValue::Float(s),
                _ => SlotValue::Duration(s),
            });
        }
        match local {
            "InternationalStringValueType" => {
                if extra_attrs(&[]) || el.has_significant_text() || el.elements().count() != 1 {
                    return None;
                }
                let v = el.child(NS_RIM, "Value")?;
                if !v.attributes.is_empty() || v.has_significant_text() {
                    return None;
                }
                let mut out = Vec::new();
                for ls in v.elements() {
                    if !ls.name.is(NS_RIM, "LocalizedString")
                        || ls.elements().next().is_some()
                        || ls
                            .attributes
                            .iter()
                            .any(|a| !a.name.is(NS_XML, "lang") && !a.name.is("", "value"))
                    {
                        return None;
                    }
                    out.push(LocalizedString {
                        lang: ls.attr(NS_XML, "lang").map(str::to_owned),
                        value: ls.attr("", "value")?.to_owned(),
                    });
                }
                Some(SlotValue::InternationalString(out))
            }
            "CollectionValueType" => {
                if extra_attrs(&["collectionType"]) || el.has_significant_text() {
                    return None;
                }
                let mut elements = Vec::new();
                for item in el.elements() {
                    if !item.name.is(NS_RIM, "Element") {
                        return None;
                    }
                    elements.push(SlotValue::from_element(item));
                }
                Some(SlotValue::Collection {
                    collection_type: el.attr("", "collectionType").map(str::to_owned),
                    elements,
                })
            }
            "AnyValueType" => {
                if extra_attrs(&[]) || el.has_significant_text() {
                    return None;
                }
                Some(SlotValue::Any(el.elements().cloned().collect()))
            }
            "SlotValueType" => {
                if extra_attrs(&[]) || el.has_significant_text() || el.elements().count() != 1 {
                    return None;
                }
                let s = el.child(NS_RIM, "Slot")?;
                Some(SlotValue::Slot(Box::new(Slot::from_element(s).ok()?)))
            }
            _ => None,
        }
    }

    /// Writes this value as an element called `tag` (`SlotValue`, or `Element` inside a
    /// collection). `Other` values are written exactly as they were read.
    pub(crate) fn to_element(&self, tag: &str) -> Element {
        if let SlotValue::Other(el) = self {
            return el.clone();
        }
        let ty = self.type_name().unwrap_or("AnyValueType");
        let mut el = Element::new(NS_RIM, tag).with_attr(
            QName::new(NS_XSI, "type"),
            QName::new(NS_RIM, ty).to_clark(),
        );
        match self {
            SlotValue::InternationalString(items) => {
                let mut v = Element::new(NS_RIM, "Value");
                for ls in items {
                    let mut l = Element::new(NS_RIM, "LocalizedString");
                    if let Some(lang) = &ls.lang {
                        l.set_attr(QName::new(NS_XML, "lang"), lang.clone());
                    }
                    l.set_attr(QName::plain("value"), ls.value.clone());
                    v = v.with_child(l);
                }
                el = el.with_child(v);
            }
            SlotValue::Collection {
                collection_type,
                elements,
            } => {
                if let Some(ct) = collection_type {
                    el.set_attr(QName::plain("collectionType"), ct.clone());
                }
                for item in elements {
                    el = el.with_child(item.to_element("Element"));
                }
            }
            SlotValue::Any(items) => {
                for item in items {
                    el = el.with_child(item.clone());
                }
            }
            SlotValue::Slot(s) => el = el.with_child(s.to_element()),
            SlotValue::Other(_) => {}
            simple => {
                let s = simple.as_str().unwrap_or_default();
                let mut v = Element::new(NS_RIM, "Value");
                if !s.is_empty() {
                    v = v.with_text(s);
                }
                el = el.with_child(v);
            }
        }
        el
    }
}

impl Slot {
    /// A slot holding `value`.
    pub fn new(name: &str, value: SlotValue) -> Self {
        Slot {
            name: name.to_owned(),
            slot_type: None,
            value: Some(value),
        }
    }

    /// Reads a `rim:Slot`. Fails only when it has no `name`.
    pub(crate) fn from_element(el: &Element) -> Result<Slot, EdmError> {
        let name = el
            .attr("", "name")
            .ok_or_else(|| EdmError::Structure("a rim:Slot has no name attribute".into()))?;
        let value = el.child(NS_RIM, "SlotValue").map(SlotValue::from_element);
        Ok(Slot {
            name: name.to_owned(),
            slot_type: el.attr("", "type").map(str::to_owned),
            value,
        })
    }

    /// Writes the `rim:Slot`.
    pub(crate) fn to_element(&self) -> Element {
        let mut el = Element::new(NS_RIM, "Slot").with_attr(QName::plain("name"), &self.name);
        if let Some(t) = &self.slot_type {
            el.set_attr(QName::plain("type"), t.clone());
        }
        if let Some(v) = &self.value {
            el = el.with_child(v.to_element("SlotValue"));
        }
        el
    }
}

/// Finds a slot by name.
pub(crate) fn find_slot<'a>(slots: &'a [Slot], name: &str) -> Option<&'a Slot> {
    slots.iter().find(|s| s.name == name)
}

/// Sets a slot, replacing one of the same name in place or appending it.
pub fn set_slot(slots: &mut Vec<Slot>, slot: Slot) {
    match slots.iter_mut().find(|s| s.name == slot.name) {
        Some(s) => *s = slot,
        None => slots.push(slot),
    }
}

/// Whether `el` is a `rim:Slot` (used when splitting children into slots and the rest).
pub(crate) fn is_slot(el: &Element) -> bool {
    el.name.is(NS_RIM, "Slot")
}

/// Attributes of `el` other than those named (plain names, or `xsi:type` as "xsi:type").
pub(crate) fn other_attributes(el: &Element, known: &[&str]) -> Vec<Attribute> {
    el.attributes
        .iter()
        .filter(|a| {
            let is_known = known.iter().any(|k| match *k {
                "xsi:type" => a.name.is(NS_XSI, "type"),
                "xml:lang" => a.name.is(NS_XML, "lang"),
                plain => a.name.is("", plain),
            });
            !is_known
        })
        .cloned()
        .collect()
}

/// `rim:Classification` on a registry object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classification {
    /// `id`.
    pub id: Option<String>,
    /// `classificationScheme` (e.g. `urn:fdc:oots:classification:edm`).
    pub scheme: Option<String>,
    /// `classificationNode` (e.g. `MainEvidence`).
    pub node: Option<String>,
    /// Other attributes, kept.
    pub other_attributes: Vec<Attribute>,
    /// Child elements, kept.
    pub children: Vec<Element>,
}

/// `rim:RepositoryItemRef`: where the evidence file is (a `cid:` of an AS4 attachment).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepositoryItemRef {
    /// `xlink:href`.
    pub href: String,
    /// `xlink:title`.
    pub title: Option<String>,
    /// Other attributes, kept.
    pub other_attributes: Vec<Attribute>,
}

/// A child of a registry object, in document order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistryObjectPart {
    /// `rim:Slot`
    Slot(Slot),
    /// `rim:Classification`
    Classification(Classification),
    /// A nested `rim:RegistryObjectList` (in a `rim:RegistryPackageType`).
    RegistryObjectList(Vec<RegistryObject>),
    /// `rim:RepositoryItemRef`
    RepositoryItemRef(RepositoryItemRef),
    /// Anything else, kept verbatim.
    Other(Element),
}

/// `rim:RegistryObject` (an `ExtrinsicObjectType` describing one evidence, or in EDM 2.0 a
/// `RegistryPackageType` grouping them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryObject {
    /// Its `xsi:type`.
    pub object_type: Option<QName>,
    /// Its `id`.
    pub id: Option<String>,
    /// Other attributes, kept.
    pub other_attributes: Vec<Attribute>,
    /// Its children, in order.
    pub parts: Vec<RegistryObjectPart>,
}

impl RegistryObject {
    /// Whether its `xsi:type` is `rim:<local>`.
    pub(crate) fn is_type(&self, local: &str) -> bool {
        self.object_type
            .as_ref()
            .is_some_and(|t| t.is(NS_RIM, local))
    }
    /// Its slots.
    pub fn slots(&self) -> impl Iterator<Item = &Slot> {
        self.parts.iter().filter_map(|p| match p {
            RegistryObjectPart::Slot(s) => Some(s),
            _ => None,
        })
    }
    /// The slot called `name`.
    pub fn slot(&self, name: &str) -> Option<&Slot> {
        self.slots().find(|s| s.name == name)
    }
    /// Its classifications.
    pub fn classifications(&self) -> impl Iterator<Item = &Classification> {
        self.parts.iter().filter_map(|p| match p {
            RegistryObjectPart::Classification(c) => Some(c),
            _ => None,
        })
    }
    /// Its repository item reference.
    pub(crate) fn repository_item_ref(&self) -> Option<&RepositoryItemRef> {
        self.parts.iter().find_map(|p| match p {
            RegistryObjectPart::RepositoryItemRef(r) => Some(r),
            _ => None,
        })
    }
    /// The objects of its nested registry object list (empty when none).
    pub(crate) fn members(&self) -> impl Iterator<Item = &RegistryObject> {
        self.parts
            .iter()
            .filter_map(|p| match p {
                RegistryObjectPart::RegistryObjectList(l) => Some(l.iter()),
                _ => None,
            })
            .flatten()
    }

    /// Reads a registry object (`rim:RegistryObject` or any element of that type).
    pub(crate) fn from_element(el: &Element) -> Result<RegistryObject, EdmError> {
        let mut parts = Vec::new();
        for c in el.elements() {
            let part = if is_slot(c) {
                RegistryObjectPart::Slot(Slot::from_element(c)?)
            } else if c.name.is(NS_RIM, "Classification") {
                RegistryObjectPart::Classification(Classification {
                    id: c.attr("", "id").map(str::to_owned),
                    scheme: c.attr("", "classificationScheme").map(str::to_owned),
                    node: c.attr("", "classificationNode").map(str::to_owned),
                    other_attributes: other_attributes(
                        c,
                        &["id", "classificationScheme", "classificationNode"],
                    ),
                    children: c.elements().cloned().collect(),
                })
            } else if c.name.is(NS_RIM, "RegistryObjectList") {
                RegistryObjectPart::RegistryObjectList(read_object_list(c)?)
            } else if c.name.is(NS_RIM, "RepositoryItemRef") && c.attr(NS_XLINK, "href").is_some() {
                RegistryObjectPart::RepositoryItemRef(RepositoryItemRef {
                    href: c.attr(NS_XLINK, "href").unwrap_or_default().to_owned(),
                    title: c.attr(NS_XLINK, "title").map(str::to_owned),
                    other_attributes: c
                        .attributes
                        .iter()
                        .filter(|a| !a.name.is(NS_XLINK, "href") && !a.name.is(NS_XLINK, "title"))
                        .cloned()
                        .collect(),
                })
            } else {
                RegistryObjectPart::Other(c.clone())
            };
            parts.push(part);
        }
        Ok(RegistryObject {
            object_type: el.xsi_type(),
            id: el.attr("", "id").map(str::to_owned),
            other_attributes: other_attributes(el, &["xsi:type", "id"]),
            parts,
        })
    }

    /// Writes it as `rim:RegistryObject`.
    pub(crate) fn to_element(&self) -> Element {
        let mut el = Element::new(NS_RIM, "RegistryObject");
        if let Some(t) = &self.object_type {
            el.set_attr(QName::new(NS_XSI, "type"), t.to_clark());
        }
        if let Some(id) = &self.id {
            el.set_attr(QName::plain("id"), id.clone());
        }
        el.attributes.extend(self.other_attributes.iter().cloned());
        for p in &self.parts {
            let child = match p {
                RegistryObjectPart::Slot(s) => s.to_element(),
                RegistryObjectPart::Classification(c) => {
                    let mut ce = Element::new(NS_RIM, "Classification");
                    if let Some(v) = &c.id {
                        ce.set_attr(QName::plain("id"), v.clone());
                    }
                    if let Some(v) = &c.scheme {
                        ce.set_attr(QName::plain("classificationScheme"), v.clone());
                    }
                    if let Some(v) = &c.node {
                        ce.set_attr(QName::plain("classificationNode"), v.clone());
                    }
                    ce.attributes.extend(c.other_attributes.iter().cloned());
                    ce.children = c.children.iter().cloned().map(Node::Element).collect();
                    ce
                }
                RegistryObjectPart::RegistryObjectList(l) => write_object_list(l),
                RegistryObjectPart::RepositoryItemRef(r) => {
                    let mut re = Element::new(NS_RIM, "RepositoryItemRef")
                        .with_attr(QName::new(NS_XLINK, "href"), r.href.clone());
                    if let Some(t) = &r.title {
                        re.set_attr(QName::new(NS_XLINK, "title"), t.clone());
                    }
                    re.attributes.extend(r.other_attributes.iter().cloned());
                    re
                }
                RegistryObjectPart::Other(e) => e.clone(),
            };
            el = el.with_child(child);
        }
        el
    }
}

/// Reads the `rim:RegistryObject` children of a `rim:RegistryObjectList`.
pub(crate) fn read_object_list(list: &Element) -> Result<Vec<RegistryObject>, EdmError> {
    list.elements().map(RegistryObject::from_element).collect()
}

/// Writes a `rim:RegistryObjectList`.
pub(crate) fn write_object_list(objects: &[RegistryObject]) -> Element {
    let mut el = Element::new(NS_RIM, "RegistryObjectList");
    for o in objects {
        el = el.with_child(o.to_element());
    }
    el
}

/// `rs:Exception`: the error of an error response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RsException {
    /// Its `xsi:type`, e.g. `rs:ObjectNotFoundExceptionType`.
    pub exception_type: Option<QName>,
    /// `code`, e.g. `EDM:ERR:0004`.
    pub code: Option<String>,
    /// `message`.
    pub message: Option<String>,
    /// `detail`.
    pub detail: Option<String>,
    /// `severity`.
    pub severity: Option<String>,
    /// Other attributes, kept.
    pub other_attributes: Vec<Attribute>,
    /// Its slots (Timestamp, PreviewLocation …).
    pub slots: Vec<Slot>,
    /// Other children, kept.
    pub other_children: Vec<Element>,
}

impl RsException {
    /// The slot called `name`.
    pub fn slot(&self, name: &str) -> Option<&Slot> {
        find_slot(&self.slots, name)
    }

    /// Reads an `rs:Exception`.
    pub(crate) fn from_element(el: &Element) -> Result<RsException, EdmError> {
        let mut slots = Vec::new();
        let mut other_children = Vec::new();
        for c in el.elements() {
            if is_slot(c) {
                slots.push(Slot::from_element(c)?);
            } else {
                other_children.push(c.clone());
            }
        }
        Ok(RsException {
            exception_type: el.xsi_type(),
            code: el.attr("", "code").map(str::to_owned),
            message: el.attr("", "message").map(str::to_owned),
            detail: el.attr("", "detail").map(str::to_owned),
            severity: el.attr("", "severity").map(str::to_owned),
            other_attributes: other_attributes(
                el,
                &["xsi:type", "code", "message", "detail", "severity"],
            ),
            slots,
            other_children,
        })
    }

    /// Writes the `rs:Exception`.
    pub(crate) fn to_element(&self) -> Element {
        let mut el = Element::new(NS_RS, "Exception");
        if let Some(t) = &self.exception_type {
            el.set_attr(QName::new(NS_XSI, "type"), t.to_clark());
        }
        for (k, v) in [
            ("severity", &self.severity),
            ("message", &self.message),
            ("detail", &self.detail),
            ("code", &self.code),
        ] {
            if let Some(v) = v {
                el.set_attr(QName::plain(k), v.clone());
            }
        }
        el.attributes.extend(self.other_attributes.iter().cloned());
        for s in &self.slots {
            el = el.with_child(s.to_element());
        }
        for c in &self.other_children {
            el = el.with_child(c.clone());
        }
        el
    }
}
