//! Private keys in a PKCS#11 token (an HSM, a smart card, SoftHSM2), named by an
//! RFC 7512 `pkcs11:` URI.
//!
//! * [`Pkcs11Uri`] — the URI: `pkcs11:token=<label>;object=<label>` (or `id=%01…`), with
//!   the PIN in `?pin-source=file:<path>` (the PIN is the file's first line) or, for
//!   tests only, `?pin-value=<pin>`. `module-path=<path>` names the module when the
//!   configuration does not.
//! * [`TokenKey`] — a private key object in a token, implementing
//!   [`KeyOperations`](super::private_key::KeyOperations): every signature, RSA
//!   decryption and ECDH derivation is done by the token; Varti never reads the key
//!   material (the key may be, and should be, non-extractable and sensitive).
//! * [`list_objects`] — the usable objects of a token (`varti keys list`).
//!
//! One module instance is loaded per process and path (PKCS#11 allows one
//! `C_Initialize` per process), and one session pool per token, shared by every key of
//! that token. When the token or its module goes away (a session or the module's state
//! becomes invalid), the operation fails with a *transient* error and the pool is
//! re-opened, logging in again, on the next use.
//!
//! The binding is the `cryptoki` crate: a maintained, safe wrapper over the PKCS#11 C API
//! (module loading, sessions, attribute templates, mechanism parameters), so this module
//! contains no `unsafe` code.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
use cryptoki::mechanism::elliptic_curve::{EcKdf, Ecdh1DeriveParams};
use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsOaepParams, PkcsOaepSource, PkcsPssParams};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use openssl::bn::BigNum;
use openssl::ec::{EcGroup, EcKey, EcPoint};
use openssl::nid::Nid;
use openssl::pkey::{Id, PKey, PKeyRef, Public};
use openssl::rsa::Rsa;
use percent_encoding::percent_decode_str;

use super::private_key::{KeyError, KeyKind, KeyOperations, RsaDecryption, SignMechanism};

/// The environment variable naming the PKCS#11 module when the configuration does not.
pub const MODULE_ENV: &str = "VARTI_PKCS11_MODULE";

/// Whether a private-key setting is a PKCS#11 URI rather than a file path.
pub fn is_pkcs11_uri(setting: &str) -> bool {
    setting.starts_with("pkcs11:")
}

/// Why a token key cannot be opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pkcs11Error(String);

impl fmt::Display for Pkcs11Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Pkcs11Error {}

fn perr(s: impl Into<String>) -> Pkcs11Error {
    Pkcs11Error(s.into())
}

/// A parsed RFC 7512 URI naming a private key object (the attributes Varti uses).
#[derive(Clone, PartialEq, Eq)]
pub struct Pkcs11Uri {
    /// `token=`: the token label.
    pub token: Option<String>,
    /// `serial=`: the token serial number.
    pub serial: Option<String>,
    /// `object=`: the object label.
    pub object: Option<String>,
    /// `id=`: the object's CKA_ID bytes.
    pub id: Option<Vec<u8>>,
    /// `module-path=`: the module library.
    pub module_path: Option<PathBuf>,
    /// `pin-value=`: the PIN itself (tests only: it ends up in configuration files and
    /// process listings).
    pub pin_value: Option<String>,
    /// `pin-source=`: a file whose first line is the PIN (`file:` prefix optional).
    pub pin_source: Option<PathBuf>,
}

impl fmt::Debug for Pkcs11Uri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

fn decode(v: &str, what: &str) -> Result<Vec<u8>, Pkcs11Error> {
    if v.contains('%') {
        // Validate the escapes: percent_decode leaves bad ones as they are.
        let b = v.as_bytes();
        for (i, c) in b.iter().enumerate() {
            if *c == b'%'
                && !(i + 2 < b.len()
                    && b[i + 1].is_ascii_hexdigit()
                    && b[i + 2].is_ascii_hexdigit())
            {
                return Err(perr(format!(
                    "the {what} attribute of the pkcs11: URI has a bad percent escape: {v}"
                )));
            }
        }
    }
    Ok(percent_decode_str(v).collect())
}

fn decode_str(v: &str, what: &str) -> Result<String, Pkcs11Error> {
    String::from_utf8(decode(v, what)?).map_err(|_| {
        perr(format!(
            "the {what} attribute of the pkcs11: URI is not UTF-8"
        ))
    })
}

impl Pkcs11Uri {
    /// Parses `pkcs11:path-attributes[?query-attributes]`. Unknown path attributes
    /// (`manufacturer`, `model`, `type`, …) are accepted and ignored except `type`, which
    /// must be `private` when given.
    pub fn parse(uri: &str) -> Result<Pkcs11Uri, Pkcs11Error> {
        let rest = uri.strip_prefix("pkcs11:").ok_or_else(|| {
            perr("a PKCS#11 key is named by a URI starting with 'pkcs11:' (RFC 7512)")
        })?;
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        let mut u = Pkcs11Uri {
            token: None,
            serial: None,
            object: None,
            id: None,
            module_path: None,
            pin_value: None,
            pin_source: None,
        };
        for attr in path.split(';').filter(|a| !a.is_empty()) {
            let (k, v) = attr.split_once('=').ok_or_else(|| {
                perr(format!(
                    "pkcs11: URI attribute '{attr}' has no '=': write name=value pairs separated by ';'"
                ))
            })?;
            match k {
                "token" => u.token = Some(decode_str(v, k)?),
                "serial" => u.serial = Some(decode_str(v, k)?),
                "object" => u.object = Some(decode_str(v, k)?),
                "id" => u.id = Some(decode(v, k)?),
                "type" if v != "private" => {
                    return Err(perr(format!(
                        "pkcs11: URI names type={v}, but a private-key setting needs type=private (or no type)"
                    )))
                }
                _ => {}
            }
        }
        for attr in query.split('&').filter(|a| !a.is_empty()) {
            let (k, v) = attr
                .split_once('=')
                .ok_or_else(|| perr(format!("pkcs11: URI query attribute '{attr}' has no '='")))?;
            match k {
                "pin-value" => u.pin_value = Some(decode_str(v, k)?),
                "pin-source" => {
                    let p = decode_str(v, k)?;
                    let p = p.strip_prefix("file:").unwrap_or(&p).to_string();
                    u.pin_source = Some(PathBuf::from(p));
                }
                "module-path" => u.module_path = Some(PathBuf::from(decode_str(v, k)?)),
                _ => {}
            }
        }
        if u.token.is_none() && u.serial.is_none() {
            return Err(perr(format!(
                "the pkcs11: URI '{}' names no token: add token=<label> (see `varti keys list`)",
                u.redacted()
            )));
        }
        if u.object.is_none() && u.id.is_none() {
            return Err(perr(format!(
                "the pkcs11: URI '{}' names no key object: add object=<label> or id=<%hex> (see `varti keys list`)",
                u.redacted()
            )));
        }
        Ok(u)
    }

    /// The URI without the PIN value, for logs and listings.
    pub fn redacted(&self) -> String {
        let mut s = String::from("pkcs11:");
        let mut parts = Vec::new();
        if let Some(t) = &self.token {
            parts.push(format!("token={t}"));
        }
        if let Some(t) = &self.serial {
            parts.push(format!("serial={t}"));
        }
        if let Some(o) = &self.object {
            parts.push(format!("object={o}"));
        }
        if let Some(id) = &self.id {
            let hex: String = id.iter().map(|b| format!("%{b:02x}")).collect();
            parts.push(format!("id={hex}"));
        }
        s.push_str(&parts.join(";"));
        if self.pin_value.is_some() {
            s.push_str("?pin-value=***");
        } else if let Some(p) = &self.pin_source {
            s.push_str(&format!("?pin-source=file:{}", p.display()));
        }
        s
    }

    fn pin(&self) -> Result<Option<String>, Pkcs11Error> {
        if let Some(p) = &self.pin_value {
            tracing::warn!(
                key = %self.redacted(),
                "the PIN of a PKCS#11 key is given with pin-value in the URI: use pin-source=file:<path> outside tests"
            );
            return Ok(Some(p.clone()));
        }
        if let Some(path) = &self.pin_source {
            let text = std::fs::read_to_string(path).map_err(|e| {
                perr(format!(
                    "cannot read the PIN file {} of {}: {e}",
                    path.display(),
                    self.redacted()
                ))
            })?;
            return Ok(Some(text.lines().next().unwrap_or("").to_string()));
        }
        Ok(None)
    }
}

fn default_module() -> &'static Mutex<Option<PathBuf>> {
    static D: OnceLock<Mutex<Option<PathBuf>>> = OnceLock::new();
    D.get_or_init(Default::default)
}

/// Sets the process's configured module (`[pkcs11] module`), used for keys opened without
/// an explicit one (the TLS keys).
pub fn set_default_module(module: Option<PathBuf>) {
    *default_module().lock().unwrap_or_else(|e| e.into_inner()) = module;
}

/// Which module to load: the URI's `module-path`, else the configured one (`configured`,
/// else [`set_default_module`]'s), else `VARTI_PKCS11_MODULE`.
pub fn module_for(uri: &Pkcs11Uri, configured: Option<&Path>) -> Result<PathBuf, Pkcs11Error> {
    if let Some(p) = &uri.module_path {
        return Ok(p.clone());
    }
    if let Some(p) = configured {
        return Ok(p.to_path_buf());
    }
    if let Some(p) = default_module()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
    {
        return Ok(p);
    }
    match std::env::var_os(MODULE_ENV) {
        Some(p) if !p.is_empty() => Ok(PathBuf::from(p)),
        _ => Err(perr(format!(
            "no PKCS#11 module for {}: set `module` in the [pkcs11] section of the configuration, \
             or the {MODULE_ENV} environment variable (e.g. /usr/lib/softhsm/libsofthsm2.so)",
            uri.redacted()
        ))),
    }
}

// ---------------------------------------------------------------------------------------
// Modules and session pools
// ---------------------------------------------------------------------------------------

/// One loaded module (per path and process).
struct Module {
    path: PathBuf,
    ctx: Mutex<Option<Pkcs11>>,
}

impl Module {
    fn context(&self) -> Result<Pkcs11, CkError> {
        let mut g = self.ctx.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = &*g {
            return Ok(c.clone());
        }
        let c = Pkcs11::new(&self.path)?;
        match c.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
            Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
            Err(e) => return Err(e),
        }
        *g = Some(c.clone());
        Ok(c)
    }

    /// Forgets the module state so that the next use initializes it again.
    fn reset(&self) {
        let mut g = self.ctx.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = g.take() {
            // Sessions still held by pools become invalid; they are dropped on failure.
            let _ = c.finalize();
        }
    }
}

fn modules() -> &'static Mutex<HashMap<PathBuf, Arc<Module>>> {
    static M: OnceLock<Mutex<HashMap<PathBuf, Arc<Module>>>> = OnceLock::new();
    M.get_or_init(Default::default)
}

fn module(path: &Path) -> Arc<Module> {
    let mut g = modules().lock().unwrap_or_else(|e| e.into_inner());
    g.entry(path.to_path_buf())
        .or_insert_with(|| {
            Arc::new(Module {
                path: path.to_path_buf(),
                ctx: Mutex::new(None),
            })
        })
        .clone()
}

/// The sessions of one token, shared by its keys.
struct TokenPool {
    module: Arc<Module>,
    token: Option<String>,
    serial: Option<String>,
    pin: Option<String>,
    state: Mutex<PoolState>,
}

#[derive(Default)]
struct PoolState {
    slot: Option<Slot>,
    idle: Vec<Session>,
    /// Bumped whenever the pool is re-opened: cached object handles of an older
    /// generation are looked up again.
    generation: u64,
}

fn pools() -> &'static Mutex<HashMap<String, Arc<TokenPool>>> {
    static P: OnceLock<Mutex<HashMap<String, Arc<TokenPool>>>> = OnceLock::new();
    P.get_or_init(Default::default)
}

/// Errors after which the pool must be re-opened.
fn is_connection_loss(e: &CkError) -> bool {
    matches!(
        e,
        CkError::Pkcs11(
            RvError::CryptokiNotInitialized
                | RvError::DeviceRemoved
                | RvError::DeviceError
                | RvError::TokenNotPresent
                | RvError::SessionHandleInvalid
                | RvError::SessionClosed
                | RvError::UserNotLoggedIn
                | RvError::ObjectHandleInvalid
                | RvError::GeneralError
                | RvError::SlotIdInvalid,
            _
        )
    )
}

impl TokenPool {
    fn describe(&self) -> String {
        match (&self.token, &self.serial) {
            (Some(t), _) => format!("token '{t}'"),
            (None, Some(s)) => format!("token with serial {s}"),
            (None, None) => "token".to_string(),
        }
    }

    fn find_slot(&self, ctx: &Pkcs11) -> Result<Slot, Pkcs11Error> {
        let slots = ctx
            .get_slots_with_token()
            .map_err(|e| perr(format!("cannot list the module's slots: {e}")))?;
        let mut labels = Vec::new();
        for s in slots {
            let Ok(info) = ctx.get_token_info(s) else {
                continue;
            };
            let label = info.label().trim_end().to_string();
            let serial = info.serial_number().trim_end().to_string();
            let ok = self.token.as_deref().is_none_or(|t| t == label)
                && self.serial.as_deref().is_none_or(|t| t == serial);
            if ok {
                return Ok(s);
            }
            labels.push(label);
        }
        Err(perr(format!(
            "no {} in the PKCS#11 module {} (tokens present: {}); check the token label with `varti keys list --module {}`",
            self.describe(),
            self.module.path.display(),
            if labels.is_empty() { "none".to_string() } else { labels.join(", ") },
            self.module.path.display(),
        )))
    }

    /// A logged-in session and the pool generation it belongs to.
    fn take(&self) -> Result<(Session, u64), Pkcs11Error> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = st.idle.pop() {
            return Ok((s, st.generation));
        }
        let ctx = self.module.context().map_err(|e| {
            perr(format!(
                "cannot load the PKCS#11 module {}: {e}",
                self.module.path.display()
            ))
        })?;
        let slot = match st.slot {
            Some(s) => s,
            None => {
                let s = self.find_slot(&ctx)?;
                st.slot = Some(s);
                s
            }
        };
        let session = ctx
            .open_ro_session(slot)
            .map_err(|e| perr(format!("cannot open a session on {}: {e}", self.describe())))?;
        if let Some(pin) = &self.pin {
            match session.login(UserType::User, Some(&AuthPin::from(pin.clone()))) {
                Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
                Err(CkError::Pkcs11(RvError::PinIncorrect, _)) => {
                    return Err(perr(format!(
                        "the PIN of {} is wrong (CKR_PIN_INCORRECT): fix pin-source (or pin-value) in the key's pkcs11: URI; \
                         repeated wrong PINs may lock the token",
                        self.describe()
                    )))
                }
                Err(CkError::Pkcs11(RvError::PinLocked, _)) => {
                    return Err(perr(format!(
                        "the user PIN of {} is locked (CKR_PIN_LOCKED): the security officer must unlock it",
                        self.describe()
                    )))
                }
                Err(e) => {
                    return Err(perr(format!(
                        "cannot log in to {}: {e}",
                        self.describe()
                    )))
                }
            }
        }
        Ok((session, st.generation))
    }

    fn give_back(&self, s: Session, generation: u64) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if st.generation == generation && st.idle.len() < 16 {
            st.idle.push(s);
        }
    }

    /// Drops every session; the next use finds the slot again, and re-initializes the
    /// module when it lost its state.
    fn reopen(&self, reinit_module: bool) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.idle.clear();
        st.slot = None;
        st.generation += 1;
        drop(st);
        if reinit_module {
            self.module.reset();
        }
    }
}

fn pool(module_path: &Path, uri: &Pkcs11Uri) -> Result<Arc<TokenPool>, Pkcs11Error> {
    let key = format!(
        "{}\u{0}{}\u{0}{}",
        module_path.display(),
        uri.token.as_deref().unwrap_or(""),
        uri.serial.as_deref().unwrap_or("")
    );
    let pin = uri.pin()?;
    let mut g = pools().lock().unwrap_or_else(|e| e.into_inner());
    let p = g
        .entry(key)
        .or_insert_with(|| {
            Arc::new(TokenPool {
                module: module(module_path),
                token: uri.token.clone(),
                serial: uri.serial.clone(),
                pin: pin.clone(),
                state: Mutex::new(PoolState::default()),
            })
        })
        .clone();
    Ok(p)
}

// ---------------------------------------------------------------------------------------
// Keys
// ---------------------------------------------------------------------------------------

/// A private key object in a token. The operations run inside the token.
pub struct TokenKey {
    pool: Arc<TokenPool>,
    uri: Pkcs11Uri,
    kind: KeyKind,
    public: Option<PKey<Public>>,
    handle: Mutex<Option<(u64, ObjectHandle)>>,
}

impl fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenKey({})", self.uri.redacted())
    }
}

fn template(class: ObjectClass, uri: &Pkcs11Uri) -> Vec<Attribute> {
    let mut t = vec![Attribute::Class(class)];
    if let Some(o) = &uri.object {
        t.push(Attribute::Label(o.as_bytes().to_vec()));
    }
    if let Some(id) = &uri.id {
        t.push(Attribute::Id(id.clone()));
    }
    t
}

fn find_private(session: &Session, uri: &Pkcs11Uri) -> Result<ObjectHandle, CkError> {
    let found = session.find_objects(&template(ObjectClass::PRIVATE_KEY, uri))?;
    match found.as_slice() {
        [one] => Ok(*one),
        [] => Err(CkError::Pkcs11(
            RvError::KeyHandleInvalid,
            cryptoki::context::Function::FindObjects,
        )),
        _ => Err(CkError::Pkcs11(
            RvError::KeyHandleInvalid,
            cryptoki::context::Function::FindObjects,
        )),
    }
}

/// An `ECPoint` attribute is a DER OCTET STRING around the point (some tokens give the
/// raw point).
fn unwrap_octet_string(v: &[u8]) -> &[u8] {
    if v.len() > 2 && v[0] == 0x04 {
        let (len, hdr) = if v[1] < 0x80 {
            (v[1] as usize, 2)
        } else if v[1] == 0x81 && v.len() > 3 {
            (v[2] as usize, 3)
        } else {
            return v;
        };
        if hdr + len == v.len() {
            return &v[hdr..];
        }
    }
    v
}

/// DER of the ed25519 / x25519 / P-256 curve identifiers in CKA_EC_PARAMS.
const OID_P256: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const OID_P384: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22];
const OID_P521: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x23];

fn curve_of(params: &[u8]) -> Option<Nid> {
    match params {
        OID_P256 => Some(Nid::X9_62_PRIME256V1),
        OID_P384 => Some(Nid::SECP384R1),
        OID_P521 => Some(Nid::SECP521R1),
        _ => None,
    }
}

impl TokenKey {
    /// Opens the key named by `uri` in the module at `module_path`: finds the token, logs
    /// in, finds the private key object and learns its type. `certificate_key` is the
    /// public key of the key's certificate, used when the token holds no public half for
    /// an EC or EdDSA key.
    ///
    /// A wrong PIN, an unknown token or object and an unloadable module are errors that
    /// name the setting to fix.
    pub fn open(
        uri: &Pkcs11Uri,
        module_path: &Path,
        certificate_key: Option<&PKeyRef<Public>>,
    ) -> Result<TokenKey, Pkcs11Error> {
        let pool = pool(module_path, uri)?;
        let (session, generation) = pool.take()?;
        let handle = find_private(&session, uri).map_err(|e| match e {
            CkError::Pkcs11(RvError::KeyHandleInvalid, _) => perr(format!(
                "no single private key named {} in {} (none, or several match): check object= / id= with `varti keys list --module {} --token …`",
                uri.redacted(),
                pool.describe(),
                module_path.display()
            )),
            e => perr(format!("cannot search {}: {e}", pool.describe())),
        })?;
        let attrs = session
            .get_attributes(
                handle,
                &[
                    AttributeType::KeyType,
                    AttributeType::Modulus,
                    AttributeType::PublicExponent,
                    AttributeType::EcParams,
                ],
            )
            .map_err(|e| {
                perr(format!(
                    "cannot read the attributes of {}: {e}",
                    uri.redacted()
                ))
            })?;
        let mut key_type = None;
        let (mut n, mut e, mut params) = (None, None, None);
        for a in attrs {
            match a {
                Attribute::KeyType(t) => key_type = Some(t),
                Attribute::Modulus(v) => n = Some(v),
                Attribute::PublicExponent(v) => e = Some(v),
                Attribute::EcParams(v) => params = Some(v),
                _ => {}
            }
        }
        let key_type =
            key_type.ok_or_else(|| perr(format!("{} has no key type", uri.redacted())))?;
        // The public half: from the RSA attributes, a public-key object with the same
        // label/id, or the certificate.
        let mut public: Option<PKey<Public>> = None;
        if key_type == KeyType::RSA {
            if let (Some(n), Some(e)) = (n, e) {
                public = Rsa::from_public_components(
                    BigNum::from_slice(&n).map_err(|e| perr(e.to_string()))?,
                    BigNum::from_slice(&e).map_err(|e| perr(e.to_string()))?,
                )
                .and_then(PKey::from_rsa)
                .ok();
            }
        } else if let Some(pubh) = session
            .find_objects(&template(ObjectClass::PUBLIC_KEY, uri))
            .ok()
            .and_then(|v| v.first().copied())
        {
            let point = session
                .get_attributes(pubh, &[AttributeType::EcPoint])
                .ok()
                .and_then(|v| {
                    v.into_iter().find_map(|a| match a {
                        Attribute::EcPoint(p) => Some(p),
                        _ => None,
                    })
                });
            if let Some(point) = point {
                let raw = unwrap_octet_string(&point);
                public = if key_type == KeyType::EC_EDWARDS {
                    PKey::public_key_from_raw_bytes(raw, Id::ED25519).ok()
                } else if key_type == KeyType::EC_MONTGOMERY {
                    PKey::public_key_from_raw_bytes(raw, Id::X25519).ok()
                } else {
                    params.as_deref().and_then(curve_of).and_then(|nid| {
                        let group = EcGroup::from_curve_name(nid).ok()?;
                        let mut ctx = openssl::bn::BigNumContext::new().ok()?;
                        let p = EcPoint::from_bytes(&group, raw, &mut ctx).ok()?;
                        let k = EcKey::from_public_key(&group, &p).ok()?;
                        PKey::from_ec_key(k).ok()
                    })
                };
            }
        }
        if public.is_none() {
            if let Some(c) = certificate_key {
                let der = c.public_key_to_der().map_err(|e| perr(e.to_string()))?;
                public = PKey::public_key_from_der(&der).ok();
            }
        }
        let kind = match &public {
            Some(p) => super::private_key::kind_of(p),
            None => {
                return Err(perr(format!(
                    "cannot tell the public half of {}: import its public key or certificate into the token with the same label/id, or configure its certificate",
                    uri.redacted()
                )))
            }
        };
        let expected = if key_type == KeyType::RSA {
            Id::RSA
        } else if key_type == KeyType::EC {
            Id::EC
        } else if key_type == KeyType::EC_EDWARDS {
            Id::ED25519
        } else if key_type == KeyType::EC_MONTGOMERY {
            Id::X25519
        } else {
            return Err(perr(format!(
                "{} is a {key_type} key, which no AS4 profile uses (RSA, EC, Ed25519, X25519)",
                uri.redacted()
            )));
        };
        if kind.id != expected {
            return Err(perr(format!(
                "{} is a {key_type} key but its certificate holds a {:?} key: they do not belong together",
                uri.redacted(),
                kind.id
            )));
        }
        pool.give_back(session, generation);
        Ok(TokenKey {
            pool,
            uri: uri.clone(),
            kind,
            public,
            handle: Mutex::new(Some((generation, handle))),
        })
    }

    /// Runs `op` with a session and the key handle; after a lost session or module, the
    /// pool is re-opened and the operation tried once more before failing transiently.
    fn with_key<T>(
        &self,
        op: impl Fn(&Session, ObjectHandle) -> Result<T, CkError>,
    ) -> Result<T, KeyError> {
        let mut last = None;
        for attempt in 0..2 {
            let (session, generation) = match self.pool.take() {
                Ok(s) => s,
                Err(e) => {
                    // The module or token is not there (yet): transient.
                    last = Some(KeyError::transient(format!("{}: {e}", self.uri.redacted())));
                    self.pool.reopen(attempt == 0);
                    continue;
                }
            };
            let cached = *self.handle.lock().unwrap_or_else(|e| e.into_inner());
            let handle = match cached {
                Some((g, h)) if g == generation => Ok(h),
                _ => find_private(&session, &self.uri),
            };
            let result = handle.and_then(|h| {
                *self.handle.lock().unwrap_or_else(|e| e.into_inner()) = Some((generation, h));
                op(&session, h)
            });
            match result {
                Ok(v) => {
                    self.pool.give_back(session, generation);
                    return Ok(v);
                }
                Err(e) if is_connection_loss(&e) => {
                    tracing::warn!(key = %self.uri.redacted(), error = %e, "PKCS#11 session lost: re-opening");
                    let reinit = matches!(e, CkError::Pkcs11(RvError::CryptokiNotInitialized, _));
                    drop(session);
                    self.pool.reopen(reinit);
                    last = Some(KeyError::transient(format!(
                        "the token of {} went away ({e}); it is re-opened on the next attempt",
                        self.uri.redacted()
                    )));
                }
                Err(e) => {
                    self.pool.give_back(session, generation);
                    return Err(KeyError::permanent(format!(
                        "{} refused the operation: {e}",
                        self.uri.redacted()
                    )));
                }
            }
        }
        Err(last.unwrap_or_else(|| KeyError::transient("token unavailable")))
    }
}

const PSS_SHA256: PkcsPssParams = PkcsPssParams {
    hash_alg: MechanismType::SHA256,
    mgf: PkcsMgfType::MGF1_SHA256,
    s_len: cryptoki::types::Ulong::new(32),
};

impl KeyOperations for TokenKey {
    fn kind(&self) -> KeyKind {
        self.kind
    }
    fn public_key(&self) -> Result<PKey<Public>, KeyError> {
        self.public
            .clone()
            .ok_or_else(|| KeyError::permanent("the token key's public half is unknown"))
    }
    fn sign(&self, mechanism: SignMechanism, data: &[u8]) -> Result<Vec<u8>, KeyError> {
        let m = match mechanism {
            SignMechanism::RsaPkcs1Sha256 => Mechanism::Sha256RsaPkcs,
            SignMechanism::RsaPssSha256 => Mechanism::Sha256RsaPkcsPss(PSS_SHA256),
            SignMechanism::EcdsaSha256 => Mechanism::Ecdsa,
            SignMechanism::Ed25519 => {
                Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Pure))
            }
        };
        // ECDSA: the token signs the digest (CKM_ECDSA is offered more widely than
        // CKM_ECDSA_SHA256) and returns raw r || s; callers expect DER.
        let input = if mechanism == SignMechanism::EcdsaSha256 {
            openssl::sha::sha256(data).to_vec()
        } else {
            data.to_vec()
        };
        let sig = self.with_key(|s, h| s.sign(&m, h, &input))?;
        if mechanism == SignMechanism::EcdsaSha256 {
            super::profile::ecdsa_raw_to_der(&sig)
                .map_err(|e| KeyError::permanent(format!("token ECDSA signature: {e}")))
        } else {
            Ok(sig)
        }
    }
    fn rsa_decrypt(&self, scheme: RsaDecryption, data: &[u8]) -> Result<Vec<u8>, KeyError> {
        let m = match scheme {
            RsaDecryption::Oaep {
                sha256,
                mgf1_sha256,
            } => Mechanism::RsaPkcsOaep(PkcsOaepParams::new(
                if sha256 {
                    MechanismType::SHA256
                } else {
                    MechanismType::SHA1
                },
                if mgf1_sha256 {
                    PkcsMgfType::MGF1_SHA256
                } else {
                    PkcsMgfType::MGF1_SHA1
                },
                PkcsOaepSource::empty(),
            )),
            RsaDecryption::Pkcs1v15 => Mechanism::RsaPkcs,
        };
        let first = self.with_key(|s, h| match s.decrypt(&m, h, data) {
            // Tokens that implement OAEP with SHA-1 only (SoftHSM2 2.6 among them) refuse
            // the SHA-256 parameters: then the token does the raw RSA private operation
            // (CKM_RSA_X_509) and the OAEP decoding is done here. The private key still
            // never leaves the token; what comes out is the padded content key.
            Err(CkError::Pkcs11(
                RvError::ArgumentsBad | RvError::MechanismParamInvalid | RvError::MechanismInvalid,
                _,
            )) if matches!(scheme, RsaDecryption::Oaep { .. }) => Ok(None),
            other => other.map(Some),
        })?;
        if let Some(plain) = first {
            return Ok(plain);
        }
        let RsaDecryption::Oaep {
            sha256,
            mgf1_sha256,
        } = scheme
        else {
            unreachable!("only OAEP falls back");
        };
        let k = self.kind.bits.div_ceil(8) as usize;
        let raw = self.with_key(|s, h| s.decrypt(&Mechanism::RsaX509, h, data))?;
        oaep_decode(&raw, k, sha256, mgf1_sha256).ok_or_else(|| {
            KeyError::permanent(
                "RSA-OAEP decoding failed: the key was encrypted for another key, or altered",
            )
        })
    }
    fn derive(&self, peer: &PKeyRef<Public>) -> Result<Vec<u8>, KeyError> {
        let public_data = match peer.id() {
            Id::EC => {
                let ec = peer
                    .ec_key()
                    .map_err(|e| KeyError::permanent(format!("peer key: {e}")))?;
                let mut ctx = openssl::bn::BigNumContext::new()
                    .map_err(|e| KeyError::permanent(e.to_string()))?;
                ec.public_key()
                    .to_bytes(
                        ec.group(),
                        openssl::ec::PointConversionForm::UNCOMPRESSED,
                        &mut ctx,
                    )
                    .map_err(|e| KeyError::permanent(format!("peer key: {e}")))?
            }
            _ => peer
                .raw_public_key()
                .map_err(|e| KeyError::permanent(format!("peer key: {e}")))?,
        };
        let len = match self.kind.id {
            Id::X25519 => 32,
            _ => self.kind.bits.div_ceil(8) as u64,
        };
        self.with_key(|s, h| {
            let m = Mechanism::Ecdh1Derive(Ecdh1DeriveParams::new(EcKdf::null(), &public_data));
            // The shared secret comes out as an extractable session object: it feeds
            // HKDF in software (the AS4 2.0 key agreement), then is destroyed.
            let secret = s.derive_key(
                &m,
                h,
                &[
                    Attribute::Class(ObjectClass::SECRET_KEY),
                    Attribute::KeyType(KeyType::GENERIC_SECRET),
                    Attribute::Token(false),
                    Attribute::Sensitive(false),
                    Attribute::Extractable(true),
                    Attribute::ValueLen(len.into()),
                ],
            )?;
            let value = s.get_attributes(secret, &[AttributeType::Value]);
            let _ = s.destroy_object(secret);
            value?
                .into_iter()
                .find_map(|a| match a {
                    Attribute::Value(v) => Some(v),
                    _ => None,
                })
                .ok_or(CkError::Pkcs11(
                    RvError::AttributeTypeInvalid,
                    cryptoki::context::Function::GetAttributeValue,
                ))
        })
    }
    fn location(&self) -> String {
        self.uri.redacted()
    }
}

fn digest(sha256: bool, parts: &[&[u8]]) -> Vec<u8> {
    if sha256 {
        let mut h = openssl::sha::Sha256::new();
        parts.iter().for_each(|p| h.update(p));
        h.finish().to_vec()
    } else {
        let mut h = openssl::sha::Sha1::new();
        parts.iter().for_each(|p| h.update(p));
        h.finish().to_vec()
    }
}

fn mgf1(seed: &[u8], len: usize, sha256: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 32);
    let mut counter = 0u32;
    while out.len() < len {
        out.extend(digest(sha256, &[seed, &counter.to_be_bytes()]));
        counter += 1;
    }
    out.truncate(len);
    out
}

/// EME-OAEP decoding (RFC 8017 §7.1.2, empty label) of the raw RSA output `raw` for a
/// modulus of `k` bytes. Every check is folded into one verdict at the end, so the
/// position of the first defect is not revealed by timing.
fn oaep_decode(raw: &[u8], k: usize, sha256: bool, mgf1_sha256: bool) -> Option<Vec<u8>> {
    let h_len = if sha256 { 32 } else { 20 };
    if raw.len() > k || k < 2 * h_len + 2 {
        return None;
    }
    let mut em = vec![0u8; k - raw.len()];
    em.extend_from_slice(raw);
    let l_hash = digest(sha256, &[]);
    let (masked_seed, masked_db) = em[1..].split_at(h_len);
    let seed_mask = mgf1(masked_db, h_len, mgf1_sha256);
    let seed: Vec<u8> = masked_seed
        .iter()
        .zip(&seed_mask)
        .map(|(a, b)| a ^ b)
        .collect();
    let db_mask = mgf1(&seed, k - h_len - 1, mgf1_sha256);
    let db: Vec<u8> = masked_db.iter().zip(&db_mask).map(|(a, b)| a ^ b).collect();
    let mut bad = em[0];
    for (a, b) in db[..h_len].iter().zip(&l_hash) {
        bad |= a ^ b;
    }
    // Find the 0x01 after the zero padding without branching on secret data.
    let mut found = 0u8;
    let mut index = 0usize;
    let mut invalid_ps = 0u8;
    for (i, &b) in db[h_len..].iter().enumerate() {
        let is_one = (b == 1) as u8;
        let is_zero = (b == 0) as u8;
        let first_one = is_one & !found & 1;
        index |= (first_one as usize).wrapping_neg() & i;
        // A byte that is neither 0 nor 1 before the separator is a defect.
        invalid_ps |= !found & 1 & !is_zero & !is_one & 1;
        found |= first_one;
    }
    if bad != 0 || found == 0 || invalid_ps != 0 {
        return None;
    }
    Some(db[h_len + index + 1..].to_vec())
}

/// One object of a token, as `varti keys list` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenObject {
    /// `private key`, `public key`, `certificate`, `secret key`.
    pub class: String,
    /// The key type (`RSA`, `EC`, `EC_EDWARDS`, …), empty for certificates.
    pub key_type: String,
    /// CKA_LABEL.
    pub label: String,
    /// CKA_ID as hex.
    pub id: String,
    /// Whether the key material can leave the token (false for a well-kept key).
    pub extractable: Option<bool>,
    /// The URI that names it (without PIN).
    pub uri: String,
}

/// A token of a module, as `varti keys list` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenSummary {
    /// The token label.
    pub label: String,
    /// Its serial number.
    pub serial: String,
    /// Its objects (the private ones only after a login).
    pub objects: Vec<TokenObject>,
}

/// Lists the tokens of the module at `module_path` (or only the one labelled `token`)
/// and their objects, logging in with `pin` to see private keys.
pub fn list_objects(
    module_path: &Path,
    token: Option<&str>,
    pin: Option<&str>,
) -> Result<Vec<TokenSummary>, Pkcs11Error> {
    let m = module(module_path);
    let ctx = m.context().map_err(|e| {
        perr(format!(
            "cannot load the PKCS#11 module {}: {e}",
            module_path.display()
        ))
    })?;
    let slots = ctx
        .get_slots_with_token()
        .map_err(|e| perr(format!("cannot list slots: {e}")))?;
    let mut out = Vec::new();
    for slot in slots {
        let Ok(info) = ctx.get_token_info(slot) else {
            continue;
        };
        if !info.token_initialized() {
            continue;
        }
        let label = info.label().trim_end().to_string();
        if token.is_some_and(|t| t != label) {
            continue;
        }
        let session = ctx
            .open_ro_session(slot)
            .map_err(|e| perr(format!("cannot open a session on token '{label}': {e}")))?;
        if let Some(pin) = pin {
            match session.login(UserType::User, Some(&AuthPin::from(pin.to_string()))) {
                Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
                Err(CkError::Pkcs11(RvError::PinIncorrect, _)) => {
                    return Err(perr(format!(
                        "the PIN of token '{label}' is wrong (CKR_PIN_INCORRECT)"
                    )))
                }
                Err(e) => return Err(perr(format!("cannot log in to token '{label}': {e}"))),
            }
        }
        let mut objects = Vec::new();
        let handles = session
            .find_objects(&[])
            .map_err(|e| perr(format!("cannot list the objects of '{label}': {e}")))?;
        for h in handles {
            let attrs = session
                .get_attributes(
                    h,
                    &[
                        AttributeType::Class,
                        AttributeType::KeyType,
                        AttributeType::Label,
                        AttributeType::Id,
                        AttributeType::Extractable,
                    ],
                )
                .unwrap_or_default();
            let mut o = TokenObject {
                class: String::new(),
                key_type: String::new(),
                label: String::new(),
                id: String::new(),
                extractable: None,
                uri: String::new(),
            };
            let mut class = None;
            for a in attrs {
                match a {
                    Attribute::Class(c) => class = Some(c),
                    Attribute::KeyType(t) => {
                        o.key_type = t.to_string().trim_start_matches("CKK_").to_string()
                    }
                    Attribute::Label(l) => o.label = String::from_utf8_lossy(&l).into_owned(),
                    Attribute::Id(i) => o.id = i.iter().map(|b| format!("{b:02x}")).collect(),
                    Attribute::Extractable(x) => o.extractable = Some(x),
                    _ => {}
                }
            }
            let (cname, kind) = match class {
                Some(c) if c == ObjectClass::PRIVATE_KEY => ("private key", "private"),
                Some(c) if c == ObjectClass::PUBLIC_KEY => ("public key", "public"),
                Some(c) if c == ObjectClass::CERTIFICATE => ("certificate", "cert"),
                Some(c) if c == ObjectClass::SECRET_KEY => ("secret key", "secret-key"),
                _ => ("other", "data"),
            };
            o.class = cname.to_string();
            let idpart: String =
                o.id.as_bytes()
                    .chunks(2)
                    .map(|c| format!("%{}", String::from_utf8_lossy(c)))
                    .collect();
            o.uri = format!(
                "pkcs11:token={};object={}{};type={kind}",
                utf8_percent(&label),
                utf8_percent(&o.label),
                if idpart.is_empty() {
                    String::new()
                } else {
                    format!(";id={idpart}")
                }
            );
            objects.push(o);
        }
        objects.sort_by(|a, b| (&a.label, &a.class).cmp(&(&b.label, &b.class)));
        out.push(TokenSummary {
            label,
            serial: info.serial_number().trim_end().to_string(),
            objects,
        });
    }
    Ok(out)
}

fn utf8_percent(s: &str) -> String {
    const SET: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.');
    percent_encoding::utf8_percent_encode(s, SET).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_attributes_are_parsed_and_the_pin_is_never_shown() {
        let u = Pkcs11Uri::parse(
            "pkcs11:token=Varti%20A;object=sign;id=%01%a2;type=private?pin-value=1234&module-path=/x.so",
        )
        .unwrap();
        assert_eq!(u.token.as_deref(), Some("Varti A"));
        assert_eq!(u.object.as_deref(), Some("sign"));
        assert_eq!(u.id.as_deref(), Some(&[0x01, 0xa2][..]));
        assert_eq!(u.pin_value.as_deref(), Some("1234"));
        assert_eq!(u.module_path.as_deref(), Some(Path::new("/x.so")));
        let shown = u.redacted();
        assert!(!shown.contains("1234"), "{shown}");
        assert!(!format!("{u:?}").contains("1234"));
        let u = Pkcs11Uri::parse("pkcs11:token=t;object=k?pin-source=file:/run/pin").unwrap();
        assert_eq!(u.pin_source.as_deref(), Some(Path::new("/run/pin")));
    }

    #[test]
    fn oaep_decoding_matches_openssl() {
        use openssl::rsa::{Padding, Rsa};
        let rsa = Rsa::generate(2048).unwrap();
        let key = PKey::from_rsa(rsa.clone()).unwrap();
        let secret = [7u8; 16];
        for sha256 in [true, false] {
            let md = if sha256 {
                openssl::md::Md::sha256()
            } else {
                openssl::md::Md::sha1()
            };
            let mut ctx = openssl::pkey_ctx::PkeyCtx::new(&key).unwrap();
            ctx.encrypt_init().unwrap();
            ctx.set_rsa_padding(Padding::PKCS1_OAEP).unwrap();
            ctx.set_rsa_oaep_md(md).unwrap();
            ctx.set_rsa_mgf1_md(md).unwrap();
            let mut ct = Vec::new();
            ctx.encrypt_to_vec(&secret, &mut ct).unwrap();
            let mut raw = vec![0u8; 256];
            let n = rsa.private_decrypt(&ct, &mut raw, Padding::NONE).unwrap();
            raw.truncate(n);
            assert_eq!(oaep_decode(&raw, 256, sha256, sha256).unwrap(), secret);
            // Another digest, or an altered block: refused.
            assert!(oaep_decode(&raw, 256, !sha256, !sha256).is_none());
            raw[100] ^= 1;
            assert!(oaep_decode(&raw, 256, sha256, sha256).is_none());
        }
    }

    #[test]
    fn a_uri_without_token_or_object_or_with_a_public_type_is_refused() {
        let e = Pkcs11Uri::parse("pkcs11:object=k").unwrap_err();
        assert!(e.to_string().contains("token="), "{e}");
        let e = Pkcs11Uri::parse("pkcs11:token=t").unwrap_err();
        assert!(e.to_string().contains("object="), "{e}");
        let e = Pkcs11Uri::parse("pkcs11:token=t;object=k;type=public").unwrap_err();
        assert!(e.to_string().contains("type=private"), "{e}");
        let e = Pkcs11Uri::parse("pkcs11:token=t;object=k%zz").unwrap_err();
        assert!(e.to_string().contains("percent"), "{e}");
    }
}
