//! AS4 messages on the wire: the ebMS3 model, the SOAP envelope and the MIME package.

pub mod dump;
pub mod id;
pub mod mime;
pub mod model;
pub mod soap;
