//! WS-Security for AS4 (in progress).
