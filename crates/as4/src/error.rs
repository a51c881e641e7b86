//! The ebMS3 / AS4 error codes, as typed values.
//!
//! Every failure a peer must hear about is reported as an [`EbmsError`]: one of the
//! codes of ebMS3 Core §6.7 (plus the Part 2 routing codes and the AS4 profile's
//! reception-awareness codes) with a human description that tells an operator what
//! was wrong. The code, severity, category and short description are fixed by the
//! specification; only the description is ours.

use std::fmt;

/// Severity of an ebMS error (ebMS3 Core §6.2.6: `warning` or `failure`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Severity {
    /// The message was processed but something is worth reporting.
    Warning,
    /// Processing of the message failed.
    Failure,
}

impl Severity {
    /// The value of the `severity` attribute on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Warning => "warning",
            Severity::Failure => "failure",
        }
    }
}

/// Category of an ebMS error (ebMS3 Core §6.7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Category {
    /// The content of the message (header values, payload references).
    Content,
    /// The MIME package or SOAP envelope.
    Unpackaging,
    /// Processing at the MSH (PMode, security, reliability).
    Processing,
    /// Transport or delivery.
    Communication,
}

impl Category {
    /// The value of the `category` attribute on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Category::Content => "Content",
            Category::Unpackaging => "Unpackaging",
            Category::Processing => "Processing",
            Category::Communication => "Communication",
        }
    }
}

macro_rules! error_codes {
    ($( $(#[$doc:meta])* $variant:ident = $code:literal, $short:literal, $sev:ident, $cat:ident; )*) => {
        /// An ebMS3 / AS4 error code (`EBMS:nnnn`).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum ErrorCode {
            $( $(#[$doc])* $variant, )*
        }

        impl ErrorCode {
            /// Every code, in numeric order.
            pub const ALL: &'static [ErrorCode] = &[ $( ErrorCode::$variant, )* ];

            /// The code as written on the wire, e.g. `EBMS:0010`.
            pub fn code(self) -> &'static str {
                match self { $( ErrorCode::$variant => $code, )* }
            }

            /// The specification's short description, e.g. `ProcessingModeMismatch`.
            pub fn short_description(self) -> &'static str {
                match self { $( ErrorCode::$variant => $short, )* }
            }

            /// The specification's severity for this code.
            pub fn severity(self) -> Severity {
                match self { $( ErrorCode::$variant => Severity::$sev, )* }
            }

            /// The specification's category for this code.
            pub fn category(self) -> Category {
                match self { $( ErrorCode::$variant => Category::$cat, )* }
            }

            /// Parses `EBMS:nnnn`; `None` for a code this crate does not know.
            pub fn from_code(code: &str) -> Option<ErrorCode> {
                match code.trim() { $( $code => Some(ErrorCode::$variant), )* _ => None }
            }
        }
    };
}

error_codes! {
    /// A header element's value is not recognised.
    ValueNotRecognized = "EBMS:0001", "ValueNotRecognized", Failure, Content;
    /// A feature the message asks for is not supported.
    FeatureNotSupported = "EBMS:0002", "FeatureNotSupported", Warning, Content;
    /// Header values are inconsistent with each other.
    ValueInconsistent = "EBMS:0003", "ValueInconsistent", Failure, Content;
    /// Any other content error.
    Other = "EBMS:0004", "Other", Failure, Content;
    /// The MSH could not connect to the next MSH.
    ConnectionFailure = "EBMS:0005", "ConnectionFailure", Failure, Communication;
    /// A pull request found no message on its MPC.
    EmptyMessagePartitionChannel = "EBMS:0006", "EmptyMessagePartitionChannel", Warning, Communication;
    /// The MIME package is inconsistent with the ebMS header.
    MimeInconsistency = "EBMS:0007", "MimeInconsistency", Failure, Unpackaging;
    /// A packaging feature is not supported.
    FeatureNotSupportedInconsistency = "EBMS:0008", "FeatureNotSupportedInconsistency", Failure, Unpackaging;
    /// The ebMS header is missing or not valid.
    InvalidHeader = "EBMS:0009", "InvalidHeader", Failure, Unpackaging;
    /// No PMode matches the message.
    ProcessingModeMismatch = "EBMS:0010", "ProcessingModeMismatch", Failure, Processing;
    /// A payload referenced by the header is missing or cannot be resolved.
    ExternalPayloadError = "EBMS:0011", "ExternalPayloadError", Failure, Content;
    /// Routing to the next MSH failed (ebMS3 Part 2).
    RoutingFailure = "EBMS:0020", "RoutingFailure", Failure, Processing;
    /// The MPC is over capacity (ebMS3 Part 2).
    MpcCapacityExceeded = "EBMS:0021", "MPCCapacityExceeded", Failure, Processing;
    /// The message was not pulled before its persistence timeout (ebMS3 Part 2).
    MessagePersistenceTimeout = "EBMS:0022", "MessagePersistenceTimeout", Failure, Processing;
    /// The message expired before it could be delivered (ebMS3 Part 2).
    MessageExpired = "EBMS:0023", "MessageExpired", Warning, Processing;
    /// The signature or the signer could not be authenticated.
    FailedAuthentication = "EBMS:0101", "FailedAuthentication", Failure, Processing;
    /// An encrypted part could not be decrypted.
    FailedDecryption = "EBMS:0102", "FailedDecryption", Failure, Processing;
    /// The message does not meet the security policy of its PMode.
    PolicyNoncompliance = "EBMS:0103", "PolicyNoncompliance", Failure, Processing;
    /// The reliability module failed.
    DysfunctionalReliability = "EBMS:0201", "DysfunctionalReliability", Failure, Processing;
    /// The message could not be delivered to the consumer.
    DeliveryFailure = "EBMS:0202", "DeliveryFailure", Failure, Communication;
    /// No receipt arrived after the last retry (AS4 reception awareness).
    MissingReceipt = "EBMS:0301", "MissingReceipt", Failure, Communication;
    /// A receipt arrived but is not valid (AS4).
    InvalidReceipt = "EBMS:0302", "InvalidReceipt", Failure, Communication;
    /// A compressed part could not be decompressed (AS4).
    DecompressionFailure = "EBMS:0303", "DecompressionFailure", Failure, Communication;
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.code(), self.short_description())
    }
}

/// An ebMS error with the detail an operator needs to act on it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {detail}")]
pub struct EbmsError {
    /// The error code.
    pub code: ErrorCode,
    /// What was wrong and, where we can tell, how to fix it.
    pub detail: String,
    /// The MessageId of the message in error, when it could be read.
    pub ref_to_message_id: Option<String>,
    /// The message was not refused for what it is: the receiver cannot take it right now
    /// (its spool is full) and the sender should try again later. Answered with HTTP 503
    /// and no ebMS signal ([`EbmsError::retry_later`]).
    pub transient: bool,
}

impl EbmsError {
    /// An error with a code and a description.
    pub fn new(code: ErrorCode, detail: impl Into<String>) -> Self {
        EbmsError {
            code,
            detail: detail.into(),
            ref_to_message_id: None,
            transient: false,
        }
    }

    /// A transient failure (`EBMS:0004` should it be signalled): nothing is wrong with the
    /// message, the receiver cannot take it now.
    pub fn retry_later(detail: impl Into<String>) -> Self {
        EbmsError {
            transient: true,
            ..EbmsError::new(ErrorCode::Other, detail)
        }
    }

    /// The same error, referring to the message it concerns.
    pub fn for_message(mut self, message_id: impl Into<String>) -> Self {
        self.ref_to_message_id = Some(message_id.into());
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_round_trips_through_its_wire_form() {
        for code in ErrorCode::ALL {
            assert_eq!(ErrorCode::from_code(code.code()), Some(*code));
            assert!(code.code().starts_with("EBMS:0"));
        }
        assert_eq!(ErrorCode::from_code("EBMS:9999"), None);
    }

    #[test]
    fn as4_codes_carry_the_profile_attributes() {
        let c = ErrorCode::DecompressionFailure;
        assert_eq!(c.code(), "EBMS:0303");
        assert_eq!(c.severity(), Severity::Failure);
        assert_eq!(c.category(), Category::Communication);
        assert_eq!(
            ErrorCode::ProcessingModeMismatch.category(),
            Category::Processing
        );
        assert_eq!(
            ErrorCode::EmptyMessagePartitionChannel.severity(),
            Severity::Warning
        );
    }
}
