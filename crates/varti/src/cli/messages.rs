//! `varti messages …` and `varti status`: look at and act on messages through the backend
//! API of a running `varti serve`.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use serde_json::Value;

use super::api::{segment, Api, ApiArgs, Failure};

/// The `messages` command group.
#[derive(Debug, Subcommand)]
pub enum MessagesCommand {
    /// List messages, newest first.
    ///
    /// A backend's token lists its own messages; an admin token lists all.
    ///
    /// Examples:
    ///   varti messages list --direction inbound --state received
    ///   varti messages list --state failed,waiting_for_retry --limit 20
    ///   varti messages list --json | jq -r '.messages[].message_id'
    #[command(verbatim_doc_comment)]
    List(ListArgs),
    /// Show one message: metadata, payloads, state, attempts, last error, history.
    ///
    /// Exit status 1 when there is no such message (for this token).
    ///
    /// Example: varti messages show 8d1c…@varti
    #[command(verbatim_doc_comment)]
    Show(IdArgs),
    /// Send a failed outbound message again (its attempts start over).
    ///
    /// Only `failed` messages can be resent; one still waiting for a retry retries by
    /// itself. Exit status 1 when the message cannot be resent.
    ///
    /// Example: varti messages resend 8d1c…@varti
    #[command(verbatim_doc_comment)]
    Resend(IdArgs),
    /// Apply the retention now: purge payloads and metadata past retention.payload_days and
    /// retention.metadata_days (needs an admin token; the server also does this hourly).
    ///
    /// Example: VARTI_TOKEN=$ADMIN_TOKEN varti messages purge
    #[command(verbatim_doc_comment)]
    Purge(PurgeArgs),
}

/// Arguments of `messages list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only `inbound` or `outbound` messages.
    #[arg(long, value_parser = ["inbound", "outbound"])]
    direction: Option<String>,
    /// Only these states, comma-separated: submitted, sending, waiting_for_retry,
    /// acknowledged, failed, received, delivered, downloaded, deleted.
    #[arg(long, value_name = "STATES")]
    state: Option<String>,
    /// At most this many (1 to 1000).
    #[arg(long, default_value_t = 50)]
    limit: u32,
    /// Continue after this cursor (printed at the end of a full page).
    #[arg(long, value_name = "CURSOR")]
    after: Option<String>,
    #[command(flatten)]
    api: ApiArgs,
}

/// A message id argument.
#[derive(Debug, Args)]
pub struct IdArgs {
    /// The MessageId.
    id: String,
    #[command(flatten)]
    api: ApiArgs,
}

/// Arguments of `messages purge`.
#[derive(Debug, Args)]
pub struct PurgeArgs {
    #[command(flatten)]
    api: ApiArgs,
}

/// Arguments of `varti status`.
#[derive(Debug, Args)]
#[command(after_long_help = "\
Examples:
  VARTI_TOKEN=… varti status
  varti status --api http://127.0.0.1:8480 --json

Exit status: 0 the API answered, 2 it cannot be reached or refused the token.")]
pub struct StatusArgs {
    #[command(flatten)]
    api: ApiArgs,
}

/// Runs a `messages` command.
pub fn run(cmd: MessagesCommand) -> anyhow::Result<ExitCode> {
    let (json, result) = match cmd {
        MessagesCommand::List(a) => (a.api.json, list(&a)),
        MessagesCommand::Show(a) => (a.api.json, show(&a)),
        MessagesCommand::Resend(a) => (a.api.json, resend(&a)),
        MessagesCommand::Purge(a) => (a.api.json, purge(&a)),
    };
    Ok(result.unwrap_or_else(|f| f.report(json)))
}

/// Runs `varti status`.
pub fn run_status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let json = args.api.json;
    Ok(status(&args).unwrap_or_else(|f| f.report(json)))
}

fn list(a: &ListArgs) -> Result<ExitCode, Failure> {
    let api = Api::new(&a.api)?;
    let mut query = format!("limit={}", a.limit);
    if let Some(d) = &a.direction {
        query.push_str(&format!("&direction={d}"));
    }
    if let Some(s) = &a.state {
        query.push_str(&format!("&state={}", segment(s)));
    }
    if let Some(c) = &a.after {
        query.push_str(&format!("&after={}", segment(c)));
    }
    let answer = api.get(&format!("/messages?{query}"))?;
    if a.api.json {
        println!("{}", pretty(&answer));
        return Ok(ExitCode::SUCCESS);
    }
    let messages = answer["messages"].as_array().cloned().unwrap_or_default();
    if messages.is_empty() {
        println!("no messages");
    } else {
        println!(
            "{:<20}  {:<3}  {:<17}  {:<12}  {:<40}  SERVICE / ACTION",
            "CREATED", "DIR", "STATE", "PARTNER", "MESSAGE ID"
        );
    }
    for m in &messages {
        let inbound = m["direction"] == "inbound";
        let partner = if inbound {
            &m["from_party"]
        } else {
            &m["to_party"]
        };
        println!(
            "{:<20}  {:<3}  {:<17}  {:<12}  {:<40}  {} / {}",
            s(&m["created_at"]).chars().take(19).collect::<String>(),
            if inbound { "in" } else { "out" },
            s(&m["state"]),
            s(partner),
            s(&m["message_id"]),
            s(&m["service"]),
            s(&m["action"]),
        );
    }
    if let Some(next) = answer["next"].as_str() {
        println!("more: varti messages list --after {next}");
    }
    Ok(ExitCode::SUCCESS)
}

fn show(a: &IdArgs) -> Result<ExitCode, Failure> {
    let api = Api::new(&a.api)?;
    let m = api.get(&format!("/messages/{}", segment(&a.id)))?;
    if a.api.json {
        println!("{}", pretty(&m));
        return Ok(ExitCode::SUCCESS);
    }
    let field = |label: &str, v: &Value| {
        if !v.is_null() {
            println!("{label:<16} {}", s(v));
        }
    };
    field("message id", &m["message_id"]);
    field("direction", &m["direction"]);
    field("state", &m["state"]);
    field("owner", &m["owner"]);
    field("from", &m["from_party"]);
    field("to", &m["to_party"]);
    field("service", &m["service"]);
    field("action", &m["action"]);
    field("conversation", &m["conversation_id"]);
    field("ref to", &m["ref_to_message_id"]);
    field("leg", &m["leg"]);
    field("attempts", &m["attempts"]);
    field("next attempt", &m["next_attempt_at"]);
    field("last error", &m["last_error"]);
    field("receipt", &m["receipt"]);
    field("created", &m["created_at"]);
    field("settled", &m["settled_at"]);
    field("payloads purged", &m["payloads_purged_at"]);
    for p in m["properties"].as_array().into_iter().flatten() {
        match p["type"].as_str() {
            Some(t) => println!(
                "property         {} [{t}] = {}",
                s(&p["name"]),
                s(&p["value"])
            ),
            None => println!("property         {} = {}", s(&p["name"]), s(&p["value"])),
        }
    }
    for p in m["payloads"].as_array().into_iter().flatten() {
        println!(
            "payload {:<8} {} ({}, {} bytes) {}",
            s(&p["index"]),
            s(&p["content_id"]),
            s(&p["mime_type"]),
            s(&p["size"]),
            s(&p["href"])
        );
    }
    let history = m["history"].as_array().cloned().unwrap_or_default();
    if !history.is_empty() {
        println!("history:");
    }
    for h in &history {
        let note = h["note"]
            .as_str()
            .map(|n| format!(" ({n})"))
            .unwrap_or_default();
        println!(
            "  {}  {} -> {} by {}{note}",
            s(&h["at"]),
            s(&h["from"]),
            s(&h["to"]),
            s(&h["event"])
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn resend(a: &IdArgs) -> Result<ExitCode, Failure> {
    let api = Api::new(&a.api)?;
    let answer = api.post(&format!("/messages/{}/resend", segment(&a.id)))?;
    if a.api.json {
        println!("{answer}");
    } else {
        println!(
            "{} is {} again; the sender picks it up now",
            a.id,
            s(&answer["state"])
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn purge(a: &PurgeArgs) -> Result<ExitCode, Failure> {
    let api = Api::new(&a.api)?;
    let answer = api.post("/admin/purge")?;
    if a.api.json {
        println!("{answer}");
    } else {
        println!(
            "purged the payloads of {} message(s) and {} message record(s)",
            s(&answer["payloads_purged"]),
            s(&answer["metadata_purged"])
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn status(a: &StatusArgs) -> Result<ExitCode, Failure> {
    let api = Api::new(&a.api)?;
    let answer = api.get("/status")?;
    if a.api.json {
        println!("{}", pretty(&answer));
        return Ok(ExitCode::SUCCESS);
    }
    println!("party     {}", s(&answer["party"]));
    println!("instance  {}", s(&answer["instance"]));
    println!(
        "client    {}{}",
        s(&answer["client"]),
        if answer["admin"] == true {
            " (admin: all messages)"
        } else {
            ""
        }
    );
    println!("messages  {}", s(&answer["total"]));
    for (state, n) in answer["counts"].as_object().into_iter().flatten() {
        if n.as_u64() != Some(0) {
            println!("  {state:<18} {n}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A JSON value as text (strings without quotes).
fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        v => v.to_string(),
    }
}

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
}
