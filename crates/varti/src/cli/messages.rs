//! `varti messages …` and `varti status`: look at and act on messages through the backend
//! API of a running `varti serve`.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use serde_json::Value;

use super::api::{pretty, s, segment, Api, ApiArgs, Failure};

/// The `messages` command group.
#[derive(Debug, Subcommand)]
pub enum MessagesCommand {
    /// List and search messages, newest first.
    ///
    /// A backend's token lists its own messages; an admin token lists all. Every filter
    /// narrows the list (they combine); each one is served by an index, so a search stays
    /// fast on millions of messages. Test traffic (the ebMS test service and the EC
    /// connectivity test, what `varti ping` sends) is left out unless --include-test.
    ///
    /// Examples:
    ///   varti messages list --direction inbound --state received
    ///   varti messages list --state failed,waiting_for_retry --limit 20
    ///   varti messages list --partner lv-ap --since 2026-03-03 --until 2026-03-04
    ///   varti messages list --conversation 7c0f… --include-test
    ///   varti messages list --property 'originalSender=urn:…:LV-123' --action Req
    ///   varti messages list --id-prefix 8d1c
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
    /// Download a received message's payloads.
    ///
    /// With N, payload N (numbered from 0) is written to the file --out. Without N, every
    /// payload is written into the directory --out (created if missing), each named
    /// `N-<content id>` with an extension from its MIME type, reduced to safe characters
    /// (a payload's name can never leave the directory). Existing files are never
    /// overwritten. Payloads stream to disk; none is held in memory.
    ///
    /// Downloading is recorded in the message's history but does not settle it:
    /// acknowledge it with `varti messages ack` once it is safely processed.
    ///
    /// Exit status 1 when there is no such message or payload, or a file exists.
    ///
    /// Examples:
    ///   varti messages download 8d1c…@varti --out ./in/8d1c
    ///   varti messages download 8d1c…@varti 0 --out request.xml
    #[command(verbatim_doc_comment)]
    Download(DownloadArgs),
    /// Acknowledge a received message: your backend has it (state `downloaded`).
    ///
    /// The explicit act that settles a received message (Domibus: DOWNLOADED); downloads
    /// alone do not. Acknowledging twice is harmless.
    ///
    /// Example: varti messages ack 8d1c…@varti
    #[command(verbatim_doc_comment)]
    Ack(IdArgs),
    /// Retry now: a message waiting for its next attempt (waiting_for_retry) is due at once.
    ///
    /// After a partner's outage, instead of waiting for the retry schedule. With
    /// --all-waiting (admin token), every waiting message, or those to --partner. The
    /// attempt count goes on (the retry schedule still ends in `failed`); failed messages
    /// are sent again with `resend` instead.
    ///
    /// Exit status 1 when the message is not waiting for a retry.
    ///
    /// Examples:
    ///   varti messages retry 8d1c…@varti
    ///   VARTI_TOKEN=$ADMIN_TOKEN varti messages retry --all-waiting --partner lv-ap
    #[command(verbatim_doc_comment)]
    Retry(RetryArgs),
    /// Send a failed outbound message again (its attempts start over).
    ///
    /// Only `failed` messages can be resent; one still waiting for a retry retries by
    /// itself. Exit status 1 when the message cannot be resent.
    ///
    /// Example: varti messages resend 8d1c…@varti
    #[command(verbatim_doc_comment)]
    Resend(IdArgs),
    /// Apply the retention now: purge payloads and metadata past retention.payload_days and
    /// retention.metadata_days, and test traffic past retention.test_days (needs an admin
    /// token; the server also does this hourly).
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
    /// Only messages with this partner: the sender of an inbound message, the recipient
    /// of an outbound one (its party id as `messages show` prints it).
    #[arg(long, value_name = "PARTY")]
    partner: Option<String>,
    /// Only messages stored at or after this time: RFC 3339 (2026-03-03T09:00:00Z) or a
    /// date (2026-03-03, midnight UTC).
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    since: Option<time::OffsetDateTime>,
    /// Only messages stored before this time (same forms as --since).
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    until: Option<time::OffsetDateTime>,
    /// Only this ConversationId.
    #[arg(long, value_name = "ID")]
    conversation: Option<String>,
    /// Only this Service.
    #[arg(long, value_name = "SERVICE")]
    service: Option<String>,
    /// Only this Action.
    #[arg(long, value_name = "ACTION")]
    action: Option<String>,
    /// Only messages with this message property (exact name and value); repeat to require
    /// several.
    #[arg(long, value_name = "NAME=VALUE", value_parser = parse_property)]
    property: Vec<(String, String)>,
    /// Only MessageIds starting with this.
    #[arg(long, value_name = "PREFIX")]
    id_prefix: Option<String>,
    /// Also list test traffic (ebMS test service, EC connectivity test: `varti ping`).
    #[arg(long)]
    include_test: bool,
    #[command(flatten)]
    api: ApiArgs,
}

/// Arguments of `messages download`.
#[derive(Debug, Args)]
pub struct DownloadArgs {
    /// The MessageId.
    id: String,
    /// Only this payload (numbered from 0); --out is then the file to write.
    n: Option<usize>,
    /// Where to write: a file with N, else a directory (created if missing).
    #[arg(long, short = 'o', value_name = "PATH")]
    out: std::path::PathBuf,
    #[command(flatten)]
    api: ApiArgs,
}

/// Arguments of `messages retry`.
#[derive(Debug, Args)]
pub struct RetryArgs {
    /// The MessageId (or --all-waiting).
    #[arg(
        required_unless_present = "all_waiting",
        conflicts_with = "all_waiting"
    )]
    id: Option<String>,
    /// Every message waiting for a retry (admin token), or those to --partner.
    #[arg(long)]
    all_waiting: bool,
    /// With --all-waiting: only messages to this partner.
    #[arg(long, value_name = "PARTY", requires = "all_waiting")]
    partner: Option<String>,
    #[command(flatten)]
    api: ApiArgs,
}

/// `--since`/`--until`: RFC 3339, or a date at midnight UTC.
fn parse_time(value: &str) -> Result<time::OffsetDateTime, String> {
    use time::format_description::well_known::Rfc3339;
    if let Ok(t) = time::OffsetDateTime::parse(value, &Rfc3339) {
        return Ok(t);
    }
    let format = time::macros::format_description!("[year]-[month]-[day]");
    time::Date::parse(value, &format)
        .map(|d| d.midnight().assume_utc())
        .map_err(|_| {
            format!("`{value}` is neither an RFC 3339 time (2026-03-03T09:00:00Z) nor a date (2026-03-03)")
        })
}

/// `--property NAME=VALUE`.
fn parse_property(value: &str) -> Result<(String, String), String> {
    match value.split_once('=') {
        Some((name, v)) if !name.is_empty() => Ok((name.to_owned(), v.to_owned())),
        _ => Err(format!(
            "`{value}` is not NAME=VALUE (e.g. --property 'originalSender=urn:…:LV-123')"
        )),
    }
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
        MessagesCommand::Download(a) => (a.api.json, download(&a)),
        MessagesCommand::Ack(a) => (a.api.json, ack(&a)),
        MessagesCommand::Retry(a) => (a.api.json, retry(&a)),
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
    let rfc3339 = |t: &time::OffsetDateTime| {
        t.format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default()
    };
    let params = [
        ("partner", a.partner.clone()),
        ("since", a.since.as_ref().map(rfc3339)),
        ("until", a.until.as_ref().map(rfc3339)),
        ("conversation", a.conversation.clone()),
        ("service", a.service.clone()),
        ("action", a.action.clone()),
        ("id_prefix", a.id_prefix.clone()),
    ];
    for (key, value) in params {
        if let Some(v) = value {
            query.push_str(&format!("&{key}={}", segment(&v)));
        }
    }
    for (name, value) in &a.property {
        query.push_str(&format!(
            "&property={}",
            segment(&format!("{name}={value}"))
        ));
    }
    if a.include_test {
        query.push_str("&include_test=true");
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
        println!("more: repeat the command with --after {next}");
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

fn download(a: &DownloadArgs) -> Result<ExitCode, Failure> {
    let api = Api::new(&a.api)?;
    let m = api.get(&format!("/messages/{}", segment(&a.id)))?;
    let payloads = m["payloads"].as_array().cloned().unwrap_or_default();
    let wanted: Vec<(usize, std::path::PathBuf)> = match a.n {
        Some(n) => {
            if n >= payloads.len() {
                return Err(Failure::problem(
                    format!(
                        "message `{}` has no payload {n} (it has {}, numbered from 0)",
                        a.id,
                        payloads.len()
                    ),
                    "leave N out to download them all; `varti messages show ID` lists them",
                ));
            }
            vec![(n, a.out.clone())]
        }
        None => {
            std::fs::create_dir_all(&a.out).map_err(|e| {
                Failure::problem(
                    format!("cannot create the directory {}: {e}", a.out.display()),
                    "give --out a directory you may write to",
                )
            })?;
            payloads
                .iter()
                .enumerate()
                .map(|(i, p)| (i, a.out.join(payload_file_name(i, p))))
                .collect()
        }
    };
    let mut files = Vec::new();
    for (i, path) in wanted {
        let bytes = download_to(&api, &a.id, i, &path)?;
        files.push(serde_json::json!({
            "index": i,
            "path": path.display().to_string(),
            "bytes": bytes,
            "mime_type": payloads[i]["mime_type"],
            "content_id": payloads[i]["content_id"],
        }));
        if !a.api.json {
            println!("payload {i} -> {} ({bytes} bytes)", path.display());
        }
    }
    if a.api.json {
        println!(
            "{}",
            pretty(&serde_json::json!({"message_id": a.id, "files": files}))
        );
    } else if files.is_empty() {
        println!("message {} has no payloads", a.id);
    } else {
        println!("acknowledge it once processed: varti messages ack {}", a.id);
    }
    Ok(ExitCode::SUCCESS)
}

/// A safe file name for payload `index`: `N-<content id>.<ext>`, from ASCII letters,
/// digits, `.`, `-` and `_` only (anything else becomes `_`), never starting with a dot,
/// bounded in length. The index in front keeps names distinct and never empty.
fn payload_file_name(index: usize, payload: &Value) -> String {
    let cid = payload["content_id"].as_str().unwrap_or("");
    let cid = cid.strip_prefix("cid:").unwrap_or(cid);
    let mut stem: String = cid
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .take(100)
        .collect();
    stem = stem.trim_start_matches('.').to_owned();
    let ext = match payload["mime_type"].as_str().unwrap_or("") {
        m if m.ends_with("/xml") || m.ends_with("+xml") => "xml",
        "application/json" => "json",
        "application/pdf" => "pdf",
        "text/plain" => "txt",
        "application/zip" => "zip",
        "application/gzip" => "gz",
        "image/png" => "png",
        "image/jpeg" => "jpg",
        _ => "bin",
    };
    if stem.is_empty() {
        format!("{index}.{ext}")
    } else if stem.to_ascii_lowercase().ends_with(&format!(".{ext}")) {
        format!("{index}-{stem}")
    } else {
        format!("{index}-{stem}.{ext}")
    }
}

/// Streams payload `index` of `id` into a new file `path` (written beside it as
/// `.<name>.part`, renamed when complete; removed on failure). An existing file is an
/// error: nothing is overwritten.
fn download_to(api: &Api, id: &str, index: usize, path: &std::path::Path) -> Result<u64, Failure> {
    if path.exists() {
        return Err(Failure::problem(
            format!("{} exists; not overwritten", path.display()),
            "remove it or give another --out",
        ));
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "payload".into());
    let partial = path.with_file_name(format!(".{name}.part"));
    let cannot_write = |e: std::io::Error, p: &std::path::Path| {
        Failure::problem(
            format!("cannot write {}: {e}", p.display()),
            "give --out a place you may write to",
        )
    };
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&partial)
        .map_err(|e| cannot_write(e, &partial))?;
    let mut out = std::io::BufWriter::new(file);
    let result = api
        .download(
            &format!("/messages/{}/payloads/{index}", segment(id)),
            &mut out,
        )
        .and_then(|bytes| {
            use std::io::Write as _;
            out.flush().map_err(|e| cannot_write(e, &partial))?;
            out.get_ref()
                .sync_all()
                .map_err(|e| cannot_write(e, &partial))?;
            Ok(bytes)
        });
    drop(out);
    let finished = result.and_then(|bytes| {
        // Checked again right before the rename: rename would replace a file that
        // appeared meanwhile.
        if path.exists() {
            return Err(Failure::problem(
                format!(
                    "{} appeared while downloading; not overwritten",
                    path.display()
                ),
                "remove it or give another --out",
            ));
        }
        std::fs::rename(&partial, path).map_err(|e| cannot_write(e, path))?;
        Ok(bytes)
    });
    if finished.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    finished
}

fn ack(a: &IdArgs) -> Result<ExitCode, Failure> {
    let api = Api::new(&a.api)?;
    let answer = api.post(&format!("/messages/{}/ack", segment(&a.id)))?;
    if a.api.json {
        println!("{answer}");
    } else {
        println!("{} is {}: acknowledged", a.id, s(&answer["state"]));
    }
    Ok(ExitCode::SUCCESS)
}

fn retry(a: &RetryArgs) -> Result<ExitCode, Failure> {
    let api = Api::new(&a.api)?;
    let answer = match &a.id {
        Some(id) => api.post(&format!("/messages/{}/retry", segment(id)))?,
        None => {
            let query = a
                .partner
                .as_ref()
                .map(|p| format!("?partner={}", segment(p)))
                .unwrap_or_default();
            api.post(&format!("/admin/retry{query}"))?
        }
    };
    if a.api.json {
        println!("{answer}");
        return Ok(ExitCode::SUCCESS);
    }
    match &a.id {
        Some(id) if answer["made_due"] == true => {
            println!("{id} is due now; the sender picks it up at once")
        }
        Some(id) => println!("{id} was already due; the sender picks it up at once"),
        None => {
            let to = a
                .partner
                .as_ref()
                .map(|p| format!(" to {p}"))
                .unwrap_or_default();
            println!(
                "{} message(s) waiting for a retry{to} made due now",
                s(&answer["count"])
            );
        }
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
            "purged the payloads of {} message(s), {} message record(s) and {} test message(s)",
            s(&answer["payloads_purged"]),
            s(&answer["metadata_purged"]),
            s(&answer["test_purged"])
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_file_names_stay_in_their_directory() {
        let name = |cid: &str, mime: &str| {
            payload_file_name(
                3,
                &serde_json::json!({"content_id": cid, "mime_type": mime}),
            )
        };
        assert_eq!(
            name("cid:part1@varti.test", "application/xml"),
            "3-part1_varti.test.xml"
        );
        assert_eq!(name("cid:invoice.pdf", "application/pdf"), "3-invoice.pdf");
        assert_eq!(name("", "application/octet-stream"), "3.bin");
        for hostile in [
            "cid:../../etc/passwd",
            "../x",
            "/abs/path",
            "..\\..\\win",
            ".hidden",
            "cid:a/b/c",
            "\u{0}nul",
            "ünï/cødé",
        ] {
            let n = name(hostile, "text/plain");
            assert!(n.starts_with("3"), "{hostile}: {n}");
            assert!(
                n.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)),
                "{hostile}: {n}"
            );
            assert!(!n.starts_with('.'), "{hostile}: {n}");
            assert_eq!(
                std::path::Path::new("out").join(&n).parent(),
                Some(std::path::Path::new("out")),
                "{hostile}: {n}"
            );
        }
        assert!(name(&"x".repeat(5000), "text/plain").len() < 120);
    }

    #[test]
    fn since_and_until_take_rfc3339_or_a_date() {
        assert_eq!(
            parse_time("2026-03-03").unwrap(),
            time::macros::datetime!(2026-03-03 00:00 UTC)
        );
        assert_eq!(
            parse_time("2026-03-03T09:30:00+02:00").unwrap(),
            time::macros::datetime!(2026-03-03 07:30 UTC)
        );
        assert!(parse_time("last tuesday").is_err());
        assert_eq!(
            parse_property("originalSender=urn:a=b").unwrap(),
            ("originalSender".to_owned(), "urn:a=b".to_owned())
        );
        assert!(parse_property("=x").is_err());
        assert!(parse_property("novalue").is_err());
    }
}
