//! Varti message store (in progress).
