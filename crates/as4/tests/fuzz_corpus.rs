//! The fuzz corpora of this crate's targets (`fuzz/corpus/<target>/`) and the reproducers
//! of every crash the fuzzers found (`fuzz/regressions/<target>/`), run as ordinary tests:
//! no file may make a target panic or hang. The target bodies are those the fuzzers run
//! (`varti_as4::fuzzing`); see docs/security.md ("Fuzzing").

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use varti_as4::fuzzing::{self, replay_corpus, SecurityFixture};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn dirs(target: &str) -> Vec<PathBuf> {
    let fuzz = root().join("fuzz");
    vec![
        fuzz.join("corpus").join(target),
        fuzz.join("regressions").join(target),
    ]
}

const PER_FILE: Duration = Duration::from_secs(5);

#[test]
fn mime_corpus() {
    replay_corpus(&dirs("mime"), PER_FILE, fuzzing::mime);
}

#[test]
fn soap_corpus() {
    replay_corpus(&dirs("soap"), PER_FILE, fuzzing::soap);
}

#[test]
fn ws_security_corpus() {
    let fixture = Arc::new(SecurityFixture::from_certs_dir(&root().join("certs")).unwrap());
    replay_corpus(&dirs("ws_security"), PER_FILE, move |data| {
        fuzzing::ws_security(data, &fixture)
    });
}

/// The target reaches past verification: Varti's own seeds (signed by varti-a, one
/// encrypted for varti-b) are accepted under the fixture's policy, so the fuzzer starts
/// from messages that pass every check and mutates them from there.
#[test]
fn ws_security_seeds_are_accepted() {
    let fixture = SecurityFixture::from_certs_dir(&root().join("certs")).unwrap();
    let seeds: Vec<PathBuf> = std::fs::read_dir(root().join("fuzz/corpus/ws_security"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("varti-")
        })
        .collect();
    assert!(seeds.len() >= 4, "{seeds:?}");
    for seed in seeds {
        let dump = varti_as4::message::dump::read_dump_file(&seed, &Default::default()).unwrap();
        let received = varti_as4::inbound::receive(&dump.package, &fixture.policy())
            .unwrap_or_else(|e| panic!("{}: {e:?}", seed.display()));
        assert!(received.signature.is_some());
    }
}

#[test]
fn pmode_corpus() {
    let pmodes = root().join("pmodes");
    replay_corpus(&dirs("pmode"), PER_FILE, move |data| {
        fuzzing::pmode(data, &pmodes)
    });
}

/// The seeds of a varti-a → varti-b message that `ws_security` accepts: rewrites
/// `fuzz/corpus/ws_security/varti-*.http` (run with `--ignored` after a change to what
/// Varti sends).
#[test]
#[ignore = "writes seed files; run by hand"]
fn write_ws_security_seeds() {
    seeds::write(&root());
}

/// The Domibus sample PModes of the interop vectors converted to native files, into
/// `fuzz/target/domibus-converted/` (not committed), where `fuzz/seeds.py` takes them as
/// seeds of the `pmode` target.
#[test]
#[ignore = "writes seed files; run by hand"]
fn write_pmode_seeds() {
    let vectors = root().join("../shared/vectors");
    for name in ["blue", "red"] {
        let xml = std::fs::read(
            vectors.join(format!("domibus-pmodes/domibus-gw-sample-pmode-{name}.xml")),
        )
        .unwrap();
        let out = root().join("fuzz/target/domibus-converted").join(name);
        let import = varti_as4::pmode::domibus::convert(&xml, &out).unwrap();
        varti_as4::pmode::domibus::write(&import, &out, true).unwrap();
    }
}

mod seeds {
    use std::io::Read;
    use std::path::Path;

    use openssl::pkey::PKey;
    use openssl::x509::X509;
    use varti_as4::inbound::key_protection_for;
    use varti_as4::message::model::*;
    use varti_as4::outbound::{send, OutgoingPayload, SendPolicy};
    use varti_as4::security::encrypt::EncryptionSettings;
    use varti_as4::security::profile::AS4_1_15;
    use varti_as4::security::sign::SigningIdentity;
    use varti_as4::security::token::TokenReference;

    fn user_message(id: &str) -> UserMessage {
        let party = |id: &str, role: &str| Party {
            party_ids: vec![PartyId {
                value: id.into(),
                type_: Some("urn:oasis:names:tc:ebcore:partyid-type:unregistered".into()),
            }],
            role: role.into(),
        };
        UserMessage {
            mpc: None,
            message_info: MessageInfo::new(id.to_owned()),
            party_info: PartyInfo {
                from: party("varti-a", ROLE_INITIATOR),
                to: party("varti-b", ROLE_RESPONDER),
            },
            collaboration_info: CollaborationInfo {
                agreement_ref: None,
                service: Service {
                    value: "urn:varti:fuzz".into(),
                    type_: None,
                },
                action: "Deliver".into(),
                conversation_id: "fuzz".into(),
            },
            properties: vec![
                Property::new("originalSender", "urn:a"),
                Property::new("finalRecipient", "urn:b"),
            ],
            parts: Vec::new(),
        }
    }

    pub fn write(root: &Path) {
        let certs = root.join("certs");
        let read = |p: &str| std::fs::read(certs.join(p)).unwrap();
        let sign_key = PKey::private_key_from_pem(&read("varti-a/sign.key.pem")).unwrap();
        let sign_cert = X509::from_pem(&read("varti-a/sign.cert.pem")).unwrap();
        let enc_cert = X509::from_pem(&read("varti-b/enc.cert.pem")).unwrap();
        let out = root.join("fuzz/corpus/ws_security");
        std::fs::create_dir_all(&out).unwrap();
        let cases = [
            (
                "bst-encrypted-compressed",
                TokenReference::BinarySecurityToken,
                true,
                true,
                2,
            ),
            (
                "ski-signed",
                TokenReference::SubjectKeyIdentifier,
                false,
                false,
                1,
            ),
            (
                "issuerserial-signed-compressed",
                TokenReference::IssuerSerial,
                false,
                true,
                1,
            ),
            (
                "bst-no-payload",
                TokenReference::BinarySecurityToken,
                false,
                false,
                0,
            ),
        ];
        for (name, token, encrypt, compress, n) in cases {
            let contents: Vec<Vec<u8>> = (0..n)
                .map(|i| {
                    let lines = format!("<line>payload {i} of {name}</line>\n").repeat(20);
                    format!("<doc n=\"{i}\">\n{lines}</doc>\n").into_bytes()
                })
                .collect();
            let mut readers: Vec<&[u8]> = contents.iter().map(|c| &c[..]).collect();
            let payloads: Vec<OutgoingPayload<'_>> = readers
                .iter_mut()
                .enumerate()
                .map(|(i, r)| OutgoingPayload {
                    content_id: format!("part{i}@varti.fuzz"),
                    mime_type: "application/xml".into(),
                    properties: vec![],
                    content: r as &mut dyn Read,
                    content_is_gzip: false,
                    reopen: None,
                    sha256: None,
                })
                .collect();
            let policy = SendPolicy {
                signing: SigningIdentity {
                    profile: &AS4_1_15,
                    key: &sign_key,
                    certificate: &sign_cert,
                    token_reference: token,
                },
                encryption: encrypt.then(|| EncryptionSettings {
                    receiver_cert: &enc_cert,
                    key_protection: key_protection_for(&AS4_1_15),
                    token_reference: token,
                }),
                compress,
                uncompressed_types: &[],
                already_gzip: false,
            };
            let mut body = Vec::new();
            let um = user_message(&format!("{name}@varti.fuzz"));
            let sent = send(&um, payloads, &policy, &mut body).unwrap();
            let mut dump = format!("Content-Type: {}\r\n\r\n", sent.content_type).into_bytes();
            dump.extend_from_slice(&body);
            std::fs::write(out.join(format!("varti-{name}.http")), dump).unwrap();
        }
    }
}
