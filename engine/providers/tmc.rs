//! Provider: tmc.
