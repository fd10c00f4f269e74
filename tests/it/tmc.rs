//! Integration tests: tmc.
