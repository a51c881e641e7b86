//! `varti oots …`: work with OOTS evidence exchange (EDM) documents.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Subcommand};
use varti_oots::edm::{EdmDocument, EdmKind};
use varti_oots::validate::codelist::CodeLists;
use varti_oots::validate::model::ModelValidator;
use varti_oots::validate::schematron::RuleDir;
use varti_oots::validate::xsd::XsdValidator;
use varti_oots::validate::{has_fatal, Finding, Severity};

use super::{exit_cannot_run, exit_problems};

/// The `oots` command group.
#[derive(Debug, Subcommand)]
pub enum OotsCommand {
    /// Validate an EDM document (evidence request, evidence response or error response).
    ///
    /// Always checks the document against Varti's own EDM model for its version (required
    /// slots, value types, identifier and date formats, and code lists when --codelists is
    /// given); with --schemas also against the official XSD schemas. Every finding is
    /// printed; the exit status is 1 only when a fatal one exists (warnings and info are
    /// printed, not fatal), 2 when the validation cannot run.
    Validate(ValidateArgs),
    /// Ask the OOTS common services: Evidence Broker requirements or evidence types, or
    /// Data Service Directory data services.
    ///
    /// Exit status: 0 answered (an empty answer too); 1 the service answered with an
    /// exception (e.g. DSD:ERR:0005 asking for user input) or its signature was refused;
    /// 2 the query could not be made (arguments, network, timeout).
    Lookup(super::oots_cs::LookupArgs),
    /// Run the local common-services stand-in: a far-edge test double serving the
    /// published sample answers (France's recorded EB/DSD answers and the EDM 1.0
    /// examples) over plain HTTP, for tests and the demo. Never a production service.
    Standin(super::oots_cs::StandinArgs),
    /// A procedure portal's evidence requests through the backend API of a running
    /// `varti serve` ([oots] role requester or both): send one, follow it, download its
    /// evidence.
    #[command(subcommand)]
    Request(super::oots_request::RequestCommand),
}

/// Arguments of `varti oots validate`.
#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// The EDM document (XML, UTF-8).
    pub file: PathBuf,
    /// Directory with the official EDM XSD schemas (regrep4/, sdg/, xml/), e.g. the
    /// EDM release's xsd/ folder.
    #[arg(long, value_name = "DIR")]
    pub schemas: Option<PathBuf>,
    /// Directory with the Schematron rule files (.sch, queryBinding xslt2), e.g. the EDM
    /// release's sch/ folder. The files that apply to the document are picked by name:
    /// EDM-REQ-* for a request, EDM-RESP-* for a response, EDM-ERR-* for an error
    /// response, EB-*/DSD-*/LCM-* for common-services messages.
    #[arg(long, value_name = "DIR")]
    pub rules: Option<PathBuf>,
    /// Directory with the genericode code lists (*.gc, searched recursively).
    #[arg(long, value_name = "DIR")]
    pub codelists: Option<PathBuf>,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// Runs a `oots` command.
pub fn run(cmd: OotsCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        OotsCommand::Validate(args) => validate(&args),
        OotsCommand::Lookup(args) => super::oots_cs::lookup(args),
        OotsCommand::Standin(args) => super::oots_cs::standin(args),
        OotsCommand::Request(cmd) => Ok(super::oots_request::run(cmd)),
    }
}

fn cannot_run(msg: impl std::fmt::Display) -> anyhow::Result<ExitCode> {
    eprintln!("varti oots validate: {msg}");
    Ok(exit_cannot_run())
}

fn validate(args: &ValidateArgs) -> anyhow::Result<ExitCode> {
    let bytes = match std::fs::read(&args.file) {
        Ok(b) => b,
        Err(e) => return cannot_run(format_args!("cannot read {}: {e}", args.file.display())),
    };
    let lists = match &args.codelists {
        Some(dir) => match CodeLists::load_dir(dir) {
            Ok(l) if l.is_empty() => {
                return cannot_run(format_args!(
                    "no genericode code lists (*.gc) found under {}",
                    dir.display()
                ))
            }
            Ok(l) => l,
            Err(e) => return cannot_run(e),
        },
        None => CodeLists::default(),
    };
    let mut xsd = match &args.schemas {
        Some(dir) => match XsdValidator::load(dir) {
            Ok(v) => Some(v),
            Err(e) => return cannot_run(e),
        },
        None => None,
    };
    let rules = match &args.rules {
        Some(dir) => match RuleDir::load(dir) {
            Ok(r) if r.rule_sets().is_empty() => {
                return cannot_run(format_args!(
                    "no Schematron rule files (*.sch) found in {}",
                    dir.display()
                ))
            }
            Ok(r) => Some(r),
            Err(e) => return cannot_run(e),
        },
        None => None,
    };

    let mut findings: Vec<Finding> = Vec::new();
    if let Some(x) = xsd.as_mut() {
        findings.extend(x.validate(&bytes));
    }
    findings.extend(ModelValidator::new(lists).validate_bytes(&bytes));
    if let Some(rules) = &rules {
        findings.extend(schematron_findings(rules, &bytes));
    }
    let doc = EdmDocument::parse(&bytes).ok();
    report(&args.file, doc.as_ref(), &findings, args.json)?;
    Ok(if has_fatal(&findings) {
        exit_problems()
    } else {
        ExitCode::SUCCESS
    })
}

/// Runs the applicable Schematron files; a document they cannot read is one fatal finding.
fn schematron_findings(rules: &RuleDir, bytes: &[u8]) -> Vec<Finding> {
    let unreadable = |msg: String| {
        vec![Finding::new(
            "SCH",
            Severity::Fatal,
            "/",
            format!("Schematron rules not run: {msg}"),
        )]
    };
    let Ok(text) = std::str::from_utf8(bytes) else {
        return unreadable("the document is not UTF-8".into());
    };
    match rules.validate(text) {
        Ok(f) => f,
        Err(e) => unreadable(e.to_string()),
    }
}

fn kind_name(doc: Option<&EdmDocument>) -> &'static str {
    match doc.map(EdmDocument::kind) {
        Some(EdmKind::Request) => "evidence request",
        Some(EdmKind::Response) => "evidence response",
        Some(EdmKind::Error) => "error response",
        None => "unreadable document",
    }
}

fn report(
    file: &Path,
    doc: Option<&EdmDocument>,
    findings: &[Finding],
    json: bool,
) -> anyhow::Result<()> {
    let count = |s: Severity| findings.iter().filter(|f| f.severity == s).count();
    let version = doc.and_then(EdmDocument::version).map(|v| v.identifier());
    if json {
        let out = serde_json::json!({
            "file": file.display().to_string(),
            "kind": kind_name(doc),
            "version": version,
            "valid": !has_fatal(findings),
            "fatal": count(Severity::Fatal),
            "warnings": count(Severity::Warning),
            "info": count(Severity::Info),
            "findings": findings,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!(
        "{}: {} ({})",
        file.display(),
        kind_name(doc),
        version.unwrap_or("EDM version unknown")
    );
    for f in findings {
        println!(
            "{:<7} {:<18} {}\n        {}",
            f.severity.to_string(),
            f.rule_id,
            f.location,
            f.message
        );
    }
    println!(
        "{} fatal, {} warning(s), {} info: {}",
        count(Severity::Fatal),
        count(Severity::Warning),
        count(Severity::Info),
        if has_fatal(findings) {
            "INVALID"
        } else {
            "valid"
        }
    );
    Ok(())
}
