//! The fake national register of the OOTS tests and benchmark (a small real HTTP server:
//! the test double at the far edge), and the plain HTTP/1.1 request reader it shares with
//! the portal's webhook receiver.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

/// Reads one HTTP/1.1 request with a `Content-Length` body: (head, body), or `None` when
/// the peer goes away first.
pub fn read_request(conn: &mut TcpStream) -> Option<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let (head_end, length) = loop {
        let n = match conn.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..at]).to_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            break (at + 4, length);
        }
    };
    while buf.len() < head_end + length {
        match conn.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    Some((head, buf[head_end..head_end + length].to_vec()))
}

/// A PDF evidence file (a minimal document plus binary bytes, so nothing text-only passes).
pub fn pdf() -> Vec<u8> {
    pdf_with(31)
}

/// Another register's PDF: same shape, other bytes.
pub fn pdf_b() -> Vec<u8> {
    pdf_with(37)
}

fn pdf_with(factor: u32) -> Vec<u8> {
    let mut b = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\n".to_vec();
    b.extend((0..70_000u32).map(|i| (i * factor % 256) as u8));
    b.extend_from_slice(b"\n%%EOF\n");
    b
}

/// An XML evidence (a birth record in the register's own format).
pub fn evidence_xml() -> &'static str {
    r#"<?xml version="1.0" encoding="UTF-8"?>
<BirthRecord xmlns="urn:lv:register:birth"><Child><Name>Ida Jensen</Name><Born>1990-01-01</Born></Child><Place>Rīga</Place></BirthRecord>"#
}

/// The XSLT 1.0 stylesheet the register sends with [`evidence_xml`]: a readable page.
/// `extra` goes into the body (a test's hostile additions).
pub fn evidence_xsl(extra: &str) -> String {
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<xsl:stylesheet version="1.0" xmlns:xsl="http://www.w3.org/1999/XSL/Transform" xmlns:r="urn:lv:register:birth">
<xsl:output method="html" encoding="UTF-8"/>
<xsl:template match="/"><html><head><style>h1 {{ font-size: 1.5em }}</style></head><body>
<h1 id="heading">Birth record</h1>
<p id="child">Child: <xsl:value-of select="r:BirthRecord/r:Child/r:Name"/></p>
<p id="born">Born: <xsl:value-of select="r:BirthRecord/r:Child/r:Born"/> in <xsl:value-of select="r:BirthRecord/r:Place"/></p>
{extra}
</body></html></xsl:template>
</xsl:stylesheet>"#
    )
}

/// The fake national register: answers by path, records the JSON it was sent.
pub struct Register {
    /// Its port on 127.0.0.1.
    pub port: u16,
    seen: Arc<Mutex<Vec<(String, Value)>>>,
}

impl Register {
    /// Starts it on a free port (one thread per connection).
    pub fn start() -> Register {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen2 = seen.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let seen = seen2.clone();
                std::thread::spawn(move || serve_register(conn, &seen));
            }
        });
        Register { port, seen }
    }

    /// The URL of `path` (`/ok`, `/none`, `/refuse`, `/slow`, `/slower`).
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// The JSON bodies it was sent on `path`.
    pub fn calls(&self, path: &str) -> Vec<Value> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, _)| p == path)
            .map(|(_, v)| v.clone())
            .collect()
    }
}

fn serve_register(mut conn: TcpStream, seen: &Mutex<Vec<(String, Value)>>) {
    let Some((head, body)) = read_request(&mut conn) else {
        return;
    };
    let path = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    seen.lock().unwrap().push((path.clone(), body));
    let respond = |conn: &mut TcpStream, status: &str, ct: &str, body: &[u8]| {
        let _ = conn.write_all(
            format!("HTTP/1.1 {status}\r\nContent-Type: {ct}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len()).as_bytes(),
        );
        let _ = conn.write_all(body);
    };
    match path.as_str() {
        "/ok" | "/reg-a" | "/reg-b" => {
            let file = if path == "/reg-b" { pdf_b() } else { pdf() };
            let boundary = "register-boundary-41";
            let mut body = Vec::new();
            body.extend_from_slice(format!("--{boundary}\r\nContent-Disposition: form-data; name=\"metadata\"\r\nContent-Type: application/json\r\n\r\n").as_bytes());
            body.extend_from_slice(br#"{"evidences":[{"part":"birth","title":"Birth certificate","issuing_date":"2001-02-03"}]}"#);
            body.extend_from_slice(format!("\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"birth\"; filename=\"birth.pdf\"\r\nContent-Type: application/pdf\r\n\r\n").as_bytes());
            body.extend_from_slice(&file);
            body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
            respond(
                &mut conn,
                "200 OK",
                &format!("multipart/form-data; boundary={boundary}"),
                &body,
            );
        }
        // XML evidence; `/xml-xsl` sends its stylesheet along (metadata `stylesheet`).
        "/xml" | "/xml-xsl" => {
            let boundary = "register-boundary-43";
            let with_xsl = path == "/xml-xsl";
            let mut body = Vec::new();
            body.extend_from_slice(format!("--{boundary}\r\nContent-Disposition: form-data; name=\"metadata\"\r\nContent-Type: application/json\r\n\r\n").as_bytes());
            if with_xsl {
                body.extend_from_slice(br#"{"evidences":[{"part":"birth","title":"Birth record","stylesheet":"birth-xsl"}]}"#);
            } else {
                body.extend_from_slice(
                    br#"{"evidences":[{"part":"birth","title":"Birth record"}]}"#,
                );
            }
            body.extend_from_slice(format!("\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"birth\"; filename=\"birth.xml\"\r\nContent-Type: application/xml\r\n\r\n").as_bytes());
            body.extend_from_slice(evidence_xml().as_bytes());
            if with_xsl {
                body.extend_from_slice(format!("\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"birth-xsl\"; filename=\"birth.xsl\"\r\nContent-Type: application/xslt+xml\r\n\r\n").as_bytes());
                body.extend_from_slice(evidence_xsl("").as_bytes());
            }
            body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
            respond(
                &mut conn,
                "200 OK",
                &format!("multipart/form-data; boundary={boundary}"),
                &body,
            );
        }
        "/none" => respond(
            &mut conn,
            "404 Not Found",
            "text/plain",
            b"no person matches the identity data",
        ),
        "/refuse" => respond(
            &mut conn,
            "422 Unprocessable Entity",
            "text/plain",
            b"date of birth is in the future",
        ),
        // Webhook receivers of the portals.
        p if p.starts_with("/hook/") => respond(&mut conn, "200 OK", "text/plain", b"ok"),
        "/slow" | "/slower" => {
            // Longer than the connector's timeout (1 s) / the request's timeout (2 s).
            std::thread::sleep(Duration::from_secs(if path == "/slow" { 3 } else { 8 }));
            respond(&mut conn, "404 Not Found", "text/plain", b"late");
        }
        _ => respond(
            &mut conn,
            "500 Internal Server Error",
            "text/plain",
            b"unknown path",
        ),
    }
}
