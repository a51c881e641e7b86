//! `varti message …`: look inside AS4 messages dumped to files.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use openssl::x509::X509;
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use varti_as4::error::ErrorCode;
use varti_as4::inbound::{receive, ReceivePolicy, ReceivedMessage};
use varti_as4::leg::{self, MessageFields};
use varti_as4::message::dump::{read_dump_file, MessageDump};
use varti_as4::message::mime::{hex, MimeLimits};
use varti_as4::message::model::{
    CollaborationInfo, MessageInfo, PartyId, PartyInfo, Service, ROLE_INITIATOR, ROLE_RESPONDER,
};
use varti_as4::message::model::{Messaging, Party, Property, SignalKind, UserMessage};
use varti_as4::message::soap::{parse_envelope, Envelope, SoapVersion};
use varti_as4::outbound::{check_receipt, send, OutgoingPayload, SendPolicy};
use varti_as4::security::dom::XmlDocument;
use varti_as4::security::profile::{Profile, AS4_1_15};
use varti_as4::security::receipt::signed_references;
use varti_as4::security::summary::{summarize, SecuritySummary};
use varti_as4::security::token::{self, TokenReference};
use varti_as4::security::verify::SignedPart;
use varti_as4::EbmsError;

use super::{exit_cannot_run, exit_problems};

/// The `message` command group.
#[derive(Debug, Subcommand)]
pub enum MessageCommand {
    /// Print what a dumped AS4 message contains, without verifying or decrypting it.
    ///
    /// FILE is either HTTP-style (header lines, a blank line, then the body: a
    /// multipart/related package or a SOAP envelope) or a bare XML envelope. Prints the
    /// ebMS header, every MIME part (href, type, size and SHA-256 of the bytes as
    /// carried) and a summary of the WS-Security header. Exit status 1 when the message
    /// is malformed (the ebMS error a receiver would answer is printed), 2 when the file
    /// cannot be read.
    ///
    /// Example: varti message inspect request.http --json | jq .header
    Inspect(InspectArgs),
    /// Decrypt, verify and decompress a dumped message as a receiver would.
    ///
    /// Runs Varti's receive pipeline: decryption (with --key/--cert, needed only when the
    /// message is encrypted), signature verification over eb:Messaging, the Body and every
    /// attachment, the policy checks (everything signed, no signature wrapping), the
    /// signer certificate against --trust at --at (default now), and decompression.
    /// Prints what was verified; with --out writes the payloads as they would be
    /// delivered. For a receipt, --for REQUEST also checks that its non-repudiation
    /// information matches what the request signed. Exit status 0 when verified, 1 when
    /// refused (the ebMS error is printed), 2 when it cannot run.
    ///
    /// Example: varti message open request.http --key me.key.pem --cert me.cert.pem
    ///          --trust partner.cert.pem --out delivered/
    Open(Box<OpenArgs>),
    /// Build a signed (optionally compressed and encrypted) AS4 message from payload files.
    ///
    /// Writes an HTTP-style dump (Content-Type header, blank line, MIME body) that
    /// `inspect` and `open` read back, for testing peers. With --pmodes DIR --leg
    /// PROCESS/LEG the message is what that leg sends (service, action, parties, MPC,
    /// security, compression); otherwise the settings are given as flags.
    ///
    /// Example: varti message seal --pmodes pmodes --leg test/test
    ///          --key certs/varti-a/sign.key.pem --out msg.http invoice.xml
    ///
    /// Example: varti message seal --from A --to B --service urn:s --action Go
    ///          --key a.key.pem --cert a.cert.pem --encrypt-to b.cert.pem --compress
    ///          --out msg.http invoice.xml
    Seal(Box<SealArgs>),
}

/// Arguments of `message open`.
#[derive(Debug, Args)]
pub struct OpenArgs {
    /// The message dump to open.
    pub file: PathBuf,
    /// Our private key (PEM file, or an RFC 7512 `pkcs11:` URI of a key in an HSM, with
    /// the module in VARTI_PKCS11_MODULE), to decrypt; needed only for encrypted messages.
    #[arg(long)]
    pub key: Option<PathBuf>,
    /// Our certificate (PEM) matching --key.
    #[arg(long)]
    pub cert: Option<PathBuf>,
    /// A trusted certificate (PEM; the partner's, or a CA). Repeatable; a file may hold several.
    #[arg(long)]
    pub trust: Vec<PathBuf>,
    /// Also trust the certificates carried in the message's BinarySecurityTokens, as if
    /// pinned (for looking at captured messages; never for production decisions).
    #[arg(long)]
    pub trust_embedded: bool,
    /// Evaluate certificate validity at this time (RFC 3339), instead of now.
    #[arg(long)]
    pub at: Option<String>,
    /// Write the delivered payloads into this directory.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// The algorithm profile: as4-1.15, as4-2.0-eddsa, as4-2.0-ecdsa (default: from the
    /// message's signature method).
    #[arg(long)]
    pub profile: Option<String>,
    /// Accept a message without signature (a leg that does not sign).
    #[arg(long)]
    pub allow_unsigned: bool,
    /// For a receipt: the request it answers; checks the NRR against its signed references.
    #[arg(long = "for")]
    pub for_request: Option<PathBuf>,
    /// Print one JSON document instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `message seal`.
#[derive(Debug, Args)]
pub struct SealArgs {
    /// The PMode directory to take the leg from (with --leg).
    #[arg(long, requires = "leg")]
    pub pmodes: Option<PathBuf>,
    /// Take service, action, roles, parties, MPC, agreement, security (profile, token
    /// reference, encryption) and compression from this leg: PROCESS/LEG, as named in
    /// the PMode files. Flags given as well override the leg's values.
    #[arg(long, requires = "pmodes", value_name = "PROCESS/LEG")]
    pub leg: Option<String>,
    /// The sender's party id (with --leg: a party name or id of the leg's sending side;
    /// default its first party).
    #[arg(long, required_unless_present = "leg")]
    pub from: Option<String>,
    /// The receiver's party id (with --leg: a party name or id of the leg's receiving
    /// side; default its first party other than the sender).
    #[arg(long, required_unless_present = "leg")]
    pub to: Option<String>,
    /// The party id type of both parties (without --leg).
    #[arg(
        long,
        default_value = "urn:oasis:names:tc:ebcore:partyid-type:unregistered"
    )]
    pub party_type: String,
    /// eb:Service.
    #[arg(long, required_unless_present = "leg")]
    pub service: Option<String>,
    /// eb:Action.
    #[arg(long, required_unless_present = "leg")]
    pub action: Option<String>,
    /// A message property NAME=VALUE (eb:MessageProperties). Repeatable; a leg's
    /// required properties must be given.
    #[arg(long = "property", value_name = "NAME=VALUE")]
    pub properties: Vec<String>,
    /// Our signing key: a PEM file, or an RFC 7512 URI of a key in an HSM,
    /// `pkcs11:token=LABEL;object=LABEL?pin-source=file:PIN-FILE`, with the module in
    /// VARTI_PKCS11_MODULE (the key never leaves the token; see `varti keys list`).
    #[arg(long)]
    pub key: PathBuf,
    /// Our signing certificate (PEM; with --leg, default the sender's signing_cert).
    #[arg(long, required_unless_present = "leg")]
    pub cert: Option<PathBuf>,
    /// Encrypt the payloads for the holder of this certificate (PEM; with --leg, a leg
    /// that encrypts uses the receiver's encryption_cert by default).
    #[arg(long)]
    pub encrypt_to: Option<PathBuf>,
    /// Gzip-compress the payloads (with --leg: also when the leg compresses).
    #[arg(long)]
    pub compress: bool,
    /// as4-1.15 (RSA), as4-2.0-eddsa (Ed25519 / X25519), as4-2.0-ecdsa (P-256); default
    /// the leg's, else as4-1.15.
    #[arg(long)]
    pub profile: Option<String>,
    /// How the signature (and encryption) reference our certificate: bst, ski,
    /// issuer-serial; default the leg's, else bst.
    #[arg(long)]
    pub token: Option<String>,
    /// The dump file to write.
    #[arg(long)]
    pub out: PathBuf,
    /// Payload files, one MIME part each.
    pub payloads: Vec<PathBuf>,
    /// Print one JSON document instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `message inspect`.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// The message dump to read.
    pub file: PathBuf,
    /// Print one JSON document instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Runs a `message` command.
pub fn run(cmd: MessageCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        MessageCommand::Inspect(args) => inspect(args),
        MessageCommand::Open(args) => open(*args),
        MessageCommand::Seal(args) => seal(*args),
    }
}

fn inspect(args: InspectArgs) -> anyhow::Result<ExitCode> {
    if !args.file.is_file() {
        eprintln!(
            "error: {} is not a readable file; give the path of a message dump",
            args.file.display()
        );
        return Ok(exit_cannot_run());
    }
    let dump = match read_dump_file(&args.file, &MimeLimits::default()) {
        Ok(d) => d,
        Err(e) => return Ok(report_malformed(&args, &e.to_ebms())),
    };
    let root = &dump.package.root().content;
    let envelope = match parse_envelope(root) {
        Ok(env) => env,
        Err(e) => return Ok(report_malformed(&args, &e)),
    };
    let security = match summarize(root) {
        Ok(s) => s,
        Err(e) => return Ok(report_malformed(&args, &e)),
    };
    let report = inspect_report(&dump, &envelope, &security)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_text(&report);
    }
    Ok(ExitCode::SUCCESS)
}

fn report_malformed(args: &InspectArgs, err: &EbmsError) -> ExitCode {
    if args.json {
        let v = json!({
            "file": args.file.display().to_string(),
            "error": { "code": err.code.code(), "short": err.code.short_description(), "detail": err.detail },
        });
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    } else {
        eprintln!(
            "{}: refused: {} ({}): {}",
            args.file.display(),
            err.code.code(),
            err.code.short_description(),
            err.detail
        );
    }
    exit_problems()
}

/// Builds the report as JSON; the text output is rendered from the same value so the
/// two can never disagree.
fn inspect_report(
    dump: &MessageDump,
    env: &Envelope,
    security: &SecuritySummary,
) -> anyhow::Result<Value> {
    let root = dump.package.root();
    let mut parts = vec![json!({
        "role": "root",
        "content_id": root.content_id,
        "content_type": root.content_type,
        "size": root.content.len(),
        "sha256": hex(&openssl::sha::sha256(&root.content)),
    })];
    for a in dump.package.attachments() {
        parts.push(json!({
            "role": "attachment",
            "content_id": a.content_id(),
            "content_type": a.content_type(),
            "transfer_encoding": a.transfer_encoding().as_str(),
            "size": a.len(),
            "sha256": a.sha256_hex().context("cannot read back a spilled attachment")?,
        }));
    }
    Ok(json!({
        "start_line": dump.start_line,
        "content_type": dump.package.content_type().to_string(),
        "soap_version": match env.soap_version {
            SoapVersion::Soap11 => "SOAP 1.1",
            SoapVersion::Soap12 => "SOAP 1.2",
        },
        "header": messaging_json(&env.messaging),
        "parts": parts,
        "security": serde_json::to_value(security).unwrap_or(Value::Null),
    }))
}

fn messaging_json(m: &Messaging) -> Value {
    let props = |ps: &[Property]| -> Value {
        ps.iter()
            .map(|p| json!({"name": p.name, "type": p.type_, "value": p.value}))
            .collect()
    };
    let party = |p: &Party| -> Value {
        json!({
            "ids": p.party_ids.iter().map(|i| json!({"id": i.value, "type": i.type_})).collect::<Vec<_>>(),
            "role": p.role,
        })
    };
    let user = m.user_message.as_ref().map(|u: &UserMessage| {
        let c = &u.collaboration_info;
        json!({
            "message_id": u.message_info.message_id,
            "timestamp": u.message_info.timestamp.as_str(),
            "ref_to_message_id": u.message_info.ref_to_message_id,
            "mpc": u.effective_mpc(),
            "from": party(&u.party_info.from),
            "to": party(&u.party_info.to),
            "agreement": c.agreement_ref.as_ref().map(|a| json!({"value": a.value, "type": a.type_, "pmode": a.pmode})),
            "service": {"value": c.service.value, "type": c.service.type_},
            "action": c.action,
            "conversation_id": c.conversation_id,
            "properties": props(&u.properties),
            "parts": u.parts.iter().map(|p| json!({"href": p.href, "properties": props(&p.properties)})).collect::<Vec<_>>(),
        })
    });
    let signals: Vec<Value> = m
        .signals
        .iter()
        .map(|s| {
            let (kind, detail) = match &s.kind {
                SignalKind::Receipt(r) => (
                    "receipt",
                    json!({
                        "non_repudiation": r.non_repudiation.as_ref().map(|parts| parts.iter().filter_map(|p| p.reference.as_ref()).map(|r| json!({"uri": r.uri, "digest_method": r.digest_method, "digest": r.digest_value})).collect::<Vec<_>>()),
                    }),
                ),
                SignalKind::Errors(errs) => (
                    "error",
                    errs.iter()
                        .map(|e| json!({"code": e.error_code, "severity": e.severity, "category": e.category, "short_description": e.short_description, "description": e.description.as_ref().map(|d| d.text.clone()), "ref_to_message_in_error": e.ref_to_message_in_error}))
                        .collect(),
                ),
                SignalKind::PullRequest(p) => ("pull_request", json!({"mpc": p.mpc})),
            };
            json!({
                "kind": kind,
                "message_id": s.message_info.message_id,
                "timestamp": s.message_info.timestamp.as_str(),
                "ref_to_message_id": s.message_info.ref_to_message_id,
                "detail": detail,
            })
        })
        .collect();
    json!({ "messaging_id": m.id, "user_message": user, "signals": signals })
}

fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".to_string(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn print_text(r: &Value) {
    println!(
        "{} message, {}",
        s(&r["soap_version"]),
        s(&r["content_type"])
    );
    let h = &r["header"];
    if let Some(u) = h["user_message"].as_object() {
        println!("UserMessage {}", s(&u["message_id"]));
        println!("  timestamp      {}", s(&u["timestamp"]));
        if !u["ref_to_message_id"].is_null() {
            println!("  ref to         {}", s(&u["ref_to_message_id"]));
        }
        for side in ["from", "to"] {
            let ids: Vec<String> = u[side]["ids"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|i| match i["type"].as_str() {
                    Some(t) => format!("{} ({t})", s(&i["id"])),
                    None => s(&i["id"]),
                })
                .collect();
            println!("  {side:<14} {} as {}", ids.join(", "), s(&u[side]["role"]));
        }
        if let Some(a) = u["agreement"].as_object() {
            println!("  agreement      {} type={}", s(&a["value"]), s(&a["type"]));
        }
        println!(
            "  service        {} type={}",
            s(&u["service"]["value"]),
            s(&u["service"]["type"])
        );
        println!("  action         {}", s(&u["action"]));
        println!("  conversation   {}", s(&u["conversation_id"]));
        println!("  mpc            {}", s(&u["mpc"]));
        for p in u["properties"].as_array().into_iter().flatten() {
            println!("  property       {} = {}", s(&p["name"]), s(&p["value"]));
        }
        for p in u["parts"].as_array().into_iter().flatten() {
            let props: Vec<String> = p["properties"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|q| format!("{}={}", s(&q["name"]), s(&q["value"])))
                .collect();
            println!("  part           {} {}", s(&p["href"]), props.join(" "));
        }
    }
    for sig in h["signals"].as_array().into_iter().flatten() {
        println!("Signal {} {}", s(&sig["kind"]), s(&sig["message_id"]));
        println!("  timestamp      {}", s(&sig["timestamp"]));
        println!("  ref to         {}", s(&sig["ref_to_message_id"]));
        match sig["kind"].as_str() {
            Some("receipt") => {
                for n in sig["detail"]["non_repudiation"]
                    .as_array()
                    .into_iter()
                    .flatten()
                {
                    println!(
                        "  NRR reference  {} digest {}",
                        s(&n["uri"]),
                        s(&n["digest"])
                    );
                }
            }
            Some("error") => {
                for e in sig["detail"].as_array().into_iter().flatten() {
                    println!(
                        "  error          {} {} ({}): {}",
                        s(&e["code"]),
                        s(&e["short_description"]),
                        s(&e["severity"]),
                        s(&e["description"])
                    );
                }
            }
            _ => println!("  mpc            {}", s(&sig["detail"]["mpc"])),
        }
    }
    println!("MIME parts");
    for p in r["parts"].as_array().into_iter().flatten() {
        println!(
            "  {:<10} {} {} {} bytes sha256 {}",
            s(&p["role"]),
            s(&p["content_id"]),
            s(&p["content_type"]),
            s(&p["size"]),
            s(&p["sha256"])
        );
    }
    let sec = &r["security"];
    if sec["present"] != Value::Bool(true) {
        println!("Security: no wsse:Security header (unsigned, unencrypted)");
        return;
    }
    let empty = |k: &str| sec[k].as_array().is_none_or(|a| a.is_empty());
    if [
        "signatures",
        "certificates",
        "encrypted_keys",
        "encrypted_data",
    ]
    .iter()
    .all(|k| empty(k))
    {
        println!("Security: empty wsse:Security header (nothing signed or encrypted)");
        return;
    }
    println!("Security");
    for sig in sec["signatures"].as_array().into_iter().flatten() {
        println!("  signature      {}", s(&sig["signature_method"]));
        println!("  c14n           {}", s(&sig["canonicalization"]));
        println!("  key reference  {}", s(&sig["key_reference"]));
        for rf in sig["references"].as_array().into_iter().flatten() {
            println!("  signed         {} → {}", s(&rf["uri"]), s(&rf["target"]));
        }
    }
    for c in sec["certificates"].as_array().into_iter().flatten() {
        println!("  certificate    {}", s(&c["subject"]));
        println!("    issuer       {}", s(&c["issuer"]));
        println!(
            "    valid        {} to {}",
            s(&c["not_before"]),
            s(&c["not_after"])
        );
    }
    for k in sec["encrypted_keys"].as_array().into_iter().flatten() {
        println!("  key transport  {}", s(k));
    }
    for e in sec["encrypted_data"].as_array().into_iter().flatten() {
        println!(
            "  encrypted      {} ({}, originally {})",
            s(&e["cipher_reference"]),
            s(&e["algorithm"]),
            s(&e["mime_type"])
        );
    }
}

// ---------------------------------------------------------------------------------------
// message open
// ---------------------------------------------------------------------------------------

fn cannot_run(msg: impl std::fmt::Display) -> anyhow::Result<ExitCode> {
    eprintln!("error: {msg}");
    Ok(exit_cannot_run())
}

fn read_certs(path: &std::path::Path) -> Result<Vec<X509>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let certs = X509::stack_from_pem(&pem)
        .map_err(|e| format!("{} holds no PEM certificate: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no PEM certificate", path.display()));
    }
    Ok(certs)
}

fn read_key(
    path: &std::path::Path,
    cert: Option<&openssl::x509::X509>,
) -> Result<varti_as4::security::private_key::PrivateKey, String> {
    varti_as4::security::private_key::load(path, None, cert.map(|c| &**c)).map_err(|e| {
        // A pkcs11: URI may carry the PIN: it is shown without.
        let text = path.to_string_lossy();
        let shown = match varti_as4::security::pkcs11::Pkcs11Uri::parse(&text) {
            Ok(uri) => uri.redacted(),
            Err(_) if varti_as4::security::pkcs11::is_pkcs11_uri(&text) => "the pkcs11: URI".into(),
            Err(_) => path.display().to_string(),
        };
        format!(
            "{shown} is not a usable private key (an unencrypted PEM file or a pkcs11: URI): {e}"
        )
    })
}

fn profile_named(name: &str) -> Result<&'static Profile, String> {
    leg::profile_named(name).ok_or_else(|| {
        format!("unknown profile '{name}'; use as4-1.15, as4-2.0-eddsa or as4-2.0-ecdsa")
    })
}

/// The profile a message's signature method belongs to (1.15 when unsigned or unknown:
/// an unknown method is then refused by the pipeline with EBMS:0103).
fn profile_of(security: &SecuritySummary) -> &'static Profile {
    let method = security
        .signatures
        .first()
        .map(|s| s.signature_method.as_str())
        .unwrap_or("");
    leg::profile_signing_with(method).unwrap_or(&AS4_1_15)
}

/// The certificates in the message's BinarySecurityTokens.
fn embedded_certificates(root: &[u8]) -> Vec<X509> {
    use base64::Engine as _;
    let Ok(doc) = XmlDocument::parse(root) else {
        return Vec::new();
    };
    doc.elements()
        .filter(|e| e.local_name() == "BinarySecurityToken")
        .filter_map(|e| {
            let text: String = e.text().chars().filter(|c| !c.is_whitespace()).collect();
            let der = base64::engine::general_purpose::STANDARD
                .decode(text)
                .ok()?;
            X509::from_der(&der).ok()
        })
        .collect()
}

fn open_refused(args: &OpenArgs, err: &EbmsError) -> ExitCode {
    if args.json {
        let v = json!({
            "file": args.file.display().to_string(),
            "verified": false,
            "error": { "code": err.code.code(), "short": err.code.short_description(), "detail": err.detail },
        });
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    } else {
        println!(
            "REFUSED {}: {} ({}): {}",
            args.file.display(),
            err.code.code(),
            err.code.short_description(),
            err.detail
        );
    }
    exit_problems()
}

fn dn(name: &openssl::x509::X509NameRef) -> String {
    token::distinguished_name_string(name)
}

/// A file name for a delivered payload: the Content-ID with anything unusual replaced.
fn payload_file_name(index: usize, content_id: &str) -> String {
    let clean: String = content_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '@') {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{index}-{}", clean.trim_start_matches('.'))
}

fn open(args: OpenArgs) -> anyhow::Result<ExitCode> {
    if !args.file.is_file() {
        return cannot_run(format!(
            "{} is not a readable file; give the path of a message dump",
            args.file.display()
        ));
    }
    let at = match &args.at {
        None => OffsetDateTime::now_utc(),
        Some(t) => match OffsetDateTime::parse(t, &Rfc3339) {
            Ok(t) => t,
            Err(e) => {
                return cannot_run(format!(
                    "--at {t:?} is not an RFC 3339 time (e.g. 2022-03-08T00:00:00Z): {e}"
                ))
            }
        },
    };
    let mut anchors = Vec::new();
    for t in &args.trust {
        match read_certs(t) {
            Ok(c) => anchors.extend(c),
            Err(e) => return cannot_run(e),
        }
    }
    if anchors.is_empty() && !args.trust_embedded && !args.allow_unsigned {
        return cannot_run(
            "give the partner's certificate (or its CA) with --trust PEER.pem, or --trust-embedded \
             to pin the certificate the message carries",
        );
    }
    let decryption = match (&args.key, &args.cert) {
        (Some(k), Some(c)) => {
            let cert = match read_certs(c) {
                Ok(mut c) => c.remove(0),
                Err(e) => return cannot_run(e),
            };
            let key = match read_key(k, Some(&cert)) {
                Ok(k) => k,
                Err(e) => return cannot_run(e),
            };
            Some((key, cert))
        }
        (None, None) => None,
        _ => return cannot_run("--key and --cert go together: give both or neither"),
    };
    let dump = match read_dump_file(&args.file, &MimeLimits::default()) {
        Ok(d) => d,
        Err(e) => return Ok(open_refused(&args, &e.to_ebms())),
    };
    let root = &dump.package.root().content;
    let security = match summarize(root) {
        Ok(s) => s,
        Err(e) => return Ok(open_refused(&args, &e)),
    };
    if !security.encrypted_data.is_empty() && decryption.is_none() {
        return cannot_run(format!(
            "{} is encrypted ({} part(s)); give our decryption key and certificate with --key KEY.pem \
             --cert CERT.pem",
            args.file.display(),
            security.encrypted_data.len()
        ));
    }
    let profile = match &args.profile {
        Some(p) => match profile_named(p) {
            Ok(p) => p,
            Err(e) => return cannot_run(e),
        },
        None => profile_of(&security),
    };
    let mut policy = ReceivePolicy::strict(profile);
    policy.require_signature = !args.allow_unsigned;
    policy.require_encryption = false;
    policy.decryption = decryption;
    if args.trust_embedded {
        anchors.extend(embedded_certificates(root));
    }
    policy.partner_certificates = anchors.clone();
    policy.trust_anchors = anchors;
    policy.at = at;
    let received = match receive(&dump.package, &policy) {
        Ok(r) => r,
        Err(e) => return Ok(open_refused(&args, &e)),
    };

    // A receipt: check its NRR against the request.
    let mut receipt_check = Value::Null;
    if let Some(req) = &args.for_request {
        let request = match read_dump_file(req, &MimeLimits::default()) {
            Ok(d) => d,
            Err(e) => return cannot_run(format!("cannot read the request {}: {e}", req.display())),
        };
        let result = check_receipt_for(&request.package.root().content, &received);
        match result {
            Ok(n) => {
                receipt_check =
                    json!({"request": req.display().to_string(), "nrr_references_matched": n})
            }
            Err(e) => return Ok(open_refused(&args, &e)),
        }
    }

    // Deliver.
    let mut payloads = Vec::new();
    if let Some(dir) = &args.out {
        if let Err(e) = std::fs::create_dir_all(dir) {
            return cannot_run(format!("cannot create {}: {e}", dir.display()));
        }
    }
    for (i, p) in received.payloads.into_iter().enumerate() {
        let mut v = json!({
            "href": p.href,
            "content_id": p.content_id,
            "mime_type": p.mime_type,
            "compressed": p.was_compressed,
            "size": p.len,
            "sha256": hex(&p.sha256),
        });
        if let Some(dir) = &args.out {
            let path = dir.join(payload_file_name(i, &p.content_id));
            if let Err(e) = p.persist(&path) {
                return cannot_run(format!("cannot write {}: {e}", path.display()));
            }
            v["file"] = json!(path.display().to_string());
        }
        payloads.push(v);
    }
    let signature = received.signature.as_ref().map(|s| {
        json!({
            "signer": dn(s.signer.subject_name()),
            "issuer": dn(s.signer.issuer_name()),
            "not_before": s.signer.not_before().to_string(),
            "not_after": s.signer.not_after().to_string(),
            "valid_at": at.format(&Rfc3339).unwrap_or_default(),
            "token_reference": format!("{:?}", s.token_reference),
            "algorithm": s.signature_algorithm,
            "references": s.references.iter().map(|r| json!({
                "uri": r.uri,
                "target": match &r.part {
                    SignedPart::Messaging => "eb:Messaging".to_string(),
                    SignedPart::Body => "SOAP Body".to_string(),
                    SignedPart::Attachment { uri } => format!("attachment {uri}"),
                    SignedPart::Element { path } => path.clone(),
                },
                "digest_method": r.digest_method,
                "digest": hex(&r.digest),
            })).collect::<Vec<_>>(),
        })
    });
    let encryption = received.encryption.as_ref().map(|e| {
        json!({
            "key_transport": e.key_protection.describe(),
            "content": e.content_algorithm,
            "parts": e.parts,
        })
    });
    let report = json!({
        "file": args.file.display().to_string(),
        "verified": true,
        "profile": profile.name,
        "header": messaging_json(&received.envelope.messaging),
        "signature": signature,
        "encryption": encryption,
        "payloads": payloads,
        "receipt_check": receipt_check,
    });
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_open(&report);
    }
    Ok(ExitCode::SUCCESS)
}

/// Checks a receipt against the request it answers: RefToMessageId and NRR references.
/// Returns the number of references matched.
fn check_receipt_for(request_root: &[u8], receipt: &ReceivedMessage) -> Result<usize, EbmsError> {
    let request_env = parse_envelope(request_root)?;
    let request_id = request_env
        .messaging
        .user_message
        .as_ref()
        .map(|u| u.message_info.message_id.clone())
        .ok_or_else(|| {
            EbmsError::new(
                ErrorCode::InvalidReceipt,
                "the --for file holds no user message",
            )
        })?;
    let sent = signed_references(&XmlDocument::parse(request_root)?)?;
    check_receipt(receipt, &request_id, &sent)?;
    Ok(sent.len())
}

fn print_open(r: &Value) {
    println!("VERIFIED {} ({})", s(&r["file"]), s(&r["profile"]));
    let h = &r["header"];
    if let Some(u) = h["user_message"].as_object() {
        println!("UserMessage {}", s(&u["message_id"]));
        println!(
            "  from {} to {}, service {} action {}",
            s(&u["from"]["ids"][0]["id"]),
            s(&u["to"]["ids"][0]["id"]),
            s(&u["service"]["value"]),
            s(&u["action"])
        );
    }
    for sig in h["signals"].as_array().into_iter().flatten() {
        println!(
            "Signal {} {} (ref to {})",
            s(&sig["kind"]),
            s(&sig["message_id"]),
            s(&sig["ref_to_message_id"])
        );
    }
    match r["signature"].as_object() {
        None => println!("Signature: none (accepted with --allow-unsigned)"),
        Some(sig) => {
            println!("Signature {}", s(&sig["algorithm"]));
            println!("  signer         {}", s(&sig["signer"]));
            println!("  issuer         {}", s(&sig["issuer"]));
            println!(
                "  valid          {} to {} (checked at {})",
                s(&sig["not_before"]),
                s(&sig["not_after"]),
                s(&sig["valid_at"])
            );
            println!("  referenced by  {}", s(&sig["token_reference"]));
            for rf in sig["references"].as_array().into_iter().flatten() {
                println!("  verified       {} → {}", s(&rf["uri"]), s(&rf["target"]));
            }
        }
    }
    if let Some(e) = r["encryption"].as_object() {
        println!(
            "Encryption {} with {}",
            s(&e["content"]),
            s(&e["key_transport"])
        );
    }
    if let Some(c) = r["receipt_check"].as_object() {
        println!(
            "Receipt NRR matches {} ({} references)",
            s(&c["request"]),
            s(&c["nrr_references_matched"])
        );
    }
    for p in r["payloads"].as_array().into_iter().flatten() {
        println!(
            "Payload {} {} {} bytes sha256 {}{}",
            s(&p["href"]),
            s(&p["mime_type"]),
            s(&p["size"]),
            s(&p["sha256"]),
            p["file"]
                .as_str()
                .map(|f| format!(" → {f}"))
                .unwrap_or_default()
        );
    }
}

// ---------------------------------------------------------------------------------------
// message seal
// ---------------------------------------------------------------------------------------

fn mime_type_of(path: &std::path::Path) -> &'static str {
    match path
        .extension()
        .and_then(|e| e.to_str())
        .map(|e| e.to_ascii_lowercase())
        .as_deref()
    {
        Some("xml") => "application/xml",
        Some("json") => "application/json",
        Some("txt") => "text/plain",
        Some("pdf") => "application/pdf",
        _ => "application/octet-stream",
    }
}

/// What `seal` builds, from the flags and, with --leg, the PMode leg.
struct SealPlan {
    profile: &'static Profile,
    token_reference: TokenReference,
    cert: PathBuf,
    encrypt_to: Option<PathBuf>,
    compress: bool,
    /// The user message without parts.
    user_message: UserMessage,
    /// (Content-ID, MIME type) of each payload file.
    parts: Vec<(String, String)>,
    /// The leg it follows, for the report.
    leg: Option<String>,
}

fn token_named(name: &str) -> Result<TokenReference, String> {
    match name {
        "bst" => Ok(TokenReference::BinarySecurityToken),
        "ski" => Ok(TokenReference::SubjectKeyIdentifier),
        "issuer-serial" => Ok(TokenReference::IssuerSerial),
        other => Err(format!(
            "unknown --token '{other}'; use bst, ski or issuer-serial"
        )),
    }
}

fn parse_properties(args: &SealArgs) -> Result<Vec<Property>, String> {
    args.properties
        .iter()
        .map(|p| match p.split_once('=') {
            Some((n, v)) if !n.trim().is_empty() => Ok(Property::new(n.trim(), v)),
            _ => Err(format!(
                "--property '{p}' is not NAME=VALUE (e.g. --property originalSender=urn:a)"
            )),
        })
        .collect()
}

/// The plan when no leg is named: everything from the flags (clap enforced the
/// required ones).
fn plan_from_flags(args: &SealArgs) -> Result<SealPlan, String> {
    let required = |v: &Option<String>, flag: &str| {
        v.clone()
            .ok_or_else(|| format!("--{flag} is needed without --leg"))
    };
    let party = |id: String, role: &str| Party {
        party_ids: vec![PartyId {
            value: id,
            type_: Some(args.party_type.clone()),
        }],
        role: role.to_string(),
    };
    let user_message = UserMessage {
        mpc: None,
        message_info: MessageInfo::new(format!("{}@varti", uuid::Uuid::new_v4())),
        party_info: PartyInfo {
            from: party(required(&args.from, "from")?, ROLE_INITIATOR),
            to: party(required(&args.to, "to")?, ROLE_RESPONDER),
        },
        collaboration_info: CollaborationInfo {
            agreement_ref: None,
            service: Service {
                value: required(&args.service, "service")?,
                type_: None,
            },
            action: required(&args.action, "action")?,
            conversation_id: uuid::Uuid::new_v4().to_string(),
        },
        properties: parse_properties(args)?,
        parts: Vec::new(),
    };
    Ok(SealPlan {
        profile: profile_named(args.profile.as_deref().unwrap_or("as4-1.15"))?,
        token_reference: token_named(args.token.as_deref().unwrap_or("bst"))?,
        cert: args.cert.clone().ok_or("--cert is needed without --leg")?,
        encrypt_to: args.encrypt_to.clone(),
        compress: args.compress,
        user_message,
        parts: args
            .payloads
            .iter()
            .enumerate()
            .map(|(i, p)| (generated_cid(i), mime_type_of(p).to_string()))
            .collect(),
        leg: None,
    })
}

fn generated_cid(i: usize) -> String {
    format!("part{i}-{}@varti", uuid::Uuid::new_v4().simple())
}

/// The plan for `--pmodes DIR --leg PROCESS/LEG`: the leg's values, flags overriding.
fn plan_from_leg(
    args: &SealArgs,
    dir: &std::path::Path,
    leg_name: &str,
) -> Result<SealPlan, String> {
    use varti_as4::pmode::model::{LegSide, Party as PmParty};
    let (set, diags) = varti_as4::pmode::load_dir(dir);
    let errors: Vec<String> = diags
        .iter()
        .filter(|d| d.is_error())
        .map(|d| format!("  {}: {}", d.location, d.message))
        .collect();
    if !errors.is_empty() {
        return Err(format!(
            "the PModes in {} have errors (see `varti pmode check {}`):\n{}",
            dir.display(),
            dir.display(),
            errors.join("\n")
        ));
    }
    let Some((process, name)) = leg_name.split_once('/') else {
        return Err(format!(
            "--leg '{leg_name}' must be PROCESS/LEG, e.g. --leg test/test"
        ));
    };
    let Some(leg) = set
        .legs
        .iter()
        .find(|l| l.process == process && l.name == name)
    else {
        let known: Vec<String> = set
            .legs
            .iter()
            .map(|l| format!("{}/{}", l.process, l.name))
            .collect();
        return Err(format!(
            "no leg '{leg_name}' in {}; the legs are: {}",
            dir.display(),
            known.join(", ")
        ));
    };
    if !leg.security.sign {
        return Err(format!(
            "{} does not sign its messages; `message seal` builds signed messages only",
            leg.label()
        ));
    }
    // A party of one side: the one named (by party name or id), else the first one that
    // is not `not`. Returns the party and the id to put on the wire.
    let pick =
        |side: &LegSide, which: &str, wanted: Option<&str>, not: Option<&str>| {
            let parties = side.parties.iter().filter_map(|n| set.party(n));
            let found: Option<(&PmParty, PartyId)> = match wanted {
                Some(w) => parties
                    .filter_map(|p| {
                        let id = p
                            .ids
                            .iter()
                            .find(|i| i.value == w)
                            .or_else(|| (p.name == w).then(|| p.ids.first()).flatten())?;
                        Some((p, id))
                    })
                    .map(|(p, id)| {
                        (
                            p,
                            PartyId {
                                value: id.value.clone(),
                                type_: id.id_type.clone(),
                            },
                        )
                    })
                    .next(),
                None => parties
                    .filter(|p| Some(p.name.as_str()) != not)
                    .find_map(|p| {
                        p.ids.first().map(|id| {
                            (
                                p,
                                PartyId {
                                    value: id.value.clone(),
                                    type_: id.id_type.clone(),
                                },
                            )
                        })
                    }),
            };
            found.ok_or_else(|| {
                format!(
                "{}: {} is not a party of its {which} side (parties: {}); name one with --{which}",
                leg.label(),
                wanted.map(|w| format!("'{w}'")).unwrap_or("no other party".into()),
                side.parties.join(", ")
            )
            })
        };
    let (sender, from_id) = pick(&leg.from, "from", args.from.as_deref(), None)?;
    let (receiver, to_id) = pick(&leg.to, "to", args.to.as_deref(), Some(&sender.name))?;

    let properties = parse_properties(args)?;
    let missing: Vec<&str> = leg
        .properties
        .iter()
        .filter(|r| r.required && !properties.iter().any(|p| p.name == r.name))
        .map(|r| r.name.as_str())
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "{} requires the message properties {}; give each as --property NAME=VALUE",
            leg.label(),
            missing.join(", ")
        ));
    }
    let cert = match (&args.cert, &sender.signing_cert) {
        (Some(c), _) => c.clone(),
        (None, Some(c)) => c.clone(),
        (None, None) => {
            return Err(format!(
                "party '{}' has no signing_cert in the PModes; give --cert",
                sender.name
            ))
        }
    };
    let encrypt_to = match (&args.encrypt_to, leg.security.encrypt) {
        (Some(c), _) => Some(c.clone()),
        (None, false) => None,
        (None, true) => Some(receiver.encryption_cert.clone().ok_or_else(|| {
            format!(
                "{} encrypts, but party '{}' has no encryption_cert in the PModes; give --encrypt-to",
                leg.label(),
                receiver.name
            )
        })?),
    };
    let profile = match &args.profile {
        Some(p) => profile_named(p)?,
        None => leg::profile_of(leg.security.profile),
    };
    let token_reference = match &args.token {
        Some(t) => token_named(t)?,
        None => leg::token_reference_of(leg.security.token_reference),
    };
    // Parts: a fixed Content-ID and the media type from the leg's payload profile when
    // it has them, else a generated id and the type by file extension.
    let parts = args
        .payloads
        .iter()
        .enumerate()
        .map(|(i, path)| {
            let rule = leg.payload.as_ref().and_then(|pp| pp.parts.get(i));
            let cid = rule
                .and_then(|r| r.cid.as_deref())
                .map(|c| c.trim_start_matches("cid:").to_string())
                .unwrap_or_else(|| generated_cid(i));
            let by_ext = mime_type_of(path);
            let mime = match rule {
                Some(r)
                    if !r.mime_types.is_empty() && !r.mime_types.iter().any(|m| m == by_ext) =>
                {
                    r.mime_types[0].clone()
                }
                _ => by_ext.to_string(),
            };
            (cid, mime)
        })
        .collect();
    let user_message = leg::user_message(
        leg,
        MessageFields {
            info: MessageInfo::new(format!("{}@varti", uuid::Uuid::new_v4())),
            from: from_id,
            to: to_id,
            service: args.service.clone(),
            action: args.action.clone(),
            conversation_id: uuid::Uuid::new_v4().to_string(),
            properties,
        },
    );
    Ok(SealPlan {
        profile,
        token_reference,
        cert,
        encrypt_to,
        compress: args.compress || leg.compression.compress,
        user_message,
        parts,
        leg: Some(leg.label()),
    })
}

fn seal(args: SealArgs) -> anyhow::Result<ExitCode> {
    let plan = match (&args.pmodes, &args.leg) {
        (Some(dir), Some(leg)) => plan_from_leg(&args, dir, leg),
        _ => plan_from_flags(&args),
    };
    let plan = match plan {
        Ok(p) => p,
        Err(e) => return cannot_run(e),
    };
    let profile = plan.profile;
    let token_reference = plan.token_reference;
    let cert = match read_certs(&plan.cert) {
        Ok(mut c) => c.remove(0),
        Err(e) => return cannot_run(e),
    };
    let key = match read_key(&args.key, Some(&cert)) {
        Ok(k) => k,
        Err(e) => return cannot_run(e),
    };
    let receiver = match &plan.encrypt_to {
        None => None,
        Some(p) => match read_certs(p) {
            Ok(mut c) => Some(c.remove(0)),
            Err(e) => return cannot_run(e),
        },
    };
    let mut files = Vec::new();
    for p in &args.payloads {
        match std::fs::File::open(p) {
            Ok(f) => files.push(std::io::BufReader::new(f)),
            Err(e) => return cannot_run(format!("cannot read payload {}: {e}", p.display())),
        }
    }
    let um = plan.user_message;
    let message_id = um.message_info.message_id.clone();
    let payloads: Vec<OutgoingPayload<'_>> = plan
        .parts
        .iter()
        .zip(files.iter_mut())
        .map(|((cid, mime), f)| OutgoingPayload {
            content_id: cid.clone(),
            mime_type: mime.clone(),
            properties: Vec::new(),
            content: f as &mut dyn std::io::Read,
            content_is_gzip: false,
            reopen: None,
            sha256: None,
        })
        .collect();
    let policy = SendPolicy::new(
        profile,
        token_reference,
        &key,
        &cert,
        receiver.as_deref(),
        plan.compress,
    );
    // Write next to the target and rename, so a failure leaves no half-written dump.
    let dir = args
        .out
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let mut body = match tempfile::NamedTempFile::new_in(dir) {
        Ok(f) => f,
        Err(e) => return cannot_run(format!("cannot write in {}: {e}", dir.display())),
    };
    let mut mime = match tempfile::tempfile() {
        Ok(f) => f,
        Err(e) => return cannot_run(format!("cannot create a temporary file: {e}")),
    };
    let sent = {
        let mut w = std::io::BufWriter::new(&mut mime);
        let sent = match send(&um, payloads, &policy, &mut w) {
            Ok(s) => s,
            Err(e) => return cannot_run(format!("cannot seal: {} ({})", e.detail, e.code.code())),
        };
        std::io::Write::flush(&mut w)?;
        sent
    };
    use std::io::{Seek, Write};
    write!(body, "Content-Type: {}\r\n\r\n", sent.content_type)?;
    mime.rewind()?;
    std::io::copy(&mut mime, &mut body)?;
    body.flush()?;
    if let Err(e) = body.persist(&args.out) {
        return cannot_run(format!("cannot write {}: {}", args.out.display(), e.error));
    }
    let report = json!({
        "file": args.out.display().to_string(),
        "message_id": message_id,
        "profile": profile.name,
        "leg": plan.leg,
        "encrypted": receiver.is_some(),
        "compressed": plan.compress,
        "signed_references": sent.references.iter().map(|r| json!({"uri": r.uri, "digest": hex(&r.digest)})).collect::<Vec<_>>(),
    });
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "sealed {} into {} ({}, {} payload(s){}{})",
            message_id,
            args.out.display(),
            profile.name,
            args.payloads.len(),
            if plan.compress { ", compressed" } else { "" },
            if receiver.is_some() {
                ", encrypted"
            } else {
                ""
            }
        );
        if let Some(leg) = &plan.leg {
            println!("  as {leg}");
        }
        for r in &sent.references {
            println!("  signed {} sha256 {}", r.uri, hex(&r.digest));
        }
    }
    Ok(ExitCode::SUCCESS)
}
