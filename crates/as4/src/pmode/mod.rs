//! PMode files, checks and routing (in progress).
