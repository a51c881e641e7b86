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
    ///
    /// Writes one file per party, one per process, and `profiles.toml` with every profile
    /// (security, retry, …) once, shared by the process files. With --keystore, the
    /// partners' certificates are exported from the Domibus truststore (JKS or PKCS#12, one
    /// entry per party under the party's name) into OUT/certs/ and referenced.
    ///
    /// Examples:
    ///   varti pmode import-domibus pmode.xml --out pmodes/
    ///   VARTI_STOREPASS=… varti pmode import-domibus pmode.xml --out pmodes/ \
    ///       --keystore gateway_truststore.jks
    #[command(verbatim_doc_comment)]
    ImportDomibus {
        /// The Domibus PMode XML file.
        file: PathBuf,
        /// The directory to write the native files to (created if missing).
        #[arg(long)]
        out: PathBuf,
        /// Overwrite files that already exist in the output directory.
        #[arg(long)]
        force: bool,
        /// The Domibus truststore (or keystore) to export the parties' certificates from:
        /// .jks or .p12. Private keys are never read.
        #[arg(long, value_name = "FILE")]
        keystore: Option<PathBuf>,
        /// The keystore's password (prefer the environment variable: arguments are visible
        /// to other users in the process list).
        #[arg(
            long,
            env = "VARTI_STOREPASS",
            hide_env_values = true,
            requires = "keystore"
        )]
        storepass: Option<String>,
    },
}

/// Runs a `pmode` command.
pub fn run(cmd: PmodeCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        PmodeCommand::Check { dir, json, at } => check(&dir, json, at.as_deref()),
        PmodeCommand::Show { dir, json } => show(&dir, json),
        PmodeCommand::ImportDomibus {
            file,
            out,
            force,
            keystore,
            storepass,
        } => import(
            &file,
            &out,
            force,
            keystore.as_deref(),
            storepass.as_deref(),
        ),
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

fn import(
    file: &Path,
    out: &Path,
    force: bool,
    keystore: Option<&Path>,
    storepass: Option<&str>,
) -> anyhow::Result<ExitCode> {
    let xml = std::fs::read(file).with_context(|| format!("reading {}", file.display()));
    let xml = match xml {
        Ok(x) => x,
        Err(e) => {
            eprintln!("error: {e:#}");
            return Ok(exit_cannot_run());
        }
    };
    if let Some(keystore) = keystore {
        // Convert once first: a PMode that cannot be imported, or files that would not be
        // overwritten, leave no certificates behind.
        let first = match pmode::domibus::convert(&xml, out) {
            Ok(i) => i,
            Err(e) => {
                eprintln!("error: {}: {e}", file.display());
                return Ok(exit_problems());
            }
        };
        if let Some((name, _)) = first
            .files
            .iter()
            .find(|(n, _)| !force && out.join(n).exists())
        {
            eprintln!(
                "error: {} already exists; use --force to overwrite, or choose another --out",
                out.join(name).display()
            );
            return Ok(exit_cannot_run());
        }
        let Some(storepass) = storepass else {
            eprintln!("error: --keystore needs the keystore's password: set VARTI_STOREPASS (or --storepass)");
            return Ok(exit_cannot_run());
        };
        match export_certificates(keystore, storepass, out, force) {
            Ok(written) => {
                for (alias, path) in &written {
                    println!(
                        "exported '{alias}' from {} to {}",
                        keystore.display(),
                        path.display()
                    );
                }
            }
            Err(e) => {
                eprintln!("error: {}: {e:#}", keystore.display());
                return Ok(exit_problems());
            }
        }
    }
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
    let next = if keystore.is_some() {
        "Next: run"
    } else {
        "Next: provide the certificates, then run"
    };
    println!(
        "wrote {} file(s) to {}: {} parties, {} legs; {} warning(s). {next} `varti pmode check {}`",
        import.files.len(),
        out.display(),
        import.party_count,
        import.leg_count,
        import.warnings.len(),
        out.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Writes each certificate of the keystore to `out/certs/<alias>.cert.pem`, where the import
/// looks for a party's certificate (Domibus names truststore entries by party). Refuses to
/// replace an existing file unless `force`. Returns what was written.
fn export_certificates(
    keystore: &Path,
    storepass: &str,
    out: &Path,
    force: bool,
) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let entries = super::keystore::read(keystore, storepass)?;
    if entries.is_empty() {
        anyhow::bail!("the keystore holds no certificate");
    }
    let certs = out.join("certs");
    let mut planned = Vec::new();
    for e in &entries {
        // An alias becomes a file name: keep it to what a party name can be.
        if e.alias.is_empty()
            || !e
                .alias
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            || e.alias.starts_with('.')
        {
            anyhow::bail!(
                "entry alias '{}' cannot be a file name; export it by hand with keytool",
                e.alias
            );
        }
        let path = certs.join(format!("{}.cert.pem", e.alias));
        if path.exists() && !force {
            anyhow::bail!(
                "{} already exists; use --force to overwrite, or choose another --out",
                path.display()
            );
        }
        planned.push((e, path));
    }
    std::fs::create_dir_all(&certs).with_context(|| format!("creating {}", certs.display()))?;
    let mut written = Vec::new();
    for (e, path) in planned {
        let pem = e.cert.to_pem()?;
        std::fs::write(&path, pem).with_context(|| format!("writing {}", path.display()))?;
        written.push((e.alias.clone(), path));
    }
    Ok(written)
}
