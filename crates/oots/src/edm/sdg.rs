//! Typed views of the SDG profile's (`http://data.europa.eu/p4s`) elements carried in
//! any-value slots: agents, persons, requirements, evidence types and evidence metadata.
//!
//! Views are read from the generic tree ([`Element`]) that the slot keeps, so reading a
//! view never loses anything; `Agent::to_element` and `Requirement::to_element` build
//! new ones for outgoing requests.

use super::xml::{Element, QName, NS_SDG};

/// An identifier with its optional `schemeID`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identifier {
    /// `schemeID`, e.g. `urn:cef.eu:names:identifier:EAS:0009` or `eidas`.
    pub scheme_id: Option<String>,
    /// The identifier.
    pub value: String,
}

impl Identifier {
    pub(crate) fn read(el: &Element) -> Identifier {
        Identifier {
            scheme_id: el.attr("", "schemeID").map(str::to_owned),
            value: el.text().trim().to_owned(),
        }
    }
}

/// Text with its `lang` attribute (`sdg:Name`, `sdg:Title` …).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LangText {
    /// `lang`.
    pub lang: Option<String>,
    /// The text.
    pub text: String,
}

pub(crate) fn lang_texts(el: &Element, local: &str) -> Vec<LangText> {
    el.children_named(NS_SDG, local)
        .map(|e| LangText {
            lang: e.attr("", "lang").map(str::to_owned),
            text: e.text(),
        })
        .collect()
}

pub(crate) fn text_of(el: &Element, local: &str) -> Option<String> {
    el.child(NS_SDG, local).map(|e| e.text().trim().to_owned())
}

/// `sdg:Agent`: an evidence requester, provider, intermediary platform or error provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Agent {
    /// `sdg:Identifier`.
    pub identifier: Option<Identifier>,
    /// `sdg:Name`s.
    pub names: Vec<LangText>,
    /// `sdg:Address/sdg:AdminUnitLevel1` (country code), when given.
    pub country: Option<String>,
    /// `sdg:Classification` (`ER`, `IP`, `EP`, `ERRP`).
    pub classification: Option<String>,
}

impl Agent {
    /// Reads an `sdg:Agent` (or any element with the agent's children, such as
    /// `sdg:IssuingAuthority`).
    pub(crate) fn from_element(el: &Element) -> Agent {
        Agent {
            identifier: el.child(NS_SDG, "Identifier").map(Identifier::read),
            names: lang_texts(el, "Name"),
            country: el
                .child(NS_SDG, "Address")
                .and_then(|a| text_of(a, "AdminUnitLevel1")),
            classification: text_of(el, "Classification"),
        }
    }

    /// Builds an `sdg:Agent` in schema order (Identifier, Name, Address, Classification).
    pub(crate) fn to_element(&self) -> Element {
        let mut el = Element::new(NS_SDG, "Agent");
        if let Some(id) = &self.identifier {
            let mut i = Element::new(NS_SDG, "Identifier").with_text(&id.value);
            if let Some(s) = &id.scheme_id {
                i.set_attr(QName::plain("schemeID"), s.clone());
            }
            el = el.with_child(i);
        }
        for n in &self.names {
            let mut ne = Element::new(NS_SDG, "Name").with_text(&n.text);
            if let Some(l) = &n.lang {
                ne.set_attr(QName::plain("lang"), l.clone());
            }
            el = el.with_child(ne);
        }
        if let Some(c) = &self.country {
            el = el.with_child(
                Element::new(NS_SDG, "Address")
                    .with_child(Element::new(NS_SDG, "AdminUnitLevel1").with_text(c)),
            );
        }
        if let Some(c) = &self.classification {
            el = el.with_child(Element::new(NS_SDG, "Classification").with_text(c));
        }
        el
    }
}

/// `sdg:Requirement` of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    /// `sdg:Identifier` (a Semantic Repository URL).
    pub identifier: Option<String>,
    /// `sdg:Name`s.
    pub names: Vec<LangText>,
}

impl Requirement {
    /// Reads an `sdg:Requirement`.
    pub(crate) fn from_element(el: &Element) -> Requirement {
        Requirement {
            identifier: text_of(el, "Identifier"),
            names: lang_texts(el, "Name"),
        }
    }

    /// Builds an `sdg:Requirement`.
    pub(crate) fn to_element(&self) -> Element {
        let mut el = Element::new(NS_SDG, "Requirement");
        if let Some(id) = &self.identifier {
            el = el.with_child(Element::new(NS_SDG, "Identifier").with_text(id));
        }
        for n in &self.names {
            let mut ne = Element::new(NS_SDG, "Name").with_text(&n.text);
            if let Some(l) = &n.lang {
                ne.set_attr(QName::plain("lang"), l.clone());
            }
            el = el.with_child(ne);
        }
        el
    }
}

/// `sdg:Person` (natural person, or the authorized representative) of a request, or
/// `sdg:NaturalPerson` in evidence metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Person {
    /// `sdg:LevelOfAssurance`.
    pub level_of_assurance: Option<String>,
    /// `sdg:Identifier` (eIDAS: `schemeID="eidas"`, `XX/YY/…`).
    pub identifier: Option<Identifier>,
    /// `sdg:FamilyName`.
    pub family_name: Option<String>,
    /// `sdg:GivenName`.
    pub given_name: Option<String>,
    /// `sdg:DateOfBirth` (lexical form).
    pub date_of_birth: Option<String>,
}

impl Person {
    /// Reads an `sdg:Person` / `sdg:NaturalPerson`.
    pub(crate) fn from_element(el: &Element) -> Person {
        Person {
            level_of_assurance: text_of(el, "LevelOfAssurance"),
            identifier: el.child(NS_SDG, "Identifier").map(Identifier::read),
            family_name: text_of(el, "FamilyName"),
            given_name: text_of(el, "GivenName"),
            date_of_birth: text_of(el, "DateOfBirth"),
        }
    }
}

/// `sdg:LegalPerson` of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LegalPerson {
    /// `sdg:LevelOfAssurance`.
    pub level_of_assurance: Option<String>,
    /// `sdg:LegalPersonIdentifier` (eIDAS).
    pub legal_person_identifier: Option<Identifier>,
    /// `sdg:Identifier`s (other schemes: VAT, LEI …).
    pub identifiers: Vec<Identifier>,
    /// `sdg:LegalName`.
    pub legal_name: Option<String>,
}

impl LegalPerson {
    /// Reads an `sdg:LegalPerson`.
    pub(crate) fn from_element(el: &Element) -> LegalPerson {
        LegalPerson {
            level_of_assurance: text_of(el, "LevelOfAssurance"),
            legal_person_identifier: el
                .child(NS_SDG, "LegalPersonIdentifier")
                .map(Identifier::read),
            identifiers: el
                .children_named(NS_SDG, "Identifier")
                .map(Identifier::read)
                .collect(),
            legal_name: text_of(el, "LegalName"),
        }
    }
}

/// `sdg:DataServiceEvidenceType`: the evidence asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvidenceType {
    /// `sdg:Identifier` (from the DSD).
    pub identifier: Option<String>,
    /// `sdg:EvidenceTypeClassification` (a Semantic Repository URL).
    pub classification: Option<String>,
    /// `sdg:Title`s.
    pub titles: Vec<LangText>,
    /// `sdg:DistributedAs/sdg:Format` of each requested distribution.
    pub formats: Vec<String>,
    /// `sdg:DistributedAs/sdg:ConformsTo`, when given.
    pub conforms_to: Option<String>,
}

impl EvidenceType {
    /// Reads an `sdg:DataServiceEvidenceType`.
    pub(crate) fn from_element(el: &Element) -> EvidenceType {
        let dist: Vec<&Element> = el.children_named(NS_SDG, "DistributedAs").collect();
        EvidenceType {
            identifier: text_of(el, "Identifier"),
            classification: text_of(el, "EvidenceTypeClassification"),
            titles: lang_texts(el, "Title"),
            formats: dist.iter().filter_map(|d| text_of(d, "Format")).collect(),
            conforms_to: dist.iter().find_map(|d| text_of(d, "ConformsTo")),
        }
    }
}

/// `sdg:Evidence`: the metadata of one evidence in a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvidenceMetadata {
    /// `sdg:Identifier`.
    pub identifier: Option<String>,
    /// `sdg:IsAbout/sdg:NaturalPerson`, when about a natural person.
    pub about_person: Option<Person>,
    /// `sdg:IssuingAuthority`.
    pub issuing_authority: Option<Agent>,
    /// `sdg:IsConformantTo/sdg:EvidenceTypeClassification`.
    pub evidence_type_classification: Option<String>,
    /// `sdg:IssuingDate`.
    pub issuing_date: Option<String>,
    /// `sdg:Distribution/sdg:Format`.
    pub format: Option<String>,
}

impl EvidenceMetadata {
    /// Reads an `sdg:Evidence`.
    pub(crate) fn from_element(el: &Element) -> EvidenceMetadata {
        EvidenceMetadata {
            identifier: text_of(el, "Identifier"),
            about_person: el
                .child(NS_SDG, "IsAbout")
                .and_then(|a| a.child(NS_SDG, "NaturalPerson"))
                .map(Person::from_element),
            issuing_authority: el
                .child(NS_SDG, "IssuingAuthority")
                .map(Agent::from_element),
            evidence_type_classification: el
                .child(NS_SDG, "IsConformantTo")
                .and_then(|c| text_of(c, "EvidenceTypeClassification")),
            issuing_date: text_of(el, "IssuingDate"),
            format: el
                .child(NS_SDG, "Distribution")
                .and_then(|d| text_of(d, "Format")),
        }
    }
}
