//! XSLT 1.0 for XML evidence in the preview space: a register's stylesheet turns its XML
//! into HTML the citizen can read. libxslt does the work inside a sandbox
//! (`csrc/xslt_sandbox.c`): nothing is loaded (no `document()`, `xsl:import` or
//! `xsl:include`, no files, no network), no DTD or entity is accepted, the work is bounded
//! (template depth, operations, memory, and a wall-clock deadline after which the forked
//! child doing it is killed), and active content is stripped from the result. The page
//! still serves the result sandboxed under a CSP that allows no script and no fetch: the
//! stylesheet comes from a register, and this is defence in depth, not trust.

use std::os::raw::{c_char, c_int, c_long, c_ulong};
use std::time::Duration;

extern "C" {
    #[allow(clippy::too_many_arguments)]
    fn varti_xslt_transform(
        xml: *const c_char,
        xml_len: usize,
        xsl: *const c_char,
        xsl_len: usize,
        op_limit: c_ulong,
        max_depth: c_int,
        deadline_ms: c_long,
        memory_bytes: c_ulong,
        max_out: usize,
        out: *mut *mut c_char,
        out_len: *mut usize,
        err: *mut c_char,
        err_len: usize,
    ) -> c_int;
    fn varti_xslt_free(p: *mut c_char);
}

/// What one transformation may use.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// XSLT operations (instructions) at most.
    pub ops: u64,
    /// Template recursion depth at most.
    pub depth: i32,
    /// Wall-clock time at most.
    pub time: Duration,
    /// Memory beyond the process's size at most.
    pub memory: u64,
    /// Size of the result at most.
    pub output: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            ops: 5_000_000,
            depth: 500,
            time: Duration::from_secs(5),
            memory: 256 * 1024 * 1024,
            output: 8 * 1024 * 1024,
        }
    }
}

/// Why a transformation gave no HTML (the message says what to fix).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub(crate) struct XsltError(pub String);

/// Transforms `xml` with the XSLT 1.0 stylesheet `xsl` into (sanitized) HTML.
pub(crate) fn transform(xml: &[u8], xsl: &[u8], limits: Limits) -> Result<String, XsltError> {
    let mut out: *mut c_char = std::ptr::null_mut();
    let mut out_len = 0usize;
    let mut err = vec![0 as c_char; 1024];
    // SAFETY: the pointers and lengths describe live buffers for the call's duration; the
    // C side writes at most `err.len()` bytes (NUL-terminated) into `err` and hands back a
    // malloc'd `out` of `out_len` bytes, freed below with `varti_xslt_free`.
    let rc = unsafe {
        varti_xslt_transform(
            xml.as_ptr().cast(),
            xml.len(),
            xsl.as_ptr().cast(),
            xsl.len(),
            limits.ops as c_ulong,
            limits.depth,
            limits.time.as_millis().min(i32::MAX as u128) as c_long,
            limits.memory as c_ulong,
            limits.output,
            &mut out,
            &mut out_len,
            err.as_mut_ptr(),
            err.len(),
        )
    };
    if rc == 0 && !out.is_null() {
        // SAFETY: `out` holds `out_len` initialised bytes from the C side.
        let bytes = unsafe { std::slice::from_raw_parts(out.cast::<u8>(), out_len) }.to_vec();
        // SAFETY: allocated by the C side with malloc; freed once.
        unsafe { varti_xslt_free(out) };
        return Ok(String::from_utf8_lossy(&bytes).into_owned());
    }
    if !out.is_null() {
        // SAFETY: as above.
        unsafe { varti_xslt_free(out) };
    }
    // SAFETY: the C side NUL-terminates `err` within its length.
    let message = unsafe { std::ffi::CStr::from_ptr(err.as_ptr()) }
        .to_string_lossy()
        .into_owned();
    Err(XsltError(if message.is_empty() {
        "the transformation failed".to_owned()
    } else {
        message
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::TcpListener;
    use std::sync::{Arc, Mutex};
    use std::time::Instant;

    const EVIDENCE: &str = r#"<?xml version="1.0"?>
<BirthCertificate xmlns="urn:lv:birth"><Child>Ida Jensen</Child><Born>1990-01-01</Born></BirthCertificate>"#;

    fn stylesheet(body: &str) -> String {
        format!(
            r#"<?xml version="1.0"?>
<xsl:stylesheet version="1.0" xmlns:xsl="http://www.w3.org/1999/XSL/Transform" xmlns:b="urn:lv:birth">
<xsl:output method="html" encoding="UTF-8"/>
{body}
</xsl:stylesheet>"#
        )
    }

    fn readable() -> String {
        stylesheet(
            r#"<xsl:template match="/"><html><body><h1>Birth certificate</h1>
<p id="child">Child: <xsl:value-of select="b:BirthCertificate/b:Child"/></p>
<p id="born">Born: <xsl:value-of select="b:BirthCertificate/b:Born"/></p></body></html></xsl:template>"#,
        )
    }

    /// A listener that records the first bytes of every connection, in order: a fetch
    /// attempt shows up as one.
    fn listener() -> (u16, Arc<Mutex<Vec<String>>>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let seen: Arc<Mutex<Vec<String>>> = Arc::default();
        let record = seen.clone();
        std::thread::spawn(move || {
            for mut conn in l.incoming().flatten() {
                let mut buf = [0u8; 64];
                let n = conn.read(&mut buf).unwrap_or(0);
                record
                    .lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        });
        (port, seen)
    }

    /// What reached the listener before a sentinel connection made now: the listener
    /// takes connections in order, so once it has the sentinel, every earlier attempt is
    /// recorded.
    fn seen_before_sentinel(port: u16, seen: &Mutex<Vec<String>>) -> Vec<String> {
        use std::io::Write;
        let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        c.write_all(b"sentinel").unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let now = seen.lock().unwrap().clone();
            if now.iter().any(|s| s == "sentinel") {
                return now.into_iter().filter(|s| s != "sentinel").collect();
            }
            assert!(
                Instant::now() < deadline,
                "the listener never saw the sentinel"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn a_stylesheet_makes_the_evidence_readable_html() {
        let html = transform(
            EVIDENCE.as_bytes(),
            readable().as_bytes(),
            Limits::default(),
        )
        .unwrap();
        assert!(html.contains("<h1>Birth certificate</h1>"), "{html}");
        assert!(html.contains("Child: Ida Jensen"), "{html}");
        assert!(html.contains("Born: 1990-01-01"), "{html}");
    }

    #[test]
    fn document_import_and_include_load_nothing() {
        let (port, seen) = listener();
        let url = format!("http://127.0.0.1:{port}/steal");
        for body in [
            format!(
                r#"<xsl:template match="/"><html><body><p><xsl:value-of select="document('{url}')"/></p></body></html></xsl:template>"#
            ),
            r#"<xsl:template match="/"><p><xsl:value-of select="document('/etc/passwd')"/></p></xsl:template>"#.to_owned(),
        ] {
            // It renders, with document() an empty document.
            let html = transform(EVIDENCE.as_bytes(), stylesheet(&body).as_bytes(), Limits::default())
                .unwrap();
            assert!(!html.contains("root:"), "{html}");
        }
        for import in [
            format!(r#"<xsl:import href="{url}"/>"#),
            format!(r#"<xsl:include href="{url}"/>"#),
        ] {
            let err = transform(
                EVIDENCE.as_bytes(),
                stylesheet(&import).as_bytes(),
                Limits::default(),
            )
            .unwrap_err();
            assert!(err.0.contains("not usable XSLT"), "{err}");
        }
        let fetched = seen_before_sentinel(port, &seen);
        assert!(
            fetched.is_empty(),
            "a stylesheet reached the network: {fetched:?}"
        );
    }

    #[test]
    fn dtds_and_entities_are_refused_in_evidence_and_stylesheet() {
        let xxe = r#"<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><x>&e;</x>"#;
        let err = transform(xxe.as_bytes(), readable().as_bytes(), Limits::default()).unwrap_err();
        assert!(err.0.contains("DOCTYPE"), "{err}");
        let bomb_style = readable().replacen(
            "<xsl:stylesheet",
            "<!DOCTYPE xsl:stylesheet [<!ENTITY a \"aaaaaaaaaa\"><!ENTITY b \"&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;\">]><xsl:stylesheet",
            1,
        );
        let err = transform(
            EVIDENCE.as_bytes(),
            bomb_style.as_bytes(),
            Limits::default(),
        )
        .unwrap_err();
        assert!(err.0.contains("DOCTYPE"), "{err}");
    }

    #[test]
    fn runaway_stylesheets_are_stopped_in_bounded_time() {
        let infinite = stylesheet(
            r#"<xsl:template match="/"><xsl:call-template name="loop"/></xsl:template>
<xsl:template name="loop"><xsl:call-template name="loop"/></xsl:template>"#,
        );
        // Exponential: each call makes two more, 2^60 in all, well within the depth limit.
        let exponential = stylesheet(
            r#"<xsl:template match="/"><xsl:call-template name="t"><xsl:with-param name="n" select="60"/></xsl:call-template></xsl:template>
<xsl:template name="t"><xsl:param name="n"/><xsl:if test="$n &gt; 0"><x/>
<xsl:call-template name="t"><xsl:with-param name="n" select="$n - 1"/></xsl:call-template>
<xsl:call-template name="t"><xsl:with-param name="n" select="$n - 1"/></xsl:call-template></xsl:if></xsl:template>"#,
        );
        // Memory: a string doubled 40 times.
        let doubling = stylesheet(
            r#"<xsl:template match="/"><xsl:call-template name="d"><xsl:with-param name="s" select="'xxxxxxxx'"/><xsl:with-param name="n" select="40"/></xsl:call-template></xsl:template>
<xsl:template name="d"><xsl:param name="s"/><xsl:param name="n"/><xsl:choose><xsl:when test="$n = 0"><xsl:value-of select="string-length($s)"/></xsl:when>
<xsl:otherwise><xsl:call-template name="d"><xsl:with-param name="s" select="concat($s, $s)"/><xsl:with-param name="n" select="$n - 1"/></xsl:call-template></xsl:otherwise></xsl:choose></xsl:template>"#,
        );
        let limits = Limits {
            time: Duration::from_secs(3),
            ..Limits::default()
        };
        for (what, xsl) in [
            ("infinite recursion", infinite),
            ("exponential work", exponential),
        ] {
            let start = Instant::now();
            let err = transform(EVIDENCE.as_bytes(), xsl.as_bytes(), limits).unwrap_err();
            let took = start.elapsed();
            assert!(took < Duration::from_secs(5), "{what} took {took:?}: {err}");
            assert!(!err.0.is_empty(), "{what}");
        }
        // The doubling runs into the memory limit (libxml2 then gives up on the string):
        // it ends in bounded time without a 8 TiB result.
        let start = Instant::now();
        let result = transform(EVIDENCE.as_bytes(), doubling.as_bytes(), limits);
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{:?}",
            start.elapsed()
        );
        if let Ok(html) = result {
            assert!(html.len() < 1024, "{} bytes", html.len());
            assert!(
                !html.contains("8796093022208"),
                "the whole string was built: {html}"
            );
        }
    }

    #[test]
    fn active_content_is_stripped_from_the_result() {
        let xsl = stylesheet(
            r##"<xsl:template match="/"><html><head><meta http-equiv="refresh" content="0;url=http://127.0.0.1:9/"/><link rel="stylesheet" href="http://127.0.0.1:9/x.css"/><base href="http://127.0.0.1:9/"/></head>
<body onload="alert(1)"><script>alert(2)</script><h1 id="t">Title</h1><img src="http://127.0.0.1:9/pixel.png"/><img src="data:image/png;base64,iVBORw0KGgo="/>
<a href="#t">up</a><a href="javascript:alert(3)">x</a><p style="background:url(http://127.0.0.1:9/bg)">styled</p><iframe src="http://127.0.0.1:9/"/></body></html></xsl:template>"##,
        );
        let html = transform(EVIDENCE.as_bytes(), xsl.as_bytes(), Limits::default()).unwrap();
        // (libxslt's HTML output adds its own charset meta; no other survives.)
        assert_eq!(html.matches("<meta").count(), 1, "{html}");
        for gone in [
            "<script",
            "alert(",
            "refresh",
            "<link",
            "<base",
            "<iframe",
            "127.0.0.1",
            "javascript:",
            "onload",
        ] {
            assert!(
                !html.to_ascii_lowercase().contains(gone),
                "{gone} left in {html}"
            );
        }
        assert!(html.contains(r#"<h1 id="t">Title</h1>"#), "{html}");
        assert!(html.contains(r##"href="#t""##), "{html}");
        assert!(html.contains("data:image/png"), "{html}");
    }

    #[test]
    fn a_broken_stylesheet_or_evidence_says_which() {
        let err = transform(EVIDENCE.as_bytes(), b"<not-xslt/>", Limits::default()).unwrap_err();
        assert!(err.0.contains("stylesheet"), "{err}");
        let err = transform(b"<open>", readable().as_bytes(), Limits::default()).unwrap_err();
        assert!(err.0.contains("evidence is not well-formed"), "{err}");
    }
}
