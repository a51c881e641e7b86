//! What the Java AS4 stack (phase4 on WSS4J 4.0 and Santuario 4.0) sends that Varti must
//! read: the recipient named by a bare `ds:X509Data` (X509SKI, X509IssuerSerial or
//! X509Certificate) instead of a `wsse:SecurityTokenReference`, an HKDFParams without
//! KeyLength, and a bare `dsig11:ECKeyValue` in OriginatorKeyInfo.
//!
//! Each message is Varti's own encryption header reshaped into the Java form, so the
//! cryptography is real and only the XML shape under test changes.

mod support;

use std::io::{Read, Write};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use varti_as4::error::{EbmsError, ErrorCode};
use varti_as4::security::encrypt::{
    decrypt_parts, encrypt_parts, DecryptedPart, DecryptionPolicy, EncryptionSettings,
    KeyProtection, PlainPart, TokenReference,
};
use varti_as4::security::profile::{Profile, AS4_1_15, AS4_2_0_ECDSA, AS4_2_0_EDDSA};
use varti_as4::security::token::{distinguished_name_string, subject_key_identifier};

const NS_DS: &str = "http://www.w3.org/2000/09/xmldsig#";
const PLAIN: &[u8] = b"<Evidence>the business document</Evidence>";

/// Every profile with the key protection and decryption policy it uses.
fn profiles() -> [(&'static Profile, KeyProtection, DecryptionPolicy); 3] {
    [
        (
            &AS4_1_15,
            KeyProtection::RsaOaepSha256,
            DecryptionPolicy::as4_v1(),
        ),
        (
            &AS4_2_0_EDDSA,
            KeyProtection::X25519HkdfKwAes128,
            DecryptionPolicy::as4_v2_common(),
        ),
        (
            &AS4_2_0_ECDSA,
            KeyProtection::EcdhEsP256HkdfKwAes128,
            DecryptionPolicy::as4_v2_ec(),
        ),
    ]
}

/// Varti's encryption of [`PLAIN`] for `to`, as a SOAP envelope and the ciphertext.
fn encrypt_for(to: &support::Keys, kp: KeyProtection, tr: TokenReference) -> (String, Vec<u8>) {
    let mut ciphertext = Vec::new();
    let mut plain = PLAIN;
    let header = encrypt_parts(
        &EncryptionSettings {
            receiver_cert: &to.enc_cert,
            key_protection: kp,
            token_reference: tr,
        },
        [PlainPart {
            content_id: "<evidence@java>",
            content_type: "application/xml",
            plaintext: &mut plain,
            ciphertext: &mut ciphertext as &mut dyn Write,
        }],
    )
    .unwrap();
    let xml = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\
         <soap:Envelope xmlns:soap=\"http://www.w3.org/2003/05/soap-envelope\" \
         xmlns:ds=\"{NS_DS}\"><soap:Header>\
         <wsse:Security xmlns:wsse=\"http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd\" \
         soap:mustUnderstand=\"true\">{}</wsse:Security></soap:Header><soap:Body/></soap:Envelope>",
        header.to_xml()
    );
    (xml, ciphertext)
}

fn decrypt(
    xml: &str,
    me: &support::Keys,
    policy: &DecryptionPolicy,
    ciphertext: &[u8],
) -> Result<Vec<DecryptedPart>, EbmsError> {
    decrypt_parts(xml, &me.enc_key, &me.enc_cert, policy, |cid| {
        (cid == "evidence@java").then_some(ciphertext)
    })
}

fn plaintext_of(parts: Vec<DecryptedPart>) -> Vec<u8> {
    assert_eq!(parts.len(), 1);
    let mut out = Vec::new();
    parts
        .into_iter()
        .next()
        .unwrap()
        .file
        .read_to_end(&mut out)
        .unwrap();
    out
}

/// Replaces the `wsse:SecurityTokenReference` inside the EncryptedKey (in its KeyInfo for
/// RSA-OAEP, in `xenc:RecipientKeyInfo` under key agreement) with `replacement`. The
/// EncryptedData's own reference to the EncryptedKey is left alone.
fn replace_recipient_reference(xml: &str, replacement: &str) -> String {
    let ek = xml.find("<xenc:EncryptedKey").expect("an EncryptedKey");
    let start = ek + xml[ek..].find("<wsse:SecurityTokenReference").unwrap();
    let end_tag = "</wsse:SecurityTokenReference>";
    let end = start + xml[start..].find(end_tag).unwrap() + end_tag.len();
    assert!(
        end < ek + xml[ek..].find("</xenc:EncryptedKey>").unwrap(),
        "the reference replaced is the EncryptedKey's"
    );
    format!("{}{replacement}{}", &xml[..start], &xml[end..])
}

/// The three `ds:X509Data` forms WSS4J writes for phase4's key identifier types
/// (X509_SKI_KEY_IDENTIFIER, ISSUER_SERIAL, X509_KEY_IDENTIFIER), naming `keys.enc_cert`.
fn x509_data_forms(keys: &support::Keys) -> [(&'static str, String); 3] {
    let cert = &keys.enc_cert;
    let serial = cert.serial_number().to_bn().unwrap().to_dec_str().unwrap();
    [
        (
            "X509SKI",
            format!(
                "<ds:X509Data><ds:X509SKI>{}</ds:X509SKI></ds:X509Data>",
                B64.encode(subject_key_identifier(cert).unwrap())
            ),
        ),
        (
            "X509IssuerSerial",
            format!(
                "<ds:X509Data><ds:X509IssuerSerial><ds:X509IssuerName>{}</ds:X509IssuerName>\
                 <ds:X509SerialNumber>{serial}</ds:X509SerialNumber></ds:X509IssuerSerial>\
                 </ds:X509Data>",
                distinguished_name_string(cert.issuer_name())
            ),
        ),
        (
            "X509Certificate",
            format!(
                "<ds:X509Data><ds:X509Certificate>{}</ds:X509Certificate></ds:X509Data>",
                B64.encode(cert.to_der().unwrap())
            ),
        ),
    ]
}

#[test]
fn recipient_named_by_x509_data_is_accepted_for_every_profile() {
    for (profile, kp, policy) in profiles() {
        let bob = support::keys(profile, "bob");
        let eve = support::keys(profile, "eve");
        let (xml, ct) = encrypt_for(&bob, kp, TokenReference::SubjectKeyIdentifier);
        for (form, x509_data) in x509_data_forms(&bob) {
            let java = replace_recipient_reference(&xml, &x509_data);
            assert!(!java[java.find("<xenc:EncryptedKey").unwrap()..]
                .split("</xenc:EncryptedKey>")
                .next()
                .unwrap()
                .contains("SecurityTokenReference"));
            let parts = decrypt(&java, &bob, &policy, &ct)
                .unwrap_or_else(|e| panic!("{} {form}: {e}", profile.name));
            assert_eq!(plaintext_of(parts), PLAIN, "{} {form}", profile.name);

            // Another certificate is not addressed, and the error names what was found.
            let err = decrypt(&java, &eve, &policy, &ct).unwrap_err();
            assert_eq!(err.code, ErrorCode::FailedDecryption, "{form}: {err}");
            assert!(err.detail.contains("addressed to our certificate"), "{err}");
            assert!(
                err.detail
                    .contains(&format!("names ds:X509Data with ds:{form}")),
                "{} {form}: {err}",
                profile.name
            );
        }
    }
}

#[test]
fn x509_data_naming_another_certificate_in_any_field_is_not_ours() {
    let (profile, kp, policy) = profiles().into_iter().nth(1).unwrap();
    let bob = support::keys(profile, "bob");
    let eve = support::keys(profile, "eve");
    let (xml, ct) = encrypt_for(&bob, kp, TokenReference::SubjectKeyIdentifier);
    let [(_, bob_ski), _, _] = x509_data_forms(&bob);
    let [_, _, (_, eve_cert)] = x509_data_forms(&eve);
    // One X509Data with our SKI but somebody else's certificate describes no one
    // certificate: it is not addressed to us.
    let mixed = format!(
        "{}{}",
        bob_ski.trim_end_matches("</ds:X509Data>"),
        eve_cert.trim_start_matches("<ds:X509Data>")
    );
    let err = decrypt(
        &replace_recipient_reference(&xml, &mixed),
        &bob,
        &policy,
        &ct,
    )
    .unwrap_err();
    assert_eq!(err.code, ErrorCode::FailedDecryption, "{err}");
    assert!(err.detail.contains("ds:X509SKI"), "{err}");
    assert!(
        err.detail
            .contains("ds:X509Certificate (subject CN=eve encryption"),
        "{err}"
    );

    // A reference both ways at once is ambiguous.
    let start = xml.find("<xenc:EncryptedKey").unwrap();
    let str_at = start + xml[start..].find("<wsse:SecurityTokenReference").unwrap();
    let mut both = xml.clone();
    both.insert_str(str_at, &bob_ski);
    let err = decrypt(&both, &bob, &policy, &ct).unwrap_err();
    assert_eq!(err.code, ErrorCode::PolicyNoncompliance, "{err}");
    assert!(
        err.detail
            .contains("both a wsse:SecurityTokenReference and a ds:X509Data"),
        "{err}"
    );

    // An X509Data that names no certificate is refused, not silently skipped.
    let bad = replace_recipient_reference(
        &xml,
        "<ds:X509Data><ds:X509SubjectName>CN=bob</ds:X509SubjectName></ds:X509Data>",
    );
    let err = decrypt(&bad, &bob, &policy, &ct).unwrap_err();
    assert_eq!(err.code, ErrorCode::PolicyNoncompliance, "{err}");
    assert!(err.detail.contains("none of ds:X509SKI"), "{err}");
}

#[test]
fn no_key_for_us_names_the_token_reference_found() {
    for (profile, kp, policy) in profiles() {
        let bob = support::keys(profile, "bob");
        let eve = support::keys(profile, "eve");
        for (tr, found) in [
            (
                TokenReference::BinarySecurityToken,
                "names a wsse:BinarySecurityToken (subject CN=bob".to_string(),
            ),
            (
                TokenReference::SubjectKeyIdentifier,
                format!(
                    "names a wsse:KeyIdentifier (X509SubjectKeyIdentifier) {}",
                    B64.encode(subject_key_identifier(&bob.enc_cert).unwrap())
                ),
            ),
            (
                TokenReference::IssuerSerial,
                "names a wsse:SecurityTokenReference to ds:X509Data with ds:X509IssuerSerial \
                 (issuer CN=bob"
                    .to_string(),
            ),
        ] {
            let (xml, ct) = encrypt_for(&bob, kp, tr);
            let err = decrypt(&xml, &eve, &policy, &ct).unwrap_err();
            assert_eq!(err.code, ErrorCode::FailedDecryption, "{err}");
            assert!(
                err.detail.contains(&found),
                "{} {tr:?}: {err}",
                profile.name
            );
            // …and says which certificate we are, to compare.
            assert!(err.detail.contains("subject CN=eve"), "{err}");
        }
    }
}

#[test]
fn hkdf_without_key_length_takes_it_from_the_key_wrap_algorithm() {
    for (profile, kp, policy) in profiles().into_iter().skip(1) {
        let bob = support::keys(profile, "bob");
        let (xml, ct) = encrypt_for(&bob, kp, TokenReference::SubjectKeyIdentifier);
        let key_length = "<dsig-more:KeyLength>16</dsig-more:KeyLength>";
        assert!(xml.contains(key_length), "{xml}");
        let without = xml.replace(key_length, "");
        let parts = decrypt(&without, &bob, &policy, &ct)
            .unwrap_or_else(|e| panic!("{}: {e}", profile.name));
        assert_eq!(plaintext_of(parts), PLAIN);

        // A KeyLength that disagrees with kw-aes128 is still refused.
        let wrong = xml.replace(key_length, "<dsig-more:KeyLength>32</dsig-more:KeyLength>");
        let err = decrypt(&wrong, &bob, &policy, &ct).unwrap_err();
        assert_eq!(err.code, ErrorCode::PolicyNoncompliance, "{err}");
        assert!(err.detail.contains("16-byte"), "{err}");
    }
}

#[test]
fn bare_ec_key_value_in_originator_key_info_is_read() {
    let (profile, kp, policy) = profiles().into_iter().nth(2).unwrap();
    let bob = support::keys(profile, "bob");
    let (xml, ct) = encrypt_for(&bob, kp, TokenReference::SubjectKeyIdentifier);
    let open = format!("<ds:KeyValue xmlns:ds=\"{NS_DS}\">");
    assert!(xml.contains(&open), "{xml}");
    let bare = xml
        .replace(&open, "")
        .replace("</dsig11:ECKeyValue></ds:KeyValue>", "</dsig11:ECKeyValue>");
    let oki = &bare[bare.find("<xenc:OriginatorKeyInfo>").unwrap()..];
    assert!(
        oki.starts_with("<xenc:OriginatorKeyInfo><dsig11:ECKeyValue"),
        "{oki}"
    );
    let parts = decrypt(&bare, &bob, &policy, &ct).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(plaintext_of(parts), PLAIN);

    // Both forms at once name two originator keys: refused.
    let eckv_start = xml.find("<dsig11:ECKeyValue").unwrap();
    let eckv_end = xml.find("</dsig11:ECKeyValue>").unwrap() + "</dsig11:ECKeyValue>".len();
    let eckv = xml[eckv_start..eckv_end].to_string();
    let two = xml.replace(
        "<xenc:OriginatorKeyInfo>",
        &format!("<xenc:OriginatorKeyInfo>{eckv}"),
    );
    let err = decrypt(&two, &bob, &policy, &ct).unwrap_err();
    assert_eq!(err.code, ErrorCode::PolicyNoncompliance, "{err}");
    assert!(err.detail.contains("two dsig11:ECKeyValue"), "{err}");
}
