//! `varti console …`: the operations console's local accounts.
//!
//! The accounts live in the store (`varti serve` reads them from there on every login),
//! so the command opens the store the configuration names. The embedded store (sled)
//! allows one process at a time: run it before `varti serve` starts, or use the
//! PostgreSQL store, which any number of processes share.

use std::io::{BufRead, IsTerminal};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use serde_json::json;
use time::OffsetDateTime;
use varti::config::{Config, StoreKind};
use varti_access_point::console::{hash_password, Role};
use varti_store::{AuditOutcome, ConsoleUser, NewAuditEntry, SledStore, Store};

use super::exit_cannot_run;

/// The `console` command group.
#[derive(Debug, Subcommand)]
pub enum ConsoleCommand {
    /// Manage the console's local accounts.
    #[command(subcommand)]
    User(UserCommand),
}

/// `console user …`.
#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Create an account, or change an existing one's role and password.
    ///
    /// Roles: viewer (reads everything but payloads), operator (also downloads payloads,
    /// retries, resends, acknowledges), admin (also purges and reloads). The password is
    /// read from the first line of stdin (or VARTI_CONSOLE_PASSWORD); only its argon2id
    /// hash is stored. The act is written to the audit trail.
    ///
    /// Example: printf '%s\n' "$PW" | varti console user add anna --role operator --config varti.toml
    Add(AddArgs),
    /// List the accounts (name, role, when created and changed).
    List(StoreArgs),
    /// Remove an account; its sessions end at once.
    ///
    /// Exit status: 0 removed, 1 there was no such account.
    Remove(RemoveArgs),
}

/// Which store: the configuration file's.
#[derive(Debug, Args)]
pub struct StoreArgs {
    /// The configuration file naming the store (store.kind, store.path or store.url).
    #[arg(long, value_name = "FILE", default_value = "varti.toml")]
    pub config: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `console user add`.
#[derive(Debug, Args)]
pub struct AddArgs {
    /// The login name.
    pub name: String,
    /// viewer, operator or admin.
    #[arg(long, value_parser = ["viewer", "operator", "admin"])]
    pub role: String,
    #[command(flatten)]
    pub store: StoreArgs,
}

/// Arguments of `console user remove`.
#[derive(Debug, Args)]
pub struct RemoveArgs {
    /// The login name.
    pub name: String,
    #[command(flatten)]
    pub store: StoreArgs,
}

/// Runs a `console` command.
pub fn run(cmd: ConsoleCommand) -> anyhow::Result<ExitCode> {
    let ConsoleCommand::User(cmd) = cmd;
    match cmd {
        UserCommand::Add(args) => add(args),
        UserCommand::List(args) => list(args),
        UserCommand::Remove(args) => remove(args),
    }
}

fn open(args: &StoreArgs) -> anyhow::Result<Arc<dyn Store>> {
    let config = if args.config.exists() {
        Config::load(&args.config)?
    } else {
        anyhow::bail!(
            "no configuration file {}: name the one `varti serve` uses with --config FILE",
            args.config.display()
        );
    };
    Ok(match config.store.kind {
        StoreKind::Sled => {
            let path = config.store_path();
            Arc::new(SledStore::open(&path).with_context(|| {
                format!(
                    "cannot open the store at {} (the embedded store allows one process: stop \
                     varti serve first, or use the PostgreSQL store)",
                    path.display()
                )
            })?)
        }
        StoreKind::Postgres => Arc::new(
            varti_store::postgres::PgStore::connect(
                config.store.url.as_deref().unwrap_or_default(),
            )
            .context("cannot open the PostgreSQL store (store.url)")?,
        ),
    })
}

fn audit(store: &dyn Store, action: &str, subject: &str, details: serde_json::Value) {
    let entry = NewAuditEntry {
        instance: "cli".into(),
        actor: "local".into(),
        action: action.into(),
        subject: subject.into(),
        outcome: AuditOutcome::Ok,
        details,
    };
    if let Err(e) = store.append_audit(entry, OffsetDateTime::now_utc()) {
        eprintln!("warning: the act is done but could not be audited: {e}");
    }
}

fn add(args: AddArgs) -> anyhow::Result<ExitCode> {
    let role = Role::parse(&args.role).expect("clap checked the role");
    let password = match std::env::var("VARTI_CONSOLE_PASSWORD") {
        Ok(p) => p,
        Err(_) => {
            if std::io::stdin().is_terminal() {
                eprintln!("password (one line, not echoed back by varti; input is visible):");
            }
            let mut line = String::new();
            std::io::stdin()
                .lock()
                .read_line(&mut line)
                .context("cannot read the password from stdin")?;
            line.trim_end_matches(['\r', '\n']).to_owned()
        }
    };
    if password.chars().count() < 12 {
        eprintln!(
            "error: the password is shorter than 12 characters\nhint: give a longer one on \
             stdin or in VARTI_CONSOLE_PASSWORD"
        );
        return Ok(exit_cannot_run());
    }
    let hash = hash_password(&password).map_err(anyhow::Error::msg)?;
    let store = open(&args.store)?;
    let now = OffsetDateTime::now_utc();
    let existing = store.console_user(&args.name)?;
    let user = ConsoleUser {
        name: args.name.clone(),
        role: role.as_str().into(),
        password_hash: hash,
        created_at: existing.as_ref().map_or(now, |u| u.created_at),
        updated_at: now,
    };
    store.put_console_user(&user)?;
    let action = if existing.is_some() {
        "console.user.change"
    } else {
        "console.user.add"
    };
    audit(&*store, action, &args.name, json!({"role": role.as_str()}));
    if args.store.json {
        println!(
            "{}",
            json!({"name": args.name, "role": role.as_str(), "created": existing.is_none()})
        );
    } else if existing.is_some() {
        println!("changed console user {} (role {role})", args.name);
    } else {
        println!("added console user {} (role {role})", args.name);
    }
    Ok(ExitCode::SUCCESS)
}

fn list(args: StoreArgs) -> anyhow::Result<ExitCode> {
    let store = open(&args)?;
    let users = store.list_console_users()?;
    if args.json {
        let users: Vec<_> = users
            .iter()
            .map(|u| json!({"name": u.name, "role": u.role, "created_at": u.created_at.to_string(), "updated_at": u.updated_at.to_string()}))
            .collect();
        println!("{}", json!({ "users": users }));
    } else {
        for u in &users {
            println!("{}\t{}\t{}", u.name, u.role, u.updated_at);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn remove(args: RemoveArgs) -> anyhow::Result<ExitCode> {
    let store = open(&args.store)?;
    if store.remove_console_user(&args.name)? {
        audit(&*store, "console.user.remove", &args.name, json!(null));
        if !args.store.json {
            println!("removed console user {}", args.name);
        } else {
            println!("{}", json!({"name": args.name, "removed": true}));
        }
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!(
            "error: there is no console user {}\nhint: `varti console user list` shows them",
            args.name
        );
        Ok(super::exit_problems())
    }
}
