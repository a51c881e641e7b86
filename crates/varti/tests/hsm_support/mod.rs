//! A SoftHSM2 token for the test run: created in a temporary directory (its own
//! `softhsm2.conf`), initialised with `softhsm2-util`, and loaded with the test PKI's
//! private keys as sensitive, NON-extractable objects through PKCS#11 (cryptoki), the way
//! an operator imports keys into an HSM. Varti then only ever names them by URI.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass};
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;
use openssl::pkey::{Id, PKey, Private};

/// Debian's SoftHSM2 module.
pub const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
/// The user PIN of the test token.
pub const PIN: &str = "4321";
/// The token label.
pub const LABEL: &str = "varti-hsm-test";

/// The token of this test run.
pub struct Token {
    _dir: PathBuf,
    /// Its `softhsm2.conf` (what `SOFTHSM2_CONF` must name for every process using it).
    pub conf: PathBuf,
}

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The keys imported: (object label, PEM file under certs/). Labels are `<party>-<file>`.
const KEYS: &[&str] = &[
    "varti-a/sign",
    "varti-a/enc",
    "varti-a/tls",
    "varti-a/sign-p256",
    "varti-a/enc-p256",
    "varti-a/sign-ed25519",
    // The exchange benchmark's `1.15-rsa2048` run with `--token`.
    "varti-a/sign-rsa2048",
    "varti-a/enc-rsa2048",
];

/// The object label of a test-PKI key (`varti-a/sign` → `varti-a-sign`).
pub fn label(key: &str) -> String {
    key.replace('/', "-")
}

/// Serialises the tests of a binary on the token: SoftHSM2 keeps a token in files that
/// each process re-reads, and a process starting while another one rewrites them (a
/// login counter after a wrong PIN) can miss the token. A real HSM has no such files.
pub fn exclusive() -> std::sync::MutexGuard<'static, ()> {
    static L: std::sync::Mutex<()> = std::sync::Mutex::new(());
    L.lock().unwrap_or_else(|e| e.into_inner())
}

/// The token, created once per test binary (PKCS#11 modules are initialised once per
/// process, and SoftHSM reads its configuration then).
pub fn token() -> &'static Token {
    static T: OnceLock<Token> = OnceLock::new();
    T.get_or_init(|| {
        assert!(
            Path::new(MODULE).exists(),
            "{MODULE} is missing: install Debian's softhsm2 (run .ci/deps)"
        );
        // A static is never dropped, so a TempDir would stay behind: the token lives in
        // `varti-hsm-<pid>` and each run removes those of processes that have ended.
        let base = std::env::temp_dir();
        for entry in std::fs::read_dir(&base).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(pid) = name.strip_prefix("varti-hsm-") {
                if !Path::new("/proc").join(pid).exists() {
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
        }
        let dir = base.join(format!("varti-hsm-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let tokens = dir.join("tokens");
        std::fs::create_dir_all(&tokens).unwrap();
        let conf = dir.join("softhsm2.conf");
        std::fs::write(
            &conf,
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
                tokens.display()
            ),
        )
        .unwrap();
        std::env::set_var("SOFTHSM2_CONF", &conf);
        let out = Command::new("softhsm2-util")
            .env("SOFTHSM2_CONF", &conf)
            .args(["--init-token", "--free", "--label", LABEL, "--pin", PIN])
            .args(["--so-pin", "87654321"])
            .output()
            .expect("softhsm2-util (Debian softhsm2) runs");
        assert!(out.status.success(), "{out:?}");
        import_keys();
        Token { _dir: dir, conf }
    })
}

fn import_keys() {
    let ctx = Pkcs11::new(MODULE).unwrap();
    ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .unwrap();
    let slot = ctx
        .get_slots_with_token()
        .unwrap()
        .into_iter()
        .find(|s| ctx.get_token_info(*s).unwrap().label().trim_end() == LABEL)
        .unwrap();
    let session = ctx.open_rw_session(slot).unwrap();
    session
        .login(UserType::User, Some(&AuthPin::from(PIN.to_string())))
        .unwrap();
    for (i, key) in KEYS.iter().enumerate() {
        let pem = std::fs::read(repo().join("certs").join(format!("{key}.key.pem"))).unwrap();
        let k = PKey::private_key_from_pem(&pem).unwrap();
        let mut t = vec![
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Label(label(key).into_bytes()),
            Attribute::Id(vec![i as u8 + 1]),
            Attribute::Sign(true),
        ];
        t.extend(key_attributes(&k));
        session.create_object(&t).unwrap();
    }
    // The test process lets go of the module: the varti processes load it themselves.
    drop(session);
    ctx.finalize().unwrap();
}

fn key_attributes(k: &PKey<Private>) -> Vec<Attribute> {
    match k.id() {
        Id::RSA => {
            let r = k.rsa().unwrap();
            vec![
                Attribute::KeyType(KeyType::RSA),
                Attribute::Decrypt(true),
                Attribute::Unwrap(true),
                Attribute::Modulus(r.n().to_vec()),
                Attribute::PublicExponent(r.e().to_vec()),
                Attribute::PrivateExponent(r.d().to_vec()),
                Attribute::Prime1(r.p().unwrap().to_vec()),
                Attribute::Prime2(r.q().unwrap().to_vec()),
                Attribute::Exponent1(r.dmp1().unwrap().to_vec()),
                Attribute::Exponent2(r.dmq1().unwrap().to_vec()),
                Attribute::Coefficient(r.iqmp().unwrap().to_vec()),
            ]
        }
        Id::EC => {
            let ec = k.ec_key().unwrap();
            // prime256v1
            let oid = vec![0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
            vec![
                Attribute::KeyType(KeyType::EC),
                Attribute::Derive(true),
                Attribute::EcParams(oid),
                Attribute::Value(ec.private_key().to_vec_padded(32).unwrap()),
            ]
        }
        Id::ED25519 => vec![
            Attribute::KeyType(KeyType::EC_EDWARDS),
            // id-Ed25519 (1.3.101.112)
            Attribute::EcParams(vec![0x06, 0x03, 0x2b, 0x65, 0x70]),
            Attribute::Value(k.raw_private_key().unwrap()),
        ],
        other => panic!("no import for {other:?}"),
    }
}

/// Every imported key is sensitive and non-extractable: the token refuses to reveal its
/// value. Returns how many keys were checked.
pub fn assert_keys_never_leave_the_token() -> usize {
    let ctx = Pkcs11::new(MODULE).unwrap();
    // Another component of this process may have initialised the module already.
    let _ = ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK));
    let slot = ctx
        .get_slots_with_token()
        .unwrap()
        .into_iter()
        .find(|s| ctx.get_token_info(*s).unwrap().label().trim_end() == LABEL)
        .unwrap();
    let session = ctx.open_ro_session(slot).unwrap();
    let _ = session.login(UserType::User, Some(&AuthPin::from(PIN.to_string())));
    let keys = session
        .find_objects(&[Attribute::Class(ObjectClass::PRIVATE_KEY)])
        .unwrap();
    for h in &keys {
        let attrs = session
            .get_attributes(*h, &[AttributeType::Sensitive, AttributeType::Extractable])
            .unwrap();
        assert!(attrs.contains(&Attribute::Sensitive(true)), "{attrs:?}");
        assert!(attrs.contains(&Attribute::Extractable(false)), "{attrs:?}");
        // The secret parts are not given out (cryptoki leaves them out of the answer).
        let secret = session
            .get_attributes(*h, &[AttributeType::Value, AttributeType::PrivateExponent])
            .unwrap_or_default();
        assert!(
            !secret
                .iter()
                .any(|a| matches!(a, Attribute::Value(v) | Attribute::PrivateExponent(v) if !v.is_empty())),
            "the token revealed key material: {secret:?}"
        );
    }
    keys.len()
}

impl Token {
    /// The URI of a test-PKI key in the token, with the PIN inline (tests only).
    pub fn uri(&self, key: &str) -> String {
        format!("pkcs11:token={LABEL};object={}?pin-value={PIN}", label(key))
    }

    /// The environment a varti process needs to use the token.
    pub fn env(&self) -> [(&'static str, String); 2] {
        [
            ("SOFTHSM2_CONF", self.conf.display().to_string()),
            ("VARTI_PKCS11_MODULE", MODULE.to_string()),
        ]
    }
}
