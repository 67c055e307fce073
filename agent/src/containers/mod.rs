//! Container attribution.
