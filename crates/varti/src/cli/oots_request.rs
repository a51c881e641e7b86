//! `varti oots request …`: what a procedure portal does through the backend API
//! (`/api/v1/oots/requests`), from the command line — to try a gateway, script a portal
//! integration test, and for `varti demo`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use serde_json::Value;

use super::api::{segment, Api, ApiArgs, Failure};

/// The `oots request` command group.
#[derive(Debug, Subcommand)]
pub enum RequestCommand {
    /// Send an evidence request: FILE holds the portal's data as JSON (the body of
    /// `POST /api/v1/oots/requests`, see docs/openapi.json); `-` reads standard input.
    ///
    /// Prints the request's id and state. With --wait, waits until the request settles
    /// and prints the outcome as `show` does.
    ///
    /// Exit status: 0 sent (or, with --wait, answered or preview required); 1 the request
    /// was refused, or settled with an error, a timeout or a failure; 2 cannot run.
    ///
    /// Example:
    ///   varti oots request send portal-request.json --wait 60
    #[command(verbatim_doc_comment)]
    Send(SendArgs),
    /// Show a request: its state, the provider's error, the preview location, or the
    /// evidence files (download them with `evidence`).
    ///
    /// Exit status as for `send --wait`.
    ///
    /// Example: varti oots request show 0b6f…  --wait 30
    #[command(verbatim_doc_comment)]
    Show(ShowArgs),
    /// After the provider asked for preview (state `preview_required`): send the second
    /// request of the exchange, once the user has been sent to the preview location.
    ///
    /// The provider answers it after the user approved or cancelled in its preview space;
    /// follow it with `show --wait`. Exit status 1 when the request is not waiting for a
    /// preview.
    ///
    /// Example: varti oots request preview-return 0b6f… --return-location https://portal.example/back
    #[command(verbatim_doc_comment)]
    PreviewReturn(PreviewReturnArgs),
    /// Download evidence file N (from 0) of an answered request into --out.
    ///
    /// Example: varti oots request evidence 0b6f… 0 --out birth.pdf
    #[command(verbatim_doc_comment)]
    Evidence(EvidenceArgs),
}

/// Arguments of `oots request send`.
#[derive(Debug, Args)]
pub struct SendArgs {
    /// The request data (JSON); `-` for standard input.
    file: PathBuf,
    /// Wait up to this many seconds for the request to settle.
    #[arg(long, value_name = "SECS")]
    wait: Option<u64>,
    #[command(flatten)]
    api: ApiArgs,
}

/// Arguments of `oots request show`.
#[derive(Debug, Args)]
pub struct ShowArgs {
    /// The request id (as `send` printed it).
    id: String,
    /// Wait up to this many seconds while the request is still `sent`.
    #[arg(long, value_name = "SECS")]
    wait: Option<u64>,
    #[command(flatten)]
    api: ApiArgs,
}

/// Arguments of `oots request preview-return`.
#[derive(Debug, Args)]
pub struct PreviewReturnArgs {
    /// The request id.
    id: String,
    /// Where the user goes back after the preview (https; EDM 2.0 requests only).
    #[arg(long, value_name = "URL")]
    return_location: Option<String>,
    #[command(flatten)]
    api: ApiArgs,
}

/// Arguments of `oots request evidence`.
#[derive(Debug, Args)]
pub struct EvidenceArgs {
    /// The request id.
    id: String,
    /// Which evidence file, from 0 (as `show` lists them).
    n: usize,
    /// Where to write it.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    #[command(flatten)]
    api: ApiArgs,
}

/// Runs an `oots request` command.
pub fn run(cmd: RequestCommand) -> ExitCode {
    let json = match &cmd {
        RequestCommand::Send(a) => a.api.json,
        RequestCommand::Show(a) => a.api.json,
        RequestCommand::PreviewReturn(a) => a.api.json,
        RequestCommand::Evidence(a) => a.api.json,
    };
    let outcome = match cmd {
        RequestCommand::Send(a) => send(&a),
        RequestCommand::Show(a) => show(&a.api, &a.id, a.wait),
        RequestCommand::PreviewReturn(a) => preview_return(&a),
        RequestCommand::Evidence(a) => evidence(&a),
    };
    outcome.unwrap_or_else(|f| f.report(json))
}

fn send(a: &SendArgs) -> Result<ExitCode, Failure> {
    let data = if a.file.as_os_str() == "-" {
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut v)
            .map_err(|e| Failure::cannot_run(format!("cannot read standard input: {e}"), ""))?;
        v
    } else {
        std::fs::read(&a.file).map_err(|e| {
            Failure::cannot_run(
                format!("cannot read {}: {e}", a.file.display()),
                "give the file with the request data (JSON)",
            )
        })?
    };
    if let Err(e) = serde_json::from_slice::<Value>(&data) {
        return Err(Failure::cannot_run(
            format!("{} is not JSON: {e}", a.file.display()),
            "the request data is the JSON body of POST /api/v1/oots/requests (docs/openapi.json)",
        ));
    }
    let api = Api::new(&a.api)?;
    let length = data.len() as u64;
    let created = api.post_stream(
        "/oots/requests",
        "application/json",
        Box::new(std::io::Cursor::new(data)),
        length,
    )?;
    match a.wait {
        Some(_) => {
            let id = created["id"].as_str().unwrap_or_default().to_owned();
            if !a.api.json {
                println!("request {id} sent");
            }
            show(&a.api, &id, a.wait)
        }
        None => {
            print_request(&created, a.api.json);
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Shows a request, after waiting while it is `sent` (at most `wait` seconds).
fn show(args: &ApiArgs, id: &str, wait: Option<u64>) -> Result<ExitCode, Failure> {
    let api = Api::new(args)?;
    let path = format!("/oots/requests/{}", segment(id));
    let until = Instant::now() + Duration::from_secs(wait.unwrap_or(0));
    let mut r = api.get(&path)?;
    while r["state"] == "sent" && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(250));
        r = api.get(&path)?;
    }
    print_request(&r, args.json);
    Ok(match r["state"].as_str() {
        Some("sent" | "answered" | "preview_required") => ExitCode::SUCCESS,
        _ => super::exit_problems(),
    })
}

fn preview_return(a: &PreviewReturnArgs) -> Result<ExitCode, Failure> {
    let api = Api::new(&a.api)?;
    let body = match &a.return_location {
        Some(url) => serde_json::json!({ "return_location": url }),
        None => serde_json::json!({}),
    }
    .to_string()
    .into_bytes();
    let length = body.len() as u64;
    let r = api.post_stream(
        &format!("/oots/requests/{}/preview-return", segment(&a.id)),
        "application/json",
        Box::new(std::io::Cursor::new(body)),
        length,
    )?;
    print_request(&r, a.api.json);
    Ok(ExitCode::SUCCESS)
}

fn evidence(a: &EvidenceArgs) -> Result<ExitCode, Failure> {
    let api = Api::new(&a.api)?;
    let mut file = std::fs::File::create(&a.out)
        .map_err(|e| Failure::cannot_run(format!("cannot create {}: {e}", a.out.display()), ""))?;
    let path = format!("/oots/requests/{}/evidence/{}", segment(&a.id), a.n);
    let written = api.download(&path, &mut file).inspect_err(|_| {
        let _ = std::fs::remove_file(&a.out);
    })?;
    file.sync_all()
        .map_err(|e| Failure::cannot_run(format!("cannot write {}: {e}", a.out.display()), ""))?;
    if a.api.json {
        println!(
            "{}",
            serde_json::json!({"file": a.out.display().to_string(), "size": written})
        );
    } else {
        println!(
            "evidence {} written to {} ({written} bytes)",
            a.n,
            a.out.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn print_request(r: &Value, json: bool) {
    if json {
        println!("{}", serde_json::to_string_pretty(r).unwrap_or_default());
        return;
    }
    let s = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    };
    let field = |label: &str, v: &Value| {
        if !v.is_null() {
            println!("{label:<16} {}", s(v));
        }
    };
    field("request", &r["id"]);
    field("state", &r["state"]);
    field("provider", &r["provider_party"]);
    field("conversation", &r["conversation_id"]);
    field("deadline", &r["deadline"]);
    field("settled", &r["settled_at"]);
    field("preview at", &r["preview_location"]);
    field("reason", &r["reason"]);
    if !r["error"].is_null() {
        let e = &r["error"];
        println!(
            "error            {} {} — {} {}",
            s(&e["code"]),
            s(&e["exception_type"]),
            s(&e["message"]),
            s(&e["detail"])
        );
    }
    for (n, e) in r["evidences"].as_array().into_iter().flatten().enumerate() {
        println!(
            "evidence {n:<7} {} ({}, {} bytes) {}",
            s(&e["title"]),
            s(&e["mime_type"]),
            s(&e["size"]),
            s(&e["href"])
        );
    }
}
