//! Two access points on loopback — varti-a and varti-b with the repository's test PKI and
//! PModes — laid out in a directory and started as real `varti serve` processes. Used by
//! `varti demo`, the exchange benchmark and the integration tests.
//!
//! Layout under the root: `certs` (a link to the test PKI), `pmodes/` (the shipped partner
//! and agreement files with the endpoints rewritten to the chosen ports, plus any extra
//! files), and one directory per node with its `varti.toml` and its data.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The ports of one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ports {
    /// The MSH listener (AS4 over TLS).
    pub msh: u16,
    /// The operations listener.
    pub ops: u16,
    /// The backend API.
    pub backend: u16,
}

impl Ports {
    /// Three ports that were free a moment ago.
    pub fn pick() -> io::Result<Ports> {
        Ok(Ports {
            msh: free_port()?,
            ops: free_port()?,
            backend: free_port()?,
        })
    }
}

/// A port that was free a moment ago.
///
/// The port is chosen below the kernel's ephemeral range
/// (`/proc/sys/net/ipv4/ip_local_port_range`): a port from that range, released and bound
/// again later by a `varti serve`, can meanwhile become the local port of any outgoing
/// connection on the machine, which made a busy test run fail with "Address already in
/// use". Below the range only another explicit bind can take it. Each process walks its own
/// window (offset by its pid) so that concurrent processes seldom even try the same port,
/// and every candidate is checked with a bind.
pub fn free_port() -> io::Result<u16> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const LOWEST: u32 = 15_000;
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(0);
    if ephemeral_low > LOWEST + 1_000 {
        let span = ephemeral_low - LOWEST;
        let offset = std::process::id().wrapping_mul(7_919) % span;
        for _ in 0..span {
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let port = (LOWEST + (offset + n) % span) as u16;
            if TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return Ok(port);
            }
        }
    }
    // No usable room below the ephemeral range: let the OS pick.
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Where a node listens unless placed elsewhere.
const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// One node of the pair.
#[derive(Debug, Clone)]
pub struct NodeLayout {
    /// `a` or `b`.
    pub name: &'static str,
    /// Its party (`varti-a`, `varti-b`).
    pub party: &'static str,
    /// Its directory (working directory of its process; `varti.toml` inside).
    pub dir: PathBuf,
    /// The loopback address its listeners bind (127.0.0.1 unless placed elsewhere, e.g. a
    /// data centre's range in the two-DC tests).
    pub host: IpAddr,
    /// Its ports.
    pub ports: Ports,
    /// The API token of its backend client `portal`.
    pub token: String,
}

impl NodeLayout {
    /// The backend API address.
    pub fn backend(&self) -> SocketAddr {
        SocketAddr::new(self.host, self.ports.backend)
    }

    /// The MSH listener's address.
    pub fn msh(&self) -> SocketAddr {
        SocketAddr::new(self.host, self.ports.msh)
    }

    /// The operations listener's address.
    pub fn ops(&self) -> SocketAddr {
        SocketAddr::new(self.host, self.ports.ops)
    }
}

/// How the pair is laid out.
#[derive(Debug, Clone, Default)]
pub struct PairOptions {
    /// Extra PMode files (name, TOML text) written beside the shipped ones.
    pub extra_pmodes: Vec<(String, String)>,
    /// varti-b's endpoint port in the PModes when something (a proxy) stands in front of it.
    pub b_endpoint_port: Option<u16>,
    /// Extra lines appended to both configurations (e.g. a `[sender]` table).
    pub extra_config: String,
}

/// Both parties of the pair, as the initiators or responders of a process both may start.
pub const BOTH: &[&str] = &["varti-a", "varti-b"];

/// PMode TOML of named settings for an extra agreement ([`PairOptions::extra_pmodes`]):
/// `[security.NAME]` (`profile`, signed and encrypted, the certificate as a binary security
/// token), `[reception.NAME]` with the `reception` lines, and, when `compression` is given,
/// `[compression.NAME]` (enabled) with those lines.
pub fn settings_toml(
    name: &str,
    profile: &str,
    reception: &str,
    compression: Option<&str>,
) -> String {
    let mut toml = format!(
        "\n[security.{name}]\nprofile = \"{profile}\"\nsign = true\nencrypt = true\n\
         token_reference = \"bst\"\n\n[reception.{name}]\n{reception}"
    );
    if let Some(lines) = compression {
        toml += &format!("\n[compression.{name}]\nenabled = true\n{lines}");
    }
    toml
}

/// PMode TOML of one `[[process]]` for an extra agreement ([`PairOptions::extra_pmodes`]):
/// `binding` `push` or `pull` (one-way, one leg) or `pushAndPush` (two-way, the second leg
/// the reply to the first); `parties` the initiators and the responders; each leg `[name,
/// service, action]`, with the `leg_extra` lines (an MPC, named settings) on every leg.
pub fn process_toml(
    name: &str,
    binding: &str,
    [initiators, responders]: [&[&str]; 2],
    legs: &[[&str; 3]],
    leg_extra: &str,
) -> String {
    let mep = if binding == "pushAndPush" {
        "twoWay"
    } else {
        "oneWay"
    };
    let parties = |p: &[&str]| {
        let quoted: Vec<String> = p.iter().map(|p| format!("\"{p}\"")).collect();
        format!("{{ parties = [{}] }}", quoted.join(", "))
    };
    let mut toml = format!(
        "\n[[process]]\nname = \"{name}\"\nmep = \"{mep}\"\nbinding = \"{binding}\"\n\
         initiator = {}\nresponder = {}\n",
        parties(initiators),
        parties(responders)
    );
    for (i, [leg, service, action]) in legs.iter().enumerate() {
        toml += &format!(
            "\n[[process.leg]]\nname = \"{leg}\"\nservice = \"{service}\"\naction = \"{action}\"\n{leg_extra}"
        );
        if i > 0 {
            toml += "reply = true\n";
        }
    }
    toml
}

/// PMode TOML of the two processes of an exchange either party may start: `names[0]`, a
/// one-way push leg `deliver` (action Deliver on `services[0]`), and `names[1]`, a
/// two-way push-and-push pair of legs `ask` and `answer` (actions Ask and Answer on
/// `services[1]`).
pub fn exchange_toml(names: [&str; 2], services: [&str; 2]) -> String {
    let [delivery, question] = names;
    let [deliver, ask] = services;
    let one_way = [["deliver", deliver, "Deliver"]];
    let two_way = [["ask", ask, "Ask"], ["answer", ask, "Answer"]];
    process_toml(delivery, "push", [BOTH; 2], &one_way, "")
        + &process_toml(question, "pushAndPush", [BOTH; 2], &two_way, "")
}

/// The two nodes, written to disk.
#[derive(Debug, Clone)]
pub struct PairLayout {
    /// The root directory.
    pub root: PathBuf,
    /// varti-a.
    pub a: NodeLayout,
    /// varti-b.
    pub b: NodeLayout,
}

/// The shipped PMode files a pair uses.
const SHIPPED: &[&str] = &[
    "varti-a.toml",
    "varti-b.toml",
    "test-service.toml",
    "connectivity-test.toml",
    "oots.toml",
];

impl PairLayout {
    /// Writes the pair under `root` from the repository (or installation) directory `repo`,
    /// which holds `certs/` and `pmodes/`.
    pub fn create(root: &Path, repo: &Path, options: &PairOptions) -> io::Result<PairLayout> {
        let repo = repo.canonicalize()?;
        let certs = root.join("certs");
        if !certs.exists() {
            std::os::unix::fs::symlink(repo.join("certs"), &certs)?;
        }
        let (pa, pb) = (Ports::pick()?, Ports::pick()?);
        let pmodes = root.join("pmodes");
        std::fs::create_dir_all(&pmodes)?;
        let b_endpoint = options.b_endpoint_port.unwrap_or(pb.msh);
        for file in SHIPPED {
            let mut text = std::fs::read_to_string(repo.join("pmodes").join(file))?;
            for (host, shipped_port, port) in
                [("varti-a", 8443, pa.msh), ("varti-b", 9443, b_endpoint)]
            {
                text = text.replace(
                    &format!("https://{host}.localhost:{shipped_port}/msh"),
                    &format!("https://localhost:{port}/msh"),
                );
            }
            std::fs::write(pmodes.join(file), text)?;
        }
        for (name, text) in &options.extra_pmodes {
            std::fs::write(pmodes.join(name), text)?;
        }
        let node =
            |name: &'static str, party: &'static str, ports: Ports| -> io::Result<NodeLayout> {
                let node = NodeLayout {
                    name,
                    party,
                    dir: root.join(name),
                    host: LOCALHOST,
                    ports,
                    token: format!("token-{name}"),
                };
                std::fs::create_dir_all(&node.dir)?;
                std::fs::write(
                    node.dir.join("varti.toml"),
                    config_text(&node, &options.extra_config),
                )?;
                Ok(node)
            };
        Ok(PairLayout {
            root: root.to_owned(),
            a: node("a", "varti-a", pa)?,
            b: node("b", "varti-b", pb)?,
        })
    }

    /// Adds a second instance of `like`'s party (an active-active pair member): its own
    /// directory `root/<name>`, free ports and configuration (with `extra_config`), the same
    /// PModes, keys and backend token. The layout's `a` and `b` are left as they are.
    pub fn add_instance(
        &self,
        like: &NodeLayout,
        name: &'static str,
        extra_config: &str,
    ) -> io::Result<NodeLayout> {
        self.add_instance_at(like, name, LOCALHOST, extra_config)
    }

    /// Like [`PairLayout::add_instance`], with the new instance's listeners on `host` (a
    /// loopback address).
    pub fn add_instance_at(
        &self,
        like: &NodeLayout,
        name: &'static str,
        host: IpAddr,
        extra_config: &str,
    ) -> io::Result<NodeLayout> {
        let node = NodeLayout {
            name,
            party: like.party,
            dir: self.root.join(name),
            host,
            ports: Ports::pick()?,
            token: like.token.clone(),
        };
        std::fs::create_dir_all(&node.dir)?;
        self.rewrite_config(&node, extra_config)?;
        Ok(node)
    }

    /// Rewrites a node's configuration (after changing its ports or options).
    pub fn rewrite_config(&self, node: &NodeLayout, extra_config: &str) -> io::Result<()> {
        std::fs::write(node.dir.join("varti.toml"), config_text(node, extra_config))
    }
}

/// SHA-256 of a token, hex (what `backend.clients.token_sha256` holds).
pub fn token_sha256(token: &str) -> String {
    openssl::sha::sha256(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The `[identity]` table of `party` with its keys and certificates from the test PKI in
/// `certs` (`certs/<party>/sign.key.pem` and so on), trusting the CA `certs/ca.cert.pem`.
pub fn identity_toml(party: &str, certs: &str) -> String {
    let file = |name: &str| format!("\"{certs}/{party}/{name}.pem\"");
    format!(
        "[identity]\nparty = \"{party}\"\nsigning_key = {}\nsigning_cert = {}\n\
         encryption_key = {}\nencryption_cert = {}\ntrust_anchors = [\"{certs}/ca.cert.pem\"]\n",
        file("sign.key"),
        file("sign.cert"),
        file("enc.key"),
        file("enc.cert")
    )
}

fn config_text(node: &NodeLayout, extra: &str) -> String {
    let party = node.party;
    let identity = identity_toml(party, "../certs");
    format!(
        r#"# {party}: one node of a local pair (written by Varti; TEST keys only).
data_dir = "data"
pmodes_dir = "../pmodes"
[server]
listen = "{msh}"
shutdown_grace_secs = 5
[ops]
listen = "{ops}"
[tls]
cert = "../certs/{party}/tls.cert.pem"
key = "../certs/{party}/tls.key.pem"
client_ca = "../certs/ca.cert.pem"
client_auth = "required"
{identity}[backend]
listen = "{backend}"
[[backend.clients]]
name = "portal"
token_sha256 = "{sha}"
{extra}
"#,
        msh = node.msh(),
        ops = node.ops(),
        backend = node.backend(),
        sha = token_sha256(&node.token),
    )
}

/// A started `varti serve`.
#[derive(Debug)]
pub struct Running {
    /// The process.
    pub child: Child,
    /// Its log file (stderr).
    pub log: PathBuf,
}

impl Running {
    /// The log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Starts `binary serve --config varti.toml` in the node's directory, with stderr to
/// `serve.log` there, and waits (up to `within`) until its ready file appears.
pub fn start(binary: &Path, node: &NodeLayout, within: Duration) -> io::Result<Running> {
    let ready = node.dir.join("ready.json");
    let _ = std::fs::remove_file(&ready);
    let log = node.dir.join("serve.log");
    let child = Command::new(binary)
        .current_dir(&node.dir)
        .args([
            "serve",
            "--config",
            "varti.toml",
            "--ready-file",
            "ready.json",
        ])
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .spawn()?;
    let mut running = Running { child, log };
    let started = Instant::now();
    while !ready.exists() {
        if let Some(status) = running.child.try_wait()? {
            return Err(io::Error::other(format!(
                "{} exited with {status} before it was ready:\n{}",
                node.party,
                running.log_text()
            )));
        }
        if started.elapsed() > within {
            let _ = running.child.kill();
            return Err(io::Error::other(format!(
                "{} was not ready within {within:?}:\n{}",
                node.party,
                running.log_text()
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(running)
}
