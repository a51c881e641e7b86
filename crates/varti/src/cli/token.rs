//! `varti token …`: backend API tokens.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use serde_json::json;

/// The `token` command group.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Make a new random token for a backend client of the API.
    ///
    /// Prints the token (give it to the backend system; it is shown only now, Varti keeps
    /// only its SHA-256) and the `[[backend.clients]]` lines to paste into the
    /// configuration. Nothing is written: the configuration is yours to edit.
    ///
    /// Example: varti token new --client portal
    New(NewArgs),
}

/// Arguments of `token new`.
#[derive(Debug, Args)]
pub struct NewArgs {
    /// The backend client's name in the configuration (`backend.clients.name`).
    #[arg(long, default_value = "portal")]
    pub client: String,
    /// Print one JSON document (client, token, token_sha256) instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Runs a `token` command.
pub fn run(cmd: TokenCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        TokenCommand::New(args) => new(args),
    }
}

fn new(args: NewArgs) -> anyhow::Result<ExitCode> {
    // 32 bytes from the system's random generator: as strong as the SHA-256 kept of it.
    let mut bytes = [0u8; 32];
    openssl::rand::rand_bytes(&mut bytes)?;
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let sha = varti::pair::token_sha256(&token);
    if args.json {
        println!(
            "{}",
            json!({ "client": args.client, "token": token, "token_sha256": sha })
        );
    } else {
        println!(
            "Token for backend client `{}` (shown only now; Varti keeps its SHA-256):\n",
            args.client
        );
        println!("  {token}\n");
        println!("Add to the configuration (varti.toml), then restart varti serve:\n");
        println!(
            "  [[backend.clients]]\n  name = \"{}\"\n  token_sha256 = \"{sha}\"",
            args.client
        );
        println!("\nThe backend sends it as `Authorization: Bearer <token>` (varti send/messages: --token or VARTI_TOKEN).");
    }
    Ok(ExitCode::SUCCESS)
}
