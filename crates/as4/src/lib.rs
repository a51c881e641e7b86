//! ebMS3 / eDelivery AS4 messaging for Varti.
//!
//! The crate is organised as the path of a message:
//!
//! * [`message`] — the ebMS3 header model, the SOAP envelope (read and written
//!   with quick-xml) and the `multipart/related` MIME package (streamed).
//! * [`compress`] — the AS4 compression feature (gzip per part).
//! * [`security`] — WS-Security: exclusive c14n, signatures, encryption, policy.
//! * [`inbound`] — the receive pipeline: decrypt, verify, enforce the leg's policy, decompress.
//! * [`receive`] — one received user message, in one call: route, check the parties,
//!   the [`inbound`] pipeline, enforce the leg, and the receipt or error signal to answer.
//! * [`outbound`] — the send side: compress, sign, encrypt, write MIME; receipts and error signals.
//! * [`pmode`] — PMode files, their checks, and routing of messages to legs.
//! * [`leg`] — a leg applied to messages: its security profile, the `eb:UserMessage`
//!   sent on it and its send policy.
//! * [`discovery`] — dynamic discovery without I/O: SML/BDXL DNS names, U-NAPTR, SMP
//!   requests and answers (OASIS 1.0, Peppol, OASIS 2.0) and their signatures.
//! * [`error`] — the ebMS3/AS4 error codes every layer reports with.

#![warn(missing_docs)]
#![warn(unreachable_pub)]

pub mod compress;
pub mod discovery;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod inbound;
pub mod leg;
pub mod message;
pub(crate) mod ns;
pub mod outbound;
pub mod pmode;
pub mod receive;
pub mod security;
pub mod spool;

pub use error::{EbmsError, ErrorCode};
