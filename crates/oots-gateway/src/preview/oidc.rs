//! The OpenID Connect client of the preview space: authorization code flow with PKCE, the
//! code exchanged at the token endpoint, the ID token verified against the provider's JWKS.
//!
//! Only what the preview needs: RS256 and ES256 ID tokens (the algorithms eID gateways
//! use), the issuer, audience, expiry and nonce checked, and the eIDAS minimum data set read
//! from the claims (`given_name`, `family_name`, `birthdate`, `person_identifier`). The
//! signature is checked with OpenSSL, the project's one crypto provider; the algorithm comes
//! from an allow-list and must fit the key type, so a token cannot pick its own check
//! (`none`, or HMAC keyed with a public key).

use std::sync::Mutex;
use std::time::{Duration, Instant};
use varti_access_point::https::{https_client, HttpsClient, HttpsOptions};

use base64::Engine;
use bytes::Bytes;
use http::{header, HeaderValue, Request, Uri};
use http_body_util::{BodyExt, Full};
use openssl::bn::BigNum;
use openssl::ecdsa::EcdsaSig;
use openssl::hash::MessageDigest;
use openssl::pkey::{PKey, Public};
use openssl::sign::Verifier;
use serde::Deserialize;
use time::OffsetDateTime;

use super::{OidcConfig, Person, PreviewSetupError};
use varti_access_point::server::tls;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// Largest answer read from the provider.
const MAX_ANSWER: usize = 256 * 1024;
/// How long the provider may take to answer.
const TIMEOUT: Duration = Duration::from_secs(15);
/// How long fetched keys are used before being fetched again.
const JWKS_FRESHNESS: Duration = Duration::from_secs(600);
/// Clock difference tolerated between us and the provider.
const SKEW: i64 = 60;

/// Why a login failed.
#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    /// The provider could not be reached or answered with an error.
    #[error("the identity provider: {0}")]
    Provider(String),
    /// The ID token is not acceptable.
    #[error("the ID token is not acceptable: {0}")]
    Token(String),
}

/// The client.
pub(super) struct OidcClient {
    issuer: String,
    authorize_url: String,
    token_url: String,
    jwks_url: String,
    client_id: String,
    client_secret: Option<String>,
    redirect_uri: String,
    http: HttpsClient<Full<Bytes>>,
    keys: Mutex<Option<(Instant, Vec<Jwk>)>>,
}

impl OidcClient {
    /// The client of a configured provider (https only).
    pub(super) fn from_config(
        config: &OidcConfig,
        redirect_uri: String,
    ) -> Result<OidcClient, PreviewSetupError> {
        let missing = |key: &str| {
            PreviewSetupError::Config(format!(
                "preview.oidc.{key} is not set: name the national eID gateway's OpenID Connect endpoints, or enable preview.test_idp for tests and the demo"
            ))
        };
        for (key, value) in [
            ("issuer", &config.issuer),
            ("authorize_url", &config.authorize_url),
            ("token_url", &config.token_url),
            ("jwks_url", &config.jwks_url),
            ("client_id", &config.client_id),
        ] {
            if value.is_empty() {
                return Err(missing(key));
            }
            if key != "client_id" && key != "issuer" && !value.starts_with("https://") {
                return Err(PreviewSetupError::Config(format!(
                    "preview.oidc.{key} `{value}` must be an https:// URL"
                )));
            }
        }
        let client_secret = match &config.client_secret_file {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .map_err(|source| PreviewSetupError::Io {
                        what: format!("reading preview.oidc.client_secret_file {}", path.display()),
                        source,
                    })?
                    .trim()
                    .to_owned(),
            ),
            None => None,
        };
        let ca_file = config
            .ca_file
            .clone()
            .unwrap_or_else(|| crate::common_services::SYSTEM_CA_BUNDLE.into());
        let cas = tls::load_certs(&ca_file, "preview.oidc.ca_file")
            .map_err(|e| PreviewSetupError::Config(e.to_string()))?;
        Ok(OidcClient {
            issuer: config.issuer.clone(),
            authorize_url: config.authorize_url.clone(),
            token_url: config.token_url.clone(),
            jwks_url: config.jwks_url.clone(),
            client_id: config.client_id.clone(),
            client_secret,
            redirect_uri,
            http: http_client(&cas, false)?,
            keys: Mutex::new(None),
        })
    }

    /// The client of the built-in test identity provider (plain HTTP allowed: it is this
    /// same process). When the preview space serves HTTPS (`preview.tls`), its certificate
    /// is trusted through `ca_file` (`preview.oidc.ca_file`).
    pub(super) fn for_test_idp(
        idp: &super::test_idp::TestIdp,
        redirect_uri: String,
        ca_file: Option<&std::path::Path>,
    ) -> Result<OidcClient, PreviewSetupError> {
        let issuer = idp.issuer().to_owned();
        let cas = match ca_file {
            Some(f) => tls::load_certs(f, "preview.oidc.ca_file")
                .map_err(|e| PreviewSetupError::Config(e.to_string()))?,
            None => Vec::new(),
        };
        Ok(OidcClient {
            authorize_url: format!("{issuer}/authorize"),
            token_url: format!("{issuer}/token"),
            jwks_url: format!("{issuer}/jwks"),
            issuer,
            client_id: super::test_idp::CLIENT_ID.into(),
            client_secret: Some(idp.client_secret().to_owned()),
            redirect_uri,
            http: http_client(&cas, true)?,
            keys: Mutex::new(None),
        })
    }

    /// Where to send the browser to log in.
    pub(super) fn authorize_redirect(
        &self,
        state: &str,
        nonce: &str,
        pkce_verifier: &str,
        ui_locale: &str,
    ) -> String {
        let challenge = B64.encode(openssl::sha::sha256(pkce_verifier.as_bytes()));
        let query = form_urlencoded::Serializer::new(String::new())
            .append_pair("response_type", "code")
            .append_pair("client_id", &self.client_id)
            .append_pair("redirect_uri", &self.redirect_uri)
            .append_pair("scope", "openid profile")
            .append_pair("state", state)
            .append_pair("nonce", nonce)
            .append_pair("code_challenge", &challenge)
            .append_pair("code_challenge_method", "S256")
            .append_pair("ui_locales", ui_locale)
            .finish();
        let sep = if self.authorize_url.contains('?') {
            '&'
        } else {
            '?'
        };
        format!("{}{sep}{query}", self.authorize_url)
    }

    /// Exchanges `code` for an ID token, verifies it and returns the person in it.
    pub(super) async fn login(
        &self,
        code: &str,
        pkce_verifier: &str,
        nonce: &str,
    ) -> Result<Person, OidcError> {
        let form = form_urlencoded::Serializer::new(String::new())
            .append_pair("grant_type", "authorization_code")
            .append_pair("code", code)
            .append_pair("redirect_uri", &self.redirect_uri)
            .append_pair("client_id", &self.client_id)
            .append_pair("code_verifier", pkce_verifier)
            .finish();
        let mut request = Request::post(&self.token_url)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::ACCEPT, "application/json")
            .body(Full::new(Bytes::from(form)))
            .map_err(|e| OidcError::Provider(format!("token request: {e}")))?;
        if let Some(secret) = &self.client_secret {
            let basic = B64_STD.encode(format!("{}:{secret}", self.client_id));
            let value = HeaderValue::from_str(&format!("Basic {basic}"))
                .map_err(|e| OidcError::Provider(e.to_string()))?;
            request.headers_mut().insert(header::AUTHORIZATION, value);
        }
        let (status, body) = self.exchange(request).await?;
        if status != 200 {
            return Err(OidcError::Provider(format!(
                "the token endpoint answered HTTP {status}: {}",
                String::from_utf8_lossy(&body[..body.len().min(300)])
            )));
        }
        #[derive(Deserialize)]
        struct TokenAnswer {
            id_token: String,
        }
        let answer: TokenAnswer = serde_json::from_slice(&body).map_err(|e| {
            OidcError::Provider(format!("the token endpoint's answer has no id_token ({e})"))
        })?;
        let claims = self.verify(&answer.id_token).await?;
        if claims.nonce.as_deref() != Some(nonce) {
            return Err(OidcError::Token(
                "its nonce is not the one of this login (a replayed or foreign token)".into(),
            ));
        }
        claims.person()
    }

    /// Verifies the signature and the standard claims of `token`.
    async fn verify(&self, token: &str) -> Result<Claims, OidcError> {
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(OidcError::Token(
                "it is not a signed JWT (three parts)".into(),
            ));
        };
        let decode = |part: &str, what: &str| {
            B64.decode(part)
                .map_err(|_| OidcError::Token(format!("its {what} is not base64url")))
        };
        #[derive(Deserialize)]
        struct Header {
            alg: String,
            kid: Option<String>,
        }
        let header: Header = serde_json::from_slice(&decode(h, "header")?)
            .map_err(|e| OidcError::Token(format!("its header is not valid: {e}")))?;
        let signature = decode(s, "signature")?;
        let signed = &token.as_bytes()[..h.len() + 1 + p.len()];
        let mut verified = false;
        // A key rotation at the provider: when no key fits, fetch the keys once more.
        for refresh in [false, true] {
            let keys = self.keys(refresh).await?;
            let candidates: Vec<&Jwk> = keys
                .iter()
                .filter(|k| header.kid.is_none() || k.kid == header.kid)
                .collect();
            if candidates.is_empty() {
                continue;
            }
            for key in candidates {
                if key.verify(&header.alg, signed, &signature)? {
                    verified = true;
                    break;
                }
            }
            if verified || !refresh {
                break;
            }
        }
        if !verified {
            return Err(OidcError::Token(
                "its signature does not verify with the provider's keys".into(),
            ));
        }
        let claims: Claims = serde_json::from_slice(&decode(p, "payload")?)
            .map_err(|e| OidcError::Token(format!("its claims are not valid: {e}")))?;
        if claims.iss != self.issuer {
            return Err(OidcError::Token(format!(
                "it was issued by `{}`, not by `{}`",
                claims.iss, self.issuer
            )));
        }
        if !claims.aud.contains(&self.client_id) {
            return Err(OidcError::Token(format!(
                "it is not meant for client `{}`",
                self.client_id
            )));
        }
        let now = OffsetDateTime::now_utc().unix_timestamp();
        if claims.exp + SKEW < now {
            return Err(OidcError::Token("it has expired".into()));
        }
        if claims.iat.is_some_and(|iat| iat > now + SKEW) {
            return Err(OidcError::Token(
                "it is issued in the future (check the clocks)".into(),
            ));
        }
        Ok(claims)
    }

    /// The provider's keys, fetched when missing, stale or `refresh`.
    async fn keys(&self, refresh: bool) -> Result<Vec<Jwk>, OidcError> {
        if !refresh {
            if let Some((at, keys)) = &*self.keys.lock().expect("jwks lock") {
                if at.elapsed() < JWKS_FRESHNESS {
                    return Ok(keys.clone());
                }
            }
        }
        let request = Request::get(&self.jwks_url)
            .header(header::ACCEPT, "application/json")
            .body(Full::new(Bytes::new()))
            .map_err(|e| OidcError::Provider(format!("JWKS request: {e}")))?;
        let (status, body) = self.exchange(request).await?;
        if status != 200 {
            return Err(OidcError::Provider(format!(
                "the JWKS endpoint {} answered HTTP {status}",
                self.jwks_url
            )));
        }
        #[derive(Deserialize)]
        struct Jwks {
            keys: Vec<Jwk>,
        }
        let jwks: Jwks = serde_json::from_slice(&body)
            .map_err(|e| OidcError::Provider(format!("the JWKS is not valid: {e}")))?;
        *self.keys.lock().expect("jwks lock") = Some((Instant::now(), jwks.keys.clone()));
        Ok(jwks.keys)
    }

    async fn exchange(&self, request: Request<Full<Bytes>>) -> Result<(u16, Vec<u8>), OidcError> {
        let uri: Uri = request.uri().clone();
        let run = async {
            let response = self
                .http
                .request(request)
                .await
                .map_err(|e| OidcError::Provider(format!("{uri}: {e}")))?;
            let status = response.status().as_u16();
            let mut body = response.into_body();
            let mut collected = Vec::new();
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| OidcError::Provider(format!("{uri}: {e}")))?;
                if let Ok(data) = frame.into_data() {
                    if collected.len() + data.len() > MAX_ANSWER {
                        return Err(OidcError::Provider(format!(
                            "{uri}: the answer is larger than {MAX_ANSWER} bytes"
                        )));
                    }
                    collected.extend_from_slice(&data);
                }
            }
            Ok((status, collected))
        };
        tokio::time::timeout(TIMEOUT, run)
            .await
            .map_err(|_| OidcError::Provider(format!("{uri} did not answer within {TIMEOUT:?}")))?
    }
}

const B64_STD: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

fn http_client(
    cas: &[rustls::pki_types::CertificateDer<'static>],
    allow_plain_http: bool,
) -> Result<HttpsClient<Full<Bytes>>, PreviewSetupError> {
    let tls_config =
        tls::client_config(cas, None).map_err(|e| PreviewSetupError::Config(e.to_string()))?;
    Ok(https_client(HttpsOptions {
        allow_plain_http,
        http2: false,
        ..HttpsOptions::new(tls_config)
    }))
}

/// The claims read from an ID token.
#[derive(Debug, Deserialize)]
struct Claims {
    iss: String,
    aud: Audience,
    exp: i64,
    iat: Option<i64>,
    nonce: Option<String>,
    given_name: Option<String>,
    family_name: Option<String>,
    birthdate: Option<String>,
    person_identifier: Option<String>,
}

impl Claims {
    fn person(self) -> Result<Person, OidcError> {
        let need = |v: Option<String>, name: &str| {
            v.filter(|s| !s.trim().is_empty()).ok_or_else(|| {
                OidcError::Token(format!(
                    "it lacks the `{name}` claim (the preview needs the eIDAS minimum data set: ask for the profile scope)"
                ))
            })
        };
        Ok(Person {
            identifier: self.person_identifier,
            given_name: need(self.given_name, "given_name")?,
            family_name: need(self.family_name, "family_name")?,
            birth_date: need(self.birthdate, "birthdate")?,
        })
    }
}

/// `aud`: one string or several.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

impl Audience {
    fn contains(&self, id: &str) -> bool {
        match self {
            Audience::One(a) => a == id,
            Audience::Many(all) => all.iter().any(|a| a == id),
        }
    }
}

/// One key of a JWKS (RSA or P-256 public keys; others are ignored).
#[derive(Debug, Clone, Deserialize)]
pub(super) struct Jwk {
    kty: String,
    kid: Option<String>,
    n: Option<String>,
    e: Option<String>,
    crv: Option<String>,
    x: Option<String>,
    y: Option<String>,
}

impl Jwk {
    /// Whether `signature` over `signed` verifies with this key under `alg`. Errors only
    /// for a malformed key; a wrong signature or an algorithm that does not fit is `false`.
    fn verify(&self, alg: &str, signed: &[u8], signature: &[u8]) -> Result<bool, OidcError> {
        let bad = |what: &str| OidcError::Provider(format!("a JWKS key is malformed: {what}"));
        let b64n = |v: &Option<String>, name: &str| -> Result<BigNum, OidcError> {
            let bytes = B64
                .decode(v.as_deref().ok_or_else(|| bad(name))?)
                .map_err(|_| bad(name))?;
            BigNum::from_slice(&bytes).map_err(|_| bad(name))
        };
        match (alg, self.kty.as_str()) {
            ("RS256", "RSA") => {
                let rsa = openssl::rsa::Rsa::from_public_components(
                    b64n(&self.n, "n")?,
                    b64n(&self.e, "e")?,
                )
                .map_err(|_| bad("RSA components"))?;
                if rsa.size() < 256 {
                    return Ok(false);
                }
                let key = PKey::from_rsa(rsa).map_err(|_| bad("RSA key"))?;
                verify_with(&key, signed, signature)
            }
            ("ES256", "EC") if self.crv.as_deref() == Some("P-256") => {
                let group =
                    openssl::ec::EcGroup::from_curve_name(openssl::nid::Nid::X9_62_PRIME256V1)
                        .map_err(|_| bad("curve"))?;
                let (x, y) = (b64n(&self.x, "x")?, b64n(&self.y, "y")?);
                let ec = openssl::ec::EcKey::from_public_key_affine_coordinates(&group, &x, &y)
                    .map_err(|_| bad("EC point"))?;
                if signature.len() != 64 {
                    return Ok(false);
                }
                // JWS carries r||s; OpenSSL wants DER.
                let sig = EcdsaSig::from_private_components(
                    BigNum::from_slice(&signature[..32]).map_err(|_| bad("r"))?,
                    BigNum::from_slice(&signature[32..]).map_err(|_| bad("s"))?,
                )
                .and_then(|s| s.to_der())
                .map_err(|_| bad("signature"))?;
                let key = PKey::from_ec_key(ec).map_err(|_| bad("EC key"))?;
                verify_with(&key, signed, &sig)
            }
            _ => Ok(false),
        }
    }
}

fn verify_with(key: &PKey<Public>, signed: &[u8], signature: &[u8]) -> Result<bool, OidcError> {
    let mut verifier = Verifier::new(MessageDigest::sha256(), key)
        .map_err(|e| OidcError::Token(format!("cannot verify: {e}")))?;
    verifier
        .update(signed)
        .map_err(|e| OidcError::Token(format!("cannot verify: {e}")))?;
    Ok(verifier.verify(signature).unwrap_or(false))
}
