//! `varti message …`: look inside AS4 messages dumped to files.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use serde_json::{json, Value};
use varti_as4::message::dump::{read_dump_file, MessageDump};
use varti_as4::message::mime::{hex, MimeLimits};
use varti_as4::message::model::{Messaging, Party, Property, SignalKind, UserMessage};
use varti_as4::message::soap::{parse_envelope, Envelope, SoapVersion};
use varti_as4::security::summary::{summarize, SecuritySummary};
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
    let report = inspect_report(&dump, &envelope, &security);
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
fn inspect_report(dump: &MessageDump, env: &Envelope, security: &SecuritySummary) -> Value {
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
            "sha256": a.sha256_hex(),
        }));
    }
    json!({
        "start_line": dump.start_line,
        "content_type": dump.package.content_type().to_string(),
        "soap_version": match env.soap_version {
            SoapVersion::Soap11 => "SOAP 1.1",
            SoapVersion::Soap12 => "SOAP 1.2",
        },
        "header": messaging_json(&env.messaging),
        "parts": parts,
        "security": serde_json::to_value(security).unwrap_or(Value::Null),
    })
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
