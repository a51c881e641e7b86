//! The built-in test identity provider: a small OpenID Connect provider with a fixed list of
//! people, served under `{preview.public_url}/test-idp` when `preview.test_idp.enabled`.
//!
//! It lets tests and `varti demo` run the preview's real login path (redirect, code, token
//! endpoint, signed ID token, JWKS) without a national eID gateway — a stand-in at the far
//! edge, like the common-services stand-in. Its page lets anyone pick anyone: never enable
//! it in production (`serve` logs a warning when it is on).
//!
//! Endpoints: `GET /authorize` (the "who are you" page), `POST /login` (the choice),
//! `POST /token` (code → ID token, RS256), `GET /jwks`.
//!
//! It sends the browser back only to a registered redirect URI, compared exactly (as
//! OAuth 2.0 Security BCP asks): the preview's own callback and any
//! `preview.test_idp.redirect_uris`. Anything else is refused on the page and at login,
//! so the provider cannot be used to bounce a browser, with a code, to another site.

use std::collections::HashMap;
use std::sync::Mutex;

use base64::Engine;
use openssl::hash::MessageDigest;
use openssl::pkey::{PKey, Private};
use openssl::rsa::Rsa;
use openssl::sign::Signer;
use time::OffsetDateTime;

use super::pages::{escape, Lang};
use super::{Person, PreviewSetupError};

/// The client id the preview space uses at the test provider.
pub(crate) const CLIENT_ID: &str = "varti-preview";

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// How long a code is valid.
const CODE_TTL: time::Duration = time::Duration::minutes(2);

/// A code handed out and not yet redeemed.
#[derive(Debug)]
struct Grant {
    person: usize,
    nonce: String,
    redirect_uri: String,
    code_challenge: String,
    issued: OffsetDateTime,
}

/// The test provider.
pub(crate) struct TestIdp {
    issuer: String,
    persons: Vec<Person>,
    key: PKey<Private>,
    kid: String,
    client_secret: String,
    redirect_uris: Vec<String>,
    grants: Mutex<HashMap<String, Grant>>,
}

impl TestIdp {
    /// A provider named `issuer` (its base URL) for `persons`, with a fresh RSA key, that
    /// redirects only to `redirect_uris` (exact strings).
    pub(crate) fn new(
        issuer: String,
        persons: Vec<Person>,
        redirect_uris: Vec<String>,
    ) -> Result<TestIdp, PreviewSetupError> {
        let rsa = Rsa::generate(2048)
            .map_err(|e| PreviewSetupError::Config(format!("test IdP key: {e}")))?;
        let key = PKey::from_rsa(rsa)
            .map_err(|e| PreviewSetupError::Config(format!("test IdP key: {e}")))?;
        Ok(TestIdp {
            issuer,
            persons,
            key,
            kid: super::random_token()[..16].to_owned(),
            client_secret: super::random_token(),
            redirect_uris,
            grants: Mutex::new(HashMap::new()),
        })
    }

    /// Its issuer URL.
    pub(crate) fn issuer(&self) -> &str {
        &self.issuer
    }

    pub(super) fn client_secret(&self) -> &str {
        &self.client_secret
    }

    /// `redirect_uri` when it is registered; otherwise why not.
    fn allowed_redirect(&self, redirect_uri: String) -> Result<String, String> {
        if self.redirect_uris.contains(&redirect_uri) {
            Ok(redirect_uri)
        } else {
            Err(format!(
                "redirect_uri `{redirect_uri}` is not registered with the test identity provider; add it to preview.test_idp.redirect_uris (the preview's own callback always is)"
            ))
        }
    }

    /// The "who are you" page for an authorization request (`query` of `GET /authorize`).
    pub(super) fn authorize_page(&self, query: &str) -> Result<String, String> {
        let params: HashMap<String, String> = form_urlencoded::parse(query.as_bytes())
            .into_owned()
            .collect();
        let get = |name: &str| {
            params
                .get(name)
                .cloned()
                .ok_or_else(|| format!("the authorization request lacks `{name}`"))
        };
        if get("client_id")? != CLIENT_ID || get("response_type")? != "code" {
            return Err("unknown client or response type".into());
        }
        if params.get("code_challenge_method").map(String::as_str) != Some("S256") {
            return Err("PKCE with S256 is required".into());
        }
        self.allowed_redirect(get("redirect_uri")?)?;
        let lang = Lang::from_tag(params.get("ui_locales").map(String::as_str).unwrap_or("en"));
        let hidden = ["state", "nonce", "redirect_uri", "code_challenge"]
            .iter()
            .map(|n| {
                Ok(format!(
                    r#"<input type="hidden" name="{n}" value="{}">"#,
                    escape(&get(n)?)
                ))
            })
            .collect::<Result<String, String>>()?;
        let mut buttons = String::new();
        for (i, p) in self.persons.iter().enumerate() {
            buttons.push_str(&format!(
                r#"<li><button type="submit" name="person" value="{i}">{} {} ({})</button></li>"#,
                escape(&p.given_name),
                escape(&p.family_name),
                escape(&p.birth_date)
            ));
        }
        let (title, intro) = match lang {
            Lang::Lv => (
                "Testa identitātes nodrošinātājs",
                "Tikai testiem. Izvēlieties personu, kā kuru pieteikties.",
            ),
            Lang::En => (
                "Test identity provider",
                "For tests only. Choose the person to log in as.",
            ),
        };
        Ok(format!(
            r#"<!DOCTYPE html>
<html lang="{code}"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1"><title>{title}</title></head>
<body><main><h1>{title}</h1><p>{intro}</p>
<form method="post" action="{issuer}/login">{hidden}<ul id="persons">{buttons}</ul></form></main></body></html>"#,
            code = lang.code(),
            issuer = escape(&self.issuer),
        ))
    }

    /// The choice from the page (`POST /login` form): where to send the browser back.
    pub(super) fn login(&self, form: &[u8]) -> Result<String, String> {
        let params: HashMap<String, String> = form_urlencoded::parse(form).into_owned().collect();
        let get = |name: &str| {
            params
                .get(name)
                .cloned()
                .ok_or_else(|| format!("the form lacks `{name}`"))
        };
        let person: usize = get("person")?
            .parse()
            .map_err(|_| "`person` is not a number".to_owned())?;
        if person >= self.persons.len() {
            return Err("no such person".into());
        }
        let redirect_uri = self.allowed_redirect(get("redirect_uri")?)?;
        let code = super::random_token();
        self.grants.lock().expect("grants lock").insert(
            code.clone(),
            Grant {
                person,
                nonce: get("nonce")?,
                redirect_uri: redirect_uri.clone(),
                code_challenge: get("code_challenge")?,
                issued: OffsetDateTime::now_utc(),
            },
        );
        let query = form_urlencoded::Serializer::new(String::new())
            .append_pair("code", &code)
            .append_pair("state", &get("state")?)
            .finish();
        Ok(format!("{redirect_uri}?{query}"))
    }

    /// The token endpoint (`POST /token`): the JSON answer, or an OAuth error code.
    pub(super) fn token(
        &self,
        form: &[u8],
        authorization: Option<&str>,
    ) -> Result<String, &'static str> {
        let expected = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD
                .encode(format!("{CLIENT_ID}:{}", self.client_secret))
        );
        if authorization.map(|a| {
            openssl::memcmp::eq(a.as_bytes(), expected.as_bytes()) && a.len() == expected.len()
        }) != Some(true)
        {
            return Err("invalid_client");
        }
        let params: HashMap<String, String> = form_urlencoded::parse(form).into_owned().collect();
        if params.get("grant_type").map(String::as_str) != Some("authorization_code") {
            return Err("unsupported_grant_type");
        }
        let code = params.get("code").ok_or("invalid_request")?;
        // A code is good once.
        let grant = self
            .grants
            .lock()
            .expect("grants lock")
            .remove(code)
            .ok_or("invalid_grant")?;
        if OffsetDateTime::now_utc() - grant.issued > CODE_TTL
            || params.get("redirect_uri") != Some(&grant.redirect_uri)
        {
            return Err("invalid_grant");
        }
        let verifier = params.get("code_verifier").ok_or("invalid_request")?;
        if B64.encode(openssl::sha::sha256(verifier.as_bytes())) != grant.code_challenge {
            return Err("invalid_grant");
        }
        let person = &self.persons[grant.person];
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let claims = serde_json::json!({
            "iss": self.issuer,
            "sub": person.identifier.clone().unwrap_or_else(|| format!("{}-{}", person.family_name, person.birth_date)),
            "aud": CLIENT_ID,
            "iat": now,
            "exp": now + 300,
            "nonce": grant.nonce,
            "given_name": person.given_name,
            "family_name": person.family_name,
            "birthdate": person.birth_date,
            "person_identifier": person.identifier,
        });
        let id_token = self.sign(&claims).map_err(|_| "server_error")?;
        Ok(serde_json::json!({
            "access_token": super::random_token(),
            "token_type": "Bearer",
            "expires_in": 300,
            "id_token": id_token,
        })
        .to_string())
    }

    /// The JWKS (`GET /jwks`).
    pub(super) fn jwks(&self) -> String {
        let rsa = self.key.rsa().expect("an RSA key");
        serde_json::json!({"keys": [{
            "kty": "RSA",
            "use": "sig",
            "alg": "RS256",
            "kid": self.kid,
            "n": B64.encode(rsa.n().to_vec()),
            "e": B64.encode(rsa.e().to_vec()),
        }]})
        .to_string()
    }

    /// An RS256 JWT of `claims`.
    pub(crate) fn sign(
        &self,
        claims: &serde_json::Value,
    ) -> Result<String, openssl::error::ErrorStack> {
        let header = serde_json::json!({"alg": "RS256", "typ": "JWT", "kid": self.kid});
        let signing_input = format!(
            "{}.{}",
            B64.encode(header.to_string()),
            B64.encode(claims.to_string())
        );
        let mut signer = Signer::new(MessageDigest::sha256(), &self.key)?;
        signer.update(signing_input.as_bytes())?;
        let signature = signer.sign_to_vec()?;
        Ok(format!("{signing_input}.{}", B64.encode(signature)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CALLBACK: &str = "https://preview.example/preview/callback";

    fn idp() -> TestIdp {
        let person = Person {
            identifier: None,
            given_name: "Anna".into(),
            family_name: "Bērziņa".into(),
            birth_date: "1990-04-01".into(),
        };
        TestIdp::new(
            "https://preview.example/test-idp".into(),
            vec![person],
            vec![CALLBACK.into()],
        )
        .unwrap()
    }

    fn authorize_query(redirect_uri: &str) -> String {
        form_urlencoded::Serializer::new(String::new())
            .append_pair("client_id", CLIENT_ID)
            .append_pair("response_type", "code")
            .append_pair("code_challenge_method", "S256")
            .append_pair("code_challenge", "challenge")
            .append_pair("state", "st")
            .append_pair("nonce", "no")
            .append_pair("redirect_uri", redirect_uri)
            .finish()
    }

    fn login_form(redirect_uri: &str) -> Vec<u8> {
        form_urlencoded::Serializer::new(String::new())
            .append_pair("person", "0")
            .append_pair("state", "st")
            .append_pair("nonce", "no")
            .append_pair("code_challenge", "challenge")
            .append_pair("redirect_uri", redirect_uri)
            .finish()
            .into_bytes()
    }

    #[test]
    fn redirects_only_to_a_registered_uri() {
        let idp = idp();
        let page = idp.authorize_page(&authorize_query(CALLBACK)).unwrap();
        assert!(page.contains("Anna"), "{page}");
        let back = idp.login(&login_form(CALLBACK)).unwrap();
        assert!(back.starts_with(&format!("{CALLBACK}?code=")), "{back}");

        for other in [
            "https://evil.example/cb",
            "https://preview.example/preview/callback/../x",
            "https://preview.example/preview/callback?x=1",
            "https://preview.example.evil/preview/callback",
        ] {
            let why = idp.authorize_page(&authorize_query(other)).unwrap_err();
            assert!(why.contains("not registered"), "{other}: {why}");
            let why = idp.login(&login_form(other)).unwrap_err();
            assert!(why.contains("not registered"), "{other}: {why}");
        }
        // Nothing was granted for the refused logins: only the one code exists.
        assert_eq!(idp.grants.lock().unwrap().len(), 1);
    }
}
