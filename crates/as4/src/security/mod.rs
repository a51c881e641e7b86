//! WS-Security for AS4 (in progress).

pub mod encrypt;
pub mod kdf;
pub mod keywrap;
