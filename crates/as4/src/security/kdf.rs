//! HKDF (RFC 5869) with HMAC-SHA256, the key derivation function of the eDelivery AS4 2.0
//! key agreement (`http://www.w3.org/2021/04/xmldsig-more#hkdf`, RFC 9231 §2.5 / §4.3).
//!
//! The parameters travel in the message (`dsig-more:HKDFParams`: PRF, Salt, Info,
//! KeyLength), so the receiver derives with whatever the sender chose; the sender's
//! choice is documented at [`HkdfParams::for_kw_aes128`].

use openssl::md::Md;
use openssl::pkey::Id;
use openssl::pkey_ctx::PkeyCtx;

/// The only PRF Varti accepts for HKDF: HMAC-SHA256, as the AS4 2.0 profile requires.
pub(crate) const PRF_HMAC_SHA256: &str = "http://www.w3.org/2001/04/xmldsig-more#hmac-sha256";

/// Upper bound on salt and info lengths read from a message (hostile-input guard).
pub(crate) const MAX_PARAM_LEN: usize = 1024;

/// The HKDF parameters of one key agreement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HkdfParams {
    /// The HKDF salt (`dsig-more:Salt`); empty means "no salt" (RFC 5869: HashLen zeros).
    pub salt: Vec<u8>,
    /// The HKDF info (`dsig-more:Info`); empty when absent.
    pub info: Vec<u8>,
    /// Length of the derived key in bytes (`dsig-more:KeyLength`).
    pub key_len: usize,
}

impl HkdfParams {
    /// The parameters Varti sends for a key-encryption key used with `kw-aes128`: a fresh
    /// random 16-byte salt, no info, a 16-byte output key.
    ///
    /// Why these: neither the eDelivery AS4 2.0 profile nor RFC 9231 fixes salt or info
    /// (they travel in `HKDFParams`); Apache WSS4J 3 — the stack under Domibus and phase4,
    /// which the 2.0 profile was validated with — defaults to PRF hmac-sha256, a random
    /// salt as long as the wrapping key, and no Info (`WSSecEncryptedKey`'s default HKDF
    /// parameters). Matching that keeps our messages shaped like theirs.
    pub(crate) fn for_kw_aes128() -> Result<Self, openssl::error::ErrorStack> {
        let mut salt = vec![0u8; 16];
        openssl::rand::rand_bytes(&mut salt)?;
        Ok(HkdfParams {
            salt,
            info: Vec::new(),
            key_len: 16,
        })
    }
}

/// Derives `params.key_len` bytes from the shared secret with HKDF-SHA256
/// (extract-then-expand).
pub(crate) fn hkdf_sha256(
    shared_secret: &[u8],
    params: &HkdfParams,
) -> Result<Vec<u8>, openssl::error::ErrorStack> {
    let mut ctx = PkeyCtx::new_id(Id::HKDF)?;
    ctx.derive_init()?;
    ctx.set_hkdf_md(Md::sha256())?;
    ctx.set_hkdf_key(shared_secret)?;
    if !params.salt.is_empty() {
        ctx.set_hkdf_salt(&params.salt)?;
    }
    if !params.info.is_empty() {
        ctx.add_hkdf_info(&params.info)?;
    }
    let mut out = vec![0u8; params.key_len];
    let n = ctx.derive(Some(&mut out))?;
    out.truncate(n);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// RFC 5869 Appendix A.1 (Test Case 1).
    #[test]
    fn matches_rfc5869_test_case_1() {
        let ikm = hex("0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b");
        let params = HkdfParams {
            salt: hex("000102030405060708090a0b0c"),
            info: hex("f0f1f2f3f4f5f6f7f8f9"),
            key_len: 42,
        };
        let okm = hkdf_sha256(&ikm, &params).unwrap();
        assert_eq!(
            okm,
            hex("3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865")
        );
    }

    /// RFC 5869 Appendix A.3 (Test Case 3: no salt, no info).
    #[test]
    fn matches_rfc5869_test_case_3() {
        let ikm = hex("0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b");
        let params = HkdfParams {
            salt: vec![],
            info: vec![],
            key_len: 42,
        };
        let okm = hkdf_sha256(&ikm, &params).unwrap();
        assert_eq!(
            okm,
            hex("8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8")
        );
    }
}
