//! A token key (SoftHSM2, a key pair generated inside the token, never extractable) signs
//! and decrypts like a file key; when the module loses its state and the token goes away
//! mid-run, operations fail *transiently* and recover once it is back, without a restart.

use std::path::{Path, PathBuf};
use std::process::Command;

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::Attribute;
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;
use openssl::hash::MessageDigest;
use openssl::sign::Verifier;
use varti_as4::security::pkcs11::{Pkcs11Uri, TokenKey};
use varti_as4::security::private_key::{proves_possession, KeyOperations, SignMechanism};

const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

fn init_token(dir: &Path) -> PathBuf {
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
    // The only test of this binary: the module reads SOFTHSM2_CONF when initialised.
    std::env::set_var("SOFTHSM2_CONF", &conf);
    let out = Command::new("softhsm2-util")
        .args([
            "--init-token",
            "--free",
            "--label",
            "loss",
            "--pin",
            "1234",
            "--so-pin",
            "12345678",
        ])
        .output()
        .expect("softhsm2-util (Debian softhsm2, see .ci/deps)");
    assert!(out.status.success(), "{out:?}");
    // A key pair generated in the token: sensitive and never extractable.
    let ctx = Pkcs11::new(MODULE).unwrap();
    ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .unwrap();
    let slot = ctx.get_slots_with_token().unwrap()[0];
    let s = ctx.open_rw_session(slot).unwrap();
    s.login(UserType::User, Some(&AuthPin::from("1234".to_string())))
        .unwrap();
    s.generate_key_pair(
        &Mechanism::RsaPkcsKeyPairGen,
        &[
            Attribute::Token(true),
            Attribute::ModulusBits(2048.into()),
            Attribute::PublicExponent(vec![1, 0, 1]),
            Attribute::Label(b"k".to_vec()),
        ],
        &[
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Sign(true),
            Attribute::Decrypt(true),
            Attribute::Label(b"k".to_vec()),
        ],
    )
    .unwrap();
    drop(s);
    // Varti's pool shares the module instance; the one initialisation above is Varti's too
    // (it finds the module initialised and uses it).
    tokens
}

#[test]
fn a_token_that_goes_away_fails_transiently_and_recovers() {
    if !Path::new(MODULE).exists() {
        panic!("{MODULE} is missing: install Debian's softhsm2 (run .ci/deps)");
    }
    let dir = tempfile::tempdir().unwrap();
    let tokens = init_token(dir.path());
    let uri = Pkcs11Uri::parse("pkcs11:token=loss;object=k?pin-value=1234").unwrap();
    let key = TokenKey::open(&uri, Path::new(MODULE), None).unwrap();
    let public = key.public_key().unwrap();
    let sign = |key: &TokenKey| key.sign(SignMechanism::RsaPkcs1Sha256, b"hello");
    let verifies = |sig: &[u8]| {
        let mut v = Verifier::new(MessageDigest::sha256(), &public).unwrap();
        v.verify_oneshot(sig, b"hello").unwrap()
    };
    assert!(verifies(&sign(&key).unwrap()));
    assert!(proves_possession(&key, &public).unwrap());

    // The module loses its state (as after a restart of an HSM client daemon) and the
    // token is gone (moved away).
    Pkcs11::new(MODULE).unwrap().finalize().unwrap();
    let away = dir.path().join("away");
    std::fs::rename(&tokens, &away).unwrap();
    std::fs::create_dir_all(&tokens).unwrap();
    let err = sign(&key).unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert!(err.to_string().contains("loss"), "{err}");

    // Back: the next operation re-opens the module, logs in again and works.
    std::fs::remove_dir(&tokens).unwrap();
    std::fs::rename(&away, &tokens).unwrap();
    let sig = sign(&key).expect("the token is back");
    assert!(verifies(&sig));
}
