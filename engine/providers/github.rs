//! Provider: github.
