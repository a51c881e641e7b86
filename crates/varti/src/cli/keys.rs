//! `varti keys …`: private keys in a PKCS#11 token (HSM).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use serde_json::json;
use varti_as4::security::pkcs11;

use super::exit_cannot_run;

/// The `keys` command group.
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// List the objects of a PKCS#11 token (private keys after login), each with the
    /// `pkcs11:` URI to put in a private-key setting ([identity] signing_key,
    /// encryption_key, [tls] key, or --key).
    ///
    /// Without a PIN only public objects are listed. Private keys should show
    /// `extractable: no`: their material never leaves the token.
    ///
    /// Example: varti keys list --module /usr/lib/softhsm/libsofthsm2.so --token varti
    ///          --pin-source file:/etc/varti/hsm.pin
    List(ListArgs),
}

/// Arguments of `keys list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// The PKCS#11 module (shared library). Default: VARTI_PKCS11_MODULE.
    #[arg(long, env = "VARTI_PKCS11_MODULE")]
    pub module: Option<PathBuf>,
    /// Only this token (its label). Default: every initialised token.
    #[arg(long)]
    pub token: Option<String>,
    /// A file whose first line is the user PIN (`file:` prefix optional).
    #[arg(long)]
    pub pin_source: Option<String>,
    /// Print one JSON document instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Runs a `keys` command.
pub fn run(cmd: KeysCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        KeysCommand::List(args) => list(args),
    }
}

fn list(args: ListArgs) -> anyhow::Result<ExitCode> {
    let Some(module) = args.module else {
        eprintln!("error: give the PKCS#11 module with --module PATH or VARTI_PKCS11_MODULE (e.g. /usr/lib/softhsm/libsofthsm2.so)");
        return Ok(exit_cannot_run());
    };
    let pin = match &args.pin_source {
        None => None,
        Some(p) => {
            let path = p.strip_prefix("file:").unwrap_or(p);
            match std::fs::read_to_string(path) {
                Ok(t) => Some(t.lines().next().unwrap_or("").to_string()),
                Err(e) => {
                    eprintln!("error: cannot read the PIN file {path}: {e}");
                    return Ok(exit_cannot_run());
                }
            }
        }
    };
    let tokens = match pkcs11::list_objects(&module, args.token.as_deref(), pin.as_deref()) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(exit_cannot_run());
        }
    };
    if let Some(t) = &args.token {
        if tokens.is_empty() {
            eprintln!(
                "error: no initialised token labelled '{t}' in {}; run without --token to see them all",
                module.display()
            );
            return Ok(exit_cannot_run());
        }
    }
    if args.json {
        let doc: Vec<_> = tokens
            .iter()
            .map(|t| {
                json!({
                    "token": t.label,
                    "serial": t.serial,
                    "objects": t.objects.iter().map(|o| json!({
                        "class": o.class,
                        "key_type": o.key_type,
                        "label": o.label,
                        "id": o.id,
                        "extractable": o.extractable,
                        "uri": o.uri,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(ExitCode::SUCCESS);
    }
    for t in &tokens {
        println!("token {} (serial {})", t.label, t.serial);
        if t.objects.is_empty() {
            println!(
                "  no objects{}",
                if pin.is_none() {
                    " (give --pin-source to see private keys)"
                } else {
                    ""
                }
            );
        }
        for o in &t.objects {
            let extractable = match o.extractable {
                Some(true) => "  extractable: YES (the key material can leave the token)",
                Some(false) => "  extractable: no",
                None => "",
            };
            println!(
                "  {:<12} {:<11} {:<24} id {:<6}{extractable}\n      {}",
                o.class, o.key_type, o.label, o.id, o.uri
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
