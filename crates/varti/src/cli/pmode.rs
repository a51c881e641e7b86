//! `varti pmode …`: check, show and import PMode files.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;
use serde_json::json;
use varti_as4::pmode::{self, Diagnostic, LoadOptions, PModeSet};

use super::{exit_cannot_run, exit_problems};

/// The `pmode` command group.
#[derive(Debug, Subcommand)]
pub enum PmodeCommand {
    /// Validate every PMode file of a directory and report every problem found
    /// (exit 1 when there is an error).
    Check {
        /// The directory holding the *.toml PMode files.
        dir: PathBuf,
        /// Print the result as JSON on stdout.
        #[arg(long)]
        json: bool,
        /// Judge certificate validity at this time instead of now (RFC 3339 date-time
        /// or YYYY-MM-DD), e.g. the day a new set goes live.
        #[arg(long, value_name = "WHEN")]
        at: Option<String>,
    },
    /// List the parties and legs of a PMode directory.
    Show {
        /// The directory holding the *.toml PMode files.
        dir: PathBuf,
        /// Print as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Convert a Domibus PMode XML into native PMode files, warning about what cannot be
    /// carried over.
    ImportDomibus {
        /// The Domibus PMode XML file.
        file: PathBuf,
        /// The directory to write the native files to (created if missing).
        #[arg(long)]
        out: PathBuf,
        /// Overwrite files that already exist in the output directory.
        #[arg(long)]
        force: bool,
    },
}

/// Runs a `pmode` command.
pub fn run(cmd: PmodeCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        PmodeCommand::Check { dir, json, at } => check(&dir, json, at.as_deref()),
        PmodeCommand::Show { dir, json } => show(&dir, json),
        PmodeCommand::ImportDomibus { file, out, force } => import(&file, &out, force),
    }
}

fn load(dir: &Path, at: Option<&str>) -> anyhow::Result<(PModeSet, Vec<Diagnostic>)> {
    if !dir.is_dir() {
        anyhow::bail!("{} is not a directory of PMode files", dir.display());
    }
    let options = match at {
        Some(at) => LoadOptions::at(at)?,
        None => LoadOptions::default(),
    };
    Ok(pmode::load_dir_with(dir, &options))
}

fn check(dir: &Path, as_json: bool, at: Option<&str>) -> anyhow::Result<ExitCode> {
    let (set, diags) = match load(dir, at) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e:#}");
            return Ok(exit_cannot_run());
        }
    };
    let errors = diags.iter().filter(|d| d.is_error()).count();
    let warnings = diags.len() - errors;
    if as_json {
        let list: Vec<_> = diags.iter().map(diagnostic_json).collect();
        let out = json!({
            "ok": errors == 0,
            "errors": errors,
            "warnings": warnings,
            "parties": set.parties.len(),
            "legs": set.legs.len(),
            "diagnostics": list,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        for d in &diags {
            println!("{d}");
        }
        println!(
            "{}: {} parties, {} legs; {} error(s), {} warning(s)",
            dir.display(),
            set.parties.len(),
            set.legs.len(),
            errors,
            warnings
        );
    }
    Ok(if errors > 0 {
        exit_problems()
    } else {
        ExitCode::SUCCESS
    })
}

fn diagnostic_json(d: &Diagnostic) -> serde_json::Value {
    json!({
        "severity": d.severity.as_str(),
        "file": d.location.file.display().to_string(),
        "line": d.location.line,
        "column": d.location.column,
        "message": d.message,
        "hint": d.hint,
    })
}

fn show(dir: &Path, as_json: bool) -> anyhow::Result<ExitCode> {
    let (set, diags) = match load(dir, None) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e:#}");
            return Ok(exit_cannot_run());
        }
    };
    let errors = diags.iter().filter(|d| d.is_error()).count();
    if as_json {
        let parties: Vec<_> = set
            .parties
            .iter()
            .map(|p| {
                json!({
                    "name": p.name,
                    "ids": p.ids.iter().map(|i| json!({"value": i.value, "type": i.id_type})).collect::<Vec<_>>(),
                    "endpoint": p.endpoint,
                })
            })
            .collect();
        let legs: Vec<_> = set
            .legs
            .iter()
            .map(|l| {
                json!({
                    "file": l.file.display().to_string(),
                    "process": l.process,
                    "leg": l.name,
                    "agreement": l.agreement.as_ref().map(|a| &a.value),
                    "service": l.service.value,
                    "service_type": l.service.service_type,
                    "action": l.action,
                    "from": l.from.parties,
                    "to": l.to.parties,
                    "mep": format!("{:?}", l.mep),
                    "binding": format!("{:?}", l.binding),
                })
            })
            .collect();
        let out = json!({"parties": parties, "legs": legs, "errors": errors});
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!("parties:");
        for p in &set.parties {
            let ids: Vec<String> = p.ids.iter().map(|i| i.to_string()).collect();
            println!(
                "  {:<16} {}  {}",
                p.name,
                p.endpoint.as_deref().unwrap_or("(no endpoint)"),
                ids.join(", ")
            );
        }
        println!("legs:");
        for l in &set.legs {
            println!(
                "  {}: {:?} {:?} | {} -> {} | service {}{} action {}{}",
                l.label(),
                l.mep,
                l.binding,
                l.from.parties.join(","),
                l.to.parties.join(","),
                l.service.value,
                l.service
                    .service_type
                    .as_deref()
                    .map(|t| format!(" (type {t})"))
                    .unwrap_or_default(),
                l.action,
                l.agreement
                    .as_ref()
                    .map(|a| format!(" agreement {}", a.value))
                    .unwrap_or_default(),
            );
        }
        if errors > 0 {
            eprintln!(
                "{errors} error(s): run `varti pmode check {}`",
                dir.display()
            );
        }
    }
    Ok(if errors > 0 {
        exit_problems()
    } else {
        ExitCode::SUCCESS
    })
}

fn import(file: &Path, out: &Path, force: bool) -> anyhow::Result<ExitCode> {
    let xml = std::fs::read(file).with_context(|| format!("reading {}", file.display()));
    let xml = match xml {
        Ok(x) => x,
        Err(e) => {
            eprintln!("error: {e:#}");
            return Ok(exit_cannot_run());
        }
    };
    let import = match pmode::domibus::convert(&xml, out) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("error: {}: {e}", file.display());
            return Ok(exit_problems());
        }
    };
    if let Err(e) = pmode::domibus::write(&import, out, force) {
        eprintln!("error: {e:#}");
        return Ok(exit_cannot_run());
    }
    for w in &import.warnings {
        eprintln!("{}: warning: {w}", file.display());
    }
    println!(
        "wrote {} file(s) to {}: {} parties, {} legs; {} warning(s). Next: provide the certificates, then run `varti pmode check {}`",
        import.files.len(),
        out.display(),
        import.party_count,
        import.leg_count,
        import.warnings.len(),
        out.display()
    );
    Ok(ExitCode::SUCCESS)
}
