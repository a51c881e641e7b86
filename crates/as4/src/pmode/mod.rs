//! PMode files, their checks, and the routing of messages to legs.
//!
//! * [`files`] reads a directory of TOML PMode files ([`load_dir`]) and reports every
//!   problem as a [`Diagnostic`] with `file:line:column`.
//! * [`model`] is what the files mean: a [`PModeSet`] of parties and legs.
//! * [`check`] holds the checks that span files: certificates, ambiguous legs.
//! * [`routing`] finds the leg of an inbound message or of a submission, or says
//!   (EBMS:0010) which leg came nearest and which field differed.
//! * [`enforce`] checks a message against its leg's property rules and payload profile.
//! * [`domibus`] converts a Domibus PMode XML into native files.
//!
//! The file format is documented in `docs/pmode-format.md`.

pub mod check;
pub mod domibus;
pub mod enforce;
pub mod files;
pub mod model;
pub mod routing;

pub use files::{load_dir, load_dir_with, Diagnostic, DiagnosticSeverity, LoadOptions};
pub use model::*;
pub use routing::{InboundKey, Submission};
