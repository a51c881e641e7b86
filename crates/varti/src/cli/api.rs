//! A small client of the backend API for the admin commands (`send`, `messages`,
//! `status`, `oots request`): hyper's HTTP/1.1 client on a current-thread runtime.

use std::io::{Read, Write};
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, StatusCode};
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use varti_access_point::https::error_chain;
use varti_access_point::server::http::{empty, reader_body};
use varti_access_point::server::Body;

use super::{exit_cannot_run, exit_problems};

/// Largest JSON answer read (listings of 1000 messages stay far below).
const MAX_ANSWER: usize = 64 * 1024 * 1024;

/// Time allowed to connect and for a whole request without an upload.
const TIMEOUT: Duration = Duration::from_secs(60);

/// The options every API command takes.
#[derive(Debug, Clone, clap::Args)]
pub struct ApiArgs {
    /// Base URL of the backend API (the `backend.listen` of `varti serve`).
    #[arg(
        long,
        value_name = "URL",
        env = "VARTI_API",
        default_value = "http://127.0.0.1:8480"
    )]
    pub api: String,
    /// API token of a `[[backend.clients]]` entry (its SHA-256 is the client's token_sha256).
    #[arg(
        long,
        value_name = "TOKEN",
        env = "VARTI_TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
    /// Print JSON (the API's answer) instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Why a command did not succeed, and its exit status.
#[derive(Debug)]
pub enum Failure {
    /// The command ran and found a problem (not found, refused, failed): exit 1.
    Problem {
        /// What went wrong.
        error: String,
        /// What to do.
        hint: String,
    },
    /// The command could not run (API unreachable, bad token, bad arguments): exit 2.
    CannotRun {
        /// What went wrong.
        error: String,
        /// What to do.
        hint: String,
    },
}

impl Failure {
    /// The command cannot run (exit 2).
    pub fn cannot_run(error: impl Into<String>, hint: impl Into<String>) -> Failure {
        Failure::CannotRun {
            error: error.into(),
            hint: hint.into(),
        }
    }

    /// The command ran into a problem (exit 1).
    pub fn problem(error: impl Into<String>, hint: impl Into<String>) -> Failure {
        Failure::Problem {
            error: error.into(),
            hint: hint.into(),
        }
    }

    /// Prints the failure (stderr, or JSON on stdout) and gives the exit status.
    pub fn report(self, json: bool) -> ExitCode {
        let (error, hint, code) = match self {
            Failure::Problem { error, hint } => (error, hint, exit_problems()),
            Failure::CannotRun { error, hint } => (error, hint, exit_cannot_run()),
        };
        if json {
            println!("{}", serde_json::json!({"error": error, "hint": hint}));
        } else {
            eprintln!("error: {error}");
            if !hint.is_empty() {
                eprintln!("  hint: {hint}");
            }
        }
        code
    }
}

/// A connection to the backend API.
pub struct Api {
    base: String,
    token: String,
    runtime: tokio::runtime::Runtime,
    client: Client<hyper_util::client::legacy::connect::HttpConnector, Body>,
}

impl Api {
    /// Checks the arguments and prepares the client (no request yet).
    pub fn new(args: &ApiArgs) -> Result<Api, Failure> {
        let token = args
            .token
            .clone()
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                Failure::cannot_run(
                    "no API token",
                    "pass --token TOKEN or set VARTI_TOKEN (a token whose SHA-256 is a \
                 [[backend.clients]] token_sha256)",
                )
            })?;
        let base = args.api.trim_end_matches('/');
        let uri: http::Uri = base.parse().map_err(|e| {
            Failure::cannot_run(
                format!("--api `{base}` is not a URL: {e}"),
                "give the backend API's base URL, e.g. http://127.0.0.1:8480",
            )
        })?;
        if uri.scheme_str() != Some("http") || uri.host().is_none() {
            return Err(Failure::cannot_run(
                format!("--api `{base}` is not an http:// URL"),
                "the backend API is plain HTTP on backend.listen (e.g. http://127.0.0.1:8480); \
                 reach a remote one through an SSH tunnel",
            ));
        }
        let base = format!(
            "{}{}",
            base.trim_end_matches(varti_access_point::api::PREFIX),
            varti_access_point::api::PREFIX
        );
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Failure::cannot_run(format!("cannot start the runtime: {e}"), ""))?;
        let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(10)));
        let client = Client::builder(TokioExecutor::new()).build(connector);
        Ok(Api {
            base,
            token,
            runtime,
            client,
        })
    }

    /// `GET path` (below /api/v1) answering JSON.
    pub fn get(&self, path: &str) -> Result<Value, Failure> {
        self.call(Method::GET, path, None, empty(), Some(TIMEOUT))
    }

    /// `POST path` without a body, answering JSON.
    pub fn post(&self, path: &str) -> Result<Value, Failure> {
        self.call(Method::POST, path, None, empty(), Some(TIMEOUT))
    }

    /// `POST path` with a streamed body of exactly `length` bytes (no overall timeout: a
    /// large upload takes what it takes).
    pub fn post_stream(
        &self,
        path: &str,
        content_type: &str,
        reader: Box<dyn Read + Send>,
        length: u64,
    ) -> Result<Value, Failure> {
        let _guard = self.runtime.enter();
        let body = reader_body(reader, Some(length)).boxed();
        self.call(Method::POST, path, Some(content_type), body, None)
    }

    /// `GET path` (below /api/v1) of a file, streamed into `out`; returns its bytes. An
    /// error answer is read as JSON as usual.
    pub fn download(&self, path: &str, out: &mut dyn Write) -> Result<u64, Failure> {
        let mut written = 0u64;
        self.exchange(
            Method::GET,
            path,
            None,
            empty(),
            None,
            Some((out, &mut written)),
        )?;
        Ok(written)
    }

    fn call(
        &self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: Body,
        timeout: Option<Duration>,
    ) -> Result<Value, Failure> {
        self.exchange(method, path, content_type, body, timeout, None)
    }

    /// One request; a successful answer goes to `sink` when given (counted), else is read
    /// as JSON.
    fn exchange(
        &self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: Body,
        timeout: Option<Duration>,
        mut sink: Option<(&mut dyn Write, &mut u64)>,
    ) -> Result<Value, Failure> {
        let url = format!("{}{path}", self.base);
        let mut request = Request::builder()
            .method(method.clone())
            .uri(&url)
            .header(header::AUTHORIZATION, format!("Bearer {}", self.token))
            .header(header::ACCEPT, "application/json");
        if let Some(ct) = content_type {
            request = request.header(header::CONTENT_TYPE, ct);
        }
        let request = request.body(body).map_err(|e| {
            Failure::cannot_run(format!("cannot build the request to {url}: {e}"), "")
        })?;
        let round_trip = async {
            let response = self.client.request(request).await.map_err(|e| {
                Failure::cannot_run(
                    format!("cannot reach the backend API at {url}: {}", error_chain(&e)),
                    "is `varti serve` running? check --api / VARTI_API against backend.listen",
                )
            })?;
            let status = response.status();
            let mut body = response.into_body();
            let mut bytes = Vec::new();
            let mut sink = sink.as_mut().filter(|_| status.is_success());
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| {
                    Failure::cannot_run(format!("the answer from {url} broke off: {e}"), "")
                })?;
                if let Some((out, written)) = sink.as_mut() {
                    if let Some(data) = frame.data_ref() {
                        out.write_all(data).map_err(|e| {
                            Failure::cannot_run(format!("cannot write what {url} sent: {e}"), "")
                        })?;
                        **written += data.len() as u64;
                    }
                    continue;
                }
                if let Ok(data) = frame.into_data() {
                    if bytes.len() + data.len() > MAX_ANSWER {
                        return Err(Failure::cannot_run(
                            format!("the answer from {url} is larger than {MAX_ANSWER} bytes"),
                            "ask for smaller pages (--limit)",
                        ));
                    }
                    bytes.extend_from_slice(&data);
                }
            }
            Ok((status, Bytes::from(bytes), sink.is_some()))
        };
        let (status, bytes, streamed) = self.runtime.block_on(async {
            match timeout {
                Some(t) => tokio::time::timeout(t, round_trip)
                    .await
                    .unwrap_or_else(|_| {
                        Err(Failure::cannot_run(
                            format!("no answer from {url} within {} s", t.as_secs()),
                            "is the server overloaded? see its log",
                        ))
                    }),
                None => round_trip.await,
            }
        })?;
        if streamed {
            return Ok(Value::Null);
        }
        let value: Value = serde_json::from_slice(&bytes).map_err(|_| {
            Failure::cannot_run(
                format!(
                    "{method} {url} answered {status} with something that is not JSON: {}",
                    String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
                ),
                "is --api pointing at the backend API (backend.listen), not another listener?",
            )
        })?;
        if status.is_success() {
            return Ok(value);
        }
        let error = value["error"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| format!("{method} {url} answered {status}"));
        let hint = value["hint"].as_str().unwrap_or("").to_owned();
        Err(match status {
            StatusCode::UNAUTHORIZED => Failure::cannot_run(
                format!("the API refused the token: {error}"),
                "pass --token or set VARTI_TOKEN to a token whose SHA-256 is a \
                 [[backend.clients]] token_sha256 of this server",
            ),
            StatusCode::FORBIDDEN => Failure::cannot_run(error, hint),
            s if s.is_server_error() => Failure::cannot_run(error, hint),
            _ => Failure::problem(error, hint),
        })
    }
}

/// Percent-encodes a path segment (a message id).
pub fn segment(s: &str) -> String {
    const SET: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    percent_encoding::utf8_percent_encode(s, SET).to_string()
}

/// A JSON value of an API answer as text: strings without quotes, null as nothing.
pub fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        v => v.to_string(),
    }
}

/// A JSON answer, indented for people.
pub fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
}
