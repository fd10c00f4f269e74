//! serde adapter for humantime durations (`"30s"`, `"5m"`, `"1h 30m"`), used by the workflow
//! files and the bot configuration: `#[serde(with = "crate::serde_duration")]`.

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serializer};

/// Writes `d` as a humantime string (e.g. `5m`).
///
/// Errors: only those of the serializer.
pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&humantime::format_duration(*d).to_string())
}

/// Reads a humantime string into a [`Duration`].
///
/// Errors: a deserialization error naming the unparsable text (e.g. `5 minutes please`).
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(&s).map_err(serde::de::Error::custom)
}
