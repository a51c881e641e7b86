//! `varti demo`: the first thing a new user runs. Two access points (varti-a, varti-b) start
//! on loopback with the test PKI and the shipped PModes and exchange messages, each step
//! printed with the command that does it, so the demo doubles as a tutorial:
//!
//! 1. `varti ping varti-b` — the ebMS test service, acknowledged with a signed receipt;
//! 2. `varti send` — a one-way message with two attachments, signed, encrypted, compressed;
//! 3. `varti messages list` on varti-b — the message arrived, once;
//! 4. a two-way exchange — b answers with RefToMessageId and the same ConversationId;
//! 5. the receipt a holds as evidence.
//!
//! Then the OOTS scene, steps 6 to 9 ([`super::demo_oots`]): look-ups on the stand-in
//! common services, an evidence request from a portal behind a to a provider behind b, and
//! the PDF evidence back.
//!
//! Every command runs this same binary as a child process against the two real servers.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Duration;

use anyhow::Context as _;
use varti::pair::{self, NodeLayout, PairLayout, PairOptions, Running};

use super::demo_oots::{FakeRegister, SceneInputs};

/// Arguments of `varti demo`.
#[derive(Debug, clap::Args)]
#[command(after_long_help = "Examples:\n  \
    varti demo                     # run the exchanges, then stop both access points\n  \
    varti demo --keep-running      # leave them up (Ctrl-C stops them) to try commands\n\n\
    Run it from the Varti source directory (it needs certs/ and pmodes/), or pass --from.\n\
    Exit status: 0 every exchange succeeded, 1 one failed (the step says which), 2 the demo \
    could not start.")]
pub struct DemoArgs {
    /// Directory holding certs/ (the test PKI) and pmodes/.
    #[arg(long, value_name = "DIR", default_value = ".")]
    from: PathBuf,
    /// Where to put the two access points' files (default: a temporary directory, removed
    /// at the end unless --keep-running).
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Leave both access points running after the exchanges, until Ctrl-C.
    #[arg(long)]
    keep_running: bool,
    /// In the OOTS scene, the provider needs the citizen's preview: the demo prints the
    /// preview link and waits (up to 10 minutes) while you log in at the test identity
    /// provider and approve or cancel in your browser.
    #[arg(long)]
    preview: bool,
    /// The interop vectors directory: the OOTS scene's stand-in common services replay
    /// France's recorded answers from it [default: FROM/../shared/vectors].
    #[arg(long, env = "VARTI_VECTORS", value_name = "DIR")]
    vectors: Option<PathBuf>,
    /// The specs directory (EDM examples and code lists) for the OOTS scene
    /// [default: FROM/../shared/specs].
    #[arg(long, env = "VARTI_SPECS", value_name = "DIR")]
    specs: Option<PathBuf>,
}

/// The demo's own agreement: a one-way leg and a two-way (push-and-push) pair of legs.
fn demo_pmodes() -> String {
    "# The agreement of `varti demo` between the two test access points.\n".to_string()
        + &pair::exchange_toml(
            ["demo-delivery", "demo-question"],
            ["urn:varti:demo", "urn:varti:demo:question"],
        )
}

/// Runs `varti demo`.
pub fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    if !args.from.join("certs/ca.cert.pem").is_file() || !args.from.join("pmodes").is_dir() {
        eprintln!(
            "error: {} has no certs/ca.cert.pem or pmodes/\n  hint: run `varti demo` from the Varti source directory, or pass --from DIR",
            args.from.display()
        );
        return Ok(super::exit_cannot_run());
    }
    let binary = std::env::current_exe().context("cannot find the varti binary")?;
    let scratch = tempfile::tempdir().context("cannot create a temporary directory")?;
    let root = match &args.dir {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
            d.clone()
        }
        None => scratch.path().to_owned(),
    };
    // The OOTS scene needs the published sample answers; without them it is left out.
    let shared = |given: &Option<PathBuf>, name: &str| {
        given
            .clone()
            .unwrap_or_else(|| args.from.join("../shared").join(name))
    };
    let oots = match SceneInputs::find(
        &shared(&args.vectors, "vectors"),
        &shared(&args.specs, "specs"),
    ) {
        Ok(inputs) => match FakeRegister::start() {
            Ok(register) => Some((inputs, register)),
            Err(e) => {
                eprintln!("error: cannot start the demo's fake register: {e}");
                return Ok(super::exit_cannot_run());
            }
        },
        Err(why) => {
            println!("Note: the OOTS scene is left out: {why}.\n");
            None
        }
    };
    let options = PairOptions {
        extra_pmodes: vec![("demo.toml".into(), demo_pmodes())],
        extra_config: oots
            .as_ref()
            .map(|(inputs, register)| inputs.config(&register.url))
            .unwrap_or_default(),
        ..PairOptions::default()
    };
    let layout = PairLayout::create(&root, &args.from, &options)
        .with_context(|| format!("cannot lay out the access points in {}", root.display()))?;
    // With --preview, varti-b (the provider) also runs the preview space.
    let preview_port = match (&oots, args.preview) {
        (Some((inputs, register)), true) => {
            let port = pair::free_port().context("cannot find a free port")?;
            let ca = std::fs::canonicalize(args.from.join("certs/ca.cert.pem"))
                .context("cannot find certs/ca.cert.pem")?;
            // The key that encrypts the evidence held for previews in varti-b's store.
            let key = layout.b.dir.join("preview-evidence.key");
            let mut bytes = [0u8; 32];
            openssl::rand::rand_bytes(&mut bytes).context("no random bytes for the preview key")?;
            let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            std::fs::write(&key, hex).context("cannot write the preview evidence key")?;
            layout
                .rewrite_config(
                    &layout.b,
                    &format!(
                        "{}{}",
                        inputs.config_with(&register.url, true),
                        super::demo_oots::preview_config(port, &ca, &key)
                    ),
                )
                .context("cannot write varti-b's configuration")?;
            Some(port)
        }
        _ => None,
    };
    println!(
        "Varti demo: two access points on this machine ({})\n",
        root.display()
    );
    let mut running: Vec<Running> = Vec::new();
    for node in [&layout.a, &layout.b] {
        match pair::start(&binary, node, Duration::from_secs(30)) {
            Ok(r) => {
                println!(
                    "  started {}  AS4 https://127.0.0.1:{}/msh  backend API http://127.0.0.1:{}  (log: {})",
                    node.party,
                    node.ports.msh,
                    node.ports.backend,
                    r.log.display()
                );
                running.push(r);
            }
            Err(e) => {
                eprintln!("error: cannot start {}: {e}", node.party);
                stop(&mut running);
                return Ok(super::exit_cannot_run());
            }
        }
    }
    let outcome = exchanges(&binary, &layout).and_then(|()| match &oots {
        Some((inputs, register)) => {
            super::demo_oots::run(&binary, &layout, inputs, register, preview_port)
        }
        None => Ok(()),
    });
    if args.keep_running && outcome.is_ok() {
        println!("\nBoth access points keep running; try the commands above with a node's token:");
        for node in [&layout.a, &layout.b] {
            println!(
                "  {}: TOKEN={} (backend API http://{})",
                node.party,
                node.token,
                node.backend()
            );
        }
        println!("Ctrl-C stops them.");
        let _ = wait_for_ctrl_c();
    }
    stop(&mut running);
    match outcome {
        Ok(()) => {
            println!("\nDemo complete: every message was acknowledged with a signed receipt and delivered once.");
            if oots.is_some() {
                println!("The OOTS evidence request was answered with the register's PDF, carried over AS4.");
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(step) => {
            eprintln!("\nDemo failed at: {step}");
            for (node, r) in [&layout.a, &layout.b].iter().zip(&running) {
                eprintln!("--- {} log ---\n{}", node.party, r.log_text());
            }
            Ok(super::exit_problems())
        }
    }
}

/// The scripted exchanges; `Err` names the step that failed.
fn exchanges(binary: &Path, layout: &PairLayout) -> Result<(), String> {
    let (a, b) = (&layout.a, &layout.b);
    step(
        "1. ping varti-b with the ebMS test service (acknowledged, never delivered)",
        binary,
        &a.dir,
        &["ping", "varti-b", "--config", "varti.toml"],
    )?;
    let files = layout.root.join("files");
    std::fs::create_dir_all(&files).map_err(|e| e.to_string())?;
    let invoice = files.join("invoice.xml");
    let scan = files.join("scan.txt");
    std::fs::write(
        &invoice,
        "<invoice><total currency=\"EUR\">42.00</total></invoice>\n",
    )
    .map_err(|e| e.to_string())?;
    std::fs::write(
        &scan,
        "Sveiki! A plain-text attachment, gzip-compressed on the wire.\n".repeat(50),
    )
    .map_err(|e| e.to_string())?;
    let sent = step_json(
        "2. send a one-way message with two attachments from varti-a to varti-b (signed, encrypted, compressed)",
        binary,
        a,
        &[
            "send", "--to", "varti-b", "--service", "urn:varti:demo", "--action", "Deliver",
            "--wait", "30",
            path(&invoice), path(&scan),
        ],
    )?;
    let id = sent["message_id"]
        .as_str()
        .ok_or("no message id")?
        .to_owned();
    step(
        "3. varti-b's backend lists what arrived",
        binary,
        &b.dir,
        &with_api(b, &["messages", "list", "--direction", "inbound"]),
    )?;
    let question = files.join("question.xml");
    std::fs::write(&question, "<question>Is the invoice paid?</question>\n")
        .map_err(|e| e.to_string())?;
    let asked = step_json(
        "4a. two-way: varti-a asks",
        binary,
        a,
        &[
            "send",
            "--to",
            "varti-b",
            "--service",
            "urn:varti:demo:question",
            "--action",
            "Ask",
            "--conversation-id",
            "demo-conversation-1",
            "--wait",
            "30",
            path(&question),
        ],
    )?;
    let ask_id = asked["message_id"]
        .as_str()
        .ok_or("no message id")?
        .to_owned();
    let answer = files.join("answer.xml");
    std::fs::write(&answer, "<answer>Yes, on 2026-11-30.</answer>\n").map_err(|e| e.to_string())?;
    step_json(
        "4b. two-way: varti-b answers, referring to the question",
        binary,
        b,
        &[
            "send",
            "--to",
            "varti-a",
            "--service",
            "urn:varti:demo:question",
            "--action",
            "Answer",
            "--conversation-id",
            "demo-conversation-1",
            "--ref-to",
            &ask_id,
            "--wait",
            "30",
            path(&answer),
        ],
    )?;
    step(
        "4c. varti-a's backend sees the answer (RefToMessageId = the question)",
        binary,
        &a.dir,
        &with_api(a, &["messages", "list", "--direction", "inbound"]),
    )?;
    step(
        "5. the evidence varti-a keeps for the first message: state, attempts and the receipt",
        binary,
        &a.dir,
        &with_api(a, &["messages", "show", &id]),
    )?;
    Ok(())
}

pub(super) fn path(p: &Path) -> &str {
    p.to_str().unwrap_or_default()
}

/// `args` plus the node's API address and token.
pub(super) fn with_api<'a>(node: &'a NodeLayout, args: &[&'a str]) -> Vec<String> {
    let mut v: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    v.push("--api".into());
    v.push(format!("http://127.0.0.1:{}", node.ports.backend));
    v.push("--token".into());
    v.push(node.token.clone());
    v
}

/// Runs one command, printing it and its output.
pub(super) fn step<S: AsRef<str>>(
    title: &str,
    binary: &Path,
    cwd: &Path,
    args: &[S],
) -> Result<String, String> {
    println!("\n{title}\n  $ varti {}", shown(args));
    let out = Command::new(binary)
        .current_dir(cwd)
        .args(args.iter().map(|a| a.as_ref()))
        .output()
        .map_err(|e| format!("{title}: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    for line in stdout
        .lines()
        .chain(String::from_utf8_lossy(&out.stderr).lines())
    {
        println!("    {line}");
    }
    if !out.status.success() {
        return Err(format!("{title} (exit {:?})", out.status.code()));
    }
    Ok(stdout)
}

/// Runs a `send` with `--json`, printing a summary, and returns the JSON.
fn step_json(
    title: &str,
    binary: &Path,
    node: &NodeLayout,
    args: &[&str],
) -> Result<serde_json::Value, String> {
    let mut args = with_api(node, args);
    args.push("--json".into());
    let out = step(title, binary, &node.dir, &args)?;
    serde_json::from_str(out.trim()).map_err(|e| format!("{title}: not JSON ({e})"))
}

/// A command line as a user would type it (the token shortened).
fn shown<S: AsRef<str>>(args: &[S]) -> String {
    let mut hide = false;
    args.iter()
        .map(|a| {
            let a = a.as_ref();
            let s = if hide {
                "$TOKEN".to_owned()
            } else if a.contains(' ') {
                format!("'{a}'")
            } else {
                a.to_owned()
            };
            hide = a == "--token";
            s
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Stops the servers with SIGTERM (graceful), then waits for them.
fn stop(running: &mut [Running]) {
    for r in running.iter() {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(r.child.id().to_string())
            .status();
    }
    for r in running.iter_mut() {
        let _ = r.child.wait();
    }
}

fn wait_for_ctrl_c() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(tokio::signal::ctrl_c())?;
    Ok(())
}
