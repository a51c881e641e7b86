//! `varti db …`: the PostgreSQL store's schema.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use serde_json::json;

use super::exit_cannot_run;

/// The `db` command group.
#[derive(Debug, Subcommand)]
pub enum DbCommand {
    /// Apply the PostgreSQL store's schema migrations that the database lacks.
    ///
    /// Migrations are versioned and applied in order, in one transaction, under an
    /// advisory lock, so running this from both instances of a pair at once is safe.
    /// Running it again on a current schema changes nothing. `varti serve` refuses to
    /// start on a schema older (or newer) than the binary.
    ///
    /// Example: varti db migrate --database "host=db1,db2 user=varti dbname=varti target_session_attrs=read-write"
    Migrate(MigrateArgs),
}

/// Arguments of `db migrate`.
#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// The PostgreSQL connection string (key=value or postgresql:// URL; several hosts
    /// allowed, with target_session_attrs=read-write to reach the primary).
    #[arg(long, env = "VARTI_DATABASE_URL")]
    pub database: String,
    /// Print one JSON document instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Runs a `db` command.
pub fn run(cmd: DbCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        DbCommand::Migrate(args) => migrate(args),
    }
}

fn migrate(args: MigrateArgs) -> anyhow::Result<ExitCode> {
    match varti_store::postgres::migrate(&args.database) {
        Ok(applied) => {
            let version = varti_store::postgres::SCHEMA_VERSION;
            if args.json {
                println!(
                    "{}",
                    json!({ "applied": applied, "schema_version": version })
                );
            } else if applied.is_empty() {
                println!("schema already at version {version}: nothing to apply");
            } else {
                let list: Vec<String> = applied.iter().map(i32::to_string).collect();
                println!(
                    "applied migration(s) {}; schema now at version {version}",
                    list.join(", ")
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            if args.json {
                println!("{}", json!({ "error": e.to_string() }));
            } else {
                eprintln!(
                    "error: cannot migrate the database: {e}\n  hint: check the connection string \
                     (host, port, user, dbname) and that the user may create tables"
                );
            }
            Ok(exit_cannot_run())
        }
    }
}
