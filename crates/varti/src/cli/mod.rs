//! The command line: one module per command group.

mod api;
mod audit;
mod certs;
mod console;
mod db;
mod demo;
mod demo_oots;
mod discover;
mod keys;
mod keystore;
mod message;
mod messages;
mod oots;
mod oots_cs;
mod oots_request;
mod ping;
mod pmode;
mod send;
mod serve;
mod token;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// The command ran and found problems (they have been printed): exit status 1.
#[allow(dead_code)] // used by the command modules as they land
pub fn exit_problems() -> ExitCode {
    ExitCode::from(1)
}

/// The command could not run (bad arguments, unreadable input): exit status 2.
pub fn exit_cannot_run() -> ExitCode {
    ExitCode::from(2)
}

/// Varti: an eDelivery AS4 access point with a built-in OOTS gateway.
///
/// Exit status: 0 when all is well, 1 when the command ran and found problems
/// (they are printed), 2 when it could not run at all.
#[derive(Debug, Parser)]
#[command(
    name = "varti",
    version,
    propagate_version = true,
    arg_required_else_help = true
)]
pub struct Cli {
    /// More log output on stderr (-v info, -vv debug, -vvv trace); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check, show and import PMode files (the agreements with partners).
    #[command(subcommand)]
    Pmode(pmode::PmodeCommand),
    /// Inspect AS4 messages dumped to files.
    #[command(subcommand)]
    Message(message::MessageCommand),
    /// Work with OOTS evidence exchange (EDM) documents.
    #[command(subcommand)]
    Oots(oots::OotsCommand),
    /// Run the access point (HTTPS MSH endpoint, backend API, /health, /ready, /metrics) until
    /// stopped.
    Serve(serve::ServeArgs),
    /// The store: check, recover, back up and restore the embedded store; migrate the
    /// PostgreSQL schema (for the active-active pair).
    #[command(subcommand)]
    Db(db::DbCommand),
    /// Send a test message to a partner and check its receipt (ebMS test service or the EC
    /// connectivity test).
    Ping(ping::PingArgs),
    /// Submit files as one AS4 message through the backend API of a running `varti serve`.
    ///
    /// The files become the message's payloads, in order; the PMode leg is found from
    /// --to, --service, --action (and --service-type, --agreement). The access point sends
    /// the message and retries per the leg; --wait follows it until the partner's receipt.
    /// The token comes from --token or VARTI_TOKEN, the API address from --api or VARTI_API.
    Send(send::SendArgs),
    /// List, search, show, download, acknowledge, retry and resend messages through the
    /// backend API (purge with an admin token).
    #[command(subcommand)]
    Messages(messages::MessagesCommand),
    /// Show the running access point (party, instance) and your messages by state.
    Status(messages::StatusArgs),
    /// Start two access points on this machine and exchange messages between them,
    /// showing each command: the first thing to run.
    Demo(demo::DemoArgs),
    /// Find a participant's access point and certificate through SML/BDXL and SMP, showing
    /// each step (DNS name, NAPTR, SMP URL, signature, endpoint, certificate).
    ///
    /// Exits 1 when a check fails (unsigned or wrongly signed answer, endpoint not active,
    /// transport profile not offered, untrusted certificate); --no-verify shows what the
    /// SMP says anyway, for diagnosis only.
    Discover(discover::DiscoverArgs),
    /// List and check the certificates in use: ours (configuration) and the partners'
    /// (PModes).
    #[command(subcommand)]
    Certs(certs::CertsCommand),
    /// Private keys in a PKCS#11 token (HSM): list the usable objects and their URIs.
    #[command(subcommand)]
    Keys(keys::KeysCommand),
    /// Make tokens for the backend API's clients.
    #[command(subcommand)]
    Token(token::TokenCommand),
    /// Read the audit trail of administrative acts (needs an admin token).
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// Reload PModes, certificates, CRLs and backend clients of a running `varti serve`
    /// without a restart (needs an admin token; SIGHUP does the same).
    ///
    /// The whole new set is checked first; on any error the old one stays and the errors
    /// are printed (exit status 1).
    Reload(audit::ReloadArgs),
    /// The operations console's local accounts (the console is served by `varti serve`
    /// at /console/).
    #[command(subcommand)]
    Console(console::ConsoleCommand),
}

impl Cli {
    /// True when the command sets up logging itself (`serve`: level and JSON format come
    /// from its configuration), so `main` must not install the default stderr logger.
    pub fn configures_own_logging(&self) -> bool {
        matches!(self.command, Command::Serve(_))
    }

    /// True when the command runs servers in this process (`serve`, `demo`): these keep
    /// SIGPIPE ignored, so that a closed socket or pipe can only fail one write and never
    /// kill the access point (see `main`).
    pub fn runs_servers(&self) -> bool {
        matches!(self.command, Command::Serve(_) | Command::Demo(_))
    }
}

/// Sets up `tracing` on stderr.
pub fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Runs the parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Pmode(cmd) => pmode::run(cmd),
        Command::Message(cmd) => message::run(cmd),
        Command::Oots(cmd) => oots::run(cmd),
        Command::Serve(args) => serve::run(args, cli.verbose),
        Command::Db(cmd) => db::run(cmd),
        Command::Ping(args) => ping::run(args),
        Command::Send(args) => send::run(args),
        Command::Messages(cmd) => messages::run(cmd),
        Command::Status(args) => messages::run_status(args),
        Command::Demo(args) => demo::run(args),
        Command::Discover(args) => discover::run(args),
        Command::Certs(cmd) => certs::run(cmd),
        Command::Keys(cmd) => keys::run(cmd),
        Command::Token(cmd) => token::run(cmd),
        Command::Audit(cmd) => audit::run(cmd),
        Command::Reload(args) => audit::run_reload(args),
        Command::Console(cmd) => console::run(cmd),
    }
}
