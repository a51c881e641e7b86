//! Reading PMode files: the TOML format, and diagnostics with `file:line:column`.
//!
//! [`load_dir`] reads every `*.toml` file of a directory, resolves names across files
//! (parties are shared by the whole directory; security, receipt, … profiles are local to
//! their file, unless the file says `shared = true`, which makes its profiles usable by every
//! file), runs the checks of [`super::check`] and returns the [`PModeSet`] with
//! every problem found. It never stops at the first problem: an unknown key is reported
//! and skipped so that the next one is reported too, and a file with an error still
//! contributes what could be read of it.
//!
//! The format is documented in `docs/pmode-format.md`.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::check;
use super::model::*;
use crate::compress;

/// How bad a [`Diagnostic`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DiagnosticSeverity {
    /// The PMode set cannot be used as it is.
    Error,
    /// Worth fixing, but the set works.
    Warning,
}

impl DiagnosticSeverity {
    /// `error` or `warning`.
    pub fn as_str(self) -> &'static str {
        match self {
            DiagnosticSeverity::Error => "error",
            DiagnosticSeverity::Warning => "warning",
        }
    }
}

/// One problem found in a PMode file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// Error or warning.
    pub severity: DiagnosticSeverity,
    /// Where: `file:line:column`.
    pub location: Location,
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub hint: String,
}

impl Diagnostic {
    /// An error.
    pub fn error(location: Location, message: impl Into<String>, hint: impl Into<String>) -> Self {
        Diagnostic {
            severity: DiagnosticSeverity::Error,
            location,
            message: message.into(),
            hint: hint.into(),
        }
    }

    /// A warning.
    pub fn warning(
        location: Location,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) -> Self {
        Diagnostic {
            severity: DiagnosticSeverity::Warning,
            ..Diagnostic::error(location, message, hint)
        }
    }

    /// Whether this is an error.
    pub fn is_error(&self) -> bool {
        self.severity == DiagnosticSeverity::Error
    }
}

impl fmt::Display for Diagnostic {
    /// `file:line:column: error: what\n  hint: how`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {}: {}",
            self.location,
            self.severity.as_str(),
            self.message
        )?;
        if !self.hint.is_empty() {
            write!(f, "\n  hint: {}", self.hint)?;
        }
        Ok(())
    }
}

/// Options of [`load_dir_with`].
#[derive(Debug, Clone, Copy)]
pub struct LoadOptions {
    /// The instant certificate validity is judged at, in seconds since the Unix epoch;
    /// `None` means now. (Used to check a set against the time it will run, or to check
    /// an imported set whose certificates have since expired.)
    pub at_unix: Option<i64>,
    /// Warn when a certificate expires within this many days.
    pub expiry_warning_days: u32,
}

impl LoadOptions {
    /// Options that judge certificates at `when`: an RFC 3339 date-time
    /// (`2025-06-01T00:00:00Z`) or a date (`2025-06-01`, midnight UTC).
    pub fn at(when: &str) -> Result<LoadOptions, InvalidInstant> {
        use time::format_description::well_known::Rfc3339;
        let parsed = time::OffsetDateTime::parse(when, &Rfc3339).or_else(|_| {
            let fmt = time::macros::format_description!("[year]-[month]-[day]");
            time::Date::parse(when, &fmt).map(|d| d.midnight().assume_utc())
        });
        match parsed {
            Ok(t) => Ok(LoadOptions {
                at_unix: Some(t.unix_timestamp()),
                ..LoadOptions::default()
            }),
            Err(source) => Err(InvalidInstant {
                given: when.to_owned(),
                source,
            }),
        }
    }
}

/// An instant given to [`LoadOptions::at`] that is neither an RFC 3339 date-time nor a
/// date.
#[derive(Debug, thiserror::Error)]
#[error("'{given}' is not an RFC 3339 date-time (2025-06-01T00:00:00Z) or a date (2025-06-01)")]
pub struct InvalidInstant {
    /// What was given.
    pub given: String,
    /// Why the date form did not parse either.
    #[source]
    pub source: time::error::Parse,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            at_unix: None,
            expiry_warning_days: 30,
        }
    }
}

/// The largest PMode file read.
const MAX_FILE_SIZE: u64 = 4 << 20;

/// Reads and checks every `*.toml` PMode file in `dir`, with certificates judged now.
///
/// Returns what could be read and every problem found; the set is usable when no
/// diagnostic is an error.
pub fn load_dir(dir: &Path) -> (PModeSet, Vec<Diagnostic>) {
    load_dir_with(dir, &LoadOptions::default())
}

/// [`load_dir`] with options.
pub fn load_dir_with(dir: &Path, options: &LoadOptions) -> (PModeSet, Vec<Diagnostic>) {
    let mut diags = Vec::new();
    let mut files = Vec::new();
    match std::fs::read_dir(dir) {
        Ok(entries) => {
            for entry in entries.flatten() {
                let path = entry.path();
                if path.extension().is_some_and(|e| e == "toml") && path.is_file() {
                    files.push(path);
                }
            }
        }
        Err(e) => {
            diags.push(Diagnostic::error(
                Location::file_start(dir),
                format!("cannot read the PMode directory: {e}"),
                "give the directory that holds the *.toml PMode files",
            ));
            return (PModeSet::default(), diags);
        }
    }
    files.sort();
    if files.is_empty() {
        diags.push(Diagnostic::error(
            Location::file_start(dir),
            "no PMode files (*.toml) in this directory",
            "write one file per agreement or partner; see docs/pmode-format.md",
        ));
        return (PModeSet::default(), diags);
    }

    let mut texts = Vec::new();
    for path in files {
        // PMode files are a few KiB; refuse to read something that is not one.
        if std::fs::metadata(&path).is_ok_and(|m| m.len() > MAX_FILE_SIZE) {
            diags.push(Diagnostic::error(
                Location::file_start(&path),
                format!("the file is larger than {} MiB", MAX_FILE_SIZE >> 20),
                "a PMode file holds one agreement or partner; split it, or move other files out of the directory",
            ));
            continue;
        }
        match std::fs::read_to_string(&path) {
            Ok(text) => texts.push((path, text)),
            Err(e) => diags.push(Diagnostic::error(
                Location::file_start(&path),
                format!("cannot read the file: {e}"),
                "make the file readable (UTF-8 text) by the user running varti",
            )),
        }
    }
    load_texts(&texts, options, diags)
}

/// The loader after the files were read: parses, resolves and checks `files` (each file's
/// path and text, in the order to read them), adding to the diagnostics `diags` already
/// holds. Certificate and CRL paths are resolved against each file's directory.
pub(crate) fn load_texts(
    files: &[(PathBuf, String)],
    options: &LoadOptions,
    mut diags: Vec<Diagnostic>,
) -> (PModeSet, Vec<Diagnostic>) {
    let mut parsed = Vec::new();
    for (path, text) in files {
        if let Some(raw) = parse_file(path, text, &mut diags) {
            parsed.push(SourceFile {
                path: path.clone(),
                lines: LineIndex::new(text),
                raw,
            });
        }
    }

    let mut resolver = Resolver::default();
    for file in &parsed {
        resolver.collect_parties(file, &mut diags);
    }
    let local: Vec<Profiles> = parsed
        .iter()
        .map(|file| Profiles::resolve(file, &mut diags))
        .collect();
    let shared = Profiles::shared(&parsed, &local, &mut diags);
    for (file, local) in parsed.iter().zip(&local) {
        let scope = Scope {
            local,
            shared: &shared,
        };
        resolver.resolve_processes(file, &scope, &mut diags);
    }
    let Resolver {
        set,
        cert_refs,
        crl_refs,
        ..
    } = resolver;
    check::check_certificates(&set, &cert_refs, options, &mut diags);
    check::check_crls(&crl_refs, options, &mut diags);
    check::check_legs(&set, &mut diags);
    diags.sort_by(|a, b| a.location.cmp(&b.location));
    (set, diags)
}

/// A certificate a party names, for [`check::check_certificates`].
#[derive(Debug, Clone)]
pub(crate) struct CertRef {
    /// The party.
    pub party: String,
    /// What it is used for.
    pub role: check::CertRole,
    /// The resolved path.
    pub path: PathBuf,
    /// The path as written in the file.
    pub written: String,
    /// Where it is named.
    pub location: Location,
}

/// A CRL file a party names, for [`check::check_crls`].
#[derive(Debug, Clone)]
pub(crate) struct CrlRef {
    /// The party.
    pub party: String,
    /// The resolved path.
    pub path: PathBuf,
    /// The path as written in the file.
    pub written: String,
    /// Where it is named.
    pub location: Location,
}

// ---------------------------------------------------------------------------------
// The file format. Every struct refuses unknown keys; values whose set is closed (MEP,
// binding, profile …) are read as strings and checked afterwards, so that every bad
// value is reported, not only the first.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    /// Whether this file's profiles can be used by every file of the directory.
    shared: Option<bool>,
    #[serde(default)]
    party: Vec<RawParty>,
    #[serde(default)]
    process: Vec<RawProcess>,
    #[serde(default)]
    security: BTreeMap<String, Spanned<RawSecurity>>,
    #[serde(default)]
    receipt: BTreeMap<String, Spanned<RawReceipt>>,
    #[serde(default)]
    reception: BTreeMap<String, Spanned<RawReception>>,
    #[serde(default)]
    errors: BTreeMap<String, Spanned<RawErrors>>,
    #[serde(default)]
    compression: BTreeMap<String, Spanned<RawCompression>>,
    #[serde(default)]
    payload: BTreeMap<String, Spanned<RawPayload>>,
    #[serde(default)]
    properties: BTreeMap<String, Spanned<RawProperties>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawParty {
    name: Spanned<String>,
    ids: Spanned<Vec<RawPartyId>>,
    endpoint: Option<Spanned<String>>,
    signing_cert: Option<Spanned<String>>,
    next_signing_cert: Option<Spanned<String>>,
    encryption_cert: Option<Spanned<String>>,
    #[serde(default)]
    crls: Vec<Spanned<String>>,
    tls: Option<RawTls>,
    allow_weak_keys: Option<Spanned<String>>,
    dynamic: Option<Spanned<bool>>,
    discovery: Option<Spanned<RawDiscovery>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDiscovery {
    network: Option<String>,
    sml_zone: Option<String>,
    smp_url: Option<Spanned<String>>,
    dns_scheme: Option<Spanned<String>>,
    smp_version: Option<Spanned<String>>,
    naptr_services: Option<Vec<String>>,
    #[serde(default)]
    smp_anchors: Vec<Spanned<String>>,
    #[serde(default)]
    ap_anchors: Vec<Spanned<String>>,
    transport_profile: Option<String>,
    participant: Option<Spanned<String>>,
    document_type: Option<Spanned<String>>,
    process: Option<Spanned<String>>,
    cache_ttl: Option<Spanned<String>>,
    dns_server: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPartyId {
    value: Spanned<String>,
    #[serde(rename = "type")]
    id_type: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    min_version: Option<Spanned<String>>,
    client_auth: Option<bool>,
    cert: Option<Spanned<String>>,
    trusted_ca: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSecurity {
    profile: Option<Spanned<String>>,
    sign: Option<bool>,
    encrypt: Option<bool>,
    token_reference: Option<Spanned<String>>,
    #[serde(default)]
    allowed_legacy_algorithms: Vec<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReceipt {
    enabled: Option<bool>,
    non_repudiation: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReception {
    retry_intervals: Option<Vec<Spanned<String>>>,
    retry: Option<Spanned<RawRetry>>,
    duplicate_detection: Option<bool>,
    duplicate_window: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetry {
    timeout: Spanned<String>,
    attempts: u32,
    strategy: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawErrors {
    report_as_response: Option<bool>,
    notify_producer: Option<bool>,
    notify_consumer: Option<bool>,
    notify_producer_on_delivery_failure: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCompression {
    enabled: Option<bool>,
    max_decompressed_size: Option<Spanned<RawSize>>,
    uncompressed_types: Option<Vec<Spanned<String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawSize {
    Bytes(u64),
    Text(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPayload {
    max_size: Option<Spanned<RawSize>>,
    #[serde(default)]
    part: Vec<RawPart>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPart {
    name: Spanned<String>,
    #[serde(default)]
    mime_types: Vec<String>,
    required: Option<bool>,
    max_size: Option<Spanned<RawSize>>,
    cid: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProperties {
    #[serde(default)]
    required: Vec<String>,
    #[serde(default)]
    optional: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProcess {
    name: Spanned<String>,
    agreement: Option<String>,
    agreement_type: Option<String>,
    mep: Spanned<String>,
    binding: Spanned<String>,
    initiator: RawSide,
    responder: RawSide,
    dynamic_initiators: Option<Spanned<bool>>,
    #[serde(default)]
    leg: Vec<RawLeg>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSide {
    role: Option<String>,
    parties: Vec<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLeg {
    name: Spanned<String>,
    service: String,
    service_type: Option<String>,
    action: String,
    mpc: Option<String>,
    reply: Option<bool>,
    pmode_id: Option<String>,
    security: Option<Spanned<String>>,
    receipt: Option<Spanned<String>>,
    reception: Option<Spanned<String>>,
    errors: Option<Spanned<String>>,
    compression: Option<Spanned<String>>,
    payload: Option<Spanned<String>>,
    properties: Option<Spanned<String>>,
}

// ---------------------------------------------------------------------------------
// Parsing with recovery.

struct SourceFile {
    path: PathBuf,
    lines: LineIndex,
    raw: RawFile,
}

impl SourceFile {
    fn at(&self, span: Range<usize>) -> Location {
        self.lines.location(&self.path, span.start)
    }
}

/// Byte offset → line and column.
struct LineIndex {
    text: String,
    starts: Vec<usize>,
}

impl LineIndex {
    fn new(text: &str) -> Self {
        let mut starts = vec![0];
        starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        LineIndex {
            text: text.to_owned(),
            starts,
        }
    }

    fn location(&self, file: &Path, offset: usize) -> Location {
        let offset = offset.min(self.text.len());
        let line = self.starts.partition_point(|&s| s <= offset) - 1;
        let start = self.starts[line];
        let column = self
            .text
            .get(start..offset)
            .map(|s| s.chars().count())
            .unwrap_or(offset - start)
            + 1;
        Location {
            file: file.to_path_buf(),
            line: line + 1,
            column,
        }
    }
}

/// The most unknown keys reported in one file before giving up on it.
const MAX_RECOVERIES: usize = 100;

/// Parses one file. An unknown key is reported, blanked out of the text and the parse
/// retried, so that every unknown key is reported; any other error ends the file.
fn parse_file(path: &Path, text: &str, diags: &mut Vec<Diagnostic>) -> Option<RawFile> {
    let mut text = text.to_owned();
    let index = LineIndex::new(&text);
    for _ in 0..MAX_RECOVERIES {
        let err = match toml::from_str::<RawFile>(&text) {
            Ok(raw) => return Some(raw),
            Err(e) => e,
        };
        let span = err.span().unwrap_or(0..0);
        let location = index.location(path, span.start);
        let message = err.message().replace('\n', "; ");
        if let Some(rest) = message.strip_prefix("unknown field ") {
            let (key, expected) = rest.split_once(", ").unwrap_or((rest, ""));
            diags.push(Diagnostic::error(
                location,
                format!("unknown key {key}"),
                format!(
                    "{}; remove it or fix its spelling (see docs/pmode-format.md)",
                    expected.trim()
                ),
            ));
            match span_of_entry(&text, &span) {
                Some(range) => blank(&mut text, range),
                None => return None,
            }
            continue;
        }
        let (message, hint) = if toml_edit::ImDocument::parse(text.as_str()).is_err() {
            (
                format!("TOML syntax error: {message}"),
                "fix the TOML syntax (strings in quotes, one key per line, [table] headers)",
            )
        } else {
            (
                message,
                "see docs/pmode-format.md for the keys and value types allowed here",
            )
        };
        diags.push(Diagnostic::error(location, message, hint));
        return None;
    }
    None
}

/// Replaces a range of the text by spaces, keeping line breaks (and so every position).
fn blank(text: &mut String, range: Range<usize>) {
    let replaced: String = text[range.clone()]
        .chars()
        .map(|c| if c == '\n' { '\n' } else { ' ' })
        .collect();
    // Spaces are one byte each: turn multi-byte characters into as many spaces as bytes.
    let replaced: String = replaced
        .chars()
        .zip(text[range.clone()].chars())
        .flat_map(|(r, o)| std::iter::repeat_n(r, o.len_utf8()))
        .collect();
    text.replace_range(range, &replaced);
}

/// The whole entry (key and value, or table with its body) whose key is at `key_span`.
fn span_of_entry(text: &str, key_span: &Range<usize>) -> Option<Range<usize>> {
    let doc = toml_edit::ImDocument::parse(text).ok()?;
    let mut range = find_in_table(doc.as_table(), key_span)?;
    // In an inline table, take a separating comma too: `{ a = 1, b = 2 }` → `{ a = 1 }`.
    let bytes = text.as_bytes();
    let after = bytes[range.end..]
        .iter()
        .position(|b| *b != b' ' && *b != b'\t')
        .map(|i| range.end + i);
    let before = bytes[..range.start]
        .iter()
        .rposition(|b| *b != b' ' && *b != b'\t');
    if let Some(i) = after.filter(|&i| bytes[i] == b',') {
        range.end = i + 1;
    } else if let Some(i) = before.filter(|&i| bytes[i] == b',') {
        range.start = i;
    }
    Some(range)
}

fn find_in_table(table: &toml_edit::Table, key_span: &Range<usize>) -> Option<Range<usize>> {
    for (k, item) in table.iter() {
        let key = table.key(k)?;
        if key.span().as_ref() == Some(key_span) {
            return entry_range(key.span()?, item);
        }
        if let Some(found) = find_in_item(item, key_span) {
            return Some(found);
        }
    }
    None
}

fn entry_range(key: Range<usize>, item: &toml_edit::Item) -> Option<Range<usize>> {
    match item {
        toml_edit::Item::Table(t) => t.span(),
        toml_edit::Item::ArrayOfTables(a) => {
            let spans: Vec<_> = a.iter().filter_map(|t| t.span()).collect();
            Some(spans.first()?.start..spans.last()?.end)
        }
        toml_edit::Item::Value(v) => Some(key.start..v.span()?.end),
        toml_edit::Item::None => None,
    }
}

fn find_in_item(item: &toml_edit::Item, key_span: &Range<usize>) -> Option<Range<usize>> {
    match item {
        toml_edit::Item::Table(t) => find_in_table(t, key_span),
        toml_edit::Item::ArrayOfTables(a) => a.iter().find_map(|t| find_in_table(t, key_span)),
        toml_edit::Item::Value(v) => find_in_value(v, key_span),
        toml_edit::Item::None => None,
    }
}

fn find_in_value(value: &toml_edit::Value, key_span: &Range<usize>) -> Option<Range<usize>> {
    match value {
        toml_edit::Value::InlineTable(t) => {
            for (k, v) in t.iter() {
                let key = t.key(k)?;
                if key.span().as_ref() == Some(key_span) {
                    return Some(key.span()?.start..v.span()?.end);
                }
                if let Some(found) = find_in_value(v, key_span) {
                    return Some(found);
                }
            }
            None
        }
        toml_edit::Value::Array(a) => a.iter().find_map(|v| find_in_value(v, key_span)),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------
// Resolution: names to parties and profiles, strings to enums.

#[derive(Default)]
struct Resolver {
    set: PModeSet,
    cert_refs: Vec<CertRef>,
    crl_refs: Vec<CrlRef>,
    party_index: HashMap<String, usize>,
}

impl Resolver {
    fn collect_parties(&mut self, file: &SourceFile, diags: &mut Vec<Diagnostic>) {
        for raw in &file.raw.party {
            let name = raw.name.get_ref().clone();
            let location = file.at(raw.name.span());
            if let Some(&i) = self.party_index.get(&name) {
                diags.push(Diagnostic::error(
                    location,
                    format!("party '{name}' is defined twice"),
                    format!(
                        "it is already defined at {}; keep one definition (parties are shared by all files of the directory)",
                        self.set.parties[i].location
                    ),
                ));
                continue;
            }
            let mut ids = Vec::new();
            for id in raw.ids.get_ref() {
                if id.value.get_ref().trim().is_empty() {
                    diags.push(Diagnostic::error(
                        file.at(id.value.span()),
                        "empty party id",
                        "give the PartyId value the party uses in eb:From/eb:To",
                    ));
                }
                ids.push(PartyId {
                    value: id.value.get_ref().clone(),
                    id_type: id.id_type.clone().filter(|t| !t.is_empty()),
                });
            }
            if ids.is_empty() {
                diags.push(Diagnostic::error(
                    file.at(raw.ids.span()),
                    format!("party '{name}' has no id"),
                    "add at least one id: ids = [{ value = \"…\", type = \"urn:oasis:names:tc:ebcore:partyid-type:…\" }]",
                ));
            }
            if let Some(ep) = &raw.endpoint {
                check_endpoint(file, ep, diags);
            }
            let base = file.path.parent().unwrap_or(Path::new("."));
            let mut cert = |field: &Option<Spanned<String>>, role: check::CertRole| {
                field.as_ref().map(|p| {
                    let path = base.join(p.get_ref());
                    self.cert_refs.push(CertRef {
                        party: name.clone(),
                        role,
                        path: path.clone(),
                        written: p.get_ref().clone(),
                        location: file.at(p.span()),
                    });
                    path
                })
            };
            let mut crls = Vec::new();
            for c in &raw.crls {
                let path = base.join(c.get_ref());
                self.crl_refs.push(CrlRef {
                    party: name.clone(),
                    path: path.clone(),
                    written: c.get_ref().clone(),
                    location: file.at(c.span()),
                });
                crls.push(path);
            }
            let allow_weak_keys = raw.allow_weak_keys.as_ref().and_then(|reason| {
                if reason.get_ref().trim().is_empty() {
                    diags.push(Diagnostic::error(
                        file.at(reason.span()),
                        format!("allow_weak_keys of party '{name}' gives no reason"),
                        "name why the weak keys are accepted and until when (allow_weak_keys = \"partner renews its RSA-1024 certificate by 2027-03\"), or remove the line",
                    ));
                    None
                } else {
                    Some(reason.get_ref().trim().to_owned())
                }
            });
            let signing_cert = cert(&raw.signing_cert, check::CertRole::Signing);
            let next_signing_cert = cert(&raw.next_signing_cert, check::CertRole::Signing);
            let encryption_cert = cert(&raw.encryption_cert, check::CertRole::Encryption);
            let tls = raw.tls.as_ref().map(|t| {
                let min_version = match t.min_version.as_ref().map(|v| v.get_ref().as_str()) {
                    None | Some("1.2") => TlsVersion::V1_2,
                    Some("1.3") => TlsVersion::V1_3,
                    Some(other) => {
                        diags.push(Diagnostic::error(
                            file.at(t.min_version.as_ref().map(|v| v.span()).unwrap_or(0..0)),
                            format!("unsupported TLS version '{other}'"),
                            "use \"1.2\" or \"1.3\": eDelivery AS4 forbids anything older",
                        ));
                        TlsVersion::V1_2
                    }
                };
                TlsSettings {
                    min_version,
                    client_auth: t.client_auth.unwrap_or(false),
                    cert: cert(&t.cert, check::CertRole::Tls),
                    trusted_ca: cert(&t.trusted_ca, check::CertRole::Ca),
                }
            });
            let discovery = self.discovery(file, raw, &name, &ids, diags);
            self.party_index
                .insert(name.clone(), self.set.parties.len());
            self.set.parties.push(Party {
                name,
                ids,
                endpoint: raw.endpoint.as_ref().map(|e| e.get_ref().clone()),
                signing_cert,
                next_signing_cert,
                encryption_cert,
                tls,
                crls,
                allow_weak_keys,
                discovery,
                location,
            });
        }
    }

    /// The `discovery` block of a party, checked against `dynamic`.
    fn discovery(
        &mut self,
        file: &SourceFile,
        raw: &RawParty,
        name: &str,
        ids: &[PartyId],
        diags: &mut Vec<Diagnostic>,
    ) -> Option<DiscoverySettings> {
        use crate::discovery::{DnsScheme, Identifier, SmpDialect, SMP_NAPTR_SERVICE};
        let dynamic = raw.dynamic.as_ref().is_some_and(|d| *d.get_ref());
        let block = match (&raw.discovery, dynamic) {
            (None, false) => return None,
            (None, true) => {
                diags.push(Diagnostic::error(
                    file.at(raw.dynamic.as_ref().map(|d| d.span()).unwrap_or(0..0)),
                    format!("dynamic party '{name}' has no discovery block"),
                    "add [party.discovery] with sml_zone (or smp_url), document_type, smp_anchors and ap_anchors (see docs/discovery.md)",
                ));
                return None;
            }
            (Some(b), false) => {
                diags.push(Diagnostic::error(
                    file.at(b.span()),
                    format!("party '{name}' has a discovery block but is not dynamic"),
                    "add `dynamic = true` to the party, or remove its discovery block",
                ));
                return None;
            }
            (Some(b), true) => b,
        };
        let at = file.at(block.span());
        let b = block.get_ref();
        let mut ok = true;
        let mut error = |location: Location, message: String, hint: &str| {
            diags.push(Diagnostic::error(location, message, hint));
            ok = false;
        };
        if let Some(ep) = &raw.endpoint {
            error(
                file.at(ep.span()),
                format!("dynamic party '{name}' has a static endpoint"),
                "remove `endpoint`: a dynamic party's endpoint is the one its SMP publishes",
            );
        }
        if let Some(c) = &raw.encryption_cert {
            error(
                file.at(c.span()),
                format!("dynamic party '{name}' has a static encryption_cert"),
                "remove `encryption_cert`: a dynamic party's certificate is the one its SMP publishes",
            );
        }
        let mut ident = |field: &Option<Spanned<String>>, what: &str| {
            field
                .as_ref()
                .and_then(|v| match Identifier::parse(v.get_ref()) {
                    Ok(i) => Some(i),
                    Err(e) => {
                        diags.push(Diagnostic::error(
                            file.at(v.span()),
                            format!("discovery.{what} of party '{name}': {e}"),
                            "write it as scheme::value",
                        ));
                        None
                    }
                })
        };
        let participant = match &b.participant {
            Some(_) => ident(&b.participant, "participant"),
            None => ids.iter().find_map(|id| {
                id.id_type
                    .as_ref()
                    .map(|t| Identifier::new(t.clone(), id.value.clone()))
            }),
        };
        let document_type = ident(&b.document_type, "document_type");
        let process = ident(&b.process, "process");
        if b.process.is_some() && process.is_none() {
            ok = false;
        }
        if participant.is_none() {
            if b.participant.is_none() {
                diags.push(Diagnostic::error(
                    at.clone(),
                    format!("dynamic party '{name}' names no participant"),
                    "add participant = \"scheme::value\", or give one of its ids a type (the type is the scheme)",
                ));
            }
            ok = false;
        }
        if document_type.is_none() {
            if b.document_type.is_none() {
                diags.push(Diagnostic::error(
                    at.clone(),
                    format!("discovery of party '{name}' names no document_type"),
                    "add document_type = \"scheme::value\" (what the SMP is asked for)",
                ));
            }
            ok = false;
        }
        let dns_scheme = match &b.dns_scheme {
            None => DnsScheme::Bdxl,
            Some(v) => DnsScheme::parse(v.get_ref()).unwrap_or_else(|_| {
                diags.push(Diagnostic::error(
                    file.at(v.span()),
                    format!("unknown dns_scheme '{}'", v.get_ref()),
                    format!("use one of: {}", DnsScheme::NAMES),
                ));
                ok = false;
                DnsScheme::Bdxl
            }),
        };
        let smp_dialect = match &b.smp_version {
            None => SmpDialect::Oasis1,
            Some(v) => SmpDialect::parse(v.get_ref()).unwrap_or_else(|_| {
                diags.push(Diagnostic::error(
                    file.at(v.span()),
                    format!("unknown smp_version '{}'", v.get_ref()),
                    format!("use one of: {}", SmpDialect::NAMES),
                ));
                ok = false;
                SmpDialect::Oasis1
            }),
        };
        if b.sml_zone.is_none() && b.smp_url.is_none() {
            diags.push(Diagnostic::error(
                at.clone(),
                format!("discovery of party '{name}' has neither sml_zone nor smp_url"),
                "add sml_zone = \"…\" (the network's SML/BDXL zone), or smp_url = \"https://…\" for a fixed SMP",
            ));
            ok = false;
        }
        if let Some(u) = &b.smp_url {
            let text = u.get_ref();
            if !(text.starts_with("https://") || text.starts_with("http://")) {
                diags.push(Diagnostic::error(
                    file.at(u.span()),
                    format!("smp_url '{text}' is not an http(s) URL"),
                    "give the SMP's base URL, e.g. https://smp.example.org/",
                ));
                ok = false;
            }
        }
        for (list, what) in [
            (&b.smp_anchors, "smp_anchors"),
            (&b.ap_anchors, "ap_anchors"),
        ] {
            if list.is_empty() {
                diags.push(Diagnostic::error(
                    at.clone(),
                    format!("discovery of party '{name}' has no {what}"),
                    if what == "smp_anchors" {
                        "name the PEM certificates the SMP's answers are signed under: an unsigned answer is never trusted"
                    } else {
                        "name the PEM CA certificates of the network's access points: a discovered certificate must chain to one"
                    },
                ));
                ok = false;
            }
        }
        let cache_ttl = match &b.cache_ttl {
            None => Duration::from_secs(3600),
            Some(v) => parse_duration(v.get_ref()).unwrap_or_else(|| {
                diags.push(Diagnostic::error(
                    file.at(v.span()),
                    format!("cache_ttl '{}' is not a duration", v.get_ref()),
                    "write e.g. \"10m\", \"1h\" or \"30s\"",
                ));
                ok = false;
                Duration::ZERO
            }),
        };
        let dns_server = b.dns_server.as_ref().and_then(|v| {
            v.get_ref().parse().map_or_else(
                |_| {
                    diags.push(Diagnostic::error(
                        file.at(v.span()),
                        format!("dns_server '{}' is not ip:port", v.get_ref()),
                        "write e.g. \"127.0.0.1:5353\", or leave it out to use the system's resolvers",
                    ));
                    ok = false;
                    None
                },
                Some,
            )
        });
        let base = file.path.parent().unwrap_or(Path::new("."));
        let mut anchors = |list: &[Spanned<String>]| -> Vec<PathBuf> {
            list.iter()
                .map(|p| {
                    let path = base.join(p.get_ref());
                    self.cert_refs.push(CertRef {
                        party: name.to_owned(),
                        role: check::CertRole::Ca,
                        path: path.clone(),
                        written: p.get_ref().clone(),
                        location: file.at(p.span()),
                    });
                    path
                })
                .collect()
        };
        let smp_anchors = anchors(&b.smp_anchors);
        let ap_anchors = anchors(&b.ap_anchors);
        if !ok {
            return None;
        }
        Some(DiscoverySettings {
            network: b.network.clone().unwrap_or_else(|| name.to_owned()),
            sml_zone: b.sml_zone.clone(),
            smp_url: b.smp_url.as_ref().map(|u| u.get_ref().clone()),
            dns_scheme,
            smp_dialect,
            naptr_services: b
                .naptr_services
                .clone()
                .unwrap_or_else(|| vec![SMP_NAPTR_SERVICE.to_owned()]),
            smp_anchors,
            ap_anchors,
            transport_profile: b
                .transport_profile
                .clone()
                .unwrap_or_else(|| crate::discovery::TRANSPORT_BDXR_AS4.to_owned()),
            participant: participant?,
            document_type: document_type?,
            process,
            cache_ttl,
            dns_server,
        })
    }

    fn resolve_processes(
        &mut self,
        file: &SourceFile,
        scope: &Scope<'_>,
        diags: &mut Vec<Diagnostic>,
    ) {
        let mut process_names: HashMap<&str, Location> = HashMap::new();
        for process in &file.raw.process {
            let pname = process.name.get_ref().as_str();
            let ploc = file.at(process.name.span());
            if let Some(first) = process_names.get(pname) {
                diags.push(Diagnostic::error(
                    ploc.clone(),
                    format!("process '{pname}' is defined twice in this file"),
                    format!("the first one is at {first}; rename one of them"),
                ));
            }
            process_names.insert(pname, ploc);
            let mep = parse_mep(file, &process.mep, diags);
            let binding = parse_binding(file, &process.binding, diags);
            if let (Some(mep), Some(binding)) = (mep, binding) {
                let ok = matches!(
                    (mep, binding),
                    (Mep::OneWay, Binding::Push)
                        | (Mep::OneWay, Binding::Pull)
                        | (Mep::TwoWay, Binding::Push)
                        | (Mep::TwoWay, Binding::PushAndPush)
                );
                if !ok {
                    diags.push(Diagnostic::error(
                        file.at(process.binding.span()),
                        format!(
                            "binding '{}' does not go with MEP '{}'",
                            process.binding.get_ref(),
                            process.mep.get_ref()
                        ),
                        "oneWay takes push or pull; twoWay takes push (reply in the HTTP response) or pushAndPush",
                    ));
                }
            }
            let initiator = self.side(file, &process.initiator, "initiator", diags);
            let responder = self.side(file, &process.responder, "responder", diags);
            let dynamic_initiators = match &process.dynamic_initiators {
                Some(d) if *d.get_ref() => {
                    let dynamic = initiator
                        .parties
                        .iter()
                        .any(|n| self.set.party(n).is_some_and(|p| p.discovery.is_some()));
                    if !dynamic {
                        diags.push(Diagnostic::error(
                            file.at(d.span()),
                            format!("process '{pname}' allows dynamic initiators but none of its initiator parties is dynamic"),
                            "list a dynamic party (dynamic = true with a discovery block) among the initiator's parties: its network's ap_anchors decide whom to accept",
                        ));
                    }
                    dynamic
                }
                _ => false,
            };
            let agreement = process
                .agreement
                .as_ref()
                .filter(|a| !a.is_empty())
                .map(|a| AgreementRef {
                    value: a.clone(),
                    agreement_type: process.agreement_type.clone().filter(|t| !t.is_empty()),
                });
            if process.leg.is_empty() {
                diags.push(Diagnostic::warning(
                    file.at(process.name.span()),
                    format!("process '{pname}' has no leg"),
                    "add [[process.leg]] tables, or remove the process",
                ));
            }
            let mut leg_names: HashMap<&str, Location> = HashMap::new();
            for leg in &process.leg {
                let lname = leg.name.get_ref().as_str();
                let lloc = file.at(leg.name.span());
                if let Some(first) = leg_names.get(lname) {
                    diags.push(Diagnostic::error(
                        lloc.clone(),
                        format!("leg '{lname}' is defined twice in process '{pname}'"),
                        format!("the first one is at {first}; rename one of them"),
                    ));
                }
                leg_names.insert(lname, lloc.clone());
                let reply = leg.reply.unwrap_or(false);
                if reply && mep == Some(Mep::OneWay) {
                    diags.push(Diagnostic::error(
                        lloc.clone(),
                        format!("leg '{lname}' is a reply leg in a oneWay process"),
                        "remove `reply = true`, or make the process mep = \"twoWay\"",
                    ));
                }
                let leg_dynamic_initiators = dynamic_initiators && !reply;
                let (from, to) = if reply {
                    (responder.clone(), initiator.clone())
                } else {
                    (initiator.clone(), responder.clone())
                };
                self.set.legs.push(Leg {
                    name: lname.to_owned(),
                    process: pname.to_owned(),
                    file: file.path.clone(),
                    pmode_id: leg.pmode_id.clone().filter(|p| !p.is_empty()),
                    agreement: agreement.clone(),
                    mep: mep.unwrap_or(Mep::OneWay),
                    binding: binding.unwrap_or(Binding::Push),
                    reply,
                    from,
                    to,
                    service: Service {
                        value: leg.service.clone(),
                        service_type: leg.service_type.clone().filter(|t| !t.is_empty()),
                    },
                    action: leg.action.clone(),
                    mpc: leg
                        .mpc
                        .clone()
                        .filter(|m| !m.is_empty())
                        .unwrap_or_else(|| DEFAULT_MPC.to_owned()),
                    payload: scope.pick(file, |p| &p.payload, &leg.payload, "payload", diags),
                    properties: scope
                        .pick(
                            file,
                            |p| &p.properties,
                            &leg.properties,
                            "properties",
                            diags,
                        )
                        .unwrap_or_default(),
                    security: scope
                        .pick(file, |p| &p.security, &leg.security, "security", diags)
                        .unwrap_or_default(),
                    receipt: scope
                        .pick(file, |p| &p.receipt, &leg.receipt, "receipt", diags)
                        .unwrap_or_default(),
                    reception: scope
                        .pick(file, |p| &p.reception, &leg.reception, "reception", diags)
                        .unwrap_or_default(),
                    errors: scope
                        .pick(file, |p| &p.errors, &leg.errors, "errors", diags)
                        .unwrap_or_default(),
                    compression: scope
                        .pick(
                            file,
                            |p| &p.compression,
                            &leg.compression,
                            "compression",
                            diags,
                        )
                        .unwrap_or_default(),
                    dynamic_initiators: leg_dynamic_initiators,
                    location: lloc,
                });
            }
        }
    }

    fn side(
        &self,
        file: &SourceFile,
        raw: &RawSide,
        which: &str,
        diags: &mut Vec<Diagnostic>,
    ) -> LegSide {
        let mut parties = Vec::new();
        for p in &raw.parties {
            let name = p.get_ref();
            if !self.party_index.contains_key(name) {
                let known: Vec<&str> = self.set.parties.iter().map(|p| p.name.as_str()).collect();
                diags.push(Diagnostic::error(
                    file.at(p.span()),
                    format!("unknown party '{name}'"),
                    match nearest(name, &known) {
                        Some(n) => format!("did you mean '{n}'? Parties are defined in [[party]] tables of any file in the directory"),
                        None if known.is_empty() => "define it in a [[party]] table (no party is defined in this directory)".to_owned(),
                        None => format!("define it in a [[party]] table, or use one of: {}", known.join(", ")),
                    },
                ));
            }
            parties.push(name.clone());
        }
        let default_role = format!("{EBMS_NS}/{which}");
        LegSide {
            role: raw
                .role
                .clone()
                .filter(|r| !r.trim().is_empty())
                .unwrap_or(default_role),
            parties,
        }
    }
}

fn check_endpoint(file: &SourceFile, ep: &Spanned<String>, diags: &mut Vec<Diagnostic>) {
    let url = ep.get_ref();
    if url.starts_with("https://") {
        return;
    }
    if url.starts_with("http://") {
        diags.push(Diagnostic::warning(
            file.at(ep.span()),
            format!("endpoint '{url}' is plain http"),
            "eDelivery AS4 requires TLS: use an https:// endpoint outside of local tests",
        ));
    } else {
        diags.push(Diagnostic::error(
            file.at(ep.span()),
            format!("endpoint '{url}' is not an http(s) URL"),
            "write the full URL of the partner's AS4 endpoint, e.g. https://ap.example.org/as4",
        ));
    }
}

/// The name in `known` closest to `name` by edit distance, when close enough to be a typo.
pub(crate) fn nearest<'a>(name: &str, known: &[&'a str]) -> Option<&'a str> {
    known
        .iter()
        .map(|k| (edit_distance(name, k), *k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 4))
        .min()
        .map(|(_, k)| k)
}

/// Levenshtein distance between two strings (in characters).
pub(crate) fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

fn parse_mep(file: &SourceFile, raw: &Spanned<String>, diags: &mut Vec<Diagnostic>) -> Option<Mep> {
    let v = raw.get_ref().as_str();
    let short = v
        .strip_prefix(EBMS_NS)
        .map(|s| s.trim_start_matches('/'))
        .unwrap_or(v);
    match short {
        "oneWay" => Some(Mep::OneWay),
        "twoWay" => Some(Mep::TwoWay),
        _ => {
            diags.push(Diagnostic::error(
                file.at(raw.span()),
                format!("unknown MEP '{v}'"),
                "use \"oneWay\" or \"twoWay\"",
            ));
            None
        }
    }
}

fn parse_binding(
    file: &SourceFile,
    raw: &Spanned<String>,
    diags: &mut Vec<Diagnostic>,
) -> Option<Binding> {
    let v = raw.get_ref().as_str();
    let short = v
        .strip_prefix(EBMS_NS)
        .map(|s| s.trim_start_matches('/'))
        .unwrap_or(v);
    match short {
        "push" => Some(Binding::Push),
        "pushAndPush" => Some(Binding::PushAndPush),
        "pull" => Some(Binding::Pull),
        _ => {
            diags.push(Diagnostic::error(
                file.at(raw.span()),
                format!("unknown or unsupported binding '{v}'"),
                "use \"push\", \"pushAndPush\" or \"pull\" (pushAndPull and pullAndPush are not supported)",
            ));
            None
        }
    }
}

/// Parses `30s`, `5m`, `2h`, `7d`.
pub(crate) fn parse_duration(text: &str) -> Option<Duration> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = t.split_at(split);
    let n: u64 = n.parse().ok()?;
    let secs = match unit.trim() {
        "s" => n,
        "m" | "min" => n.checked_mul(60)?,
        "h" => n.checked_mul(3600)?,
        "d" => n.checked_mul(86_400)?,
        _ => return None,
    };
    Some(Duration::from_secs(secs))
}

/// Parses a size: a number of bytes, or `10KiB`, `100MiB`, `2GiB`, `500MB`, `1kB`.
pub(crate) fn parse_size(text: &str) -> Option<u64> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(split);
    let n: u64 = n.parse().ok()?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "kB" | "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(mult)
}

fn size(file: &SourceFile, raw: &Spanned<RawSize>, diags: &mut Vec<Diagnostic>) -> Option<u64> {
    match raw.get_ref() {
        RawSize::Bytes(n) => Some(*n),
        RawSize::Text(t) => {
            let parsed = parse_size(t);
            if parsed.is_none() {
                diags.push(Diagnostic::error(
                    file.at(raw.span()),
                    format!("'{t}' is not a size"),
                    "write a number of bytes or a number with a unit: \"512KiB\", \"100MiB\", \"2GiB\", \"500MB\"",
                ));
            }
            parsed
        }
    }
}

fn duration(
    file: &SourceFile,
    raw: &Spanned<String>,
    diags: &mut Vec<Diagnostic>,
) -> Option<Duration> {
    let parsed = parse_duration(raw.get_ref());
    if parsed.is_none() {
        diags.push(Diagnostic::error(
            file.at(raw.span()),
            format!("'{}' is not a duration", raw.get_ref()),
            "write a whole number with a unit: \"30s\", \"5m\", \"2h\", \"7d\"",
        ));
    }
    parsed
}

/// Legacy algorithms a PMode may accept on receipt beyond its profile's.
pub(crate) const LEGACY_ALGORITHMS: &[&str] = &[
    // Key transport RSA-OAEP with MGF1-SHA1 (xmlenc 1.0), still sent by older peers.
    "http://www.w3.org/2001/04/xmlenc#rsa-oaep-mgf1p",
    // xmlenc11 RSA-OAEP with the default MGF1-SHA1.
    "http://www.w3.org/2009/xmlenc11#rsa-oaep",
    // AES-CBC content encryption (pre-GCM peers).
    "http://www.w3.org/2001/04/xmlenc#aes128-cbc",
    "http://www.w3.org/2001/04/xmlenc#aes256-cbc",
    // AES-256-GCM.
    "http://www.w3.org/2009/xmlenc11#aes256-gcm",
    // RSA-SHA1 signatures and SHA-1 digests.
    "http://www.w3.org/2000/09/xmldsig#rsa-sha1",
    "http://www.w3.org/2000/09/xmldsig#sha1",
];

/// The named profiles of one file, resolved.
struct Profiles {
    security: HashMap<String, SecurityProfile>,
    receipt: HashMap<String, ReceiptSettings>,
    reception: HashMap<String, ReceptionAwareness>,
    errors: HashMap<String, ErrorHandling>,
    compression: HashMap<String, Compression>,
    payload: HashMap<String, PayloadProfile>,
    properties: HashMap<String, Vec<PropertyRule>>,
}

impl Profiles {
    fn empty() -> Profiles {
        Profiles {
            security: HashMap::new(),
            receipt: HashMap::new(),
            reception: HashMap::new(),
            errors: HashMap::new(),
            compression: HashMap::new(),
            payload: HashMap::new(),
            properties: HashMap::new(),
        }
    }

    fn resolve(file: &SourceFile, diags: &mut Vec<Diagnostic>) -> Profiles {
        let raw = &file.raw;
        let mut p = Profiles::empty();
        for (name, s) in &raw.security {
            let d = SecurityProfile::default();
            let profile = match s.get_ref().profile.as_ref() {
                None => d.profile,
                Some(v) => match SecurityProfileKind::from_name(v.get_ref()) {
                    Some(kind) => kind,
                    None => {
                        let other = v.get_ref();
                        diags.push(Diagnostic::error(
                            file.at(v.span()),
                            format!("unknown security profile '{other}'"),
                            "use \"as4-1.15\", \"as4-2.0-eddsa\" or \"as4-2.0-ecdsa\"",
                        ));
                        d.profile
                    }
                },
            };
            let token_reference = match s.get_ref().token_reference.as_ref() {
                None => d.token_reference,
                Some(v) => match v.get_ref().as_str() {
                    "bst" => TokenReference::Bst,
                    "ski" => TokenReference::Ski,
                    "issuer-serial" => TokenReference::IssuerSerial,
                    "bst-pkipath" => TokenReference::BstPkiPath,
                    other => {
                        diags.push(Diagnostic::error(
                            file.at(v.span()),
                            format!("unknown token reference '{other}'"),
                            "use \"bst\", \"ski\", \"issuer-serial\" or \"bst-pkipath\"",
                        ));
                        d.token_reference
                    }
                },
            };
            let mut legacy = Vec::new();
            for alg in &s.get_ref().allowed_legacy_algorithms {
                if LEGACY_ALGORITHMS.contains(&alg.get_ref().as_str()) {
                    legacy.push(alg.get_ref().clone());
                } else {
                    diags.push(Diagnostic::error(
                        file.at(alg.span()),
                        format!(
                            "'{}' is not a legacy algorithm Varti can allow",
                            alg.get_ref()
                        ),
                        format!("allowed: {}", LEGACY_ALGORITHMS.join(", ")),
                    ));
                }
            }
            p.security.insert(
                name.clone(),
                SecurityProfile {
                    profile,
                    sign: s.get_ref().sign.unwrap_or(d.sign),
                    encrypt: s.get_ref().encrypt.unwrap_or(d.encrypt),
                    token_reference,
                    allowed_legacy_algorithms: legacy,
                },
            );
        }
        for (name, r) in &raw.receipt {
            let d = ReceiptSettings::default();
            let r = r.get_ref();
            p.receipt.insert(
                name.clone(),
                ReceiptSettings {
                    enabled: r.enabled.unwrap_or(d.enabled),
                    non_repudiation: r.non_repudiation.unwrap_or(d.non_repudiation),
                },
            );
        }
        for (name, r) in &raw.reception {
            let d = ReceptionAwareness::default();
            let rr = r.get_ref();
            let retry = match (&rr.retry_intervals, &rr.retry) {
                (Some(_), Some(spread)) => {
                    diags.push(Diagnostic::error(
                        file.at(spread.span()),
                        "both retry and retry_intervals are set",
                        "keep one: retry_intervals = [\"1m\", \"5m\"] or retry = { timeout = \"12m\", attempts = 4, strategy = \"constant\" }",
                    ));
                    d.retry.clone()
                }
                (Some(list), None) => RetrySchedule::Intervals(
                    list.iter()
                        .filter_map(|i| duration(file, i, diags))
                        .collect(),
                ),
                (None, Some(spread)) => {
                    let s = spread.get_ref();
                    let strategy = match s
                        .strategy
                        .as_ref()
                        .map(|v| v.get_ref().to_ascii_lowercase())
                    {
                        None => RetryStrategy::Constant,
                        Some(v) if v == "constant" => RetryStrategy::Constant,
                        Some(v) if v == "progressive" => RetryStrategy::Progressive,
                        Some(v) => {
                            diags.push(Diagnostic::error(
                                file.at(s.strategy.as_ref().map(|x| x.span()).unwrap_or(0..0)),
                                format!("unknown retry strategy '{v}'"),
                                "use \"constant\" or \"progressive\"",
                            ));
                            RetryStrategy::Constant
                        }
                    };
                    RetrySchedule::Spread {
                        timeout: duration(file, &s.timeout, diags).unwrap_or_default(),
                        attempts: s.attempts,
                        strategy,
                    }
                }
                (None, None) => d.retry.clone(),
            };
            let duplicate_window = rr
                .duplicate_window
                .as_ref()
                .and_then(|w| duration(file, w, diags))
                .unwrap_or(d.duplicate_window);
            p.reception.insert(
                name.clone(),
                ReceptionAwareness {
                    retry,
                    duplicate_detection: rr.duplicate_detection.unwrap_or(true),
                    duplicate_window,
                },
            );
        }
        for (name, e) in &raw.errors {
            let d = ErrorHandling::default();
            let e = e.get_ref();
            if e.report_as_response == Some(false) {
                diags.push(Diagnostic::warning(
                    file.at(raw.errors[name].span()),
                    format!("errors profile '{name}' does not report errors in the response"),
                    "eDelivery AS4 returns error signals synchronously; set report_as_response = true",
                ));
            }
            p.errors.insert(
                name.clone(),
                ErrorHandling {
                    report_as_response: e.report_as_response.unwrap_or(d.report_as_response),
                    notify_producer: e.notify_producer.unwrap_or(d.notify_producer),
                    notify_consumer: e.notify_consumer.unwrap_or(d.notify_consumer),
                    notify_producer_on_delivery_failure: e
                        .notify_producer_on_delivery_failure
                        .unwrap_or(d.notify_producer_on_delivery_failure),
                },
            );
        }
        for (name, c) in &raw.compression {
            let d = Compression::default();
            let cc = c.get_ref();
            let cap = cc
                .max_decompressed_size
                .as_ref()
                .and_then(|s| size(file, s, diags))
                .unwrap_or(d.max_decompressed_size);
            if cap == 0 {
                diags.push(Diagnostic::error(
                    file.at(c.span()),
                    "max_decompressed_size is 0",
                    "give the largest size a part may decompress to, e.g. \"100MiB\"",
                ));
            }
            let uncompressed_types = match &cc.uncompressed_types {
                None => d.uncompressed_types,
                Some(types) => types
                    .iter()
                    .filter_map(|t| match compress::check_uncompressed_type(t.get_ref()) {
                        None => Some(t.get_ref().clone()),
                        Some(hint) => {
                            diags.push(Diagnostic::error(
                                file.at(t.span()),
                                format!("`{}` is not a media type", t.get_ref()),
                                hint,
                            ));
                            None
                        }
                    })
                    .collect(),
            };
            p.compression.insert(
                name.clone(),
                Compression {
                    compress: cc.enabled.unwrap_or(d.compress),
                    max_decompressed_size: cap,
                    uncompressed_types,
                },
            );
        }
        for (name, pl) in &raw.payload {
            let pr = pl.get_ref();
            let parts = pr
                .part
                .iter()
                .map(|part| PartRule {
                    name: part.name.get_ref().clone(),
                    mime_types: part.mime_types.clone(),
                    required: part.required.unwrap_or(true),
                    max_size: part.max_size.as_ref().and_then(|s| size(file, s, diags)),
                    cid: part.cid.clone().filter(|c| !c.is_empty()),
                })
                .collect();
            p.payload.insert(
                name.clone(),
                PayloadProfile {
                    parts,
                    max_size: pr.max_size.as_ref().and_then(|s| size(file, s, diags)),
                },
            );
        }
        for (name, pr) in &raw.properties {
            let pr = pr.get_ref();
            let mut rules: Vec<PropertyRule> = pr
                .required
                .iter()
                .map(|n| PropertyRule {
                    name: n.clone(),
                    required: true,
                })
                .collect();
            rules.extend(pr.optional.iter().map(|n| PropertyRule {
                name: n.clone(),
                required: false,
            }));
            p.properties.insert(name.clone(), rules);
        }
        p
    }

    /// The profile a leg names, or the file's `default` one, or `None` (built-in).
    /// The profiles of the files that say `shared = true`, merged; a name defined in two
    /// shared files is an error (which one would a leg get?).
    fn shared(
        files: &[SourceFile],
        resolved: &[Profiles],
        diags: &mut Vec<Diagnostic>,
    ) -> Profiles {
        fn merge<T: Clone>(
            into: &mut HashMap<String, T>,
            owners: &mut HashMap<(&'static str, String), PathBuf>,
            kind: &'static str,
            from: &HashMap<String, T>,
            file: &SourceFile,
            diags: &mut Vec<Diagnostic>,
        ) {
            let mut names: Vec<&String> = from.keys().collect();
            names.sort();
            for name in names {
                if let Some(first) = owners.get(&(kind, name.clone())) {
                    diags.push(Diagnostic::error(
                        Location::file_start(&file.path),
                        format!("shared {kind} profile '{name}' is also defined in {}", first.display()),
                        "give one of them another name: shared profiles are visible to every file of the directory",
                    ));
                    continue;
                }
                owners.insert((kind, name.clone()), file.path.clone());
                into.insert(name.clone(), from[name].clone());
            }
        }
        let mut shared = Profiles::empty();
        let mut owners = HashMap::new();
        for (file, p) in files.iter().zip(resolved) {
            if file.raw.shared != Some(true) {
                continue;
            }
            let o = &mut owners;
            merge(
                &mut shared.security,
                o,
                "security",
                &p.security,
                file,
                diags,
            );
            merge(&mut shared.receipt, o, "receipt", &p.receipt, file, diags);
            merge(
                &mut shared.reception,
                o,
                "reception",
                &p.reception,
                file,
                diags,
            );
            merge(&mut shared.errors, o, "errors", &p.errors, file, diags);
            merge(
                &mut shared.compression,
                o,
                "compression",
                &p.compression,
                file,
                diags,
            );
            merge(&mut shared.payload, o, "payload", &p.payload, file, diags);
            merge(
                &mut shared.properties,
                o,
                "properties",
                &p.properties,
                file,
                diags,
            );
        }
        shared
    }
}

/// The profiles a file's legs can name: its own first, then the directory's shared ones.
struct Scope<'a> {
    local: &'a Profiles,
    shared: &'a Profiles,
}

impl Scope<'_> {
    /// The profile `name` (or `default` when the leg names none) of one kind, chosen by
    /// `table`; an unknown name is an error listing the names that exist.
    fn pick<T: Clone>(
        &self,
        file: &SourceFile,
        table: impl Fn(&Profiles) -> &HashMap<String, T>,
        name: &Option<Spanned<String>>,
        kind: &str,
        diags: &mut Vec<Diagnostic>,
    ) -> Option<T> {
        let (local, shared) = (table(self.local), table(self.shared));
        let wanted = name.as_ref().map_or("default", |n| n.get_ref().as_str());
        let found = local.get(wanted).or_else(|| shared.get(wanted)).cloned();
        if let (None, Some(n)) = (&found, name) {
            let mut known: Vec<&str> = local
                .keys()
                .chain(shared.keys())
                .map(String::as_str)
                .collect();
            known.sort();
            known.dedup();
            diags.push(Diagnostic::error(
                file.at(n.span()),
                format!("unknown {kind} profile '{wanted}'"),
                if known.is_empty() {
                    format!(
                        "define it in this file as [{kind}.{wanted}], or in a file that says `shared = true`"
                    )
                } else {
                    format!(
                        "define [{kind}.{wanted}] in this file or in a shared file, or use one of: {}",
                        known.join(", ")
                    )
                },
            ));
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Loads in-memory files (no certificates named, so nothing is read from disk).
    fn load_files(files: &[(&str, &str)]) -> (PModeSet, Vec<Diagnostic>) {
        let texts: Vec<(PathBuf, String)> = files
            .iter()
            .map(|(name, text)| (PathBuf::from(name), (*text).to_owned()))
            .collect();
        load_texts(&texts, &LoadOptions::default(), Vec::new())
    }

    const PARTIES: &str = "[[party]]\nname = \"a\"\nids = [{ value = \"a\" }]\n[[party]]\nname = \"b\"\nids = [{ value = \"b\" }]\n";

    fn process(security: &str) -> String {
        format!(
            "[[process]]\nname = \"p\"\nmep = \"oneWay\"\nbinding = \"push\"\ninitiator = {{ parties = [\"a\"] }}\nresponder = {{ parties = [\"b\"] }}\n[[process.leg]]\nname = \"l\"\nservice = \"s\"\naction = \"x\"\nsecurity = \"{security}\"\n"
        )
    }

    fn errors(diags: &[Diagnostic]) -> Vec<&str> {
        diags
            .iter()
            .filter(|d| d.is_error())
            .map(|d| d.message.as_str())
            .collect()
    }

    #[test]
    fn a_shared_file_lends_its_profiles_to_every_file() {
        let shared = "shared = true\n[security.signed]\nsign = true\nencrypt = false\n";
        let (set, diags) = load_files(&[
            ("parties.toml", PARTIES),
            ("process.toml", &process("signed")),
            ("profiles.toml", shared),
        ]);
        assert!(errors(&diags).is_empty(), "{diags:?}");
        assert!(set.legs[0].security.sign);
        assert!(!set.legs[0].security.encrypt);
    }

    #[test]
    fn a_file_own_profile_comes_before_a_shared_one() {
        let shared = "shared = true\n[security.signed]\nsign = true\nencrypt = false\n";
        let own = format!(
            "{}[security.signed]\nsign = true\nencrypt = true\n",
            process("signed")
        );
        let (set, diags) = load_files(&[
            ("parties.toml", PARTIES),
            ("process.toml", &own),
            ("profiles.toml", shared),
        ]);
        assert!(errors(&diags).is_empty(), "{diags:?}");
        assert!(set.legs[0].security.encrypt);
    }

    #[test]
    fn profiles_of_a_file_that_is_not_shared_stay_in_it() {
        let other = "[security.signed]\nsign = true\nencrypt = false\n";
        let (_, diags) = load_files(&[
            ("parties.toml", PARTIES),
            ("process.toml", &process("signed")),
            ("other.toml", other),
        ]);
        assert_eq!(errors(&diags), vec!["unknown security profile 'signed'"]);
    }

    #[test]
    fn a_name_defined_in_two_shared_files_is_an_error() {
        let one = "shared = true\n[security.signed]\nsign = true\n";
        let (_, diags) = load_files(&[
            ("parties.toml", PARTIES),
            ("process.toml", &process("signed")),
            ("profiles-1.toml", one),
            ("profiles-2.toml", one),
        ]);
        assert_eq!(
            errors(&diags),
            vec!["shared security profile 'signed' is also defined in profiles-1.toml"]
        );
    }

    #[test]
    fn uncompressed_types_default_replace_and_are_checked() {
        let with = |compression: &str| {
            let text = format!(
                "{}compression = \"c\"\n[security.signed]\nsign = true\nencrypt = false\n[compression.c]\n{compression}",
                process("signed")
            );
            load_files(&[("parties.toml", PARTIES), ("process.toml", &text)])
        };
        // Left out: the default list; files written before the key keep working.
        let (set, diags) = with("enabled = true\n");
        assert!(errors(&diags).is_empty(), "{diags:?}");
        let c = &set.legs[0].compression;
        assert!(c.compress);
        assert_eq!(
            c.uncompressed_types,
            Compression::default().uncompressed_types
        );
        assert!(c.uncompressed_types.iter().any(|t| t == "application/pdf"));
        // Given: replaces it; `[]` compresses everything.
        let (set, diags) = with("uncompressed_types = [\"image/*\"]\n");
        assert!(errors(&diags).is_empty(), "{diags:?}");
        assert_eq!(set.legs[0].compression.uncompressed_types, ["image/*"]);
        let (set, _) = with("uncompressed_types = []\n");
        assert!(set.legs[0].compression.uncompressed_types.is_empty());
        let (_, diags) = with("uncompressed_types = [\"pdf\"]\n");
        assert_eq!(errors(&diags), vec!["`pdf` is not a media type"]);
    }

    #[test]
    fn sizes_and_durations_parse() {
        assert_eq!(parse_size("2GiB"), Some(2 << 30));
        assert_eq!(parse_size("500MB"), Some(500_000_000));
        assert_eq!(parse_size("17"), Some(17));
        assert_eq!(parse_size("3 parsecs"), None);
        assert_eq!(parse_duration("12m"), Some(Duration::from_secs(720)));
        assert_eq!(parse_duration("7d"), Some(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_duration("soon"), None);
    }

    #[test]
    fn line_index_counts_characters() {
        let idx = LineIndex::new("a = 1\nbé = 2\n");
        let loc = idx.location(Path::new("f.toml"), "a = 1\nbé".len());
        assert_eq!((loc.line, loc.column), (2, 3));
    }

    #[test]
    fn every_unknown_key_of_a_file_is_reported() {
        let text = "bogus = 1\n[[party]]\nname = \"a\"\nids = [{ value = \"a\", colour = \"red\" }]\nfoo = 2\n[strange]\nx = 1\n";
        let mut diags = Vec::new();
        let raw = parse_file(Path::new("f.toml"), text, &mut diags);
        let raw = raw.unwrap_or_else(|| panic!("not recovered: {diags:?}"));
        assert_eq!(raw.party.len(), 1);
        let found: Vec<(usize, usize, &str)> = diags
            .iter()
            .map(|d| (d.location.line, d.location.column, d.message.as_str()))
            .collect();
        assert_eq!(
            found,
            vec![
                (1, 1, "unknown key `bogus`"),
                (4, 23, "unknown key `colour`"),
                (5, 1, "unknown key `foo`"),
                (6, 2, "unknown key `strange`"),
            ]
        );
    }

    #[test]
    fn nearest_name_suggests_typos_only() {
        assert_eq!(nearest("varti-c", &["varti-a", "oots"]), Some("varti-a"));
        assert_eq!(nearest("zzzzzzz", &["varti-a"]), None);
    }

    #[test]
    fn a_dynamic_party_is_read_and_its_contradictions_are_errors() {
        let good = "[[party]]\nname = \"peer\"\nids = [{ value = \"0088:1\", type = \"iso6523-actorid-upis\" }]\ndynamic = true\n\
            [party.discovery]\nnetwork = \"peppol-test\"\nsml_zone = \"acc.edelivery.tech.ec.europa.eu\"\ndns_scheme = \"peppol-naptr\"\n\
            smp_version = \"peppol\"\nsmp_anchors = [\"smp.pem\"]\nap_anchors = [\"ap.pem\"]\ntransport_profile = \"peppol-transport-as4-v2_0\"\n\
            document_type = \"busdox-docid-qns::urn:test\"\ncache_ttl = \"10m\"\ndns_server = \"127.0.0.1:5353\"\n";
        let (set, _) = load_files(&[("p.toml", good)]);
        let d = set.party("peer").unwrap().discovery.clone().unwrap();
        assert_eq!(d.network, "peppol-test");
        assert_eq!(d.dns_scheme, crate::discovery::DnsScheme::PeppolNaptr);
        assert_eq!(d.smp_dialect, crate::discovery::SmpDialect::Peppol);
        // The participant defaults to the party's typed id.
        assert_eq!(d.participant.to_string(), "iso6523-actorid-upis::0088:1");
        assert_eq!(d.cache_ttl, Duration::from_secs(600));
        assert_eq!(d.dns_server, Some("127.0.0.1:5353".parse().unwrap()));
        assert!(d.ap_anchors[0].ends_with("ap.pem"));

        let bad = "[[party]]\nname = \"peer\"\nids = [{ value = \"x\" }]\ndynamic = true\nendpoint = \"https://peer/msh\"\n\
            [party.discovery]\ndns_scheme = \"md5\"\ndocument_type = \"no-scheme\"\n\
            [[party]]\nname = \"static\"\nids = [{ value = \"s\" }]\n[party.discovery]\nsml_zone = \"z\"\n\
            [[party]]\nname = \"lost\"\nids = [{ value = \"l\" }]\ndynamic = true\n";
        let (_, diags) = load_files(&[("p.toml", bad)]);
        let found = errors(&diags);
        for expected in [
            "dynamic party 'peer' has a static endpoint",
            "unknown dns_scheme 'md5'",
            "discovery.document_type of party 'peer'",
            "dynamic party 'peer' names no participant",
            "discovery of party 'peer' has neither sml_zone nor smp_url",
            "discovery of party 'peer' has no smp_anchors",
            "discovery of party 'peer' has no ap_anchors",
            "party 'static' has a discovery block but is not dynamic",
            "dynamic party 'lost' has no discovery block",
        ] {
            assert!(
                found.iter().any(|e| e.contains(expected)),
                "{expected} not in {found:?}"
            );
        }

        // Dynamic initiators need a dynamic party among the initiators.
        let process = "[[process]]\nname = \"open\"\nmep = \"oneWay\"\nbinding = \"push\"\ndynamic_initiators = true\n\
            initiator = { parties = [\"a\"] }\nresponder = { parties = [\"b\"] }\n\
            [[process.leg]]\nname = \"l\"\nservice = \"s\"\naction = \"a\"\n";
        let (set, diags) = load_files(&[("p.toml", &format!("{PARTIES}{process}"))]);
        assert!(
            errors(&diags).iter().any(|e| e.contains(
                "allows dynamic initiators but none of its initiator parties is dynamic"
            )),
            "{diags:?}"
        );
        assert!(!set.legs[0].dynamic_initiators);
    }
}
