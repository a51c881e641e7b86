//! WS-Security for AS4: exclusive c14n, signature profiles, signing and verification,
//! token references, certificate validation and non-repudiation receipts.
//!
//! * [`dom`] — a safe read-only view of a libxml2 tree (hardened parsing).
//! * [`c14n`] — byte-exact exclusive canonicalization.
//! * [`profile`] — one value per algorithm suite (AS4 1.15 RSA, 2.0 EdDSA, 2.0 ECDSA).
//! * [`token`] — security-token references (BST, SKI, IssuerSerial) and certificate checks.
//! * [`keys`] — the key-strength policy (RSA size, EC curves, certificate signature
//!   digests) for our keys and partners' alike.
//! * `revocation` — CRLs configured per partner, checked against the signer's chain.
//! * [`verify`] — verifying an incoming signature, with signature-wrapping defences.
//! * [`sign`] — building a signed `wsse:Security` header.
//! * [`summary`] — a read-only summary of a security header, for `message inspect`.
//! * [`receipt`] — `ebbp:NonRepudiationInformation` for receipts, and checking it.
//! * [`private_key`] — every private-key operation (sign, RSA decryption, (EC)DH) behind
//!   one trait, for file keys and [`pkcs11`] token keys alike.
//! * [`encrypt`] — SwA payload encryption (AES-128-GCM) and key protection (RSA-OAEP,
//!   X25519 / ECDH-ES with `kdf` HKDF and `keywrap` AES key wrap).

pub mod c14n;
pub mod dom;
pub mod encrypt;
mod exc_c14n;
pub(crate) mod kdf;
pub mod keys;
pub(crate) mod keywrap;
pub mod pkcs11;
pub mod private_key;
pub mod profile;
pub mod receipt;
pub(crate) mod revocation;
pub mod sign;
pub mod summary;
pub mod swa;
pub mod token;
pub mod verify;
