//! `varti discover`: find a participant's access point through SML/BDXL and SMP, showing
//! every step.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use openssl::x509::X509;
use serde_json::json;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use varti_access_point::discovery::{Discoverer, Network, Query};
use varti_as4::discovery::{
    DnsScheme, Identifier, SmpDialect, TRANSPORT_BDXR_AS4, TRANSPORT_PEPPOL_AS4_V2,
};
use varti_as4::security::token::distinguished_name_string;

use super::{exit_cannot_run, exit_problems};

/// Arguments of `varti discover`.
#[derive(Debug, Args)]
#[command(after_long_help = "How it works:\n  \
    The participant id becomes a DNS name in the SML zone (--dns-scheme: bdxl hashes it\n  \
    with SHA-256 into Base32, peppol-naptr likewise in lower case, sml-cname is the legacy\n  \
    Peppol B-<md5> host); its NAPTR record (service meta:smp) gives the SMP URL; the SMP's\n  \
    signed answer for the document type names the endpoint and certificate for the\n  \
    transport profile. Every step is printed. Exit status 1 when a check fails.\n\n\
Networks (--network presets; every value can be overridden by the other flags):\n  \
    peppol         zone participant.sml.prod.tech.peppol.org, peppol-naptr, Peppol SMP, peppol-transport-as4-v2_0\n  \
    peppol-test    zone participant.sml.test.tech.peppol.org, otherwise as peppol\n  \
    edelivery      eDelivery BDXL + OASIS SMP 1.0, bdxr-transport-ebms3-as4-v1p0 (give --sml)\n  \
    edelivery-smp2 eDelivery BDXL + OASIS SMP 2.0 (give --sml and --transport)\n\n\
Examples:\n  \
    varti discover iso6523-actorid-upis::0088:123abc --network peppol-test \\\n    \
    --document-type 'busdox-docid-qns::urn:oasis:names:specification:ubl:schema:xsd:Invoice-2::Invoice##…' \\\n    \
    --smp-anchor peppol-smp-ca.pem --ap-anchor peppol-ap-ca.pem\n  \
    varti discover iso6523-actorid-upis::0088:123abc --smp https://smp.example.org \\\n    \
    --document-type busdox-docid-qns::invoice --no-verify     (diagnosis only)")]
pub struct DiscoverArgs {
    /// The participant (final recipient), `scheme::value`.
    participant: String,
    /// The document type, `scheme::value`.
    #[arg(long, value_name = "ID")]
    document_type: String,
    /// The process, `scheme::value` (default: any process of the document type).
    #[arg(long, value_name = "ID")]
    process: Option<String>,
    /// A network preset: peppol, peppol-test, edelivery, edelivery-smp2.
    #[arg(long, value_name = "NAME")]
    network: Option<String>,
    /// Ask this SMP directly (base URL), skipping the DNS.
    #[arg(long, value_name = "URL", conflicts_with = "sml")]
    smp: Option<String>,
    /// The SML / BDXL DNS zone.
    #[arg(long, value_name = "ZONE")]
    sml: Option<String>,
    /// How the participant becomes a DNS name: bdxl, peppol-naptr or sml-cname.
    #[arg(long, value_name = "SCHEME")]
    dns_scheme: Option<String>,
    /// The SMP's version: oasis-1, peppol or oasis-2 (decides the request path).
    #[arg(long, value_name = "VERSION")]
    smp_version: Option<String>,
    /// The transport profile the endpoint must offer.
    #[arg(long, value_name = "PROFILE")]
    transport: Option<String>,
    /// PEM file with the certificates SMP answers must be signed under (repeatable).
    #[arg(long, value_name = "PEM")]
    smp_anchor: Vec<PathBuf>,
    /// PEM file with the certificates endpoint certificates must chain to (repeatable).
    #[arg(long, value_name = "PEM")]
    ap_anchor: Vec<PathBuf>,
    /// PEM file with CAs for the SMP's TLS certificate (default: the system's).
    #[arg(long, value_name = "PEM")]
    smp_tls_ca: Option<PathBuf>,
    /// The DNS server to ask (IP:PORT; default: the system's resolvers).
    #[arg(long, value_name = "ADDR")]
    dns_server: Option<SocketAddr>,
    /// Check validity at this time (RFC 3339) instead of now.
    #[arg(long, value_name = "TIME")]
    at: Option<String>,
    /// Do not enforce the SMP signature and the AP anchors: show what the SMP says with
    /// a warning. For diagnosis only; never send on such a result.
    #[arg(long)]
    no_verify: bool,
    /// Give up on a DNS or HTTP step after this many seconds.
    #[arg(long, default_value_t = 10, value_name = "SECS")]
    timeout: u64,
    /// Print the steps and the outcome as JSON.
    #[arg(long)]
    json: bool,
}

const WARNING: &str = "WARNING: --no-verify: the SMP signature and the endpoint certificate's trust were NOT enforced. This result is for diagnosis only; do not send on it.";

fn preset(name: &str) -> Option<Network> {
    let mut n = Network::new(name);
    match name {
        "peppol" | "peppol-test" => {
            n.sml_zone = Some(
                if name == "peppol" {
                    "participant.sml.prod.tech.peppol.org"
                } else {
                    "participant.sml.test.tech.peppol.org"
                }
                .into(),
            );
            n.dns_scheme = DnsScheme::PeppolNaptr;
            n.smp_dialect = SmpDialect::Peppol;
            n.transport_profile = TRANSPORT_PEPPOL_AS4_V2.into();
        }
        "edelivery" => {
            n.transport_profile = TRANSPORT_BDXR_AS4.into();
        }
        "edelivery-smp2" => {
            n.smp_dialect = SmpDialect::Oasis2;
        }
        _ => return None,
    }
    Some(n)
}

fn read_pems(paths: &[PathBuf]) -> anyhow::Result<Vec<X509>> {
    let mut out = Vec::new();
    for p in paths {
        let pem = std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?;
        let certs = X509::stack_from_pem(&pem)
            .with_context(|| format!("{} holds no readable PEM certificate", p.display()))?;
        anyhow::ensure!(!certs.is_empty(), "{} holds no certificate", p.display());
        out.extend(certs);
    }
    Ok(out)
}

/// Runs `varti discover`.
pub fn run(args: DiscoverArgs) -> anyhow::Result<ExitCode> {
    match prepare(&args) {
        Ok((network, query, discoverer_args)) => execute(&args, network, query, discoverer_args),
        Err(e) => {
            eprintln!("varti discover: {e:#}");
            Ok(exit_cannot_run())
        }
    }
}

type DiscovererArgs = (
    Option<SocketAddr>,
    Vec<rustls::pki_types::CertificateDer<'static>>,
);

fn prepare(args: &DiscoverArgs) -> anyhow::Result<(Network, Query, DiscovererArgs)> {
    let participant = Identifier::parse(&args.participant).context("PARTICIPANT")?;
    let document = Identifier::parse(&args.document_type).context("--document-type")?;
    let process = args
        .process
        .as_deref()
        .map(Identifier::parse)
        .transpose()
        .context("--process")?;
    let mut network = match &args.network {
        Some(name) => preset(name).with_context(|| {
            format!(
                "unknown network `{name}` (known: peppol, peppol-test, edelivery, edelivery-smp2)"
            )
        })?,
        None => Network::new("command line"),
    };
    if let Some(zone) = &args.sml {
        network.sml_zone = Some(zone.clone());
    }
    if let Some(url) = &args.smp {
        network.smp_url = Some(url.clone());
        network.sml_zone = None;
    }
    if network.sml_zone.is_none() && network.smp_url.is_none() {
        anyhow::bail!("give --sml ZONE, --smp URL or a --network with a zone");
    }
    if let Some(s) = &args.dns_scheme {
        network.dns_scheme = DnsScheme::parse(s)?;
    }
    if let Some(v) = &args.smp_version {
        network.smp_dialect = SmpDialect::parse(v)?;
    }
    if let Some(t) = &args.transport {
        network.transport_profile = t.clone();
    }
    network.smp_anchors = read_pems(&args.smp_anchor)?;
    network.ap_anchors = read_pems(&args.ap_anchor)?;
    if !args.no_verify && network.smp_anchors.is_empty() {
        anyhow::bail!("give --smp-anchor PEM (the certificates SMP answers are signed under), or --no-verify to diagnose");
    }
    if !args.no_verify && network.ap_anchors.is_empty() {
        anyhow::bail!("give --ap-anchor PEM (the CA of the network's access points), or --no-verify to diagnose");
    }
    let at = match &args.at {
        Some(t) => OffsetDateTime::parse(t, &Rfc3339).with_context(|| {
            format!("--at `{t}` is not an RFC 3339 time (e.g. 2026-05-01T12:00:00Z)")
        })?,
        None => OffsetDateTime::now_utc(),
    };
    let tls_roots = match &args.smp_tls_ca {
        Some(p) => read_pems(std::slice::from_ref(p))?
            .iter()
            .map(|c| c.to_der().map(rustls::pki_types::CertificateDer::from))
            .collect::<Result<Vec<_>, _>>()?,
        None => Vec::new(),
    };
    Ok((
        network,
        Query {
            participant,
            document,
            process,
            at,
            verify: !args.no_verify,
        },
        (args.dns_server, tls_roots),
    ))
}

fn execute(
    args: &DiscoverArgs,
    network: Network,
    query: Query,
    (dns_server, tls_roots): DiscovererArgs,
) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let report = runtime.block_on(async {
        let discoverer = Discoverer::new(dns_server, tls_roots, Duration::from_secs(args.timeout))
            .map_err(anyhow::Error::msg)?;
        anyhow::Ok(discoverer.discover(&network, &query, query.at).await)
    })?;
    let mut warnings = report.warnings.clone();
    if args.no_verify {
        warnings.insert(0, WARNING.to_owned());
    }
    if args.json {
        let steps: Vec<_> = report
            .steps
            .iter()
            .map(|s| json!({"step": s.key, "value": s.value}))
            .collect();
        let outcome = match &report.outcome {
            Ok(f) => json!({
                "ok": true,
                "endpoint": f.url,
                "transport_profile": f.transport_profile,
                "process": f.process.as_ref().map(|p| p.to_string()),
                "verified": f.verified,
                "certificate": {
                    "subject": distinguished_name_string(f.certificate.subject_name()),
                    "issuer": distinguished_name_string(f.certificate.issuer_name()),
                    "not_before": f.certificate.not_before().to_string(),
                    "not_after": f.certificate.not_after().to_string(),
                    "pem": String::from_utf8_lossy(&f.certificate.to_pem().unwrap_or_default()),
                },
                "signing_certificate": f.signing_certificate.as_ref().map(|c| json!({
                    "subject": distinguished_name_string(c.subject_name()),
                    "issuer": distinguished_name_string(c.issuer_name()),
                    "pem": String::from_utf8_lossy(&c.to_pem().unwrap_or_default()),
                })),
            }),
            Err(e) => json!({"ok": false, "error": e.to_string()}),
        };
        let doc = json!({
            "participant": query.participant.to_string(),
            "document_type": query.document.to_string(),
            "network": network.name,
            "steps": steps,
            "warnings": warnings,
            "outcome": outcome,
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        if args.no_verify {
            eprintln!("{WARNING}");
        }
        println!("participant  {}", query.participant);
        println!("document     {}", query.document);
        for s in &report.steps {
            println!("{:<12} {}", s.key, s.value);
        }
        for w in report.warnings.iter() {
            println!("warning      {w}");
        }
        if let Err(e) = &report.outcome {
            eprintln!("varti discover: {e}");
        }
        if args.no_verify && report.outcome.is_ok() {
            eprintln!("{WARNING}");
        }
    }
    Ok(if report.outcome.is_ok() {
        ExitCode::SUCCESS
    } else {
        exit_problems()
    })
}
