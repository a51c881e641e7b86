//! The common-services client: builds the query URL, fetches it through a [`Transport`],
//! verifies the signature when trust anchors are configured, reads the answer, and
//! caches verified answers per query URL for a configured freshness.
//!
//! The crate has no HTTP stack and no async runtime of its own: the [`Transport`] does the
//! GET and must bound the whole exchange by the timeout it is given (the gateway's
//! HTTPS transport does, with its runtime's timer). Time comes from an injectable clock,
//! so cache expiry and certificate validity are testable.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use time::OffsetDateTime;

use super::answer::{
    parse_data_services, parse_requirements, Answer, AnswerError, DataServiceEvidenceType,
    Requirement,
};
use super::query::{DataServicesQuery, Query, Service};
use super::signature::{verify_response, SignatureError, TrustAnchors, VerifiedSignature};

/// A boxed, sendable future (what [`Transport::get`] returns).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The time source: `OffsetDateTime::now_utc` unless a test injects another.
pub type Clock = Arc<dyn Fn() -> OffsetDateTime + Send + Sync>;

/// What an HTTP GET brought back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpReply {
    /// The status code.
    pub status: u16,
    /// The response headers (names as received; compared case-insensitively).
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

/// Why a GET brought nothing back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    /// No complete answer within the timeout.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// Connecting, TLS or HTTP failed.
    #[error("{0}")]
    Failed(String),
}

/// Does the HTTP GETs.
pub trait Transport: Send + Sync {
    /// GETs `url`; the whole exchange (connect, TLS, headers, body) must end within
    /// `timeout`, else [`TransportError::Timeout`].
    fn get<'a>(
        &'a self,
        url: &'a str,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<HttpReply, TransportError>>;
}

/// Why a look-up failed. Each names the URL asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CsError {
    /// The GET failed or timed out.
    #[error("common-services query {url} failed: {source} (is the base URL right and the service reachable?)")]
    Transport {
        /// The URL.
        url: String,
        /// What happened.
        source: TransportError,
    },
    /// An HTTP error status without a RegRep answer.
    #[error("common-services query {url} answered HTTP {status}: {excerpt}")]
    Status {
        /// The URL.
        url: String,
        /// The status.
        status: u16,
        /// The start of the body.
        excerpt: String,
    },
    /// The signature did not verify.
    #[error("common-services answer from {url} refused: {source}")]
    Signature {
        /// The URL.
        url: String,
        /// Why.
        source: SignatureError,
    },
    /// The answer is an exception or cannot be read.
    #[error("common-services query {url}: {source}")]
    Answer {
        /// The URL.
        url: String,
        /// The exception or the reading problem.
        source: AnswerError,
    },
}

impl CsError {
    /// The service's exception, when it answered with one.
    pub fn exception(&self) -> Option<&super::answer::CsException> {
        match self {
            CsError::Answer {
                source: AnswerError::Exception(e),
                ..
            } => Some(e),
            _ => None,
        }
    }
}

/// How the client reaches and trusts the common services.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The Evidence Broker's base URL (`…/rest/search` is appended).
    pub eb_base_url: String,
    /// The Data Service Directory's base URL.
    pub dsd_base_url: String,
    /// Bound on each GET.
    pub timeout: Duration,
    /// How long a verified answer is served from the cache; zero disables the cache.
    pub freshness: Duration,
    /// Most answers kept (the oldest go first).
    pub max_cached: usize,
    /// Trust anchors for the answers' signatures; `None` accepts unsigned answers (local
    /// stand-in without a key, tests).
    pub trust: Option<TrustAnchors>,
}

impl ClientConfig {
    /// Defaults around the two base URLs: 10 s timeout, one hour of freshness, 256
    /// answers cached, no signature check.
    pub fn new(eb_base_url: impl Into<String>, dsd_base_url: impl Into<String>) -> Self {
        ClientConfig {
            eb_base_url: eb_base_url.into(),
            dsd_base_url: dsd_base_url.into(),
            timeout: Duration::from_secs(10),
            freshness: Duration::from_secs(3600),
            max_cached: 256,
            trust: None,
        }
    }
}

/// An answer as fetched: where from, when, whether from the cache, its signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched<T> {
    /// The query URL.
    pub url: String,
    /// The answer (empty when the service said "nothing found").
    pub answer: Answer<T>,
    /// The verified signature, when signatures are checked.
    pub signature: Option<VerifiedSignature>,
    /// Whether it came from the cache.
    pub from_cache: bool,
}

struct Entry {
    fetched_at: OffsetDateTime,
    body: Arc<Vec<u8>>,
    signature: Option<VerifiedSignature>,
}

/// The common-services client. Cheap to share behind an `Arc`; the cache is internal.
pub struct Client {
    config: ClientConfig,
    transport: Arc<dyn Transport>,
    clock: Clock,
    cache: Mutex<HashMap<String, Entry>>,
}

impl Client {
    /// A client with the system clock.
    pub fn new(config: ClientConfig, transport: Arc<dyn Transport>) -> Self {
        Client {
            config,
            transport,
            clock: Arc::new(OffsetDateTime::now_utc),
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The same client with another clock (tests).
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// Its configuration.
    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    /// The URL a query is sent to.
    pub fn url(&self, q: &Query) -> String {
        q.url(match q.service() {
            Service::EvidenceBroker => &self.config.eb_base_url,
            Service::DataServiceDirectory => &self.config.dsd_base_url,
        })
    }

    /// Drops every cached answer.
    pub fn clear_cache(&self) {
        self.lock().clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        // A panic while holding the lock leaves a consistent map; keep using it.
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// EB: the requirements of a procedure in a country.
    pub async fn requirements(
        &self,
        procedure_id: &str,
        country_code: &str,
    ) -> Result<Fetched<Requirement>, CsError> {
        let q = Query::Requirements {
            procedure_id: procedure_id.to_owned(),
            country_code: country_code.to_owned(),
        };
        self.run(&q, parse_requirements).await
    }

    /// EB: the evidence types proving a requirement in a country (each requirement's
    /// [`Requirement::evidence_types`]).
    pub async fn evidence_types(
        &self,
        requirement_id: &str,
        country_code: &str,
    ) -> Result<Fetched<Requirement>, CsError> {
        let q = Query::EvidenceTypes {
            requirement_id: requirement_id.to_owned(),
            country_code: country_code.to_owned(),
        };
        self.run(&q, parse_requirements).await
    }

    /// DSD: the data services delivering an evidence type. A `DSD:ERR:0005` answer comes
    /// back as an error whose [`CsError::exception`] says what to ask the user.
    pub async fn data_services(
        &self,
        query: DataServicesQuery,
    ) -> Result<Fetched<DataServiceEvidenceType>, CsError> {
        self.run(&Query::DataServices(query), parse_data_services)
            .await
    }

    async fn run<T>(
        &self,
        q: &Query,
        parse: fn(&[u8]) -> Result<Answer<T>, AnswerError>,
    ) -> Result<Fetched<T>, CsError> {
        let url = self.url(q);
        let now = (self.clock)();
        let fresh = self.cached(&url, now);
        if let Some((body, signature)) = fresh {
            tracing::debug!(%url, "common-services answer from the cache");
            return finish(url, &body, signature, true, parse);
        }
        tracing::debug!(%url, "common-services query");
        let reply = self
            .transport
            .get(&url, self.config.timeout)
            .await
            .map_err(|source| CsError::Transport {
                url: url.clone(),
                source,
            })?;
        let now = (self.clock)();
        let ok_status = (200..300).contains(&reply.status);
        let signature = match &self.config.trust {
            Some(anchors) => {
                match verify_response(&reply.headers, &reply.body, anchors, now) {
                    Ok(s) => Some(s),
                    // An unsigned error page (a proxy's 502…) says more as a status.
                    Err(SignatureError::Missing) if !ok_status => {
                        return Err(status_error(url, &reply))
                    }
                    Err(source) => return Err(CsError::Signature { url, source }),
                }
            }
            None => None,
        };
        let result = finish(url.clone(), &reply.body, signature.clone(), false, parse);
        let cacheable = ok_status
            && match &result {
                Ok(_) => true,
                Err(CsError::Answer {
                    source: AnswerError::Exception(_),
                    ..
                }) => true,
                Err(_) => false,
            };
        match &result {
            Err(CsError::Answer {
                source: AnswerError::Document(_),
                ..
            }) if !ok_status => return Err(status_error(url, &reply)),
            _ => {}
        }
        if cacheable && !self.config.freshness.is_zero() && self.config.max_cached > 0 {
            self.store(url, now, reply.body, signature);
        }
        result
    }

    fn cached(
        &self,
        url: &str,
        now: OffsetDateTime,
    ) -> Option<(Arc<Vec<u8>>, Option<VerifiedSignature>)> {
        let cache = self.lock();
        let e = cache.get(url)?;
        let age = now - e.fetched_at;
        (age >= time::Duration::ZERO && age < self.config.freshness)
            .then(|| (e.body.clone(), e.signature.clone()))
    }

    fn store(
        &self,
        url: String,
        now: OffsetDateTime,
        body: Vec<u8>,
        signature: Option<VerifiedSignature>,
    ) {
        let freshness = self.config.freshness;
        let mut cache = self.lock();
        cache.retain(|_, e| now - e.fetched_at < freshness);
        while cache.len() >= self.config.max_cached {
            let oldest = cache
                .iter()
                .min_by_key(|(_, e)| e.fetched_at)
                .map(|(k, _)| k.clone());
            match oldest {
                Some(k) => cache.remove(&k),
                None => break,
            };
        }
        cache.insert(
            url,
            Entry {
                fetched_at: now,
                body: Arc::new(body),
                signature,
            },
        );
    }
}

fn status_error(url: String, reply: &HttpReply) -> CsError {
    let text = String::from_utf8_lossy(&reply.body);
    let excerpt: String = text.chars().take(200).collect();
    CsError::Status {
        url,
        status: reply.status,
        excerpt,
    }
}

/// Parses; "nothing found" exceptions become an empty answer.
fn finish<T>(
    url: String,
    body: &[u8],
    signature: Option<VerifiedSignature>,
    from_cache: bool,
    parse: fn(&[u8]) -> Result<Answer<T>, AnswerError>,
) -> Result<Fetched<T>, CsError> {
    let answer = match parse(body) {
        Ok(a) => a,
        Err(AnswerError::Exception(e)) if e.is_empty_result() => Answer {
            specification: None,
            items: Vec::new(),
        },
        Err(source) => return Err(CsError::Answer { url, source }),
    };
    Ok(Fetched {
        url,
        answer,
        signature,
        from_cache,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Context, Poll, Waker};

    /// Runs a future that never waits (the fake transport answers at once).
    fn ready<F: Future>(f: F) -> F::Output {
        let mut f = std::pin::pin!(f);
        match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(v) => v,
            Poll::Pending => panic!("the future waited"),
        }
    }

    struct Fake {
        calls: AtomicUsize,
        reply: HttpReply,
    }

    impl Transport for Fake {
        fn get<'a>(
            &'a self,
            _url: &'a str,
            _timeout: Duration,
        ) -> BoxFuture<'a, Result<HttpReply, TransportError>> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            Box::pin(std::future::ready(Ok(self.reply.clone())))
        }
    }

    const EMPTY: &str = r#"<query:QueryResponse xmlns:query="urn:oasis:names:tc:ebxml-regrep:xsd:query:4.0" xmlns:rs="urn:oasis:names:tc:ebxml-regrep:xsd:rs:4.0" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" status="urn:oasis:names:tc:ebxml-regrep:ResponseStatusType:Failure"><rs:Exception xsi:type="rs:ObjectNotFoundExceptionType" code="EB:ERR:0001" message="empty"/></query:QueryResponse>"#;

    fn client(status: u16, body: &str, clock: Clock) -> (Arc<Fake>, Client) {
        let fake = Arc::new(Fake {
            calls: AtomicUsize::new(0),
            reply: HttpReply {
                status,
                headers: Vec::new(),
                body: body.as_bytes().to_vec(),
            },
        });
        let mut cfg = ClientConfig::new("http://eb.test", "http://dsd.test");
        cfg.freshness = Duration::from_secs(60);
        let c = Client::new(cfg, fake.clone()).with_clock(clock);
        (fake, c)
    }

    #[test]
    fn cache_serves_within_freshness_and_refetches_after() {
        let t0 = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        let now = Arc::new(Mutex::new(t0));
        let n = now.clone();
        let (fake, c) = client(200, EMPTY, Arc::new(move || *n.lock().unwrap()));
        let a = ready(c.requirements("R1", "LV")).unwrap();
        assert!(a.answer.items.is_empty() && !a.from_cache);
        *now.lock().unwrap() = t0 + time::Duration::seconds(59);
        assert!(ready(c.requirements("R1", "LV")).unwrap().from_cache);
        assert_eq!(fake.calls.load(Ordering::SeqCst), 1);
        // Another URL is another entry.
        assert!(!ready(c.requirements("R2", "LV")).unwrap().from_cache);
        assert_eq!(fake.calls.load(Ordering::SeqCst), 2);
        *now.lock().unwrap() = t0 + time::Duration::seconds(60);
        assert!(!ready(c.requirements("R1", "LV")).unwrap().from_cache);
        assert_eq!(fake.calls.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn error_status_without_answer_is_a_status_error_and_not_cached() {
        let t0 = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        let (fake, c) = client(502, "<html>Bad gateway</html>", Arc::new(move || t0));
        for _ in 0..2 {
            match ready(c.requirements("R1", "LV")) {
                Err(CsError::Status {
                    status, excerpt, ..
                }) => {
                    assert_eq!(status, 502);
                    assert!(excerpt.contains("Bad gateway"));
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(fake.calls.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn unsigned_answer_refused_when_trust_is_configured() {
        let t0 = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        let (_fake, c) = client(200, EMPTY, Arc::new(move || t0));
        let pem = include_bytes!("../../../../certs/ca.cert.pem");
        let mut cfg = c.config().clone();
        cfg.trust = Some(TrustAnchors::from_pem(pem).unwrap());
        let c = Client::new(cfg, c.transport.clone());
        match ready(c.requirements("R1", "LV")) {
            Err(CsError::Signature {
                source: SignatureError::Missing,
                ..
            }) => {}
            other => panic!("{other:?}"),
        }
    }
}
