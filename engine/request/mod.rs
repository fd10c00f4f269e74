//! The config repository format (cluster requests) and the reference-design validation rules.
//!
//! Pure: no I/O, no tokio.
