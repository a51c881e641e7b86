//! `varti ping PARTY`: proves that a partner's access point receives our messages and
//! answers with a valid signed receipt, using the ebMS test service (or the EC
//! connectivity-test agreement with `--connectivity`, as the EC test bed expects).
//!
//! It runs without a server: it reads the configuration (our keys) and the PModes (the
//! partner's endpoint, certificates and leg), sends one message synchronously and checks
//! the receipt exactly as the sender of `varti serve` does. Nothing is stored (a throwaway
//! store lives in a temporary directory for the duration).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde_json::json;
use time::OffsetDateTime;
use varti::config::Config;
use varti_access_point::access_point::AccessPoint;
use varti_access_point::ops::Metrics;
use varti_access_point::sender::{self, ExchangeFailure};
use varti_access_point::submit::{submit, Submission};

const TEST_SERVICE: &str = "http://docs.oasis-open.org/ebxml-msg/ebms/v3.0/ns/core/200704/service";
const TEST_ACTION: &str = "http://docs.oasis-open.org/ebxml-msg/ebms/v3.0/ns/core/200704/test";
const CONNECTIVITY_SERVICE: &str = "http://ec.europa.eu/e-delivery/services/connectivity-service";
const CONNECTIVITY_ACTION: &str = "submitMessage";

/// Arguments of `varti ping`.
#[derive(Debug, clap::Args)]
#[command(after_long_help = "Examples:\n  \
    varti ping varti-b --config /etc/varti/varti.toml\n  \
    varti ping ec-testbed --connectivity --json\n\n\
    Exit status: 0 the partner acknowledged with a valid receipt; 1 it refused the message or \
    its receipt is not valid; 2 the ping could not be sent (configuration, PModes, network).")]
pub struct PingArgs {
    /// The partner: a [[party]] name of the PModes, or one of its party ids.
    party: String,
    /// Configuration file (our identity, keys and PMode directory); embedded defaults
    /// otherwise.
    #[arg(long, short = 'c', value_name = "FILE")]
    config: Option<PathBuf>,
    /// Use the EC connectivity-test agreement (service connectivity-service, action
    /// submitMessage) instead of the ebMS test service.
    #[arg(long)]
    connectivity: bool,
    /// Allow an http:// endpoint (local tests only).
    #[arg(long)]
    insecure_http: bool,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 60, value_name = "SECS")]
    timeout: u64,
    /// Print one JSON object instead of the steps.
    #[arg(long)]
    json: bool,
}

/// Runs `varti ping`.
pub fn run(args: PingArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(ping(args))
}

async fn ping(args: PingArgs) -> anyhow::Result<ExitCode> {
    let say = |line: String| {
        if !args.json {
            println!("{line}");
        }
    };
    let cannot = |msg: String| -> anyhow::Result<ExitCode> {
        if args.json {
            println!("{}", json!({"acknowledged": false, "error": msg}));
        } else {
            eprintln!("error: {msg}");
        }
        Ok(super::exit_cannot_run())
    };
    let mut config = match &args.config {
        Some(path) => match Config::load(path) {
            Ok(c) => c,
            Err(e) => return cannot(e.to_string()),
        },
        None => Config::default(),
    };
    // A private, temporary store: ping must not touch (or wait for) the server's.
    let scratch = tempfile::tempdir().context("cannot create a temporary directory")?;
    config.data_dir = scratch.path().to_owned();
    config.store.path = None;
    config.store.kind = varti::config::StoreKind::Sled;
    let store = varti_store::SledStore::open(scratch.path().join("store"))
        .context("cannot create the temporary store")?;
    let ap = match AccessPoint::open(
        config.access_point_settings(),
        Arc::new(store),
        Arc::new(Metrics::new()),
        args.insecure_http,
    ) {
        Ok(ap) => Arc::new(ap),
        Err(e) => return cannot(e.to_string()),
    };
    say(format!(
        "as {} ({} legs in {})",
        ap.current().identity.party,
        ap.current().pmodes.legs.len(),
        ap.settings.pmodes_dir.display()
    ));
    let (service, action) = if args.connectivity {
        (CONNECTIVITY_SERVICE, CONNECTIVITY_ACTION)
    } else {
        (TEST_SERVICE, TEST_ACTION)
    };
    let sub = Submission {
        owner: "varti:ping".into(),
        to_party: args.party.clone(),
        service: service.into(),
        service_type: args.connectivity.then(|| "edelivery".to_owned()),
        action: action.into(),
        ..Submission::default()
    };
    let now = OffsetDateTime::now_utc();
    let id = match submit(&ap, sub, now) {
        Ok(id) => id,
        Err(e) if args.connectivity => {
            return cannot(format!(
                "no PMode leg to ping `{}` on with the EC connectivity test: {e}\n(the \
                 agreement is pmodes/connectivity-test.toml in the distribution: copy it into \
                 {} and add `{}` to its parties)",
                args.party,
                ap.settings.pmodes_dir.display(),
                args.party
            ))
        }
        Err(e) => return cannot(format!("no PMode leg to ping `{}` on: {e}", args.party)),
    };
    let record = ap
        .store
        .claim_due(&ap.instance, Duration::from_secs(args.timeout + 60), 1, now)?
        .pop()
        .context("the ping message vanished from the temporary store")?;
    let snap = ap.current();
    let leg = snap
        .leg(&record.meta.pmode_id)
        .context("the leg vanished")?;
    let endpoint = snap
        .counterpart(leg, Some(&record.meta.to_party))
        .and_then(|p| p.endpoint.clone())
        .unwrap_or_default();
    say(format!("leg      {}", leg.label()));
    say(format!("sending  {id} to {endpoint}"));
    let started = Instant::now();
    let result = tokio::time::timeout(
        Duration::from_secs(args.timeout),
        sender::exchange_once(&ap, &record),
    )
    .await;
    let elapsed = started.elapsed();
    match result {
        Ok(Ok(receipt)) => {
            let signed = String::from_utf8_lossy(&receipt).contains("NonRepudiationInformation");
            if args.json {
                println!(
                    "{}",
                    json!({
                        "acknowledged": true,
                        "message_id": id,
                        "party": args.party,
                        "endpoint": endpoint,
                        "leg": leg.label(),
                        "non_repudiation": signed,
                        "round_trip_ms": elapsed.as_millis() as u64,
                    })
                );
            } else {
                println!(
                    "receipt  verified{} in {} ms",
                    if signed {
                        ", NRR references match what we signed"
                    } else {
                        ""
                    },
                    elapsed.as_millis()
                );
                println!("ok: {} acknowledged the test message", args.party);
            }
            Ok(ExitCode::SUCCESS)
        }
        Ok(Err(failure)) => {
            let (error, unreachable) = match failure {
                ExchangeFailure::Unreachable(e) => (e, true),
                ExchangeFailure::Refused(e) => (e, false),
            };
            if args.json {
                println!(
                    "{}",
                    json!({"acknowledged": false, "message_id": id, "error": error, "reached": !unreachable})
                );
            } else {
                eprintln!("failed: {error}");
                if unreachable {
                    eprintln!("hint: {}", unreachable_hint(&error, &endpoint));
                }
            }
            // Not reached: the ping could not run; refused or bad receipt: a problem found.
            Ok(if unreachable {
                super::exit_cannot_run()
            } else {
                super::exit_problems()
            })
        }
        Err(_) => cannot(format!(
            "no answer from {endpoint} within {} s (--timeout)",
            args.timeout
        )),
    }
}

/// What to check when a partner could not be reached: a refused or timed-out connection
/// is about the address and the partner being up; a TLS failure about certificates.
fn unreachable_hint(error: &str, endpoint: &str) -> String {
    let lower = error.to_ascii_lowercase();
    if lower.contains("connection refused")
        || lower.contains("timed out")
        || lower.contains("no route")
        || lower.contains("dns")
    {
        format!("check that the partner's access point is up and listening at {endpoint} (the endpoint in its PMode party) and that nothing blocks the way")
    } else if lower.contains("tls")
        || lower.contains("certificate")
        || lower.contains("handshake")
        || lower.contains("alert")
    {
        format!("the connection to {endpoint} reached a server but TLS failed: check the partner's TLS certificate against the trusted CA (tls_ca of its PMode party) and whether it asks for our client certificate")
    } else {
        format!("check that the partner's access point is up at {endpoint} and that its TLS settings match the PMode")
    }
}

#[cfg(test)]
mod tests {
    use super::unreachable_hint;

    #[test]
    fn the_hint_follows_the_failure() {
        let refused = unreachable_hint(
            "tcp connect error: Connection refused (os error 111)",
            "https://b:9443/msh",
        );
        assert!(
            refused.contains("up and listening") && !refused.contains("TLS"),
            "{refused}"
        );
        let tls = unreachable_hint(
            "invalid peer certificate: UnknownIssuer",
            "https://b:9443/msh",
        );
        assert!(tls.contains("TLS failed"), "{tls}");
    }
}
