//! Auth (PLACEHOLDER).
