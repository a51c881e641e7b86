//! `varti audit …` and `varti reload`: the administrators' acts on a running `varti serve`,
//! through its backend API (an admin token).

use std::process::ExitCode;

use clap::{Args, Subcommand};

use super::api::{pretty, s, segment, Api, ApiArgs, Failure};

/// The `audit` command group.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// List the audit trail, oldest first: start-up loads and reloads (with each file's
    /// SHA-256), purges, resends, acknowledgements by an administrator, the first use of
    /// each client's token after an instance started.
    ///
    /// Needs an admin token. On a pair sharing PostgreSQL the trail is shared: entries of
    /// both instances, each naming its instance.
    ///
    /// Examples:
    ///   VARTI_TOKEN=$ADMIN_TOKEN varti audit list
    ///   varti audit list --since 2026-05-01T00:00:00Z --limit 20
    ///   varti audit list --json | jq -r '.entries[] | [.at, .actor, .action, .outcome] | @tsv'
    ///
    /// Exit status: 0 listed, 2 the API cannot be reached or refused the token (403: not
    /// an admin token).
    #[command(verbatim_doc_comment)]
    List(ListArgs),
}

/// Arguments of `audit list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only entries at or after this time (RFC 3339, e.g. 2026-05-01T00:00:00Z).
    #[arg(long, value_name = "TIME")]
    since: Option<String>,
    /// At most this many (1 to 1000).
    #[arg(long, default_value_t = 100)]
    limit: u32,
    /// Continue after this entry number (printed at the end of a full page).
    #[arg(long, value_name = "CURSOR")]
    after: Option<String>,
    #[command(flatten)]
    api: ApiArgs,
}

/// Arguments of `varti reload`.
#[derive(Debug, Args)]
#[command(after_long_help = "\
What is reloaded: the PModes, our certificates and keys (identity), the partners'
certificates and CRLs, and the backend clients ([[backend.clients]]: tokens, admin,
services). The whole set is checked first, with the checks `varti serve` makes at start-up
and those of `varti certs check`; on any error nothing changes and the errors are printed.
Messages being sent or received finish under the set they started with.

Settings only a restart applies (listeners, [tls], [client], [sender], [limits],
[retention], webhooks, the pull channels) are reported as \"needs restart\".

`kill -HUP <pid>` (systemctl reload varti) does the same and logs the outcome. Each reload,
applied or refused, is in the audit trail (varti audit list).

Examples:
  VARTI_TOKEN=$ADMIN_TOKEN varti reload
  varti reload --api http://varti-b.internal:8480 --json

Exit status: 0 reloaded, 1 refused (the old set stays; the errors are printed), 2 the API
cannot be reached or refused the token.")]
pub struct ReloadArgs {
    #[command(flatten)]
    api: ApiArgs,
}

/// Runs an `audit` command.
pub fn run(cmd: AuditCommand) -> anyhow::Result<ExitCode> {
    let (json, result) = match cmd {
        AuditCommand::List(a) => (a.api.json, list(&a)),
    };
    Ok(result.unwrap_or_else(|f| f.report(json)))
}

/// Runs `varti reload`.
pub fn run_reload(args: ReloadArgs) -> anyhow::Result<ExitCode> {
    let json = args.api.json;
    Ok(reload(&args).unwrap_or_else(|f| f.report(json)))
}

fn list(a: &ListArgs) -> Result<ExitCode, Failure> {
    if let Some(since) = &a.since {
        if time::OffsetDateTime::parse(since, &time::format_description::well_known::Rfc3339)
            .is_err()
        {
            return Err(Failure::cannot_run(
                format!("--since `{since}` is not an RFC 3339 time"),
                "give a time like 2026-05-01T00:00:00Z",
            ));
        }
    }
    let api = Api::new(&a.api)?;
    let mut query = format!("limit={}", a.limit);
    if let Some(t) = &a.since {
        query.push_str(&format!("&since={}", segment(t)));
    }
    if let Some(c) = &a.after {
        query.push_str(&format!("&after={}", segment(c)));
    }
    let answer = api.get(&format!("/audit?{query}"))?;
    if a.api.json {
        println!("{}", pretty(&answer));
        return Ok(ExitCode::SUCCESS);
    }
    let entries = answer["entries"].as_array().cloned().unwrap_or_default();
    if entries.is_empty() {
        println!("no audit entries");
    } else {
        println!(
            "{:>6}  {:<20}  {:<16}  {:<12}  {:<16}  {:<8}  SUBJECT",
            "#", "AT", "INSTANCE", "ACTOR", "ACTION", "OUTCOME"
        );
    }
    for e in &entries {
        println!(
            "{:>6}  {:<20}  {:<16}  {:<12}  {:<16}  {:<8}  {}",
            s(&e["seq"]),
            s(&e["at"]).chars().take(20).collect::<String>(),
            s(&e["instance"]),
            s(&e["actor"]),
            s(&e["action"]),
            s(&e["outcome"]),
            s(&e["subject"]),
        );
        // What an operator reads first: what changed and what went wrong.
        let d = &e["details"];
        for (label, key) in [
            ("change", "changes"),
            ("needs restart", "needs_restart"),
            ("error", "errors"),
        ] {
            for item in d[key].as_array().into_iter().flatten() {
                println!("{:>8}{label}: {}", "", s(item));
            }
        }
        if let Some(error) = d["error"].as_str() {
            println!("{:>8}error: {error}", "");
        }
    }
    if let Some(next) = answer["next"].as_str() {
        println!("more: varti audit list --after {next}");
    }
    Ok(ExitCode::SUCCESS)
}

fn reload(a: &ReloadArgs) -> Result<ExitCode, Failure> {
    let api = Api::new(&a.api)?;
    // A refusal (422) comes back as a Failure whose error lists every problem: exit 1.
    let answer = api.post("/admin/reload")?;
    if a.api.json {
        println!("{}", pretty(&answer));
        return Ok(ExitCode::SUCCESS);
    }
    let changes = answer["changes"].as_array().cloned().unwrap_or_default();
    if changes.is_empty() {
        println!(
            "reloaded (generation {}): nothing changed",
            s(&answer["generation"])
        );
    } else {
        println!("reloaded (generation {}):", s(&answer["generation"]));
        for c in &changes {
            println!("  {}", s(c));
        }
    }
    for r in answer["needs_restart"].as_array().into_iter().flatten() {
        println!(
            "needs restart: {} differs from the running value; restart varti serve to apply it",
            s(r)
        );
    }
    Ok(ExitCode::SUCCESS)
}
