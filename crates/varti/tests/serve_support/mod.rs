//! Shared by the `serve_*` tests: a throwaway PKI made with the openssl crate, and a
//! running `varti serve` child process.

#![allow(dead_code)] // each test binary uses a different subset

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use openssl::asn1::Asn1Time;
use openssl::bn::{BigNum, MsbOption};
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::ssl::{SslConnector, SslFiletype, SslMethod, SslStream, SslVerifyMode, SslVersion};
use openssl::x509::extension::{
    BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAlternativeName,
};
use openssl::x509::{X509NameBuilder, X509};

/// The repository root (holds `certs/` and `pmodes/`).
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// Paths of the generated PKI (all PEM).
pub struct Pki {
    pub ca_cert: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// A second, unrelated CA (for "untrusted" cases).
    pub other_ca_cert: PathBuf,
}

fn ec_key() -> PKey<Private> {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
    PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap()
}

fn serial() -> openssl::asn1::Asn1Integer {
    let mut bn = BigNum::new().unwrap();
    bn.rand(64, MsbOption::MAYBE_ZERO, false).unwrap();
    bn.to_asn1_integer().unwrap()
}

fn name(cn: &str) -> openssl::x509::X509Name {
    let mut b = X509NameBuilder::new().unwrap();
    b.append_entry_by_text("O", "Varti test").unwrap();
    b.append_entry_by_text("CN", cn).unwrap();
    b.build()
}

fn make_ca(cn: &str) -> (X509, PKey<Private>) {
    let key = ec_key();
    let mut b = X509::builder().unwrap();
    b.set_version(2).unwrap();
    b.set_serial_number(&serial()).unwrap();
    b.set_subject_name(&name(cn)).unwrap();
    b.set_issuer_name(&name(cn)).unwrap();
    b.set_pubkey(&key).unwrap();
    b.set_not_before(&Asn1Time::days_from_now(0).unwrap())
        .unwrap();
    b.set_not_after(&Asn1Time::days_from_now(30).unwrap())
        .unwrap();
    b.append_extension(BasicConstraints::new().critical().ca().build().unwrap())
        .unwrap();
    b.append_extension(
        KeyUsage::new()
            .critical()
            .key_cert_sign()
            .crl_sign()
            .build()
            .unwrap(),
    )
    .unwrap();
    b.sign(&key, MessageDigest::sha256()).unwrap();
    (b.build(), key)
}

fn make_leaf(cn: &str, ca: &X509, ca_key: &PKey<Private>, server: bool) -> (X509, PKey<Private>) {
    let key = ec_key();
    let mut b = X509::builder().unwrap();
    b.set_version(2).unwrap();
    b.set_serial_number(&serial()).unwrap();
    b.set_subject_name(&name(cn)).unwrap();
    b.set_issuer_name(ca.subject_name()).unwrap();
    b.set_pubkey(&key).unwrap();
    b.set_not_before(&Asn1Time::days_from_now(0).unwrap())
        .unwrap();
    b.set_not_after(&Asn1Time::days_from_now(20).unwrap())
        .unwrap();
    b.append_extension(BasicConstraints::new().critical().build().unwrap())
        .unwrap();
    b.append_extension(
        KeyUsage::new()
            .critical()
            .digital_signature()
            .build()
            .unwrap(),
    )
    .unwrap();
    let eku = if server {
        ExtendedKeyUsage::new().server_auth().build().unwrap()
    } else {
        ExtendedKeyUsage::new().client_auth().build().unwrap()
    };
    b.append_extension(eku).unwrap();
    if server {
        let san = SubjectAlternativeName::new()
            .dns("localhost")
            .ip("127.0.0.1")
            .build(&b.x509v3_context(Some(ca), None))
            .unwrap();
        b.append_extension(san).unwrap();
    }
    b.sign(ca_key, MessageDigest::sha256()).unwrap();
    (b.build(), key)
}

/// Creates a CA, a server certificate (localhost, 127.0.0.1), a client certificate and an
/// unrelated CA in `dir`.
pub fn make_pki(dir: &Path) -> Pki {
    let (ca, ca_key) = make_ca("Varti test CA");
    let (server, server_key) = make_leaf("localhost", &ca, &ca_key, true);
    let (client, client_key) = make_leaf("test access point", &ca, &ca_key, false);
    let (other, _) = make_ca("Unrelated CA");
    let write = |name: &str, bytes: Vec<u8>| {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    };
    Pki {
        ca_cert: write("ca.crt", ca.to_pem().unwrap()),
        server_cert: write("server.crt", server.to_pem().unwrap()),
        server_key: write("server.key", server_key.private_key_to_pem_pkcs8().unwrap()),
        client_cert: write("client.crt", client.to_pem().unwrap()),
        client_key: write("client.key", client_key.private_key_to_pem_pkcs8().unwrap()),
        other_ca_cert: write("other-ca.crt", other.to_pem().unwrap()),
    }
}

/// A `varti serve` child process. Killed on drop if still running.
pub struct Served {
    pub child: Child,
    pub msh: SocketAddr,
    pub ops: SocketAddr,
    pub log: PathBuf,
}

impl Served {
    /// The child's stderr so far (for failure messages).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// VmHWM (peak resident set) of the child, in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        proc_status_kib(self.child.id(), "VmHWM:")
    }

    /// VmRSS (current resident set) of the child, in KiB.
    pub fn rss_kib(&self) -> u64 {
        proc_status_kib(self.child.id(), "VmRSS:")
    }

    /// Sends SIGTERM and waits (at most `limit`) for the exit status.
    pub fn terminate(&mut self, limit: Duration) -> std::process::ExitStatus {
        let ok = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success(), "kill -TERM failed");
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                start.elapsed() < limit,
                "varti serve did not exit within {limit:?} of SIGTERM; log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Polls `message` (a message's JSON from `served`'s backend API; `None` while unknown)
/// until its `state` is `state`, and returns it; fails, with the log, after `within`.
pub fn wait_for_state(
    served: &Served,
    id: &str,
    state: &str,
    within: Duration,
    message: impl Fn() -> Option<serde_json::Value>,
) -> serde_json::Value {
    let start = Instant::now();
    loop {
        let m = message();
        if let Some(m) = &m {
            if m["state"] == state {
                return m.clone();
            }
        }
        if start.elapsed() >= within {
            match m {
                Some(m) => panic!(
                    "{id} is {} after {within:?}, not {state}: {m:#}\nlog:\n{}",
                    m["state"],
                    served.log_text()
                ),
                None => panic!("{id} never appeared\nlog:\n{}", served.log_text()),
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A child process (a stand-in, a driver), killed and reaped when dropped.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .unwrap_or_else(|| panic!("{field} missing from /proc/{pid}/status"));
    line[field.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap()
}

/// Writes `config` to `dir/varti.toml` and starts `varti serve --config … --ready-file …
/// <extra args>`, waiting until it reports its addresses.
pub fn spawn_serve(dir: &Path, config: &str, extra_args: &[&str]) -> Served {
    let config_path = dir.join("varti.toml");
    std::fs::write(&config_path, config).unwrap();
    let mut args = vec!["--config", config_path.to_str().unwrap()];
    args.extend_from_slice(extra_args);
    spawn_serve_in(dir, &args)
}

/// Starts `varti serve --ready-file … <args>` with `dir` as working directory, waiting until
/// it reports its addresses.
pub fn spawn_serve_in(dir: &Path, args: &[&str]) -> Served {
    let ready = dir.join("ready.json");
    let _ = std::fs::remove_file(&ready);
    let log = dir.join(format!("serve-{}.log", std::process::id()));
    let log_file = std::fs::File::create(&log).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_varti"))
        .current_dir(dir)
        .arg("serve")
        .arg("--ready-file")
        .arg(&ready)
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log_file)
        .spawn()
        .unwrap();
    let mut served = Served {
        child,
        msh: "0.0.0.0:0".parse().unwrap(),
        ops: "0.0.0.0:0".parse().unwrap(),
        log,
    };
    let start = Instant::now();
    loop {
        if let Ok(text) = std::fs::read_to_string(&ready) {
            let v: serde_json::Value = serde_json::from_str(&text).unwrap();
            served.msh = v["msh"].as_str().unwrap().parse().unwrap();
            served.ops = v["ops"].as_str().unwrap().parse().unwrap();
            return served;
        }
        if let Some(status) = served.child.try_wait().unwrap() {
            panic!(
                "varti serve exited early with {status}; log:\n{}",
                served.log_text()
            );
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "varti serve did not become ready; log:\n{}",
            served.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The config for a TLS instance on free ports in `dir` (PKI files there too).
pub fn tls_config(client_auth: &str) -> String {
    format!(
        r#"data_dir = "data"
{}
[server]
listen = "127.0.0.1:0"
shutdown_grace_secs = 5
[ops]
listen = "127.0.0.1:0"
[tls]
cert = "server.crt"
key = "server.key"
client_ca = "ca.crt"
client_auth = "{client_auth}"
"#,
        repo_setup()
    )
}

/// A configuration for a plain-HTTP (`--insecure-http`) instance: data in `data`, the
/// repository's PModes and keys (see [`repo_setup`]), then `tables` (e.g. `[server]` …).
pub fn plain_config(tables: &str) -> String {
    let repo = repo();
    let repo = repo.display();
    format!(
        "data_dir = \"data\"\n{}\n[tls]\ncert = \"{repo}/certs/varti-a/tls.cert.pem\"\n\
         key = \"{repo}/certs/varti-a/tls.key.pem\"\nclient_ca = \"{repo}/certs/ca.cert.pem\"\n{tables}",
        repo_setup()
    )
}

/// Config lines that make an instance varti-a with the repository's PModes and keys, and
/// its backend API on a free port (top-level keys first, then tables).
pub fn repo_setup() -> String {
    let repo = repo();
    let repo = repo.display();
    let identity = varti::pair::identity_toml("varti-a", &format!("{repo}/certs"));
    format!("pmodes_dir = \"{repo}/pmodes\"\n{identity}[backend]\nlisten = \"127.0.0.1:0\"")
}

/// An OpenSSL TLS client to `addr`, limited to `version`, trusting `ca`, optionally with a
/// client certificate.
pub fn openssl_connect(
    addr: SocketAddr,
    version: SslVersion,
    ca: &Path,
    client: Option<(&Path, &Path)>,
) -> Result<SslStream<TcpStream>, String> {
    let mut builder = SslConnector::builder(SslMethod::tls_client()).unwrap();
    builder.set_min_proto_version(Some(version)).unwrap();
    builder.set_max_proto_version(Some(version)).unwrap();
    // Security level 0 so that OpenSSL itself is willing to offer old versions: the refusal
    // under test must come from the server.
    builder.set_cipher_list("DEFAULT:@SECLEVEL=0").unwrap();
    builder.set_ca_file(ca).unwrap();
    builder.set_verify(SslVerifyMode::PEER);
    if let Some((cert, key)) = client {
        builder.set_certificate_chain_file(cert).unwrap();
        builder.set_private_key_file(key, SslFiletype::PEM).unwrap();
    }
    let connector = builder.build();
    let tcp = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    connector
        .connect("localhost", tcp)
        .map_err(|e| format!("{e:?}"))
}

/// A parsed HTTP/1.1 response (the body read to EOF; requests send `Connection: close`).
pub struct HttpResponse {
    pub status: u16,
    pub head: String,
    /// The body as text (lossy UTF-8).
    pub body: String,
    /// The body's bytes.
    pub bytes: Vec<u8>,
}

/// Sends a request with `Connection: close` and reads the whole response.
pub fn http_request<S: Read + Write>(
    stream: &mut S,
    method: &str,
    path: &str,
    extra_headers: &str,
    body: &[u8],
) -> std::io::Result<HttpResponse> {
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {}\r\n{extra_headers}\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    stream.flush()?;
    read_response(stream)
}

/// Reads a `Connection: close` response to EOF and splits head from body.
pub fn read_response<S: Read>(stream: &mut S) -> std::io::Result<HttpResponse> {
    let mut raw = Vec::new();
    match stream.read_to_end(&mut raw) {
        Ok(_) => {}
        // rustls closes with close_notify; some paths end with a reset after the response.
        Err(e) if !raw.is_empty() => eprintln!("read ended with {e} after {} bytes", raw.len()),
        Err(e) => return Err(e),
    }
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n");
    let bytes = split.map(|p| raw[p + 4..].to_vec()).unwrap_or_default();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("no HTTP response: {text:?}"),
        )
    })?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, head.to_owned()))?;
    Ok(HttpResponse {
        status,
        head: head.to_owned(),
        body: body.to_owned(),
        bytes,
    })
}

/// GET over plain HTTP (the ops listener).
pub fn plain_get(addr: SocketAddr, path: &str) -> HttpResponse {
    let mut tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    http_request(&mut tcp, "GET", path, "", b"").unwrap()
}
