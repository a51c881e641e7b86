//! `varti serve` as a real process over real TLS: protocol versions, client
//! authentication, ops endpoints, streaming a large body with flat memory, SIGTERM.

mod serve_support;

use std::io::Write;
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use openssl::ssl::SslVersion;
use serve_support::*;

/// TLS 1.3 and 1.2 work, 1.1 is refused by the server; ops endpoints answer; a 50 MB body
/// streams through `/msh` (refused as not MIME) without the peak RSS growing by more than
/// ~30 MB; SIGTERM exits 0.
#[test]
fn tls_ops_streaming_and_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path());
    let mut served = spawn_serve(dir.path(), &tls_config("optional"), &[]);

    // TLS 1.3 and 1.2 handshakes succeed and serve /health on the MSH listener.
    for version in [SslVersion::TLS1_3, SslVersion::TLS1_2] {
        let mut tls = openssl_connect(served.msh, version, &pki.ca_cert, None)
            .unwrap_or_else(|e| panic!("{version:?} handshake failed: {e}\n{}", served.log_text()));
        assert_eq!(
            tls.ssl().version2(),
            Some(version),
            "negotiated another version"
        );
        let r = http_request(&mut tls, "GET", "/health", "", b"").unwrap();
        assert_eq!(r.status, 200, "{version:?}: {}", r.head);
    }

    // TLS 1.1 is refused by the server (a protocol_version alert, not a local refusal).
    let err = match openssl_connect(served.msh, SslVersion::TLS1_1, &pki.ca_cert, None) {
        Ok(tls) => panic!("TLS 1.1 accepted: {:?}", tls.ssl().version2()),
        Err(e) => e,
    };
    assert!(
        err.contains("alert"),
        "TLS 1.1 failed, but not with an alert from the server: {err}"
    );
    wait_for_log(&served, "TLS handshake failed");
    let log = served.log_text();
    assert!(
        log.contains("peer is incompatible"),
        "server log does not say why:\n{log}"
    );

    // A TLS 1.2 forward-secret suite is negotiated (ECDHE).
    let tls12 = openssl_connect(served.msh, SslVersion::TLS1_2, &pki.ca_cert, None).unwrap();
    let cipher = tls12.ssl().current_cipher().unwrap().name();
    assert!(
        cipher.starts_with("ECDHE-"),
        "TLS 1.2 suite {cipher} is not ECDHE"
    );
    drop(tls12);

    // Ops endpoints.
    let health = plain_get(served.ops, "/health");
    assert_eq!(health.status, 200);
    let ready = plain_get(served.ops, "/ready");
    assert_eq!(
        ready.status, 200,
        "store and PModes are loaded: {}",
        ready.body
    );
    assert!(ready.body.contains("store: ready"), "{}", ready.body);
    assert!(ready.body.contains("pmodes: ready"), "{}", ready.body);
    let metrics = plain_get(served.ops, "/metrics");
    assert_eq!(metrics.status, 200);
    for name in [
        "varti_messages_total",
        "varti_retries_total",
        "varti_processing_latency_seconds",
        "varti_queue_depth",
        "varti_cert_expiry_days",
    ] {
        assert!(
            metrics.body.contains(name),
            "{name} missing:\n{}",
            metrics.body
        );
    }
    // The server certificate was made valid for 20 days.
    let expiry_line = metrics
        .body
        .lines()
        .find(|l| l.starts_with("varti_cert_expiry_days{cert=\"tls\"}"))
        .unwrap_or_else(|| panic!("no tls expiry gauge:\n{}", metrics.body));
    let days: f64 = expiry_line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!((19.0..=20.01).contains(&days), "{expiry_line}");
    // Metrics are not served to partners on the MSH listener.
    let mut tls = openssl_connect(served.msh, SslVersion::TLS1_3, &pki.ca_cert, None).unwrap();
    assert_eq!(
        http_request(&mut tls, "GET", "/metrics", "", b"")
            .unwrap()
            .status,
        404
    );

    // Stream 50 MB through /msh and watch the server's peak RSS.
    let idle_peak = served.peak_rss_kib();
    const SIZE: usize = 50 * 1024 * 1024;
    let mut tls = openssl_connect(served.msh, SslVersion::TLS1_3, &pki.ca_cert, None).unwrap();
    let head = format!(
        "POST /msh HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
         Content-Type: multipart/related; boundary=\"b\"; type=\"application/soap+xml\"\r\n\
         Content-Length: {SIZE}\r\n\r\n"
    );
    tls.write_all(head.as_bytes()).unwrap();
    let chunk = vec![b'x'; 64 * 1024];
    let started = Instant::now();
    for _ in 0..SIZE / chunk.len() {
        tls.write_all(&chunk).unwrap();
    }
    tls.flush().unwrap();
    let response = read_response(&mut tls).unwrap();
    let elapsed = started.elapsed();
    // Not a MIME package: an ebMS error signal (EBMS:0007), after the whole body streamed.
    assert_eq!(response.status, 200, "{}", response.head);
    assert!(
        response.body.contains("EBMS:0007"),
        "no MimeInconsistency error signal: {}",
        response.body
    );
    assert!(
        response
            .head
            .to_ascii_lowercase()
            .contains("application/soap+xml"),
        "{}",
        response.head
    );
    let peak = served.peak_rss_kib();
    let growth_mib = (peak.saturating_sub(idle_peak)) as f64 / 1024.0;
    eprintln!(
        "50 MB in {elapsed:?}; peak RSS idle {} KiB, after {} KiB (+{growth_mib:.1} MiB)",
        idle_peak, peak
    );
    assert!(
        growth_mib < 30.0,
        "peak RSS grew by {growth_mib:.1} MiB streaming 50 MB: the body is being buffered"
    );
    // The whole body was read (every write above succeeded before the answer came) and
    // refused as a MIME package.
    assert!(
        served.log_text().contains("bad MIME package"),
        "the receiver did not report the refusal; log:\n{}",
        served.log_text()
    );

    let status = served.terminate(Duration::from_secs(15));
    assert_eq!(status.code(), Some(0), "log:\n{}", served.log_text());
    assert!(served.log_text().contains("SIGTERM received"));
}

/// With `client_auth = "required"`, a client without a certificate gets no response; one
/// with a certificate from the configured CA is served.
#[test]
fn required_client_auth() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path());
    let served = spawn_serve(dir.path(), &tls_config("required"), &[]);

    // Without a certificate: TLS 1.3 lets the client finish its side of the handshake, so
    // the refusal shows as a failed request (alert or closed connection), never a response.
    match openssl_connect(served.msh, SslVersion::TLS1_3, &pki.ca_cert, None) {
        Err(_) => {}
        Ok(mut tls) => {
            let r = http_request(&mut tls, "GET", "/health", "", b"");
            assert!(
                r.is_err(),
                "served without a client certificate: {}",
                r.unwrap().head
            );
        }
    }
    // TLS 1.2 fails in the handshake itself.
    assert!(openssl_connect(served.msh, SslVersion::TLS1_2, &pki.ca_cert, None).is_err());

    // With the client certificate.
    let mut tls = openssl_connect(
        served.msh,
        SslVersion::TLS1_3,
        &pki.ca_cert,
        Some((&pki.client_cert, &pki.client_key)),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", served.log_text()));
    let r = http_request(&mut tls, "GET", "/health", "", b"").unwrap();
    assert_eq!(r.status, 200);
}

/// `--insecure-http` serves plain HTTP and warns loudly; oversized bodies get 413.
#[test]
fn insecure_http_warns_and_limits_body() {
    let dir = tempfile::tempdir().unwrap();
    let config = plain_config(
        "[server]\nlisten = \"127.0.0.1:0\"\n\
         [ops]\nlisten = \"127.0.0.1:0\"\n[limits]\nmax_request_body_bytes = 1000\n",
    );
    let served = spawn_serve(
        dir.path(),
        &config,
        &["--insecure-http", "--log-format", "json"],
    );
    let log = served.log_text();
    assert!(log.contains("WARNING: --insecure-http"), "{log}");
    // JSON log lines.
    assert!(
        log.lines()
            .any(|l| l.starts_with('{') && l.contains("\"varti is listening\"")),
        "{log}"
    );

    let mut tcp = TcpStream::connect(served.msh).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let r = http_request(
        &mut tcp,
        "POST",
        "/msh",
        "Content-Type: text/xml\r\n",
        b"<x/>",
    )
    .unwrap();
    // Not a SOAP envelope: an ebMS error signal.
    assert_eq!(r.status, 200, "{}", r.head);
    assert!(r.body.contains("EBMS:0009"), "{}", r.body);

    let mut tcp = TcpStream::connect(served.msh).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let r = http_request(&mut tcp, "POST", "/msh", "", &[b'a'; 2000]).unwrap();
    assert_eq!(r.status, 413, "{}", r.head);
    assert!(
        r.body.contains("larger than this access point accepts"),
        "{}",
        r.body
    );

    // Chunked: no length announced, the limit trips while streaming.
    let mut tcp = TcpStream::connect(served.msh).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req =
        b"POST /msh HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n"
            .to_vec();
    for _ in 0..3 {
        req.extend_from_slice(b"200\r\n");
        req.extend_from_slice(&[b'a'; 0x200]);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    tcp.write_all(&req).unwrap();
    let r = read_response(&mut tcp).unwrap();
    assert_eq!(r.status, 413, "{}", r.head);

    let r = plain_get(served.msh, "/msh");
    assert_eq!(r.status, 405);
}

/// Configuration errors name the key and exit 2.
#[test]
fn bad_config_names_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("varti.toml");
    // `varti serve` with `config`: it exits 2; its stderr.
    let refused = |config: &str| {
        std::fs::write(&path, config).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_varti"))
            .args(["serve", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2));
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let stderr = refused("[tls]\nclient_authh = \"required\"\n");
    assert!(stderr.contains("client_authh"), "{stderr}");

    // Missing certificate files are named too.
    let stderr = refused("[server]\nlisten = \"127.0.0.1:0\"\n[ops]\nlisten = \"127.0.0.1:0\"\n");
    assert!(
        stderr.contains("varti-a/tls.cert.pem") && stderr.contains("tls.cert"),
        "{stderr}"
    );
}

/// Waits (briefly) until the server's log contains `needle`.
fn wait_for_log(served: &Served, needle: &str) {
    let start = Instant::now();
    while !served.log_text().contains(needle) {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "log never said {needle:?}:\n{}",
            served.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Stalled clients are cut off: a TLS client that never handshakes (handshake timeout), a
/// client trickling its headers (header-read timeout), and a silent connection (idle).
#[test]
fn stalled_connections_are_closed() {
    use std::io::Read;
    let dir = tempfile::tempdir().unwrap();
    let _pki = make_pki(dir.path());
    let config = tls_config("optional").replace(
        "shutdown_grace_secs = 5",
        "shutdown_grace_secs = 5\nhandshake_timeout_secs = 1\nheader_read_timeout_secs = 1\nidle_timeout_secs = 4",
    );
    let served = spawn_serve(dir.path(), &config, &[]);

    // Returns how long the server took to close a connection that does `feed` each 200 ms.
    let closed_after = |mut tcp: TcpStream, feed: &dyn Fn(&mut TcpStream)| {
        tcp.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let start = Instant::now();
        let mut buf = [0u8; 256];
        loop {
            assert!(
                start.elapsed() < Duration::from_secs(8),
                "connection never closed"
            );
            match tcp.read(&mut buf) {
                Ok(0) => return start.elapsed(),
                Ok(_) => {} // e.g. an alert or a 408 before the close
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut =>
                {
                    feed(&mut tcp)
                }
                Err(_) => return start.elapsed(), // reset
            }
        }
    };
    // No ClientHello at all: the handshake timeout (1 s) fires.
    let t = closed_after(TcpStream::connect(served.msh).unwrap(), &|_| {});
    assert!(
        t >= Duration::from_millis(900) && t < Duration::from_secs(4),
        "{t:?}"
    );

    // Plain instance for the HTTP-level timeouts.
    let plain_dir = tempfile::tempdir().unwrap();
    let plain = spawn_serve(
        plain_dir.path(),
        &plain_config(
            "[server]\nlisten = \"127.0.0.1:0\"\nheader_read_timeout_secs = 1\nidle_timeout_secs = 4\n\
             [ops]\nlisten = \"127.0.0.1:0\"\n",
        ),
        &["--insecure-http"],
    );
    // Trickling header bytes keeps the connection active, so only the 1 s header-read
    // timeout can close it (the 4 s idle timeout cannot).
    let t = closed_after(
        TcpStream::connect(plain.msh).unwrap(),
        &|tcp: &mut TcpStream| {
            let _ = tcp.write_all(b"X");
        },
    );
    assert!(
        t < Duration::from_secs(3),
        "header-read timeout did not fire: {t:?}"
    );
    // A kept-alive connection that goes quiet after a request is closed by a timeout too.
    let mut tcp = TcpStream::connect(plain.msh).unwrap();
    tcp.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut head = [0u8; 12];
    tcp.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
    let t = closed_after(tcp, &|_| {});
    assert!(
        t < Duration::from_secs(6),
        "quiet keep-alive connection stayed open: {t:?}"
    );
}

/// certs/make-test-pki.sh produces files that `varti serve` uses on its embedded defaults
/// (certs/varti-a/tls.cert.pem + key, client CAs from certs/ca.cert.pem, data in ./var),
/// and the other access point's TLS certificate works as a client certificate.
#[test]
fn test_pki_script_and_embedded_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../certs/make-test-pki.sh");
    let out = std::process::Command::new("bash")
        .arg(&script)
        .arg(dir.path().join("certs"))
        .output()
        .expect("bash runs the PKI script (needs the openssl command line tool)");
    assert!(
        out.status.success(),
        "make-test-pki.sh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let certs = dir.path().join("certs");
    // The shipped PModes, whose certificate paths (../certs/…) now name the fresh PKI.
    let pmodes = dir.path().join("pmodes");
    std::fs::create_dir_all(&pmodes).unwrap();
    for entry in
        std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../pmodes")).unwrap()
    {
        let path = entry.unwrap().path();
        std::fs::copy(&path, pmodes.join(path.file_name().unwrap())).unwrap();
    }
    let mut served = spawn_serve_in(
        dir.path(),
        &[
            "--listen",
            "127.0.0.1:0",
            "--ops-listen",
            "127.0.0.1:0",
            "--backend-listen",
            "127.0.0.1:0",
        ],
    );
    let mut tls = openssl_connect(
        served.msh,
        SslVersion::TLS1_3,
        &certs.join("ca.cert.pem"),
        Some((
            &certs.join("varti-b/tls.cert.pem"),
            &certs.join("varti-b/tls.key.pem"),
        )),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", served.log_text()));
    assert_eq!(
        http_request(&mut tls, "GET", "/health", "", b"")
            .unwrap()
            .status,
        200
    );
    assert!(
        dir.path().join("var/store").is_dir(),
        "store not in ./var/store"
    );
    assert_eq!(served.terminate(Duration::from_secs(15)).code(), Some(0));
}
