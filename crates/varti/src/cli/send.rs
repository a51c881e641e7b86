//! `varti send`: submit files as one message through the backend API.

use std::fs::File;
use std::io::{Cursor, Read};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::api::{segment, Api, ApiArgs, Failure};

/// Arguments of `varti send`.
#[derive(Debug, clap::Args)]
#[command(after_long_help = "\
Examples:
  export VARTI_TOKEN=…   # a token whose SHA-256 is in [[backend.clients]]
  varti send --to varti-b --service urn:example:invoices --action Deliver invoice.xml
  varti send --to varti-b --service QueryManager \\
      --action ExecuteQueryRequest --property originalSender=urn:a --property finalRecipient=urn:b \\
      --wait 60 request.xml
  varti send --json --to varti-b --service S --action A --mime-type application/pdf scan.bin

Exit status: 0 submitted (with --wait: acknowledged by the partner), 1 refused by the
API or, with --wait, failed or not acknowledged in time, 2 cannot run (API unreachable,
bad token, unreadable file).")]
pub struct SendArgs {
    /// The receiving party: a [[party]] name of the PModes or one of its party ids.
    #[arg(long, value_name = "PARTY")]
    to: String,
    /// eb:Service of the PMode leg.
    #[arg(long, value_name = "SERVICE")]
    service: String,
    /// eb:Service/@type, when the leg has one and several legs share the service.
    #[arg(long, value_name = "TYPE")]
    service_type: Option<String>,
    /// eb:Action of the PMode leg.
    #[arg(long, value_name = "ACTION")]
    action: String,
    /// eb:AgreementRef, to choose among legs.
    #[arg(long, value_name = "AGREEMENT")]
    agreement: Option<String>,
    /// A message property NAME=VALUE, or NAME[TYPE]=VALUE to give it a type (repeatable;
    /// OOTS needs originalSender and finalRecipient, with the party-id type, e.g.
    /// 'originalSender[urn:oasis:names:tc:ebcore:partyid-type:unregistered]=C1').
    #[arg(long = "property", value_name = "NAME[TYPE]=VALUE")]
    properties: Vec<String>,
    /// eb:ConversationId (generated when absent).
    #[arg(long, value_name = "ID")]
    conversation_id: Option<String>,
    /// eb:RefToMessageId: the message this one answers.
    #[arg(long = "ref-to", value_name = "ID")]
    ref_to: Option<String>,
    /// MIME type of the files instead of the one guessed from the extension: once for all
    /// files, or once per file in order.
    #[arg(long, value_name = "TYPE")]
    mime_type: Vec<String>,
    /// Wait up to SECS for the partner's receipt (exit 1 if the message fails or is still
    /// not acknowledged).
    #[arg(long, value_name = "SECS")]
    wait: Option<u64>,
    #[command(flatten)]
    api: ApiArgs,
    /// The payload files, in message order.
    #[arg(value_name = "FILE", required = true)]
    files: Vec<PathBuf>,
}

/// Runs `varti send`.
pub fn run(args: SendArgs) -> anyhow::Result<ExitCode> {
    let json = args.api.json;
    Ok(match send(args) {
        Ok(code) => code,
        Err(f) => f.report(json),
    })
}

fn send(args: SendArgs) -> Result<ExitCode, Failure> {
    let api = Api::new(&args.api)?;
    let mut properties = Vec::new();
    for p in &args.properties {
        let (name, type_, value) = parse_property(p).ok_or_else(|| {
            Failure::cannot_run(
                format!("--property `{p}` is not NAME=VALUE or NAME[TYPE]=VALUE"),
                "e.g. --property 'originalSender[urn:oasis:names:tc:ebcore:partyid-type:unregistered]=C1'",
            )
        })?;
        properties.push(match type_ {
            Some(t) => json!({"name": name, "type": t, "value": value}),
            None => json!({"name": name, "value": value}),
        });
    }
    let types: Vec<String> = match args.mime_type.len() {
        0 => args
            .files
            .iter()
            .map(|f| guess_mime_type(f).to_owned())
            .collect(),
        1 => vec![args.mime_type[0].clone(); args.files.len()],
        n if n == args.files.len() => args.mime_type.clone(),
        n => {
            return Err(Failure::cannot_run(
                format!("{n} --mime-type values for {} files", args.files.len()),
                "give --mime-type once (for all files) or once per file",
            ))
        }
    };
    if let Some(Err(why)) = args.ref_to.as_deref().map(varti_as4::message::id::check) {
        return Err(Failure::cannot_run(
            format!("--ref-to: {why}"),
            "give the MessageId of the message this one answers, exactly as it was sent",
        ));
    }
    let payloads: Vec<Value> = types
        .iter()
        .enumerate()
        .map(|(i, t)| json!({"part": format!("file{i}"), "mime_type": t}))
        .collect();
    let mut metadata = json!({
        "to_party": args.to,
        "service": args.service,
        "action": args.action,
        "properties": properties,
        "payloads": payloads,
    });
    for (key, value) in [
        ("service_type", &args.service_type),
        ("agreement", &args.agreement),
        ("conversation_id", &args.conversation_id),
        ("ref_to_message_id", &args.ref_to),
    ] {
        if let Some(v) = value {
            metadata[key] = json!(v);
        }
    }
    let (reader, length, content_type) = form(&metadata, &args.files, &types)?;
    let answer = api.post_stream("/messages", &content_type, reader, length)?;
    let id = answer["message_id"].as_str().unwrap_or_default().to_owned();
    let Some(wait) = args.wait else {
        if args.api.json {
            println!("{answer}");
        } else {
            println!("submitted {id}");
        }
        return Ok(ExitCode::SUCCESS);
    };
    if !args.api.json {
        eprintln!("submitted {id}; waiting up to {wait} s for the receipt");
    }
    let deadline = Instant::now() + Duration::from_secs(wait);
    loop {
        let message = api.get(&format!("/messages/{}", segment(&id)))?;
        let state = message["state"].as_str().unwrap_or("");
        let done = match state {
            "acknowledged" => Some(true),
            "failed" => Some(false),
            _ if Instant::now() >= deadline => Some(false),
            _ => None,
        };
        if let Some(ok) = done {
            if args.api.json {
                println!("{message}");
            } else if ok {
                println!(
                    "{id} acknowledged by {}",
                    message["to_party"].as_str().unwrap_or("the partner")
                );
            } else {
                let error = message["last_error"]
                    .as_str()
                    .unwrap_or("no error recorded");
                if state == "failed" {
                    println!("{id} failed: {error}");
                    eprintln!("  hint: fix the cause, then `varti messages resend {id}`");
                } else {
                    println!(
                        "{id} is still {state} after {wait} s ({} attempt(s); last error: {error})",
                        message["attempts"]
                    );
                    eprintln!("  hint: it keeps retrying per its PMode; follow it with `varti messages show {id}`");
                }
            }
            return Ok(if ok {
                ExitCode::SUCCESS
            } else {
                super::exit_problems()
            });
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The multipart form: the metadata part, then `file0`, `file1`, … streamed from disk.
/// Returns the body reader, its exact length and the Content-Type.
fn form(
    metadata: &Value,
    files: &[PathBuf],
    types: &[String],
) -> Result<(Box<dyn Read + Send>, u64, String), Failure> {
    let boundary = format!("varti-{}", uuid::Uuid::new_v4().simple());
    let mut pieces: Vec<Box<dyn Read + Send>> = Vec::new();
    let mut length = 0u64;
    let mut text = |s: String, pieces: &mut Vec<Box<dyn Read + Send>>| {
        length += s.len() as u64;
        pieces.push(Box::new(Cursor::new(s.into_bytes())));
    };
    text(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"metadata\"\r\n\
             Content-Type: application/json\r\n\r\n{metadata}\r\n"
        ),
        &mut pieces,
    );
    let mut sizes = 0u64;
    for (i, (path, mime)) in files.iter().zip(types).enumerate() {
        let file = File::open(path).map_err(|e| {
            Failure::cannot_run(
                format!("cannot read {}: {e}", path.display()),
                "check the path",
            )
        })?;
        let size = file
            .metadata()
            .map_err(|e| Failure::cannot_run(format!("cannot read {}: {e}", path.display()), ""))?
            .len();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().replace(['"', '\r', '\n', '\\'], "_"))
            .unwrap_or_else(|| format!("file{i}"));
        text(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"file{i}\"; filename=\"{name}\"\r\n\
                 Content-Type: {mime}\r\n\r\n"
            ),
            &mut pieces,
        );
        // Exactly `size` bytes: a file that grows meanwhile must not break the length.
        pieces.push(Box::new(file.take(size)));
        sizes += size;
        text("\r\n".to_owned(), &mut pieces);
    }
    text(format!("--{boundary}--\r\n"), &mut pieces);
    let reader = pieces
        .into_iter()
        .reduce(|a, b| Box::new(a.chain(b)))
        .expect("at least the metadata part");
    Ok((
        reader,
        length + sizes,
        format!("multipart/form-data; boundary={boundary}"),
    ))
}

/// The MIME type for a file name's extension (application/octet-stream when unknown).
pub fn guess_mime_type(path: &Path) -> &'static str {
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "xml" => "application/xml",
        "json" => "application/json",
        "pdf" => "application/pdf",
        "txt" => "text/plain",
        "csv" => "text/csv",
        "html" | "htm" => "text/html",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "tif" | "tiff" => "image/tiff",
        "svg" => "image/svg+xml",
        "zip" => "application/zip",
        "gz" => "application/gzip",
        "p7m" | "p7s" => "application/pkcs7-mime",
        "asice" | "sce" => "application/vnd.etsi.asic-e+zip",
        "asics" | "scs" => "application/vnd.etsi.asic-s+zip",
        "docx" => "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        "xlsx" => "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        "odt" => "application/vnd.oasis.opendocument.text",
        _ => "application/octet-stream",
    }
}

/// `NAME=VALUE` or `NAME[TYPE]=VALUE` (the type may hold `=`; the value starts after the
/// first `=` past the name).
fn parse_property(p: &str) -> Option<(&str, Option<&str>, &str)> {
    let name_end = p.find(['[', '='])?;
    let name = &p[..name_end];
    if name.is_empty() {
        return None;
    }
    let rest = &p[name_end..];
    let (type_, value) = match rest.strip_prefix('[') {
        Some(typed) => {
            let (t, after) = typed.split_once("]=")?;
            (Some(t).filter(|t| !t.is_empty()), after)
        }
        None => (None, rest.strip_prefix('=')?),
    };
    if rest.starts_with('[') && type_.is_none() {
        return None;
    }
    Some((name, type_, value))
}

#[cfg(test)]
mod tests {
    use super::parse_property;

    #[test]
    fn properties_with_and_without_a_type() {
        assert_eq!(parse_property("a=b=c"), Some(("a", None, "b=c")));
        assert_eq!(
            parse_property("originalSender[urn:x:type]=C1"),
            Some(("originalSender", Some("urn:x:type"), "C1"))
        );
        assert_eq!(parse_property("a[]=b"), None, "an empty type");
        assert_eq!(parse_property("=b"), None);
        assert_eq!(parse_property("a[t=b"), None, "an unclosed type");
        assert_eq!(parse_property("ab"), None);
    }

    use super::*;

    #[test]
    fn mime_types_follow_the_extension() {
        assert_eq!(
            guess_mime_type(Path::new("a/Invoice.XML")),
            "application/xml"
        );
        assert_eq!(guess_mime_type(Path::new("scan.pdf")), "application/pdf");
        assert_eq!(
            guess_mime_type(Path::new("noext")),
            "application/octet-stream"
        );
    }

    #[test]
    fn form_length_is_exact() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("a \"q\".txt");
        std::fs::write(&f, b"hello").unwrap();
        let (mut r, len, ct) =
            form(&json!({"to_party": "b"}), &[f], &["text/plain".to_owned()]).unwrap();
        let mut all = Vec::new();
        r.read_to_end(&mut all).unwrap();
        assert_eq!(all.len() as u64, len);
        let text = String::from_utf8(all).unwrap();
        assert!(text.contains("filename=\"a _q_.txt\""), "{text}");
        assert!(ct.starts_with("multipart/form-data; boundary=varti-"));
    }
}
