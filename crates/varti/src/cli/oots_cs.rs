//! `varti oots lookup …` (ask the common services) and `varti oots standin` (the local
//! stand-in serving the sample answers).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use varti_access_point::server::{Listener, ListenerOptions};
use varti_oots::common_services::standin::StandIn;
use varti_oots::common_services::{
    Client, ClientConfig, CsError, DataServicesQuery, ResponseSigner, TrustAnchors,
};
use varti_oots_gateway::common_services::{
    data_services_out, exception_out, requirements_out, HttpsTransport, StandInRoutes,
    SYSTEM_CA_BUNDLE,
};

use super::{exit_cannot_run, exit_problems};

/// Arguments of `varti oots lookup`.
#[derive(Debug, Args)]
#[command(after_long_help = "Examples (against a local stand-in):\n  \
    varti oots lookup --base http://127.0.0.1:8480 --insecure-http requirements --procedure R1 --country DE\n  \
    varti oots lookup --base http://127.0.0.1:8480 --insecure-http data-services \\\n    \
    --evidence-type https://sr.oots.tech.europa.eu/evidencetypeclassifications/DE/ca8afed6-2dc0-422a-a931-d21c3d8d370e --country DE")]
pub struct LookupArgs {
    /// Base URL of both services (the stand-in serves both at one address).
    #[arg(long, value_name = "URL", required_unless_present_all = ["eb", "dsd"])]
    base: Option<String>,
    /// Base URL of the Evidence Broker (overrides --base).
    #[arg(long, value_name = "URL")]
    eb: Option<String>,
    /// Base URL of the Data Service Directory (overrides --base).
    #[arg(long, value_name = "URL")]
    dsd: Option<String>,
    /// PEM file with the CA (or signing certificate) the answers' JAdES signatures must
    /// chain to; without it signatures are not checked.
    #[arg(long, value_name = "PEM")]
    trust: Option<PathBuf>,
    /// PEM file with the CAs trusted for the services' TLS certificates.
    #[arg(long, value_name = "PEM", default_value = SYSTEM_CA_BUNDLE)]
    tls_ca: PathBuf,
    /// Allow http:// base URLs (the local stand-in only).
    #[arg(long)]
    insecure_http: bool,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 10, value_name = "SECS")]
    timeout: u64,
    /// Print the answer as JSON.
    #[arg(long)]
    json: bool,
    #[command(subcommand)]
    what: LookupWhat,
}

/// What to look up.
#[derive(Debug, Subcommand)]
pub enum LookupWhat {
    /// EB: the requirements of a procedure in a country.
    Requirements {
        /// The procedure code (Procedures code list, e.g. R1, T2).
        #[arg(long)]
        procedure: String,
        /// The country (ISO 3166-1 alpha-2).
        #[arg(long)]
        country: String,
    },
    /// EB: the evidence types proving a requirement in a country.
    EvidenceTypes {
        /// The requirement's identifier (Semantic Repository URL).
        #[arg(long)]
        requirement: String,
        /// The country.
        #[arg(long)]
        country: String,
    },
    /// DSD: the data services delivering an evidence type in a country.
    DataServices {
        /// The evidence type classification (Semantic Repository URL).
        #[arg(long)]
        evidence_type: String,
        /// The country.
        #[arg(long)]
        country: String,
        /// Only access services conforming to this EDM version (e.g. oots-edm:v2.0).
        #[arg(long)]
        specification: Option<String>,
        /// The data service evidence type id (after a DSD:ERR:0005 answer).
        #[arg(long)]
        evidence_type_id: Option<String>,
        /// The jurisdiction context id (after a DSD:ERR:0005 answer).
        #[arg(long)]
        jurisdiction_context_id: Option<String>,
        /// The user's NUTS region.
        #[arg(long)]
        admin_l2: Option<String>,
        /// The user's LAU code.
        #[arg(long)]
        admin_l3: Option<String>,
        /// A user-provided classification: CONCEPT-ID=VALUE (repeatable).
        #[arg(long = "classification", value_name = "ID=VALUE")]
        classifications: Vec<String>,
    },
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Runs `varti oots lookup`.
pub fn lookup(args: LookupArgs) -> anyhow::Result<ExitCode> {
    let cannot = |msg: String| {
        eprintln!("varti oots lookup: {msg}");
        Ok(exit_cannot_run())
    };
    let eb = args.eb.clone().or(args.base.clone());
    let dsd = args.dsd.clone().or(args.base.clone());
    let (Some(eb), Some(dsd)) = (eb, dsd) else {
        return cannot("give --base, or both --eb and --dsd".into());
    };
    let mut config = ClientConfig::new(eb, dsd);
    config.timeout = Duration::from_secs(args.timeout);
    if let Some(p) = &args.trust {
        let pem = match std::fs::read(p) {
            Ok(b) => b,
            Err(e) => return cannot(format!("cannot read {}: {e}", p.display())),
        };
        match TrustAnchors::from_pem(&pem) {
            Ok(a) => config.trust = Some(a),
            Err(e) => return cannot(format!("{}: {e}", p.display())),
        }
    }
    let rt = runtime()?;
    rt.block_on(async {
        let transport = match HttpsTransport::from_ca_file(&args.tls_ca, args.insecure_http) {
            Ok(t) => t,
            Err(e) => return cannot(format!("{e} (give --tls-ca)")),
        };
        let client = Client::new(config, Arc::new(transport));
        let outcome: Result<(Value, Vec<String>), CsError> = match &args.what {
            LookupWhat::Requirements { procedure, country } => client
                .requirements(procedure, country)
                .await
                .map(|f| requirements_out(&f.answer.items, false)),
            LookupWhat::EvidenceTypes {
                requirement,
                country,
            } => client
                .evidence_types(requirement, country)
                .await
                .map(|f| requirements_out(&f.answer.items, true)),
            LookupWhat::DataServices {
                evidence_type,
                country,
                specification,
                evidence_type_id,
                jurisdiction_context_id,
                admin_l2,
                admin_l3,
                classifications,
            } => {
                let mut pairs = Vec::new();
                for c in classifications {
                    match c.split_once('=') {
                        Some((id, v)) if !id.is_empty() => pairs.push((id.to_owned(), v.to_owned())),
                        _ => return cannot(format!("--classification `{c}` is not ID=VALUE")),
                    }
                }
                let q = DataServicesQuery {
                    evidence_type_classification: evidence_type.clone(),
                    country_code: country.clone(),
                    specification: specification.clone(),
                    evidence_type_id: evidence_type_id.clone(),
                    jurisdiction_context_id: jurisdiction_context_id.clone(),
                    jurisdiction_admin_l2: admin_l2.clone(),
                    jurisdiction_admin_l3: admin_l3.clone(),
                    classifications: pairs,
                };
                client
                    .data_services(q)
                    .await
                    .map(|f| data_services_out(&f.answer.items, country))
            }
        };
        match outcome {
            Ok((value, lines)) => {
                if args.json {
                    println!("{}", json!({"ok": true, "items": value}));
                } else if lines.is_empty() {
                    println!("nothing found");
                } else {
                    for l in lines {
                        println!("{l}");
                    }
                }
                Ok(ExitCode::SUCCESS)
            }
            Err(e @ CsError::Transport { .. }) => cannot(e.to_string()),
            Err(e) => {
                if args.json {
                    let mut out = json!({"ok": false, "error": e.to_string()});
                    if let Some(x) = e.exception() {
                        out["exception"] = exception_out(x);
                    }
                    println!("{out}");
                } else {
                    eprintln!("{e}");
                    if let Some(input) = e.exception().and_then(|x| x.additional_input.as_ref()) {
                        if let Some(t) = &input.evidence_type {
                            eprintln!("  ask again with --evidence-type-id {}", t.identifier);
                        }
                        if let Some(j) = &input.jurisdiction {
                            eprintln!(
                                "  --jurisdiction-context-id {} and the user's {} (--admin-l2 / --admin-l3)",
                                j.context_id,
                                j.level.as_deref().unwrap_or("jurisdiction")
                            );
                        }
                        for c in &input.classifications {
                            eprintln!(
                                "  --classification {}=VALUE (values: {})",
                                c.identifier,
                                c.value_expression.as_deref().unwrap_or("see the Semantic Repository")
                            );
                        }
                    }
                }
                Ok(exit_problems())
            }
        }
    })
}

/// Arguments of `varti oots standin`.
#[derive(Debug, Args)]
pub struct StandinArgs {
    /// Address to listen on (port 0 picks a free one; the address is printed).
    #[arg(long, default_value = "127.0.0.1:8480", value_name = "ADDR")]
    listen: SocketAddr,
    /// The interop vectors directory (France's recorded answers).
    #[arg(long, env = "VARTI_VECTORS", value_name = "DIR")]
    vectors: PathBuf,
    /// The specs directory (the EDM 1.0 EB/DSD examples).
    #[arg(long, env = "VARTI_SPECS", value_name = "DIR")]
    specs: PathBuf,
    /// Sign every answer with this private key (PEM) instead of replaying the recorded
    /// signatures; needs --sign-cert.
    #[arg(long, value_name = "PEM", requires = "sign_cert")]
    sign_key: Option<PathBuf>,
    /// The signing certificate chain (PEM, signer first).
    #[arg(long, value_name = "PEM", requires = "sign_key")]
    sign_cert: Option<PathBuf>,
}

/// Runs `varti oots standin` until interrupted.
pub fn standin(args: StandinArgs) -> anyhow::Result<ExitCode> {
    let cannot = |msg: String| {
        eprintln!("varti oots standin: {msg}");
        Ok(exit_cannot_run())
    };
    let mut s = StandIn::new(&args.vectors, &args.specs);
    if let Err(e) = s.check() {
        return cannot(e);
    }
    if let (Some(k), Some(c)) = (&args.sign_key, &args.sign_cert) {
        let read =
            |p: &PathBuf| std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()));
        let signer = match read(k)
            .and_then(|key| Ok((key, read(c)?)))
            .and_then(|(key, cert)| {
                ResponseSigner::from_pem(&key, &cert).map_err(|e| e.to_string())
            }) {
            Ok(s) => s,
            Err(e) => return cannot(e),
        };
        s = s.with_signer(signer);
    }
    let rt = runtime()?;
    rt.block_on(async {
        let options = ListenerOptions {
            tls: None,
            handshake_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 256,
            ..ListenerOptions::default()
        };
        let listener = match Listener::bind("oots-standin", args.listen, options).await {
            Ok(l) => l,
            Err(e) => return cannot(e.to_string()),
        };
        let addr = listener.local_addr()?;
        println!("common-services stand-in (test double) listening on http://{addr}");
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            wait_for_stop().await;
            stop.cancel();
        });
        listener
            .serve(
                Arc::new(StandInRoutes::new(s)),
                shutdown,
                Duration::from_secs(2),
            )
            .await;
        Ok(ExitCode::SUCCESS)
    })
}

async fn wait_for_stop() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
