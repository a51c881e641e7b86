//! Import of a Domibus PMode (`db:configuration` XML) into native PMode files.
//!
//! Layout of the result: one file per partner, `party-<name>.toml`; one file per Domibus
//! `process`, `process-<name>.toml`, holding the process and its legs; and `profiles.toml`
//! (`shared = true`), holding every profile the legs use, each once, under its Domibus
//! name so that the two can be compared. A retry policy used by fourteen processes is
//! written once and changed in one place, as in Domibus.
//!
//! Domibus keeps certificates in a JKS truststore, by party name; Varti names them in
//! the PMode. The import references `certs/<party>.cert.pem` (relative to the output
//! directory) as both signing and encryption certificate **when that file already
//! exists** when the import runs; otherwise it writes the line commented out and warns,
//! so that `varti pmode check` never passes on a path that points nowhere. Export the
//! certificates from the truststore (`keytool -exportcert -rfc -alias <party>`) into
//! `OUT/certs/` and re-run the import (with `--force`) or uncomment the lines.
//!
//! Everything that cannot be carried over produces a warning naming the element.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::Path;

use quick_xml::events::{BytesStart, Event};
use quick_xml::Reader;

/// The largest Domibus PMode accepted (they are a few hundred KiB at most).
const MAX_INPUT: usize = 16 << 20;
/// The deepest element nesting accepted (Domibus PModes have 5 levels).
const MAX_DEPTH: usize = 32;
/// The most elements accepted.
const MAX_ELEMENTS: usize = 200_000;

/// Why a Domibus PMode could not be converted.
#[derive(Debug, thiserror::Error)]
pub enum DomibusError {
    /// The XML is not well-formed, or is refused (DOCTYPE, too deep, too large).
    #[error("not a usable Domibus PMode XML: {0}")]
    Xml(String),
    /// The XML is not a Domibus configuration, or lacks a part the import needs.
    #[error("not a Domibus PMode: {0}")]
    Structure(String),
}

/// The result of [`convert`]: native files to write, and what could not be carried over.
#[derive(Debug, Clone)]
pub struct DomibusImport {
    /// `(file name, TOML text)`, in writing order.
    pub files: Vec<(String, String)>,
    /// One line per thing that was not carried over or needs attention.
    pub warnings: Vec<String>,
    /// The Domibus local party (`configuration/@party`).
    pub local_party: Option<String>,
    /// How many parties were written.
    pub party_count: usize,
    /// How many legs were written (a Domibus leg used by two processes counts twice).
    pub leg_count: usize,
}

/// A minimal element tree (Domibus PModes are attribute-only).
#[derive(Debug, Default)]
struct Element {
    name: String,
    attrs: BTreeMap<String, String>,
    children: Vec<Element>,
}

impl Element {
    fn attr(&self, name: &str) -> Option<&str> {
        self.attrs.get(name).map(String::as_str)
    }
    fn child(&self, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.name == name)
    }
    fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Element> + 'a {
        self.children.iter().filter(move |c| c.name == name)
    }
    /// Children of the named child: `self/<group>/<item>`.
    fn items<'a>(&'a self, group: &str, item: &'a str) -> Vec<&'a Element> {
        self.child(group)
            .map(|g| g.all(item).collect())
            .unwrap_or_default()
    }
}

fn element_from(e: &BytesStart<'_>) -> Result<Element, DomibusError> {
    let name = String::from_utf8_lossy(e.local_name().as_ref()).into_owned();
    let mut attrs = BTreeMap::new();
    for a in e.attributes() {
        let a = a.map_err(|err| DomibusError::Xml(err.to_string()))?;
        let key = String::from_utf8_lossy(a.key.local_name().as_ref()).into_owned();
        let value = a
            .unescape_value()
            .map_err(|err| DomibusError::Xml(err.to_string()))?
            .into_owned();
        attrs.insert(key, value);
    }
    Ok(Element {
        name,
        attrs,
        children: Vec::new(),
    })
}

fn count_element(count: &mut usize, depth: usize) -> Result<(), DomibusError> {
    *count += 1;
    if *count > MAX_ELEMENTS || depth >= MAX_DEPTH {
        return Err(DomibusError::Xml(format!(
            "more than {MAX_ELEMENTS} elements or deeper than {MAX_DEPTH} levels"
        )));
    }
    Ok(())
}

/// Parses the XML into a tree, refusing DOCTYPE (no entity tricks) and bounding size.
fn parse_tree(xml: &[u8]) -> Result<Element, DomibusError> {
    if xml.len() > MAX_INPUT {
        return Err(DomibusError::Xml(format!(
            "{} bytes is larger than the {} MiB a PMode may have",
            xml.len(),
            MAX_INPUT >> 20
        )));
    }
    let mut reader = Reader::from_reader(xml);
    reader.config_mut().trim_text(true);
    let mut stack: Vec<Element> = Vec::new();
    let mut root: Option<Element> = None;
    let mut count = 0usize;
    loop {
        let event = reader
            .read_event()
            .map_err(|e| DomibusError::Xml(format!("at byte {}: {e}", reader.buffer_position())))?;
        match event {
            Event::DocType(_) => {
                return Err(DomibusError::Xml(
                    "a DOCTYPE is not allowed (entity declarations could expand without bound or read local files); remove it".into(),
                ))
            }
            Event::Start(e) => {
                count_element(&mut count, stack.len())?;
                stack.push(element_from(&e)?)
            }
            Event::Empty(e) => {
                count_element(&mut count, stack.len())?;
                let el = element_from(&e)?;
                match stack.last_mut() {
                    Some(parent) => parent.children.push(el),
                    None => root = Some(el),
                }
            }
            Event::End(_) => {
                let el = stack
                    .pop()
                    .ok_or_else(|| DomibusError::Xml("unbalanced end tag".into()))?;
                match stack.last_mut() {
                    Some(parent) => parent.children.push(el),
                    None => root = Some(el),
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    if !stack.is_empty() {
        return Err(DomibusError::Xml(
            "the document ends inside an element".into(),
        ));
    }
    root.ok_or_else(|| DomibusError::Xml("no root element".into()))
}

/// A quoted TOML string.
fn q(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

/// A name usable in a file name.
fn file_part(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// How a Domibus security policy maps: (sign, encrypt, token reference).
fn map_policy(policy: &str) -> Option<(bool, bool, &'static str)> {
    let stem = policy.strip_suffix(".xml").unwrap_or(policy);
    Some(match stem {
        "eDeliveryAS4Policy" => (true, true, "ski"),
        "eDeliveryAS4Policy_BST" => (true, true, "bst"),
        "eDeliveryAS4Policy_IS" => (true, true, "issuer-serial"),
        "eDeliveryAS4Policy_BST_PKIP" => (true, true, "bst-pkipath"),
        "signOnly" => (true, false, "ski"),
        "doNothingPolicy" => (false, false, "ski"),
        _ => return None,
    })
}

struct Lookup<'a> {
    by_name: HashMap<(&'static str, &'a str), &'a Element>,
}

impl<'a> Lookup<'a> {
    fn get(&self, kind: &'static str, name: &str) -> Option<&'a Element> {
        self.by_name.get(&(kind, name)).copied()
    }
}

/// Converts a Domibus PMode into native files. Certificates present in
/// `out_dir/certs/<party>.cert.pem` are referenced; see the module documentation.
pub fn convert(xml: &[u8], out_dir: &Path) -> Result<DomibusImport, DomibusError> {
    let root = parse_tree(xml)?;
    if root.name != "configuration" {
        return Err(DomibusError::Structure(format!(
            "the root element is '{}', expected db:configuration",
            root.name
        )));
    }
    let bp = root
        .child("businessProcesses")
        .ok_or_else(|| DomibusError::Structure("no businessProcesses element".into()))?;
    let mut warnings = Vec::new();

    // Index every named definition.
    let mut by_name = HashMap::new();
    let groups: &[(&'static str, Option<&str>, &str)] = &[
        ("mpc", None, "mpc"),
        ("role", Some("roles"), "role"),
        ("partyIdType", Some("parties"), "partyIdTypes"),
        ("party", Some("parties"), "party"),
        ("mep", Some("meps"), "mep"),
        ("binding", Some("meps"), "binding"),
        ("property", Some("properties"), "property"),
        ("propertySet", Some("properties"), "propertySet"),
        ("payload", Some("payloadProfiles"), "payload"),
        ("payloadProfile", Some("payloadProfiles"), "payloadProfile"),
        ("security", Some("securities"), "security"),
        ("errorHandling", Some("errorHandlings"), "errorHandling"),
        ("agreement", Some("agreements"), "agreement"),
        ("service", Some("services"), "service"),
        ("action", Some("actions"), "action"),
        ("receptionAwareness", Some("as4"), "receptionAwareness"),
        ("reliability", Some("as4"), "reliability"),
        (
            "legConfiguration",
            Some("legConfigurations"),
            "legConfiguration",
        ),
    ];
    for (kind, group, item) in groups {
        let elements: Vec<&Element> = match (kind, group) {
            (&"mpc", _) => root.items("mpcs", "mpc"),
            (&"partyIdType", _) => bp
                .child("parties")
                .map(|p| p.items("partyIdTypes", "partyIdType"))
                .unwrap_or_default(),
            (_, Some(g)) => bp.items(g, item),
            _ => Vec::new(),
        };
        for e in elements {
            if let Some(n) = e.attr("name") {
                by_name.insert((*kind, n), e);
            }
        }
    }
    let look = Lookup { by_name };

    for mpc in root.items("mpcs", "mpc") {
        let name = mpc.attr("name").unwrap_or("?");
        let ignored: Vec<&str> = mpc
            .attrs
            .keys()
            .map(String::as_str)
            .filter(|k| !matches!(*k, "name" | "qualifiedName" | "enabled" | "default"))
            .collect();
        if !ignored.is_empty() {
            warnings.push(format!(
                "mpcs/mpc '{name}': {} not carried over (Varti has no per-MPC retention settings)",
                ignored.join(", ")
            ));
        }
        if mpc.attr("enabled") == Some("false") {
            warnings.push(format!(
                "mpcs/mpc '{name}' is disabled in Domibus; legs using it are imported as active"
            ));
        }
    }
    if bp.child("splittingConfigurations").is_some() {
        warnings.push(
            "splittingConfigurations: split & join is not supported by Varti (nor by the eDelivery AS4 profile); not carried over".into(),
        );
    }

    // Parties.
    let certs_dir = out_dir.join("certs");
    let mut files = Vec::new();
    let mut party_count = 0;
    let local_party = root.attr("party").map(str::to_owned);
    for party in bp.items("parties", "party") {
        let Some(name) = party.attr("name") else {
            warnings.push("parties/party without a name: skipped".into());
            continue;
        };
        party_count += 1;
        let mut t = String::new();
        let _ = writeln!(t, "# Partner '{name}', imported from a Domibus PMode.");
        if local_party.as_deref() == Some(name) {
            let _ = writeln!(
                t,
                "# This is the local access point of the Domibus configuration (configuration/@party)."
            );
        }
        let _ = writeln!(t, "\n[[party]]\nname = {}\nids = [", q(name));
        for id in party.all("identifier") {
            let value = id.attr("partyId").unwrap_or_default();
            let ty = id
                .attr("partyIdType")
                .and_then(|n| look.get("partyIdType", n))
                .and_then(|e| e.attr("value"))
                .filter(|v| !v.trim().is_empty());
            match ty {
                Some(ty) => {
                    let _ = writeln!(t, "  {{ value = {}, type = {} }},", q(value), q(ty));
                }
                None => {
                    let _ = writeln!(t, "  {{ value = {} }},", q(value));
                }
            }
        }
        let _ = writeln!(t, "]");
        if let Some(ep) = party.attr("endpoint").filter(|e| !e.is_empty()) {
            let _ = writeln!(t, "endpoint = {}", q(ep));
        }
        let cert_rel = format!("certs/{name}.cert.pem");
        if certs_dir.join(format!("{name}.cert.pem")).is_file() {
            let _ = writeln!(
                t,
                "# Domibus uses one certificate per party, for signing and encryption.\nsigning_cert = {}\nencryption_cert = {}",
                q(&cert_rel),
                q(&cert_rel)
            );
        } else {
            let _ = writeln!(
                t,
                "# TODO: export '{name}' from the Domibus truststore to {cert_rel}, then uncomment:\n# signing_cert = {}\n# encryption_cert = {}",
                q(&cert_rel),
                q(&cert_rel)
            );
            warnings.push(format!(
                "parties/party '{name}': its certificate is in the Domibus truststore (alias '{name}'); provide it as {cert_rel} in the output directory (keytool -exportcert -rfc) and uncomment signing_cert/encryption_cert"
            ));
        }
        if party.attr("allowChunking") == Some("true") {
            warnings.push(format!(
                "parties/party '{name}': allowChunking (HTTP chunking) is not a PMode setting in Varti; not carried over"
            ));
        }
        files.push((format!("party-{}.toml", file_part(name)), t));
    }

    // Processes.
    let mut used_legs: HashMap<&str, usize> = HashMap::new();
    let mut leg_count = 0;
    let mut profiles = Profiles::default();
    for process in bp.all("process") {
        let pname = process.attr("name").unwrap_or("process");
        let el = format!("process '{pname}'");
        let value_of = |kind: &'static str, name: Option<&str>| -> Option<String> {
            look.get(kind, name?)
                .and_then(|e| e.attr("value"))
                .map(str::to_owned)
        };
        let mep = match value_of("mep", process.attr("mep")).as_deref() {
            Some(v) if v.ends_with("/twoWay") => "twoWay",
            _ => "oneWay",
        };
        let binding = match value_of("binding", process.attr("binding")) {
            Some(v) => v.rsplit('/').next().unwrap_or("push").to_owned(),
            None => "push".to_owned(),
        };
        let agreement = process
            .attr("agreement")
            .filter(|a| !a.is_empty())
            .and_then(|a| look.get("agreement", a));
        let role = |attr: &str| -> Option<String> {
            value_of("role", process.attr(attr)).filter(|v| !v.trim().is_empty())
        };
        let parties = |group: &str, item: &str| -> Vec<String> {
            process
                .items(group, item)
                .iter()
                .filter_map(|p| p.attr("name").map(str::to_owned))
                .collect()
        };
        let initiators = parties("initiatorParties", "initiatorParty");
        let responders = parties("responderParties", "responderParty");
        if initiators.is_empty() || responders.is_empty() {
            warnings.push(format!(
                "{el}: no initiator or responder parties (dynamic discovery is not supported yet); skipped"
            ));
            continue;
        }
        let mut t = String::new();
        let _ = writeln!(t, "# Process '{pname}', imported from a Domibus PMode.\n");
        let mut body = String::new();
        let _ = writeln!(body, "[[process]]\nname = {}", q(pname));
        if let Some(a) = agreement {
            if let Some(v) = a.attr("value").filter(|v| !v.is_empty()) {
                let _ = writeln!(body, "agreement = {}", q(v));
                if let Some(ty) = a.attr("type").filter(|v| !v.is_empty()) {
                    let _ = writeln!(body, "agreement_type = {}", q(ty));
                }
            }
        }
        let _ = writeln!(body, "mep = {}\nbinding = {}", q(mep), q(&binding));
        let side = |role: Option<String>, parties: &[String]| -> String {
            let list: Vec<String> = parties.iter().map(|p| q(p)).collect();
            match role {
                Some(r) => format!("{{ role = {}, parties = [{}] }}", q(&r), list.join(", ")),
                None => format!("{{ parties = [{}] }}", list.join(", ")),
            }
        };
        let _ = writeln!(
            body,
            "initiator = {}\nresponder = {}",
            side(role("initiatorRole"), &initiators),
            side(role("responderRole"), &responders)
        );

        for leg_ref in process.items("legs", "leg") {
            let Some(lname) = leg_ref.attr("name") else {
                continue;
            };
            let Some(leg) = look.get("legConfiguration", lname) else {
                warnings.push(format!(
                    "{el}: leg '{lname}' has no legConfiguration; skipped"
                ));
                continue;
            };
            *used_legs.entry(lname).or_default() += 1;
            leg_count += 1;
            let lel = format!("legConfiguration '{lname}'");
            let _ = writeln!(body, "\n[[process.leg]]\nname = {}", q(lname));
            match leg.attr("service").and_then(|s| look.get("service", s)) {
                Some(s) => {
                    let _ = writeln!(body, "service = {}", q(s.attr("value").unwrap_or("")));
                    if let Some(ty) = s.attr("type").filter(|t| !t.is_empty()) {
                        let _ = writeln!(body, "service_type = {}", q(ty));
                    }
                }
                None => {
                    let _ = writeln!(body, "service = \"\"");
                    warnings.push(format!("{lel}: unknown service; written empty, fix it"));
                }
            }
            let action = value_of("action", leg.attr("action")).unwrap_or_default();
            let _ = writeln!(body, "action = {}", q(&action));
            if let Some(mpc) = leg
                .attr("defaultMpc")
                .and_then(|m| look.get("mpc", m))
                .and_then(|m| m.attr("qualifiedName"))
            {
                if mpc != super::model::DEFAULT_MPC {
                    let _ = writeln!(body, "mpc = {}", q(mpc));
                }
            }
            if leg.attr("splitting").is_some() {
                warnings.push(format!(
                    "{lel}: splitting (split & join) is not supported; leg imported without it"
                ));
            }
            if let Some(n) = leg.attr("security") {
                profiles.security(&look, n, &mut warnings);
                let _ = writeln!(body, "security = {}", q(n));
            }
            if let Some(n) = leg.attr("reliability") {
                profiles.receipt(&look, n, &mut warnings);
                let _ = writeln!(body, "receipt = {}", q(n));
            }
            if let Some(n) = leg.attr("receptionAwareness") {
                profiles.reception(&look, n, &mut warnings);
                let _ = writeln!(body, "reception = {}", q(n));
            }
            if let Some(n) = leg.attr("errorHandling") {
                profiles.errors(&look, n);
                let _ = writeln!(body, "errors = {}", q(n));
            }
            if let Some(n) = leg.attr("payloadProfile") {
                profiles.payload(&look, n, &mut warnings);
                let _ = writeln!(body, "payload = {}", q(n));
            }
            if let Some(n) = leg.attr("propertySet") {
                profiles.properties(&look, n, &mut warnings);
                let _ = writeln!(body, "properties = {}", q(n));
            }
            let compress = leg.attr("compressPayloads") == Some("true");
            let cname = if compress { "on" } else { "off" };
            profiles.compression.insert(
                cname.to_owned(),
                format!("enabled = {compress}\nmax_decompressed_size = \"1GiB\"\n"),
            );
            let _ = writeln!(body, "compression = {}", q(cname));
        }
        t.push_str(&body);
        files.push((format!("process-{}.toml", file_part(pname)), t));
    }
    if !profiles.is_empty() {
        let mut t = String::from(
            "# The profiles of the processes imported from a Domibus PMode, each defined once.\n# `shared = true` lets every PMode file of this directory name them.\nshared = true\n\n",
        );
        t.push_str(&profiles.render());
        files.push((SHARED_PROFILES_FILE.to_owned(), t));
    }
    for leg in bp.items("legConfigurations", "legConfiguration") {
        if let Some(n) = leg.attr("name") {
            if !used_legs.contains_key(n) {
                warnings.push(format!(
                    "legConfiguration '{n}' is not used by any process; not carried over"
                ));
            }
        }
    }
    Ok(DomibusImport {
        files,
        warnings,
        local_party,
        party_count,
        leg_count,
    })
}

/// The file holding the profiles shared by the imported processes.
pub const SHARED_PROFILES_FILE: &str = "profiles.toml";

/// The profiles the imported processes use, as TOML bodies by kind and name.
#[derive(Default)]
struct Profiles {
    security: BTreeMap<String, String>,
    receipt: BTreeMap<String, String>,
    reception: BTreeMap<String, String>,
    errors: BTreeMap<String, String>,
    payload: BTreeMap<String, String>,
    properties: BTreeMap<String, String>,
    compression: BTreeMap<String, String>,
}

/// Warnings about shared definitions are given once per import, not once per file.
fn warn_once(warnings: &mut Vec<String>, w: String) {
    if !warnings.contains(&w) {
        warnings.push(w);
    }
}

impl Profiles {
    fn is_empty(&self) -> bool {
        self.security.is_empty()
            && self.receipt.is_empty()
            && self.reception.is_empty()
            && self.errors.is_empty()
            && self.payload.is_empty()
            && self.properties.is_empty()
            && self.compression.is_empty()
    }

    fn render(&self) -> String {
        let mut t = String::new();
        let kinds = [
            ("security", &self.security),
            ("receipt", &self.receipt),
            ("reception", &self.reception),
            ("errors", &self.errors),
            ("compression", &self.compression),
            ("properties", &self.properties),
        ];
        for (kind, map) in kinds {
            for (name, body) in map {
                let _ = writeln!(t, "[{kind}.{}]\n{body}", q(name));
            }
        }
        // Payload profiles hold arrays of tables, written after the plain tables.
        for (name, body) in &self.payload {
            let _ = writeln!(t, "[payload.{}]\n{body}", q(name));
        }
        t
    }

    fn security(&mut self, look: &Lookup<'_>, name: &str, warnings: &mut Vec<String>) {
        if self.security.contains_key(name) {
            return;
        }
        let el = format!("securities/security '{name}'");
        let Some(s) = look.get("security", name) else {
            warn_once(warnings, format!("{el} is not defined; the built-in default (as4-1.15, sign+encrypt, BST) applies"));
            self.security
                .insert(name.to_owned(), "profile = \"as4-1.15\"\n".into());
            return;
        };
        let mut profile = "as4-1.15";
        if let Some(p) = s.attr("profile") {
            match p.to_ascii_lowercase().as_str() {
                "rsa" => {}
                "ecc" => {
                    profile = "as4-2.0-ecdsa";
                    warn_once(warnings, format!("{el}: Domibus security profile ECC mapped to as4-2.0-ecdsa; check the algorithms with your partner"));
                }
                other => warn_once(
                    warnings,
                    format!("{el}: security profile '{other}' is unknown; mapped to as4-1.15"),
                ),
            }
        }
        let policy = s.attr("policy");
        let (sign, encrypt, token) = match policy {
            None => {
                warn_once(warnings, format!("{el}: no policy file named; assumed eDeliveryAS4Policy (sign, encrypt, Key Identifier)"));
                (true, true, "ski")
            }
            Some(p) => map_policy(p).unwrap_or_else(|| {
                warn_once(warnings, format!("{el}: policy '{p}' is not one Varti knows (eDeliveryAS4Policy[_BST|_IS|_BST_PKIP], signOnly, doNothingPolicy); mapped as eDeliveryAS4Policy (sign, encrypt, Key Identifier): check it"));
                (true, true, "ski")
            }),
        };
        if let Some(m) = s.attr("signatureMethod") {
            if m != "RSA_SHA256" {
                warn_once(warnings, format!("{el}: signatureMethod '{m}' not carried over; the profile's algorithm applies"));
            }
        }
        self.security.insert(
            name.to_owned(),
            format!(
                "profile = {}\nsign = {sign}\nencrypt = {encrypt}\ntoken_reference = {}\n",
                q(profile),
                q(token)
            ),
        );
    }

    fn receipt(&mut self, look: &Lookup<'_>, name: &str, warnings: &mut Vec<String>) {
        if self.receipt.contains_key(name) {
            return;
        }
        let r = look.get("reliability", name);
        let nrr = r.and_then(|r| r.attr("nonRepudiation")) == Some("true");
        if let Some(p) = r.and_then(|r| r.attr("replyPattern")) {
            if p != "response" {
                warn_once(warnings, format!("as4/reliability '{name}': replyPattern '{p}' is not supported (receipts are synchronous in AS4); imported as response"));
            }
        }
        self.receipt.insert(
            name.to_owned(),
            format!("enabled = true\nnon_repudiation = {nrr}\n"),
        );
    }

    fn reception(&mut self, look: &Lookup<'_>, name: &str, warnings: &mut Vec<String>) {
        if self.reception.contains_key(name) {
            return;
        }
        let r = look.get("receptionAwareness", name);
        let mut body = String::new();
        let retry = r.and_then(|r| r.attr("retry")).unwrap_or("");
        let parts: Vec<&str> = retry.split(';').map(str::trim).collect();
        match parts.as_slice() {
            [timeout, attempts, strategy]
                if timeout.parse::<u64>().is_ok() && attempts.parse::<u32>().is_ok() =>
            {
                let attempts: u32 = attempts.parse().unwrap_or(0);
                let strategy = strategy.to_ascii_lowercase();
                let strategy = if strategy == "progressive" {
                    "progressive"
                } else {
                    if strategy != "constant" {
                        warn_once(warnings, format!("as4/receptionAwareness '{name}': retry strategy '{strategy}' unknown; imported as constant"));
                    }
                    "constant"
                };
                if attempts == 0 {
                    let _ = writeln!(body, "retry_intervals = []");
                } else {
                    // Domibus's timeout is in minutes.
                    let _ = writeln!(
                        body,
                        "retry = {{ timeout = \"{timeout}m\", attempts = {attempts}, strategy = \"{strategy}\" }}"
                    );
                }
            }
            _ => warn_once(warnings, format!("as4/receptionAwareness '{name}': retry '{retry}' is not timeout;attempts;strategy; the default schedule applies")),
        }
        let dup = r.and_then(|r| r.attr("duplicateDetection")) != Some("false");
        let _ = writeln!(body, "duplicate_detection = {dup}");
        self.reception.insert(name.to_owned(), body);
    }

    fn errors(&mut self, look: &Lookup<'_>, name: &str) {
        if self.errors.contains_key(name) {
            return;
        }
        let e = look.get("errorHandling", name);
        let flag = |a: &str| e.and_then(|e| e.attr(a)) == Some("true");
        self.errors.insert(
            name.to_owned(),
            format!(
                "report_as_response = {}\nnotify_producer = {}\nnotify_consumer = {}\nnotify_producer_on_delivery_failure = {}\n",
                flag("errorAsResponse"),
                flag("businessErrorNotifyProducer"),
                flag("businessErrorNotifyConsumer"),
                flag("deliveryFailureNotifyProducer")
            ),
        );
    }

    fn payload(&mut self, look: &Lookup<'_>, name: &str, warnings: &mut Vec<String>) {
        if self.payload.contains_key(name) {
            return;
        }
        let Some(p) = look.get("payloadProfile", name) else {
            warn_once(
                warnings,
                format!(
                    "payloadProfiles/payloadProfile '{name}' is not defined; no payload constraint"
                ),
            );
            self.payload.insert(name.to_owned(), String::new());
            return;
        };
        let mut body = String::new();
        if let Some(max) = p.attr("maxSize").and_then(|m| m.parse::<u64>().ok()) {
            let _ = writeln!(body, "max_size = {max}");
        }
        for a in p.all("attachment") {
            let Some(pl) = a.attr("name").and_then(|n| look.get("payload", n)) else {
                continue;
            };
            let pname = pl.attr("name").unwrap_or("part");
            let _ = writeln!(body, "\n[[payload.{}.part]]\nname = {}", q(name), q(pname));
            if let Some(m) = pl.attr("mimeType").filter(|m| !m.is_empty()) {
                let _ = writeln!(body, "mime_types = [{}]", q(m));
            }
            let _ = writeln!(body, "required = {}", pl.attr("required") == Some("true"));
            if let Some(c) = pl.attr("cid").filter(|c| !c.is_empty()) {
                let _ = writeln!(body, "cid = {}", q(c));
            }
            if pl.attr("inBody") == Some("true") {
                warn_once(warnings, format!("payloadProfiles/payload '{pname}': inBody (payload in the SOAP Body) is not allowed by eDelivery AS4; imported as an attachment part"));
            }
        }
        self.payload.insert(name.to_owned(), body);
    }

    fn properties(&mut self, look: &Lookup<'_>, name: &str, warnings: &mut Vec<String>) {
        if self.properties.contains_key(name) {
            return;
        }
        let (mut required, mut optional) = (Vec::new(), Vec::new());
        if let Some(set) = look.get("propertySet", name) {
            for r in set.all("propertyRef") {
                let Some(p) = r.attr("property").and_then(|n| look.get("property", n)) else {
                    continue;
                };
                let key = q(p.attr("key").unwrap_or(""));
                if p.attr("required") == Some("true") {
                    required.push(key);
                } else {
                    optional.push(key);
                }
                if let Some(dt) = p.attr("datatype").filter(|d| *d != "string") {
                    warn_once(warnings, format!("properties/property '{}': datatype '{dt}' not carried over (properties are strings)", p.attr("name").unwrap_or("")));
                }
            }
        } else {
            warn_once(
                warnings,
                format!("properties/propertySet '{name}' is not defined; no property constraint"),
            );
        }
        self.properties.insert(
            name.to_owned(),
            format!(
                "required = [{}]\noptional = [{}]\n",
                required.join(", "),
                optional.join(", ")
            ),
        );
    }
}

/// Writes the files of an import into `out` (created if missing). Existing files are
/// not overwritten unless `force`.
pub fn write(import: &DomibusImport, out: &Path, force: bool) -> std::io::Result<()> {
    std::fs::create_dir_all(out)?;
    if !force {
        for (name, _) in &import.files {
            let path = out.join(name);
            if path.exists() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    format!(
                        "{} already exists; use --force to overwrite, or choose another --out",
                        path.display()
                    ),
                ));
            }
        }
    }
    for (name, text) in &import.files {
        std::fs::write(out.join(name), text)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doctype_is_refused() {
        let xml = br#"<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa">]><db:configuration xmlns:db="http://domibus.eu/configuration"/>"#;
        let err = convert(xml, Path::new("/nonexistent")).unwrap_err();
        assert!(err.to_string().contains("DOCTYPE"), "{err}");
    }

    #[test]
    fn deep_nesting_is_refused() {
        let xml = "<a>".repeat(10_000) + &"</a>".repeat(10_000);
        let err = convert(xml.as_bytes(), Path::new("/nonexistent")).unwrap_err();
        assert!(err.to_string().contains("deeper"), "{err}");
    }

    #[test]
    fn other_roots_are_refused() {
        let err = convert(b"<beans/>", Path::new("/nonexistent")).unwrap_err();
        assert!(matches!(err, DomibusError::Structure(_)), "{err}");
    }
}
