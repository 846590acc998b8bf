//! Transport (PLACEHOLDER).
