//! The syntax of ebMS3 message ids (`eb:MessageId`, `eb:RefToMessageId`).
//!
//! ebMS3 Core §5.2.2.1 requires a MessageId "conforming to MessageId RFC2822", without
//! the angle brackets: `id-left "@" id-right`. Varti accepts the `dot-atom-text` form on
//! both sides (RFC 2822 §3.2.4: runs of `atext` separated by single dots, no dot first or
//! last) and refuses the quoted-string and domain-literal forms and the obsolete syntax,
//! which no AS4 implementation needs and which would let quotes, spaces and brackets into
//! file names, logs and URLs.
//!
//! Ids are also bounded to [`MAX_LEN`] bytes: the longest file name most file systems
//! allow, and the column size other access points (Domibus) use, so an id Varti accepts
//! can be stored and echoed by a partner.
//!
//! Consequences worth knowing: an id never contains `..`, never starts or ends with a
//! dot, and holds only printable ASCII without space, `"`, `(`, `)`, `,`, `:`, `;`, `<`,
//! `>`, `[`, `\` or `]`; so it is never a relative path such as `../x`.

use std::fmt;

/// The longest message id accepted, in bytes.
pub const MAX_LEN: usize = 255;

/// Why a string is not a valid ebMS3 message id.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum InvalidMessageId {
    /// The id is empty.
    Empty,
    /// The id is longer than [`MAX_LEN`] bytes.
    TooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// There is no `@` between a left and a right part.
    NoAt,
    /// A character outside RFC 2822 `atext` (or a second `@`).
    Character {
        /// The character.
        found: char,
        /// Its byte offset.
        at: usize,
    },
    /// A part starts or ends with a dot, or has two dots in a row.
    Dots {
        /// `left` or `right` of the `@`.
        side: &'static str,
    },
}

impl fmt::Display for InvalidMessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const FORM: &str = "a message id has the form left@right (RFC 2822), such as \
                            7f3c…-uuid@sender.example.org";
        match self {
            InvalidMessageId::Empty => write!(f, "the message id is empty; {FORM}"),
            InvalidMessageId::TooLong { len } => write!(
                f,
                "the message id is {len} bytes long; at most {MAX_LEN} are allowed"
            ),
            InvalidMessageId::NoAt => write!(f, "the message id has no '@'; {FORM}"),
            InvalidMessageId::Character { found, at } => write!(
                f,
                "the message id has {found:?} at byte {at}; only letters, digits, dots and \
                 !#$%&'*+-/=?^_`{{|}}~ are allowed on either side of one '@'"
            ),
            InvalidMessageId::Dots { side } => write!(
                f,
                "the {side} part of the message id starts or ends with a dot or has two dots \
                 in a row; {FORM}"
            ),
        }
    }
}

impl std::error::Error for InvalidMessageId {}

/// RFC 2822 §3.2.4 `atext`.
fn is_atext(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~".contains(&c)
}

/// Checks that `id` is a message id: `dot-atom-text "@" dot-atom-text`, at most
/// [`MAX_LEN`] bytes. The same rule applies to `eb:RefToMessageId`.
pub fn check(id: &str) -> Result<(), InvalidMessageId> {
    if id.is_empty() {
        return Err(InvalidMessageId::Empty);
    }
    if id.len() > MAX_LEN {
        return Err(InvalidMessageId::TooLong { len: id.len() });
    }
    let mut at_sign = None;
    for (i, c) in id.char_indices() {
        match c {
            '@' if at_sign.is_none() => at_sign = Some(i),
            '.' => {}
            c if c.is_ascii() && is_atext(c as u8) => {}
            found => return Err(InvalidMessageId::Character { found, at: i }),
        }
    }
    let Some(at) = at_sign else {
        return Err(InvalidMessageId::NoAt);
    };
    let (left, right) = (&id[..at], &id[at + 1..]);
    if left.is_empty() || right.is_empty() {
        return Err(InvalidMessageId::NoAt);
    }
    for (side, part) in [("left", left), ("right", right)] {
        if part.starts_with('.') || part.ends_with('.') || part.contains("..") {
            return Err(InvalidMessageId::Dots { side });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_of_real_implementations_pass() {
        for ok in [
            "7612ae3c-954d-4fc2-8031-efd139b1248a@resp.gov.si",
            "UUID-1@requester.example.com",
            "ph-as4@2babaddd-282e-461e-b645-730c5abebcce",
            "2011-921@5209999001264.example.com",
            "f81d4fae-7dec-11d0-a765-00a0c91e6bf6@varti",
            "f81d4fae7dec11d0a76500a0c91e6bf6.1a2b3c4d@oots.varti",
            "a!#$%&'*+-/=?^_`{|}~z@x",
            "a/./b@c",
        ] {
            assert_eq!(check(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn path_like_and_malformed_ids_are_refused() {
        assert_eq!(check(""), Err(InvalidMessageId::Empty));
        assert_eq!(check("../x"), Err(InvalidMessageId::NoAt));
        assert_eq!(check("x"), Err(InvalidMessageId::NoAt));
        assert_eq!(check("@x"), Err(InvalidMessageId::NoAt));
        assert_eq!(check("x@"), Err(InvalidMessageId::NoAt));
        assert_eq!(
            check("../x@y"),
            Err(InvalidMessageId::Dots { side: "left" })
        );
        assert_eq!(
            check("a..b@y"),
            Err(InvalidMessageId::Dots { side: "left" })
        );
        assert_eq!(check("a@y."), Err(InvalidMessageId::Dots { side: "right" }));
        assert_eq!(check("a@.y"), Err(InvalidMessageId::Dots { side: "right" }));
        assert_eq!(
            check("a@b@c"),
            Err(InvalidMessageId::Character { found: '@', at: 3 })
        );
        assert_eq!(
            check("a b@c"),
            Err(InvalidMessageId::Character { found: ' ', at: 1 })
        );
        assert_eq!(
            check("<a@b>"),
            Err(InvalidMessageId::Character { found: '<', at: 0 })
        );
        assert_eq!(
            check("\"a\"@b"),
            Err(InvalidMessageId::Character { found: '"', at: 0 })
        );
        assert_eq!(
            check("a@[127.0.0.1]"),
            Err(InvalidMessageId::Character { found: '[', at: 2 })
        );
        assert_eq!(
            check("é@b"),
            Err(InvalidMessageId::Character { found: 'é', at: 0 })
        );
        assert_eq!(
            check("a\\b@c"),
            Err(InvalidMessageId::Character { found: '\\', at: 1 })
        );
    }

    #[test]
    fn length_is_bounded_at_255_bytes() {
        let right = "example.org";
        let left = "a".repeat(MAX_LEN - right.len() - 1);
        let longest = format!("{left}@{right}");
        assert_eq!(longest.len(), MAX_LEN);
        assert_eq!(check(&longest), Ok(()));
        let too_long = format!("a{longest}");
        assert_eq!(
            check(&too_long),
            Err(InvalidMessageId::TooLong { len: MAX_LEN + 1 })
        );
    }

    #[test]
    fn messages_name_the_problem_and_the_form() {
        let m = check("../x").unwrap_err().to_string();
        assert!(m.contains("left@right"), "{m}");
        let m = check("a b@c").unwrap_err().to_string();
        assert!(m.contains("' '") && m.contains("byte 1"), "{m}");
    }
}
