//! AES key wrap (RFC 3394) with a 128-bit key-encryption key:
//! `http://www.w3.org/2001/04/xmlenc#kw-aes128` (XML Encryption 1.0 §5.6.3).

use openssl::aes::{unwrap_key, wrap_key, AesKey};

/// The key wrap algorithm URI.
pub(crate) const KW_AES128: &str = "http://www.w3.org/2001/04/xmlenc#kw-aes128";

/// Why a wrap or unwrap failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum KeyWrapError {
    /// The key-encryption key is not 16 bytes long.
    #[error("the key-encryption key must be 16 bytes for kw-aes128, got {0}")]
    BadKekLength(usize),
    /// The wrapped or plain key is not a multiple of 8 bytes of at least 16 bytes.
    #[error("RFC 3394 needs a key of at least 16 bytes in 8-byte blocks, got {0} bytes")]
    BadKeyLength(usize),
    /// The integrity check value did not match: wrong key-encryption key or altered data.
    #[error("the wrapped key failed its RFC 3394 integrity check (wrong key or altered data)")]
    IntegrityCheckFailed,
}

/// Wraps `key` (16, 24 or 32 bytes, …) under the 16-byte `kek`.
pub(crate) fn wrap_aes128(kek: &[u8], key: &[u8]) -> Result<Vec<u8>, KeyWrapError> {
    if kek.len() != 16 {
        return Err(KeyWrapError::BadKekLength(kek.len()));
    }
    if key.len() < 16 || key.len() % 8 != 0 {
        return Err(KeyWrapError::BadKeyLength(key.len()));
    }
    let aes = AesKey::new_encrypt(kek).map_err(|_| KeyWrapError::BadKekLength(kek.len()))?;
    let mut out = vec![0u8; key.len() + 8];
    let n =
        wrap_key(&aes, None, &mut out, key).map_err(|_| KeyWrapError::BadKeyLength(key.len()))?;
    out.truncate(n);
    Ok(out)
}

/// Unwraps an RFC 3394 wrapped key under the 16-byte `kek`, checking its integrity value.
pub(crate) fn unwrap_aes128(kek: &[u8], wrapped: &[u8]) -> Result<Vec<u8>, KeyWrapError> {
    if kek.len() != 16 {
        return Err(KeyWrapError::BadKekLength(kek.len()));
    }
    if wrapped.len() < 24 || wrapped.len() % 8 != 0 {
        return Err(KeyWrapError::BadKeyLength(wrapped.len()));
    }
    let aes = AesKey::new_decrypt(kek).map_err(|_| KeyWrapError::BadKekLength(kek.len()))?;
    let mut out = vec![0u8; wrapped.len() - 8];
    let n = unwrap_key(&aes, None, &mut out, wrapped)
        .map_err(|_| KeyWrapError::IntegrityCheckFailed)?;
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

    /// RFC 3394 §4.1: wrap 128 bits of key data with a 128-bit KEK.
    #[test]
    fn matches_rfc3394_4_1() {
        let kek = hex("000102030405060708090A0B0C0D0E0F");
        let key = hex("00112233445566778899AABBCCDDEEFF");
        let wrapped = wrap_aes128(&kek, &key).unwrap();
        assert_eq!(
            wrapped,
            hex("1FA68B0A8112B447AEF34BD8FB5A7B829D3E862371D2CFE5")
        );
        assert_eq!(unwrap_aes128(&kek, &wrapped).unwrap(), key);
    }

    #[test]
    fn detects_altered_wrapped_key_and_wrong_kek() {
        let kek = hex("000102030405060708090A0B0C0D0E0F");
        let key = hex("00112233445566778899AABBCCDDEEFF");
        let mut wrapped = wrap_aes128(&kek, &key).unwrap();
        let mut other = kek.clone();
        other[0] ^= 1;
        assert_eq!(
            unwrap_aes128(&other, &wrapped),
            Err(KeyWrapError::IntegrityCheckFailed)
        );
        wrapped[5] ^= 0x40;
        assert_eq!(
            unwrap_aes128(&kek, &wrapped),
            Err(KeyWrapError::IntegrityCheckFailed)
        );
        assert_eq!(
            unwrap_aes128(&kek, &wrapped[..16]),
            Err(KeyWrapError::BadKeyLength(16))
        );
    }
}
