//! Scheduled upgrade runs (issue 8, item 6), the pure part: the `schedules` list of the
//! repository `tkgops.yaml` ([`Schedule`]), its validation ([`validate_schedules`], rule
//! [`RULE`]), timezone-aware fire times and maintenance windows ([`Schedule::next_fire`],
//! [`due_fire`]), the TKR an upgrade goes to ([`resolve_target`]), the waves a run upgrades the
//! fleet in ([`plan_waves`]) and the Renovate-style bump pull requests of `action: propose`
//! ([`bump_tkr_line`], [`group_bumps`], [`propose_branch`]).
//!
//! Sources: Renovate's `schedule` (cron, timezone, UTC default), `prHourlyLimit` (default 2) and
//! `prConcurrentLimit` (default 10) and grouped PRs; Argo CD sync windows (a cron start plus a
//! duration, in a time zone); Kubernetes `LabelSelector` semantics (via `kube-core`)
//! (`docs/github.md`, "Scheduling" and idea 7); TKG upgrades one Kubernetes minor at
//! a time (`docs/tkg2-class-based.md` §8, rule `TKGOPS-DOWNGRADE`).
//!
//! ```yaml
//! schedules:
//!   - name: weekly-patch
//!     cron: "0 2 * * SAT"          # 5-field crontab, or the cron crate's 6/7-field form
//!     timezone: Europe/Berlin       # IANA name; default UTC
//!     window: 4h                    # maintenance window length, required, > 0
//!     selector: {matchLabels: {env: prod}}
//!     target: latest-patch          # latest-patch | latest-minor
//!     action: apply                 # propose | apply
//!     waves:
//!       - {name: canary, selector: {matchLabels: {tier: canary}}, soak: 30m, maxConcurrent: 1}
//!       - {name: rest, selector: {}, maxConcurrent: 5}
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, TimeZone, Timelike, Utc};
use chrono_tz::Tz;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube_core::{Selector, SelectorExt};
use serde::{Deserialize, Deserializer, Serialize};
use serde_yaml::Value;

use crate::request::{cron_of, is_dns1123_label, parse_tkr, Finding, Severity};

/// Rule ID of every schedule finding (severity error).
pub const RULE: &str = "TKGOPS-SCHEDULE";

/// At most this many missed fires are reported by [`due_fire`] (the latest ones).
pub const MISSED_CAP: usize = 10;

/// Name of the implicit last wave of [`plan_waves`]: the selected clusters no wave selects
/// (all selected clusters when the schedule lists no waves).
pub const REMAINING_WAVE: &str = "remaining";

/// Cron candidates one fire-time search looks at before giving up (a wall-clock time that
/// occurs twice is skipped the second time, so a search may step over up to an hour of
/// per-second candidates).
const MAX_SCAN: usize = 10_000;

/// Errors of the schedule functions. Validation ([`validate_schedules`]) reports the schedule
/// ones as findings; [`bump_tkr_line`] returns the `tkr` rewriting ones.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    /// `cron` is neither a 5-field crontab nor a 6/7-field `cron` crate expression.
    #[error("cron {expr:?} is invalid: {reason}")]
    Cron {
        /// The expression as written.
        expr: String,
        /// Why it does not parse.
        reason: String,
    },
    /// `timezone` is not an IANA time zone name known to `chrono-tz`.
    #[error("timezone {0:?} is not an IANA time zone name (e.g. Europe/Berlin, UTC)")]
    Timezone(String),
    /// `window` is missing, zero, or not a humantime duration (the message says which).
    #[error("{0}")]
    Window(String),
    /// A wave's `soak` is not a humantime duration.
    #[error("soak {0:?} is not a duration (e.g. 30m, 0s)")]
    Soak(String),
    /// A label selector Kubernetes would reject (operator, values).
    #[error("invalid label selector: {0}")]
    Selector(String),
    /// The cluster settings text has no top-level `tkr:` key.
    #[error("the cluster settings have no top-level tkr: key")]
    NoTkrKey,
    /// The cluster settings text has more than one top-level `tkr:` key.
    #[error("the cluster settings have more than one top-level tkr: key")]
    DuplicateTkrKey,
    /// The `tkr:` value (1-based line) is not a single-line plain, `'single'` or `"double"`
    /// quoted scalar (e.g. a block scalar, an anchor, a tag or a flow collection).
    #[error("the tkr value on line {0} is not a single-line plain or quoted scalar")]
    TkrNotScalar(u32),
    /// The new TKR is not of the form `vMAJOR.MINOR.PATCH+vmware.N-tkg.M`.
    #[error("tkr {0:?} is not of the form vMAJOR.MINOR.PATCH+vmware.N-tkg.M")]
    InvalidTkr(String),
    /// The rewritten text does not parse back as the original with only `tkr` changed.
    #[error("the rewritten cluster settings do not parse back with only tkr changed: {0}")]
    Rewrite(String),
}

/// What a scheduled run upgrades a cluster to (see [`resolve_target`]).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum Target {
    /// `latest-patch` (the default): the newest TKR of the cluster's Kubernetes minor.
    #[default]
    LatestPatch,
    /// `latest-minor`: the newest TKR of the next Kubernetes minor, else the latest patch.
    LatestMinor,
}

/// What a scheduled run does with the upgrades it finds.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum ScheduleAction {
    /// `propose` (the default, the safe one): open bump pull requests, Renovate-style, within
    /// [`ProposeLimits`]; a human merges them.
    #[default]
    Propose,
    /// `apply`: run the upgrades inside the maintenance window, wave by wave.
    Apply,
}

/// Pull-request caps of `action: propose` (Renovate `prConcurrentLimit`, `prHourlyLimit`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProposeLimits {
    /// Open schedule pull requests at most (default 10, Renovate `prConcurrentLimit`); >= 1.
    #[serde(rename = "maxOpenPRs", default = "ten")]
    pub max_open_prs: u32,
    /// Schedule pull requests opened per clock hour at most (default 2, Renovate
    /// `prHourlyLimit`); >= 1 (unlike Renovate, 0 does not mean unlimited: it is rejected).
    #[serde(rename = "maxPRsPerHour", default = "two")]
    pub max_prs_per_hour: u32,
}

fn ten() -> u32 {
    10
}
fn two() -> u32 {
    2
}
fn one() -> u32 {
    1
}

impl Default for ProposeLimits {
    fn default() -> Self {
        ProposeLimits {
            max_open_prs: 10,
            max_prs_per_hour: 2,
        }
    }
}

impl ProposeLimits {
    /// How many more pull requests may be opened now, given `open` schedule pull requests
    /// currently open and `opened_last_hour` opened in the past hour: the smaller headroom of
    /// the two caps, 0 when either is reached.
    pub fn budget(&self, open: u32, opened_last_hour: u32) -> u32 {
        self.max_open_prs
            .saturating_sub(open)
            .min(self.max_prs_per_hour.saturating_sub(opened_last_hour))
    }
}

/// One wave of a [`Schedule`]: the clusters its selector matches (first matching wave wins),
/// upgraded at most `max_concurrent` at a time, then `soak` of waiting before the next wave.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Wave {
    /// Wave name (a DNS-1123 label, unique in the schedule; `remaining` only for a last wave
    /// with an empty selector).
    pub name: String,
    /// Kubernetes label selector over the clusters' labels; absent or `{}` matches every
    /// cluster the schedule selects.
    #[serde(default, deserialize_with = "selector_de")]
    #[schemars(schema_with = "selector_schema")]
    pub selector: Option<LabelSelector>,
    /// Wait after the wave succeeded, humantime (`30m`); absent = 0s.
    #[serde(default, deserialize_with = "scalar_de")]
    #[schemars(schema_with = "duration_schema")]
    pub soak: Option<String>,
    /// Clusters of the wave upgraded at the same time, >= 1 (default 1).
    #[serde(default = "one")]
    pub max_concurrent: u32,
}

impl Wave {
    /// The soak time; `Duration::ZERO` when absent. Errors: [`ScheduleError::Soak`] when
    /// humantime cannot parse it.
    pub fn soak(&self) -> Result<Duration, ScheduleError> {
        match self.soak.as_deref() {
            None => Ok(Duration::ZERO),
            Some(s) => {
                humantime::parse_duration(s.trim()).map_err(|_| ScheduleError::Soak(s.into()))
            }
        }
    }

    /// The wave's selector as a `kube-core` [`Selector`] (empty = everything). Errors:
    /// [`ScheduleError::Selector`] for a selector the Kubernetes API would reject.
    pub fn label_selector(&self) -> Result<Selector, ScheduleError> {
        to_selector(self.selector.as_ref())
    }
}

/// One entry of the repository `tkgops.yaml` `schedules` list: when (cron in a time zone), for
/// how long (the maintenance window), which clusters (selector, waves), to what (target) and
/// how (action). Field values are kept as written; [`validate_schedules`] reports the invalid
/// ones, and the accessors return errors (or fail closed) for them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Schedule {
    /// Schedule name, a DNS-1123 label unique in the file (part of git branch names).
    pub name: String,
    /// When a run fires: a 5-field crontab (minute hour day-of-month month day-of-week, 0 or 7
    /// = Sunday) or the `cron` crate's 6/7-field form (seconds first, optional year, 1 =
    /// Sunday); evaluated in `timezone`.
    pub cron: String,
    /// IANA time zone of the cron fields (`Europe/Berlin`); absent = `UTC`.
    #[serde(default)]
    pub timezone: Option<String>,
    /// Maintenance window length from each fire, humantime (`4h`); required, > 0.
    #[serde(default, deserialize_with = "scalar_de")]
    #[schemars(schema_with = "duration_schema")]
    pub window: Option<String>,
    /// Kubernetes label selector over the clusters' labels; absent or `{}` = every cluster.
    #[serde(default, deserialize_with = "selector_de")]
    #[schemars(schema_with = "selector_schema")]
    pub selector: Option<LabelSelector>,
    /// What to upgrade to (default `latest-patch`).
    #[serde(default)]
    pub target: Target,
    /// What to do (default `propose`).
    #[serde(default)]
    pub action: ScheduleAction,
    /// Waves in order; absent = one wave ([`REMAINING_WAVE`]) of every selected cluster.
    #[serde(default)]
    #[schemars(
        description = "Waves in order; absent = one wave (`remaining`) of every selected cluster."
    )]
    pub waves: Vec<Wave>,
    /// Pull-request caps; only with `action: propose` (absent = the defaults).
    #[serde(default)]
    pub propose: Option<ProposeLimits>,
}

/// Schema of a humantime duration as [`scalar_de`] reads it (`30m`, `4h`; null = absent).
fn duration_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": ["string", "number", "null"],
        "examples": ["30m", "4h"]
    })
}

/// Schema of a Kubernetes `LabelSelector` as [`selector_de`] reads it (unknown keys rejected).
fn selector_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": ["object", "null"],
        "properties": {
            "matchLabels": {
                "description": "Labels a cluster must all carry.",
                "type": ["object", "null"],
                "additionalProperties": {"type": "string"}
            },
            "matchExpressions": {
                "description": "Requirements a cluster's labels must all meet.",
                "type": ["array", "null"],
                "items": {
                    "type": "object",
                    "required": ["key", "operator"],
                    "properties": {
                        "key": {"description": "The label key.", "type": "string"},
                        "operator": {"description": "How the key relates to the values.", "enum": ["In", "NotIn", "Exists", "DoesNotExist"]},
                        "values": {"description": "Values for In and NotIn; empty for Exists and DoesNotExist.", "type": ["array", "null"], "items": {"type": "string"}}
                    },
                    "additionalProperties": false
                }
            }
        },
        "additionalProperties": false
    })
}

/// Reads a YAML scalar (string, number, bool) as text; null as absent.
fn scalar_de<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    match Option::<Value>::deserialize(d)? {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(Value::Bool(b)) => Ok(Some(b.to_string())),
        Some(_) => Err(serde::de::Error::custom(
            "expected a duration like 30m or 4h",
        )),
    }
}

/// Reads a Kubernetes `LabelSelector`, rejecting keys it does not have (k8s-openapi ignores
/// unknown keys; a misspelt `matchLabel` would silently select every cluster).
fn selector_de<'de, D: Deserializer<'de>>(d: D) -> Result<Option<LabelSelector>, D::Error> {
    let v = match Option::<Value>::deserialize(d)? {
        None | Some(Value::Null) => return Ok(None),
        Some(v) => v,
    };
    check_keys(&v, &["matchLabels", "matchExpressions"], "selector")
        .map_err(serde::de::Error::custom)?;
    if let Some(exprs) = v.get("matchExpressions") {
        match exprs {
            Value::Sequence(items) => {
                for item in items {
                    check_keys(
                        item,
                        &["key", "operator", "values"],
                        "matchExpressions entry",
                    )
                    .map_err(serde::de::Error::custom)?;
                }
            }
            Value::Null => {}
            _ => {
                return Err(serde::de::Error::custom(
                    "selector.matchExpressions must be a list",
                ))
            }
        }
    }
    serde_yaml::from_value(v)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

fn check_keys(v: &Value, allowed: &[&str], what: &str) -> Result<(), String> {
    let Value::Mapping(m) = v else {
        return Err(format!("{what} must be a map"));
    };
    for k in m.keys() {
        match k.as_str() {
            Some(k) if allowed.contains(&k) => {}
            _ => {
                return Err(format!(
                    "unknown field {} in {what}, expected one of {}",
                    serde_yaml::to_string(k)
                        .unwrap_or_default()
                        .trim_end()
                        .trim_start_matches("---")
                        .trim(),
                    allowed.join(", ")
                ))
            }
        }
    }
    Ok(())
}

/// Converts a (possibly absent) `LabelSelector` into a `kube-core` [`Selector`], with the
/// Kubernetes API's own requirement checks (apimachinery `ValidateLabelSelectorRequirement`):
/// a non-empty key; operator `In`, `NotIn`, `Exists` or `DoesNotExist`; values non-empty for
/// `In`/`NotIn` and empty for `Exists`/`DoesNotExist`.
fn to_selector(sel: Option<&LabelSelector>) -> Result<Selector, ScheduleError> {
    let Some(sel) = sel else {
        return Ok(Selector::default());
    };
    for r in sel.match_expressions.iter().flatten() {
        let n = r.values.as_ref().map_or(0, Vec::len);
        if r.key.trim().is_empty() {
            return Err(ScheduleError::Selector(
                "matchExpressions key must not be empty".into(),
            ));
        }
        match r.operator.as_str() {
            "In" | "NotIn" if n == 0 => {
                return Err(ScheduleError::Selector(format!(
                    "operator {} on key {} needs at least one value",
                    r.operator, r.key
                )))
            }
            "Exists" | "DoesNotExist" if n > 0 => {
                return Err(ScheduleError::Selector(format!(
                    "operator {} on key {} takes no values",
                    r.operator, r.key
                )))
            }
            "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
            other => {
                return Err(ScheduleError::Selector(format!(
                    "operator {other:?} on key {} is not In, NotIn, Exists or DoesNotExist",
                    r.key
                )))
            }
        }
    }
    Selector::try_from(sel.clone()).map_err(|e| ScheduleError::Selector(e.0))
}

/// Parses a cron expression: 5 fields = crontab form (`0` seconds prefixed, crontab
/// day-of-week numbers renumbered),
/// 6 or 7 fields = the `cron` crate's own form as is. Errors: [`ScheduleError::Cron`].
pub fn parse_cron(expr: &str) -> Result<cron::Schedule, ScheduleError> {
    // The crate's messages repeat the expression with a caret line: keep the last line.
    let err = |reason: String| ScheduleError::Cron {
        expr: expr.to_string(),
        reason: reason
            .lines()
            .map(str::trim)
            .rfind(|l| !l.is_empty())
            .unwrap_or("unparsable")
            .to_string(),
    };
    match expr.split_whitespace().count() {
        5 => cron_of(expr).map_err(err),
        6 | 7 => cron::Schedule::from_str(expr.trim()).map_err(|e| err(e.to_string())),
        n => Err(err(format!(
            "has {n} fields; expected 5 (crontab: minute hour day-of-month month day-of-week) or 6/7 (seconds first, optional year)"
        ))),
    }
}

/// Whether the UTC instant `t`, in `tz`, is the first occurrence of its wall-clock time (a
/// time repeated when the clocks go back fires once, at its first occurrence).
fn first_occurrence(tz: &Tz, t: DateTime<Utc>) -> bool {
    let local = t.with_timezone(tz).naive_local();
    tz.from_local_datetime(&local)
        .earliest()
        .is_some_and(|e| e.with_timezone(&Utc) == t)
}

impl Schedule {
    /// The parsed cron expression ([`parse_cron`]). Errors: [`ScheduleError::Cron`].
    pub fn cron_schedule(&self) -> Result<cron::Schedule, ScheduleError> {
        parse_cron(&self.cron)
    }

    /// The time zone of the cron fields, `UTC` when absent. Errors:
    /// [`ScheduleError::Timezone`] for a name `chrono-tz` does not know (case-sensitive IANA
    /// names).
    pub fn tz(&self) -> Result<Tz, ScheduleError> {
        match self.timezone.as_deref() {
            None => Ok(Tz::UTC),
            Some(n) => Tz::from_str(n.trim()).map_err(|_| ScheduleError::Timezone(n.into())),
        }
    }

    /// The maintenance window length. Errors: [`ScheduleError::Window`] when absent, not a
    /// humantime duration, or zero.
    pub fn window(&self) -> Result<Duration, ScheduleError> {
        let Some(w) = self.window.as_deref() else {
            return Err(ScheduleError::Window(
                "window is required (the maintenance window length, e.g. 4h)".into(),
            ));
        };
        match humantime::parse_duration(w.trim()) {
            Err(_) => Err(ScheduleError::Window(format!(
                "window {w:?} is not a duration (e.g. 4h, 90m)"
            ))),
            Ok(d) if d.is_zero() => Err(ScheduleError::Window(format!(
                "window {w:?} must be longer than 0s"
            ))),
            Ok(d) => Ok(d),
        }
    }

    /// The schedule's cluster selector as a `kube-core` [`Selector`] (empty = every cluster).
    /// Errors: [`ScheduleError::Selector`] for a selector the Kubernetes API would reject.
    pub fn label_selector(&self) -> Result<Selector, ScheduleError> {
        to_selector(self.selector.as_ref())
    }

    /// The pull-request caps: `propose`, else the defaults (10 open, 2 per hour).
    pub fn propose_limits(&self) -> ProposeLimits {
        self.propose.unwrap_or_default()
    }

    /// The first fire strictly after `after` (UTC), the cron fields read in the schedule's time
    /// zone. A local time the clocks skip (spring forward) does not fire that day; one that
    /// occurs twice (fall back) fires once, at its first occurrence. `None` when the cron
    /// expression or time zone is invalid or the schedule never fires again (e.g. a past year).
    pub fn next_fire(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let (cron, tz) = (self.cron_schedule().ok()?, self.tz().ok()?);
        let start = after.with_timezone(&tz);
        cron.after(&start)
            .take(MAX_SCAN)
            .map(|t| t.with_timezone(&Utc))
            .find(|t| *t > after && first_occurrence(&tz, *t))
    }

    /// The latest fire at or before `now` (UTC), same time-zone rules as
    /// [`Schedule::next_fire`]; found by the `cron` crate's backward search (bounded by its
    /// year range and 10,000 candidates). `None` when invalid or it never fired.
    pub fn latest_fire_at_or_before(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.fires_back(now, None, 1).into_iter().next()
    }

    /// Fires at or before `now` and strictly after `floor`, newest first, at most `limit`.
    fn fires_back(
        &self,
        now: DateTime<Utc>,
        floor: Option<DateTime<Utc>>,
        limit: usize,
    ) -> Vec<DateTime<Utc>> {
        let mut out = Vec::new();
        let (Ok(cron), Ok(tz)) = (self.cron_schedule(), self.tz()) else {
            return out;
        };
        // The crate searches strictly before a whole second: start one second after `now`'s.
        let Some(start) = now
            .with_nanosecond(0)
            .and_then(|s| s.checked_add_signed(TimeDelta::seconds(1)))
        else {
            return out;
        };
        for t in cron.after(&start.with_timezone(&tz)).rev().take(MAX_SCAN) {
            let t = t.with_timezone(&Utc);
            if t > now || !first_occurrence(&tz, t) {
                continue;
            }
            if floor.is_some_and(|f| t <= f) || out.len() >= limit {
                break;
            }
            out.push(t);
        }
        out
    }

    /// The end of the maintenance window opened by `fire`: `fire + window`, exclusive. An
    /// invalid window (rejected by validation) counts as zero, so such a window is never open.
    pub fn window_end(&self, fire: DateTime<Utc>) -> DateTime<Utc> {
        let w = self.window().unwrap_or(Duration::ZERO);
        TimeDelta::from_std(w)
            .ok()
            .and_then(|d| fire.checked_add_signed(d))
            .unwrap_or(DateTime::<Utc>::MAX_UTC)
    }

    /// Whether the window opened by `fire` is open at `now`: `fire <= now < fire + window`.
    pub fn window_open(&self, fire: DateTime<Utc>, now: DateTime<Utc>) -> bool {
        fire <= now && now < self.window_end(fire)
    }
}

/// What [`due_fire`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DueFire {
    /// Nothing to do: no fire after the last recorded one, up to now.
    None,
    /// Run now for `fire`: the latest fire at or before now, later than the last recorded one,
    /// and its window is still open.
    Run {
        /// The fire (UTC) whose window is open; record it once the run is started.
        fire: DateTime<Utc>,
    },
    /// Fires after the last recorded one whose windows closed before a run started (the bot
    /// was down or busy), oldest first, at most [`MISSED_CAP`] (the latest ones); record the
    /// last one so they are reported once.
    Missed {
        /// The missed fires (UTC), ascending.
        fires: Vec<DateTime<Utc>>,
    },
}

/// Decides whether `schedule` is due at `now`, given the fire recorded last (`last_recorded`,
/// UTC, `None` on first start).
///
/// - The latest fire `f` with `last_recorded < f <= now` whose window is open at `now` →
///   [`DueFire::Run`]. Earlier unrecorded fires are superseded by that run (not reported).
/// - Fires after `last_recorded` exist but the latest one's window is closed →
///   [`DueFire::Missed`] with those fires (capped at [`MISSED_CAP`], keeping the latest).
/// - Otherwise [`DueFire::None`].
///
/// With `last_recorded == None` only the current window counts: it is taken as
/// `now - window`, so a fresh install reports nothing of the schedule's history as missed (a
/// fire whose window is open still runs). A schedule with an invalid cron, time zone or
/// window is never due (rejected by validation anyway).
pub fn due_fire(
    schedule: &Schedule,
    last_recorded: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> DueFire {
    let floor = match last_recorded {
        Some(l) => l,
        None => match schedule.window() {
            Ok(w) => TimeDelta::from_std(w)
                .ok()
                .and_then(|d| now.checked_sub_signed(d))
                .unwrap_or(DateTime::<Utc>::MIN_UTC),
            Err(_) => return DueFire::None,
        },
    };
    let mut fires = schedule.fires_back(now, Some(floor), MISSED_CAP);
    match fires.first() {
        None => DueFire::None,
        Some(&latest) if schedule.window_open(latest, now) => DueFire::Run { fire: latest },
        Some(_) => {
            fires.reverse();
            DueFire::Missed { fires }
        }
    }
}

/// The TKR a cluster on `current_tkr` upgrades to under `target`, among `offered` (the TKR
/// versions its management cluster offers, any order); versions are
/// `vMAJOR.MINOR.PATCH+vmware.N-tkg.M`, ordered by Kubernetes version, then the vmware and
/// tkg build numbers.
///
/// - [`Target::LatestPatch`]: the newest offered TKR of the same Kubernetes major.minor that
///   is newer than `current_tkr`.
/// - [`Target::LatestMinor`]: the newest offered TKR of the next minor (minor + 1) if any is
///   offered, else the latest patch as above. Never two minors at once: TKG and Cluster API
///   upgrade one Kubernetes minor at a time (docs/tkg2-class-based.md §8; `TKGOPS-DOWNGRADE`
///   refuses a larger jump), so a later scheduled run takes the following minor. A major
///   change is never proposed.
///
/// Never a downgrade. `None` when nothing newer is offered or `current_tkr` does not parse;
/// offered entries that do not parse are ignored. The result is the offered text, trimmed.
pub fn resolve_target(current_tkr: &str, offered: &[String], target: Target) -> Option<String> {
    let cur = parse_tkr(current_tkr)?;
    let newest_of = |major: u64, minor: u64| {
        offered
            .iter()
            .filter_map(|o| parse_tkr(o).map(|v| (v, o)))
            .filter(|(v, _)| v[0] == major && v[1] == minor && *v > cur)
            .max_by(|a, b| a.0.cmp(&b.0))
            .map(|(_, o)| o.trim().to_string())
    };
    match target {
        Target::LatestPatch => newest_of(cur[0], cur[1]),
        Target::LatestMinor => {
            newest_of(cur[0], cur[1].saturating_add(1)).or_else(|| newest_of(cur[0], cur[1]))
        }
    }
}

/// A cluster of the fleet as [`plan_waves`] sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FleetCluster {
    /// Cluster name (the `clusters/<name>/` directory).
    pub name: String,
    /// Its labels (`labels` of its `tkgops.yaml`).
    pub labels: BTreeMap<String, String>,
    /// Its current TKR version.
    pub tkr: String,
    /// The TKR versions its management cluster offers.
    pub offered: Vec<String>,
}

/// One upgrade: `cluster` from TKR `from` to TKR `to`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Bump {
    /// Cluster name.
    pub cluster: String,
    /// Current TKR version.
    pub from: String,
    /// Target TKR version.
    pub to: String,
}

/// A wave of a [`WavePlan`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PlannedWave {
    /// The wave's name ([`REMAINING_WAVE`] for the implicit last wave).
    pub name: String,
    /// Wait after the wave before the next one (serialized as humantime, `30m`).
    #[serde(serialize_with = "crate::serde_duration::serialize")]
    pub soak: Duration,
    /// Upgrades of the wave running at the same time, >= 1.
    pub max_concurrent: u32,
    /// The wave's upgrades, by cluster name.
    pub bumps: Vec<Bump>,
}

/// The result of [`plan_waves`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct WavePlan {
    /// Waves with at least one upgrade, in schedule order (the implicit one last).
    pub waves: Vec<PlannedWave>,
    /// Selected clusters with nothing newer to go to, by name.
    pub up_to_date: Vec<String>,
    /// Clusters the schedule's selector does not select, by name.
    pub not_selected: Vec<String>,
}

/// Plans a scheduled run over `clusters`: each cluster the schedule selects and for which
/// [`resolve_target`] finds a newer TKR becomes a [`Bump`] in the FIRST wave whose selector
/// matches its labels; selected clusters no wave matches go to an implicit last wave
/// [`REMAINING_WAVE`] (soak 0, `maxConcurrent` of the schedule's last wave, or 1 when there are
/// no waves, in which case every selected cluster is in it). Waves without upgrades are left
/// out; bumps and lists are ordered by cluster name.
///
/// Fails closed on an invalid schedule (rejected by validation anyway): an invalid selector
/// selects nothing, an invalid soak counts as 0s and `maxConcurrent: 0` as 1.
pub fn plan_waves(schedule: &Schedule, clusters: &[FleetCluster]) -> WavePlan {
    let selector = schedule.label_selector().ok();
    let waves: Vec<(&Wave, Option<Selector>)> = schedule
        .waves
        .iter()
        .map(|w| (w, w.label_selector().ok()))
        .collect();
    let mut sorted: Vec<&FleetCluster> = clusters.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    let mut buckets: Vec<Vec<Bump>> = vec![Vec::new(); waves.len() + 1];
    let mut plan = WavePlan::default();
    for c in sorted {
        if !selector.as_ref().is_some_and(|s| s.matches(&c.labels)) {
            plan.not_selected.push(c.name.clone());
            continue;
        }
        let Some(to) = resolve_target(&c.tkr, &c.offered, schedule.target) else {
            plan.up_to_date.push(c.name.clone());
            continue;
        };
        let idx = waves
            .iter()
            .position(|(_, s)| s.as_ref().is_some_and(|s| s.matches(&c.labels)))
            .unwrap_or(waves.len());
        if let Some(b) = buckets.get_mut(idx) {
            b.push(Bump {
                cluster: c.name.clone(),
                from: c.tkr.clone(),
                to,
            });
        }
    }
    for (i, bumps) in buckets.into_iter().enumerate() {
        if bumps.is_empty() {
            continue;
        }
        let wave = match waves.get(i) {
            Some((w, _)) => PlannedWave {
                name: w.name.clone(),
                soak: w.soak().unwrap_or(Duration::ZERO),
                max_concurrent: w.max_concurrent.max(1),
                bumps,
            },
            None => PlannedWave {
                name: REMAINING_WAVE.to_string(),
                soak: Duration::ZERO,
                max_concurrent: schedule.waves.last().map_or(1, |w| w.max_concurrent.max(1)),
                bumps,
            },
        };
        plan.waves.push(wave);
    }
    plan
}

/// Rewrites the value of the top-level `tkr:` key of a cluster's `clusters/<name>/tkgops.yaml`
/// text ([`crate::request::ClusterSettings::tkr`]) to `new_tkr`, keeping every other byte:
/// comments, the quoting style (plain, `'single'`, `"double"`), line endings, key order.
///
/// Errors: [`ScheduleError::InvalidTkr`] when `new_tkr` is not a TKR version (so nothing but a
/// version is ever written), [`ScheduleError::NoTkrKey`] / [`ScheduleError::DuplicateTkrKey`]
/// when the text has no / several top-level `tkr:` lines, [`ScheduleError::TkrNotScalar`] for a
/// value that is not a one-line scalar, [`ScheduleError::Rewrite`] when the result does not
/// parse back as the original with only `tkr` changed.
pub fn bump_tkr_line(settings_text: &str, new_tkr: &str) -> Result<String, ScheduleError> {
    if parse_tkr(new_tkr).is_none() || new_tkr.trim() != new_tkr {
        return Err(ScheduleError::InvalidTkr(new_tkr.to_string()));
    }
    let mut found: Option<(usize, usize)> = None; // (byte offset of the line, 0-based index)
    let mut offset = 0;
    for (i, line) in settings_text.split_inclusive('\n').enumerate() {
        if top_level_value(line, "tkr").is_some() {
            if found.is_some() {
                return Err(ScheduleError::DuplicateTkrKey);
            }
            found = Some((offset, i));
        }
        offset += line.len();
    }
    let (start, idx) = found.ok_or(ScheduleError::NoTkrKey)?;
    let line_no = u32::try_from(idx + 1).unwrap_or(u32::MAX);
    let line = settings_text[start..]
        .split_inclusive('\n')
        .next()
        .unwrap_or("");
    let rest = top_level_value(line, "tkr").ok_or(ScheduleError::NoTkrKey)?;
    let key_part = &line[..line.len() - rest.len()];
    let value_start = rest.len() - rest.trim_start_matches([' ', '\t']).len();
    let (ws, v) = rest.split_at(value_start);
    let not_scalar = ScheduleError::TkrNotScalar(line_no);
    let (new_value, tail) = match v.chars().next() {
        Some('"') => {
            let end = closing_double_quote(v).ok_or(not_scalar)?;
            (format!("\"{new_tkr}\""), &v[end + 1..])
        }
        Some('\'') => {
            let end = closing_single_quote(v).ok_or(not_scalar)?;
            (format!("'{new_tkr}'"), &v[end + 1..])
        }
        None | Some('#' | '\r' | '\n' | '|' | '>' | '&' | '*' | '!' | '[' | '{' | '%' | '@') => {
            return Err(not_scalar)
        }
        Some(_) => {
            let end = plain_scalar_end(v);
            (new_tkr.to_string(), &v[end..])
        }
    };
    let mut out = String::with_capacity(settings_text.len() + new_tkr.len());
    out.push_str(&settings_text[..start]);
    out.push_str(key_part);
    out.push_str(ws);
    out.push_str(&new_value);
    out.push_str(tail);
    out.push_str(&settings_text[start + line.len()..]);
    check_rewrite(settings_text, &out, new_tkr)?;
    Ok(out)
}

/// For a line `key: rest` with `key` (plain or quoted) at column 0, the text after the colon.
fn top_level_value<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    for cand in [
        format!("{key}:"),
        format!("\"{key}\":"),
        format!("'{key}':"),
    ] {
        if let Some(rest) = line.strip_prefix(cand.as_str()) {
            if rest.is_empty() || rest.starts_with([' ', '\t', '\r', '\n']) {
                return Some(rest);
            }
        }
    }
    None
}

/// Byte index of the closing `"` of the double-quoted scalar starting at `v[0]`, on this line.
fn closing_double_quote(v: &str) -> Option<usize> {
    let mut escaped = false;
    for (i, c) in v.char_indices().skip(1) {
        match c {
            '\n' | '\r' => return None,
            '\\' if !escaped => escaped = true,
            '"' if !escaped => return Some(i),
            _ => escaped = false,
        }
    }
    None
}

/// Byte index of the closing `'` of the single-quoted scalar starting at `v[0]` (`''` is an
/// escaped quote), on this line.
fn closing_single_quote(v: &str) -> Option<usize> {
    let b = v.as_bytes();
    let mut i = 1;
    while i < b.len() {
        match b[i] {
            b'\n' | b'\r' => return None,
            b'\'' if b.get(i + 1) == Some(&b'\'') => i += 2,
            b'\'' => return Some(i),
            _ => i += 1,
        }
    }
    None
}

/// Byte length of the plain scalar at the start of `v`: up to a ` #` comment or the line
/// end, trailing blanks excluded.
fn plain_scalar_end(v: &str) -> usize {
    let line_end = v.find(['\r', '\n']).unwrap_or(v.len());
    let mut end = line_end;
    let b = v.as_bytes();
    for i in 1..line_end {
        if b[i] == b'#' && (b[i - 1] == b' ' || b[i - 1] == b'\t') {
            end = i;
            break;
        }
    }
    v[..end].trim_end_matches([' ', '\t']).len()
}

/// Checks that `new` parses as `old` with the top-level `tkr` set to `new_tkr`.
fn check_rewrite(old: &str, new: &str, new_tkr: &str) -> Result<(), ScheduleError> {
    let mut expected: Value =
        serde_yaml::from_str(old).map_err(|e| ScheduleError::Rewrite(e.to_string()))?;
    let got: Value =
        serde_yaml::from_str(new).map_err(|e| ScheduleError::Rewrite(e.to_string()))?;
    match &mut expected {
        Value::Mapping(m) if m.contains_key("tkr") => {
            m.insert(Value::from("tkr"), Value::from(new_tkr));
        }
        _ => return Err(ScheduleError::NoTkrKey),
    }
    if got == expected {
        Ok(())
    } else {
        Err(ScheduleError::Rewrite(
            "another value changed or tkr did not".into(),
        ))
    }
}

/// Makes `s` one git ref component (`git check-ref-format`): characters outside
/// `A-Z a-z 0-9 . _ -` become `-` (so `+` → `-`, `/` → `-`), `..` collapses to `.`, leading
/// and trailing `.`/`-` and a trailing `.lock` are dropped, at most 100 characters; empty
/// becomes `unnamed`.
fn ref_component(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        let c = if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
            c
        } else {
            '-'
        };
        if c == '.' && out.ends_with('.') {
            continue;
        }
        out.push(c);
    }
    let mut out = out.trim_matches(['.', '-']).to_string();
    out.truncate(100);
    loop {
        let trimmed = out.trim_end_matches(['.', '-']);
        let trimmed = trimmed.strip_suffix(".lock").unwrap_or(trimmed);
        if trimmed.len() == out.len() {
            break;
        }
        out = trimmed.to_string();
    }
    if out.is_empty() {
        "unnamed".to_string()
    } else {
        out
    }
}

/// The branch of a schedule's bump pull request:
/// `tkgops/schedule/<schedule>/<group_key>`, each part made a git-ref-safe component (`+` and
/// other characters outside `A-Za-z0-9._-` → `-`, no `..`, no leading/trailing `.`, no
/// `.lock` suffix). Deterministic, so a later run finds (and updates) the same branch; e.g.
/// `("weekly-patch", "v1.24.9+vmware.1-tkg.1")` →
/// `tkgops/schedule/weekly-patch/v1.24.9-vmware.1-tkg.1`.
pub fn propose_branch(schedule: &str, group_key: &str) -> String {
    format!(
        "tkgops/schedule/{}/{}",
        ref_component(schedule),
        ref_component(group_key)
    )
}

/// One bump pull request of [`group_bumps`]: every cluster going to the same TKR.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BumpGroup {
    /// The target TKR version.
    pub to: String,
    /// The clusters' bumps, by cluster name.
    pub bumps: Vec<Bump>,
    /// The pull request's branch ([`propose_branch`] of the schedule and `to`).
    pub branch: String,
}

/// Groups `bumps` of schedule `schedule` into one pull request per target TKR (Renovate's
/// grouped PRs), ordered by target version (TKR order, unparsable ones last by text), bumps by
/// cluster name, each with its [`propose_branch`].
pub fn group_bumps(schedule: &str, bumps: &[Bump]) -> Vec<BumpGroup> {
    let mut by_to: BTreeMap<&str, Vec<Bump>> = BTreeMap::new();
    for b in bumps {
        by_to.entry(b.to.as_str()).or_default().push(b.clone());
    }
    let mut groups: Vec<BumpGroup> = by_to
        .into_iter()
        .map(|(to, mut bumps)| {
            bumps.sort();
            BumpGroup {
                to: to.to_string(),
                bumps,
                branch: propose_branch(schedule, to),
            }
        })
        .collect();
    groups.sort_by(|a, b| {
        let key = |g: &BumpGroup| (parse_tkr(&g.to).is_none(), parse_tkr(&g.to));
        key(a).cmp(&key(b)).then_with(|| a.to.cmp(&b.to))
    });
    groups
}

// ---- validation -----------------------------------------------------------------------------

/// A list item's lines in the YAML text: `[start, end)` (0-based) and the indentation of its
/// keys.
#[derive(Clone, Copy, Debug)]
struct Span {
    start: usize,
    end: usize,
    key_indent: usize,
}

fn indent(l: &str) -> usize {
    l.len() - l.trim_start_matches(' ').len()
}

fn blank_or_comment(l: &str) -> bool {
    let t = l.trim();
    t.is_empty() || t.starts_with('#') || t == "---"
}

fn starts_with_key(t: &str, key: &str) -> bool {
    [
        format!("{key}:"),
        format!("\"{key}\":"),
        format!("'{key}':"),
    ]
    .iter()
    .any(|c| {
        t.strip_prefix(c.as_str())
            .is_some_and(|r| r.is_empty() || r.starts_with([' ', '\t', '\r']))
    })
}

/// The block-sequence items of the list whose key is on line `key_idx`, up to line `end`;
/// empty for a flow list (`[...]`) or no items.
fn list_items(lines: &[&str], key_idx: usize, end: usize) -> Vec<Span> {
    let mut spans: Vec<Span> = Vec::new();
    let Some(key_line) = lines.get(key_idx) else {
        return spans;
    };
    let after = key_line.split_once(':').map_or("", |(_, r)| r).trim();
    if !(after.is_empty() || after.starts_with('#')) {
        return spans;
    }
    let mut item_indent: Option<usize> = None;
    let mut pending_key_indent = false;
    let mut last = key_idx + 1;
    for (i, l) in lines.iter().enumerate().take(end).skip(key_idx + 1) {
        if blank_or_comment(l) {
            continue;
        }
        let ind = indent(l);
        let t = l.trim_start_matches(' ');
        if pending_key_indent {
            if let Some(s) = spans.last_mut() {
                s.key_indent = ind;
            }
            pending_key_indent = false;
        }
        let is_item = t == "-" || t.starts_with("- ") || t.starts_with("-\r");
        match item_indent {
            None if is_item => item_indent = Some(ind),
            None => break,
            Some(ii) if ind < ii || (ind == ii && !is_item) => break,
            Some(_) => {}
        }
        if Some(ind) == item_indent && is_item {
            if let Some(s) = spans.last_mut() {
                s.end = i;
            }
            let after_dash = &t[1..];
            let content = after_dash.trim_start_matches(' ');
            let key_indent = ind + 1 + (after_dash.len() - content.len());
            pending_key_indent = content.trim().is_empty();
            spans.push(Span {
                start: i,
                end: end.min(lines.len()),
                key_indent,
            });
        }
        last = i + 1;
    }
    if let Some(s) = spans.last_mut() {
        s.end = last;
    }
    spans
}

/// Line (0-based) of `key` among the keys of the item `span` (at its key indentation).
fn key_in(lines: &[&str], span: Span, key: &str) -> Option<usize> {
    (span.start..span.end.min(lines.len())).find(|&i| {
        let l = lines[i];
        if i == span.start {
            let t = l.trim_start_matches(' ');
            let t = t.strip_prefix('-').unwrap_or(t).trim_start_matches(' ');
            starts_with_key(t, key)
        } else {
            indent(l) == span.key_indent && starts_with_key(l.trim_start_matches(' '), key)
        }
    })
}

/// Line (0-based) of the first `key:` anywhere in `span` (nested keys included, also inside a
/// flow map such as `propose: {maxOpenPRs: 0}`).
fn key_anywhere(lines: &[&str], span: Span, key: &str) -> Option<usize> {
    (span.start..span.end.min(lines.len())).find(|&i| {
        let l = lines[i];
        l.match_indices(key).any(|(j, _)| {
            let before = l[..j].chars().next_back();
            before.is_none_or(|c| matches!(c, ' ' | '{' | ',' | '-'))
                && starts_with_key(&l[j..], key)
        })
    })
}

/// Where the schedules and their waves are in the text.
struct Locator<'a> {
    lines: Vec<&'a str>,
    schedules_key: Option<usize>,
    schedules: Vec<Option<Span>>,
}

impl<'a> Locator<'a> {
    fn new(text: &'a str, count: usize) -> Self {
        let lines: Vec<&str> = text.lines().collect();
        let schedules_key = lines.iter().position(|l| starts_with_key(l, "schedules"));
        let spans = schedules_key
            .map(|k| list_items(&lines, k, lines.len()))
            .unwrap_or_default();
        let schedules = if spans.len() == count {
            spans.into_iter().map(Some).collect()
        } else {
            vec![None; count]
        };
        Locator {
            lines,
            schedules_key,
            schedules,
        }
    }

    fn span(&self, i: usize) -> Option<Span> {
        self.schedules.get(i).copied().flatten()
    }

    /// 1-based line of schedule `i`'s `key` (None = the item's first line), else the item,
    /// else `schedules:`.
    fn schedule_line(&self, i: usize, key: Option<&str>) -> Option<u32> {
        let span = self.span(i);
        let idx = span
            .and_then(|s| key.and_then(|k| key_in(&self.lines, s, k)))
            .or(span.map(|s| s.start))
            .or(self.schedules_key);
        idx.and_then(|i| u32::try_from(i + 1).ok())
    }

    /// 1-based line of the nested key `key` inside schedule `i`, else the schedule's line.
    fn nested_line(&self, i: usize, key: &str) -> Option<u32> {
        self.span(i)
            .and_then(|s| key_anywhere(&self.lines, s, key))
            .and_then(|l| u32::try_from(l + 1).ok())
            .or_else(|| self.schedule_line(i, None))
    }

    /// 1-based line of wave `j`'s `key` (None = the wave's first line) in schedule `i`, else
    /// the schedule's `waves:`, else the schedule.
    fn wave_line(&self, i: usize, count: usize, j: usize, key: Option<&str>) -> Option<u32> {
        let Some(span) = self.span(i) else {
            return self.schedule_line(i, None);
        };
        let Some(waves_key) = key_in(&self.lines, span, "waves") else {
            return self.schedule_line(i, None);
        };
        let waves = list_items(&self.lines, waves_key, span.end);
        let wave = if waves.len() == count {
            waves.get(j).copied()
        } else {
            None
        };
        let idx = wave
            .and_then(|w| key.and_then(|k| key_in(&self.lines, w, k)))
            .or(wave.map(|w| w.start))
            .unwrap_or(waves_key);
        u32::try_from(idx + 1).ok()
    }
}

fn is_empty_selector(s: Option<&LabelSelector>) -> bool {
    s.is_none_or(|s| {
        s.match_labels.as_ref().is_none_or(|m| m.is_empty())
            && s.match_expressions.as_ref().is_none_or(|e| e.is_empty())
    })
}

/// Validates `schedules` as parsed from the repository `tkgops.yaml` `text` (`path` for the
/// findings). Returns one [`RULE`] finding (severity error) per problem, at the line of the
/// offending key when the list is in block style (else the schedule's or the `schedules:`
/// line):
///
/// - `name` not a DNS-1123 label (it becomes part of git branch names), or listed twice;
/// - `cron` neither a 5-field crontab nor a 6/7-field `cron` crate expression ([`parse_cron`]);
/// - `timezone` not an IANA name; `window` missing, unparsable or zero;
/// - a selector (schedule's or a wave's) with an unknown operator or wrong values;
/// - `propose` with `action: apply`; `maxOpenPRs` or `maxPRsPerHour` of 0;
/// - a wave name not a DNS-1123 label, listed twice in the schedule, or `remaining` (reserved
///   for the implicit last wave, allowed only for a last wave with an empty selector);
///   `maxConcurrent: 0`; an unparsable `soak`.
pub fn validate_schedules(path: &str, text: &str, schedules: &[Schedule]) -> Vec<Finding> {
    let loc = Locator::new(text, schedules.len());
    let mut out = Vec::new();
    let mut push = |line: Option<u32>, msg: String| {
        out.push(Finding::new(path, line, RULE, Severity::Error, msg));
    };
    let mut names = BTreeSet::new();
    for (i, s) in schedules.iter().enumerate() {
        let label = if s.name.is_empty() {
            format!("schedules[{i}]")
        } else {
            format!("schedule {}", s.name)
        };
        if !is_dns1123_label(&s.name) {
            push(
                loc.schedule_line(i, Some("name")),
                format!(
                    "{label}: name {:?} must be a DNS-1123 label (a-z, 0-9 and '-', at most 63 characters): it is part of git branch names",
                    s.name
                ),
            );
        } else if !names.insert(s.name.as_str()) {
            push(
                loc.schedule_line(i, Some("name")),
                format!("schedule {} is listed twice", s.name),
            );
        }
        if let Err(e) = s.cron_schedule() {
            push(loc.schedule_line(i, Some("cron")), format!("{label}: {e}"));
        }
        if let Err(e) = s.tz() {
            push(
                loc.schedule_line(i, Some("timezone")),
                format!("{label}: {e}"),
            );
        }
        if let Err(e) = s.window() {
            let key = s.window.is_some().then_some("window");
            push(loc.schedule_line(i, key), format!("{label}: {e}"));
        }
        if let Err(e) = s.label_selector() {
            push(
                loc.schedule_line(i, Some("selector")),
                format!("{label}: {e}"),
            );
        }
        if let Some(p) = &s.propose {
            if s.action == ScheduleAction::Apply {
                push(
                    loc.schedule_line(i, Some("propose")),
                    format!("{label}: propose limits are only meaningful with action: propose"),
                );
            }
            if p.max_open_prs == 0 {
                push(
                    loc.nested_line(i, "maxOpenPRs"),
                    format!("{label}: propose.maxOpenPRs must be at least 1"),
                );
            }
            if p.max_prs_per_hour == 0 {
                push(
                    loc.nested_line(i, "maxPRsPerHour"),
                    format!("{label}: propose.maxPRsPerHour must be at least 1"),
                );
            }
        }
        let mut wave_names = BTreeSet::new();
        let count = s.waves.len();
        for (j, w) in s.waves.iter().enumerate() {
            let at = |key: Option<&str>| loc.wave_line(i, count, j, key);
            let wl = if w.name.is_empty() {
                format!("{label} waves[{j}]")
            } else {
                format!("{label} wave {}", w.name)
            };
            if !is_dns1123_label(&w.name) {
                push(
                    at(Some("name")),
                    format!(
                        "{wl}: name {:?} must be a DNS-1123 label (a-z, 0-9 and '-', at most 63 characters)",
                        w.name
                    ),
                );
            } else if !wave_names.insert(w.name.as_str()) {
                push(
                    at(Some("name")),
                    format!("{label}: wave {} is listed twice", w.name),
                );
            } else if w.name == REMAINING_WAVE
                && !(j + 1 == count && is_empty_selector(w.selector.as_ref()))
            {
                push(
                    at(Some("name")),
                    format!(
                        "{wl}: the name {REMAINING_WAVE} is reserved for the implicit last wave (allowed only for a last wave with an empty selector)"
                    ),
                );
            }
            if w.max_concurrent == 0 {
                push(
                    at(Some("maxConcurrent")),
                    format!("{wl}: maxConcurrent must be at least 1"),
                );
            }
            if let Err(e) = w.soak() {
                push(at(Some("soak")), format!("{wl}: {e}"));
            }
            if let Err(e) = w.label_selector() {
                push(at(Some("selector")), format!("{wl}: {e}"));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .map(|d| d.with_timezone(&Utc))
            .unwrap_or(DateTime::<Utc>::MIN_UTC)
    }

    fn sched(yaml: &str) -> Schedule {
        serde_yaml::from_str(yaml).expect("schedule parses")
    }

    fn weekly() -> Schedule {
        sched("{name: weekly, cron: '0 2 * * SAT', timezone: Europe/Berlin, window: 4h}")
    }

    // ---- parsing ---------------------------------------------------------------------------

    #[test]
    fn parses_the_documented_shape_with_defaults() {
        let s = sched(
            r#"
name: weekly-patch
cron: "0 2 * * SAT"
timezone: Europe/Berlin
window: 4h
selector:
  matchLabels: {env: prod}
target: latest-minor
action: apply
waves:
  - name: canary
    selector: {matchLabels: {tier: canary}}
    soak: 30m
    maxConcurrent: 1
  - name: rest
    selector: {}
    maxConcurrent: 5
propose:
  maxOpenPRs: 5
"#,
        );
        assert_eq!(s.target, Target::LatestMinor);
        assert_eq!(s.action, ScheduleAction::Apply);
        assert_eq!(s.window(), Ok(Duration::from_secs(4 * 3600)));
        assert_eq!(s.tz(), Ok(chrono_tz::Europe::Berlin));
        assert_eq!(s.waves.len(), 2);
        assert_eq!(s.waves[0].soak(), Ok(Duration::from_secs(1800)));
        assert_eq!(s.waves[1].soak(), Ok(Duration::ZERO));
        assert_eq!(s.waves[1].max_concurrent, 5);
        assert_eq!(
            s.propose_limits(),
            ProposeLimits {
                max_open_prs: 5,
                max_prs_per_hour: 2
            }
        );
        let m = s.selector.and_then(|s| s.match_labels).unwrap_or_default();
        assert_eq!(m.get("env").map(String::as_str), Some("prod"));

        let d = sched("{name: d, cron: '0 2 * * *', window: 1h}");
        assert_eq!(d.target, Target::LatestPatch);
        assert_eq!(d.action, ScheduleAction::Propose);
        assert_eq!(d.tz(), Ok(Tz::UTC));
        assert_eq!(d.propose_limits(), ProposeLimits::default());
        assert_eq!(d.propose_limits().max_open_prs, 10);
        assert!(d.waves.is_empty() && d.selector.is_none());
        // Numbers are read as text, so `window: 0` is a schedule finding, not a type error.
        let zero = sched("{name: z, cron: '0 2 * * *', window: 0}");
        assert_eq!(zero.window.as_deref(), Some("0"));
        assert!(zero.window().is_err());
    }

    #[test]
    fn unknown_keys_are_rejected_also_inside_selectors() {
        for bad in [
            "{name: a, cron: '0 2 * * *', window: 1h, windw: 2h}",
            "{name: a, cron: '0 2 * * *', window: 1h, selector: {matchLabel: {env: prod}}}",
            "{name: a, cron: '0 2 * * *', window: 1h, selector: {matchExpressions: [{key: a, operator: In, value: [b]}]}}",
            "{name: a, cron: '0 2 * * *', window: 1h, waves: [{name: w, maxConcurent: 2}]}",
            "{name: a, cron: '0 2 * * *', window: 1h, target: latest}",
            "{name: a, cron: '0 2 * * *', window: 1h, propose: {maxOpenPrs: 2}}",
        ] {
            let e = serde_yaml::from_str::<Schedule>(bad).err().map(|e| e.to_string());
            assert!(e.as_deref().is_some_and(|e| e.contains("unknown")), "{bad}: {e:?}");
        }
    }

    #[test]
    fn budget_takes_the_smaller_headroom() {
        let l = ProposeLimits {
            max_open_prs: 5,
            max_prs_per_hour: 2,
        };
        assert_eq!(l.budget(0, 0), 2);
        assert_eq!(l.budget(4, 0), 1);
        assert_eq!(l.budget(0, 2), 0);
        assert_eq!(l.budget(7, 0), 0);
    }

    // ---- fire times ------------------------------------------------------------------------

    #[test]
    fn berlin_saturday_2am_is_01z_in_winter_and_00z_in_summer() {
        let s = weekly();
        assert_eq!(
            s.next_fire(t("2024-01-01T00:00:00Z")),
            Some(t("2024-01-06T01:00:00Z"))
        );
        assert_eq!(
            s.next_fire(t("2024-07-01T00:00:00Z")),
            Some(t("2024-07-06T00:00:00Z"))
        );
        // Strictly after: a fire exactly at `after` is not returned.
        assert_eq!(
            s.next_fire(t("2024-01-06T01:00:00Z")),
            Some(t("2024-01-13T01:00:00Z"))
        );
        // UTC default.
        let utc = sched("{name: u, cron: '0 2 * * SAT', window: 1h}");
        assert_eq!(
            utc.next_fire(t("2024-01-01T00:00:00Z")),
            Some(t("2024-01-06T02:00:00Z"))
        );
    }

    #[test]
    fn five_and_six_field_forms_fire_alike() {
        let five = weekly();
        let mut six = weekly();
        six.cron = "0 0 2 * * Sat".into();
        let mut seven = weekly();
        seven.cron = "0 0 2 * * 7 *".into(); // the cron crate's 7 = Saturday
        let mut numeric = weekly();
        numeric.cron = "0 2 * * 6".into(); // crontab's 6 = Saturday
        let mut at = t("2024-02-20T12:00:00Z");
        for _ in 0..40 {
            let f = five.next_fire(at);
            assert!(f.is_some());
            assert_eq!(six.next_fire(at), f);
            assert_eq!(seven.next_fire(at), f);
            assert_eq!(numeric.next_fire(at), f);
            at = f.unwrap_or(at);
        }
        // 40 weeks on from 2024-02-20 crosses both DST changes and ends in winter time.
        assert_eq!(at, t("2024-11-23T01:00:00Z"));
    }

    #[test]
    fn latest_fire_includes_now_and_searches_back() {
        let s = weekly();
        assert_eq!(
            s.latest_fire_at_or_before(t("2024-01-06T01:00:00Z")),
            Some(t("2024-01-06T01:00:00Z"))
        );
        assert_eq!(
            s.latest_fire_at_or_before(t("2024-01-06T00:59:59.999Z")),
            Some(t("2023-12-30T01:00:00Z"))
        );
        assert_eq!(
            s.latest_fire_at_or_before(t("2024-07-10T12:00:00.5Z")),
            Some(t("2024-07-06T00:00:00Z"))
        );
        // A yearly schedule reaches back a year.
        let y = sched("{name: y, cron: '0 3 1 1 *', window: 1h}");
        assert_eq!(
            y.latest_fire_at_or_before(t("2024-12-31T00:00:00Z")),
            Some(t("2024-01-01T03:00:00Z"))
        );
        // A schedule that only fired before 2020 (7-field form with a year).
        let old = sched("{name: o, cron: '0 0 3 1 1 * 2019', window: 1h}");
        assert_eq!(
            old.latest_fire_at_or_before(t("2024-12-31T00:00:00Z")),
            Some(t("2019-01-01T03:00:00Z"))
        );
        assert_eq!(old.next_fire(t("2024-12-31T00:00:00Z")), None);
    }

    #[test]
    fn dst_gaps_skip_and_repeated_hours_fire_once() {
        let s = sched("{name: d, cron: '30 2 * * *', timezone: Europe/Berlin, window: 1h}");
        // 2024-03-31 02:30 does not exist in Berlin: the next fire is on April 1st (CEST).
        assert_eq!(
            s.next_fire(t("2024-03-30T02:00:00Z")),
            Some(t("2024-04-01T00:30:00Z"))
        );
        // 2024-10-27 02:30 happens twice (00:30Z CEST and 01:30Z CET): fires once, the first.
        assert_eq!(
            s.next_fire(t("2024-10-26T12:00:00Z")),
            Some(t("2024-10-27T00:30:00Z"))
        );
        assert_eq!(
            s.next_fire(t("2024-10-27T00:30:00Z")),
            Some(t("2024-10-28T01:30:00Z"))
        );
        assert_eq!(
            s.latest_fire_at_or_before(t("2024-10-27T02:00:00Z")),
            Some(t("2024-10-27T00:30:00Z"))
        );
        // From inside the first occurrence of the repeated hour the later one is not "before".
        assert_eq!(
            s.latest_fire_at_or_before(t("2024-10-27T00:45:00Z")),
            Some(t("2024-10-27T00:30:00Z"))
        );
    }

    #[test]
    fn window_is_half_open() {
        let s = weekly();
        let fire = t("2024-01-06T01:00:00Z");
        assert_eq!(s.window_end(fire), t("2024-01-06T05:00:00Z"));
        assert!(!s.window_open(fire, t("2024-01-06T00:59:59Z")));
        assert!(s.window_open(fire, fire));
        assert!(s.window_open(fire, t("2024-01-06T04:59:59.999Z")));
        assert!(!s.window_open(fire, t("2024-01-06T05:00:00Z")));
        // An invalid window is never open.
        let mut bad = weekly();
        bad.window = Some("soon".into());
        assert_eq!(bad.window_end(fire), fire);
        assert!(!bad.window_open(fire, fire));
    }

    #[test]
    fn invalid_cron_or_timezone_never_fires() {
        let mut s = weekly();
        s.timezone = Some("Europe/Berlln".into());
        assert_eq!(s.next_fire(t("2024-01-01T00:00:00Z")), None);
        assert_eq!(s.latest_fire_at_or_before(t("2024-01-30T00:00:00Z")), None);
        let mut c = weekly();
        c.cron = "0 2 * *".into();
        assert_eq!(c.next_fire(t("2024-01-01T00:00:00Z")), None);
        assert_eq!(due_fire(&c, None, t("2024-01-06T01:30:00Z")), DueFire::None);
    }

    // ---- due fires -------------------------------------------------------------------------

    #[test]
    fn due_runs_inside_the_window_once() {
        let s = weekly();
        let fire = t("2024-01-06T01:00:00Z");
        assert_eq!(
            due_fire(
                &s,
                Some(t("2023-12-30T01:00:00Z")),
                t("2024-01-06T02:00:00Z")
            ),
            DueFire::Run { fire }
        );
        // Recorded: nothing more until the next fire.
        assert_eq!(
            due_fire(&s, Some(fire), t("2024-01-06T02:00:00Z")),
            DueFire::None
        );
        assert_eq!(
            due_fire(&s, Some(fire), t("2024-01-13T00:59:59Z")),
            DueFire::None
        );
        // Exactly at the fire it is due; exactly at the window end it is missed.
        assert_eq!(
            due_fire(&s, Some(t("2023-12-30T01:00:00Z")), fire),
            DueFire::Run { fire }
        );
        assert_eq!(
            due_fire(
                &s,
                Some(t("2023-12-30T01:00:00Z")),
                t("2024-01-06T05:00:00Z")
            ),
            DueFire::Missed { fires: vec![fire] }
        );
    }

    #[test]
    fn due_reports_missed_windows_capped_at_the_latest_ten() {
        let s = weekly();
        // Down from 2023-12-30 to a Wednesday 12 weeks later: 12 windows closed.
        let missed = due_fire(
            &s,
            Some(t("2023-12-30T01:00:00Z")),
            t("2024-03-27T12:00:00Z"),
        );
        let DueFire::Missed { fires } = missed else {
            panic!("expected missed, got {missed:?}");
        };
        assert_eq!(fires.len(), MISSED_CAP);
        assert_eq!(fires.first(), Some(&t("2024-01-20T01:00:00Z")));
        assert_eq!(fires.last(), Some(&t("2024-03-23T01:00:00Z")));
        assert!(fires.windows(2).all(|w| w[0] < w[1]));
        // A closed earlier window is superseded when the latest window is open.
        assert_eq!(
            due_fire(
                &s,
                Some(t("2023-12-30T01:00:00Z")),
                t("2024-03-30T03:00:00Z")
            ),
            DueFire::Run {
                fire: t("2024-03-30T01:00:00Z")
            }
        );
    }

    #[test]
    fn first_start_counts_only_the_current_window() {
        let s = weekly();
        assert_eq!(
            due_fire(&s, None, t("2024-01-06T04:59:00Z")),
            DueFire::Run {
                fire: t("2024-01-06T01:00:00Z")
            }
        );
        assert_eq!(due_fire(&s, None, t("2024-01-06T05:00:00Z")), DueFire::None);
        assert_eq!(due_fire(&s, None, t("2024-01-10T00:00:00Z")), DueFire::None);
        // A recorded fire in the future (clock skew) is nothing due.
        assert_eq!(
            due_fire(
                &s,
                Some(t("2024-02-01T00:00:00Z")),
                t("2024-01-06T02:00:00Z")
            ),
            DueFire::None
        );
    }

    // ---- targets ---------------------------------------------------------------------------

    fn offered() -> Vec<String> {
        [
            "v1.24.9+vmware.1-tkg.1",
            "v1.24.11+vmware.1-tkg.1",
            "v1.24.11+vmware.1-tkg.2",
            "v1.25.7+vmware.2-tkg.1",
            "v1.25.13+vmware.1-tkg.1",
            "v1.26.8+vmware.1-tkg.1",
            "v1.23.17+vmware.1-tkg.1",
            "not-a-tkr",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    #[test]
    fn latest_patch_stays_in_the_minor_and_orders_by_build_numbers() {
        let o = offered();
        assert_eq!(
            resolve_target("v1.24.9+vmware.1-tkg.1", &o, Target::LatestPatch).as_deref(),
            Some("v1.24.11+vmware.1-tkg.2")
        );
        assert_eq!(
            resolve_target("v1.24.11+vmware.1-tkg.2", &o, Target::LatestPatch),
            None
        );
        // Newer than anything offered: no downgrade.
        assert_eq!(
            resolve_target("v1.24.20+vmware.1-tkg.1", &o, Target::LatestPatch),
            None
        );
        assert_eq!(resolve_target("garbage", &o, Target::LatestPatch), None);
    }

    #[test]
    fn latest_minor_takes_one_minor_never_two() {
        let o = offered();
        assert_eq!(
            resolve_target("v1.24.9+vmware.1-tkg.1", &o, Target::LatestMinor).as_deref(),
            Some("v1.25.13+vmware.1-tkg.1")
        );
        assert_eq!(
            resolve_target("v1.25.7+vmware.2-tkg.1", &o, Target::LatestMinor).as_deref(),
            Some("v1.26.8+vmware.1-tkg.1")
        );
        // v1.22 → only v1.23 (v1.24 … v1.26 are offered but two or more minors away).
        assert_eq!(
            resolve_target("v1.22.17+vmware.1-tkg.1", &o, Target::LatestMinor).as_deref(),
            Some("v1.23.17+vmware.1-tkg.1")
        );
        // No next minor offered: falls back to the latest patch, then to nothing.
        let patch_only: Vec<String> = vec![
            "v1.26.8+vmware.1-tkg.1".into(),
            "v1.26.9+vmware.1-tkg.1".into(),
            "v1.28.1+vmware.1-tkg.1".into(),
        ];
        assert_eq!(
            resolve_target("v1.26.8+vmware.1-tkg.1", &patch_only, Target::LatestMinor).as_deref(),
            Some("v1.26.9+vmware.1-tkg.1")
        );
        assert_eq!(
            resolve_target("v1.26.9+vmware.1-tkg.1", &patch_only, Target::LatestMinor),
            None
        );
    }

    // ---- waves -----------------------------------------------------------------------------

    fn cluster(name: &str, labels: &[(&str, &str)], tkr: &str) -> FleetCluster {
        FleetCluster {
            name: name.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            tkr: tkr.into(),
            offered: offered(),
        }
    }

    fn bump(c: &str, from: &str, to: &str) -> Bump {
        Bump {
            cluster: c.into(),
            from: from.into(),
            to: to.into(),
        }
    }

    const OLD: &str = "v1.24.9+vmware.1-tkg.1";
    const NEW: &str = "v1.24.11+vmware.1-tkg.2";

    #[test]
    fn first_matching_wave_wins_and_the_rest_fall_through() {
        let s = sched(
            r#"
name: w
cron: "0 2 * * SAT"
window: 4h
selector:
  matchExpressions:
    - {key: env, operator: In, values: [prod, staging]}
waves:
  - name: canary
    selector: {matchLabels: {tier: canary}}
    soak: 30m
  - name: eu
    selector: {matchLabels: {region: eu}}
    maxConcurrent: 3
"#,
        );
        let clusters = vec![
            cluster(
                "z-eu-canary",
                &[("env", "prod"), ("tier", "canary"), ("region", "eu")],
                OLD,
            ),
            cluster("b-eu", &[("env", "prod"), ("region", "eu")], OLD),
            cluster("a-eu", &[("env", "staging"), ("region", "eu")], OLD),
            cluster("us", &[("env", "prod"), ("region", "us")], OLD),
            cluster("dev", &[("env", "dev"), ("tier", "canary")], OLD),
            cluster("current", &[("env", "prod")], NEW),
        ];
        let p = plan_waves(&s, &clusters);
        assert_eq!(
            p.waves,
            vec![
                PlannedWave {
                    name: "canary".into(),
                    soak: Duration::from_secs(1800),
                    max_concurrent: 1,
                    bumps: vec![bump("z-eu-canary", OLD, NEW)],
                },
                PlannedWave {
                    name: "eu".into(),
                    soak: Duration::ZERO,
                    max_concurrent: 3,
                    bumps: vec![bump("a-eu", OLD, NEW), bump("b-eu", OLD, NEW)],
                },
                PlannedWave {
                    name: REMAINING_WAVE.into(),
                    soak: Duration::ZERO,
                    max_concurrent: 3,
                    bumps: vec![bump("us", OLD, NEW)],
                },
            ]
        );
        assert_eq!(p.up_to_date, vec!["current".to_string()]);
        assert_eq!(p.not_selected, vec!["dev".to_string()]);
    }

    #[test]
    fn no_waves_is_one_wave_of_everything_and_empty_waves_are_dropped() {
        let s = sched("{name: w, cron: '0 2 * * *', window: 1h, target: latest-minor}");
        let p = plan_waves(
            &s,
            &[cluster("b", &[], OLD), cluster("a", &[("x", "y")], NEW)],
        );
        assert_eq!(
            p.waves,
            vec![PlannedWave {
                name: REMAINING_WAVE.into(),
                soak: Duration::ZERO,
                max_concurrent: 1,
                bumps: vec![
                    bump("a", NEW, "v1.25.13+vmware.1-tkg.1"),
                    bump("b", OLD, "v1.25.13+vmware.1-tkg.1"),
                ],
            }]
        );
        let waved = sched(
            "{name: w, cron: '0 2 * * *', window: 1h, waves: [{name: canary, selector: {matchLabels: {tier: canary}}, soak: 1h}, {name: rest, maxConcurrent: 4}]}",
        );
        let p = plan_waves(&waved, &[cluster("a", &[], OLD)]);
        assert_eq!(p.waves.len(), 1);
        assert_eq!(p.waves[0].name, "rest");
        assert_eq!(p.waves[0].max_concurrent, 4);
    }

    #[test]
    fn invalid_selector_selects_nothing() {
        let s = sched(
            "{name: w, cron: '0 2 * * *', window: 1h, selector: {matchExpressions: [{key: env, operator: Equals, values: [prod]}]}}",
        );
        let p = plan_waves(&s, &[cluster("a", &[("env", "prod")], OLD)]);
        assert!(p.waves.is_empty());
        assert_eq!(p.not_selected, vec!["a".to_string()]);
    }

    // ---- bump PRs --------------------------------------------------------------------------

    #[test]
    fn bump_keeps_comments_quotes_and_everything_else() {
        let text = "# cluster settings\nmanagementCluster: mgmt # the AWS one\ntkr: v1.24.9+vmware.1-tkg.1   # pinned\nlabels:\n  tkr: not-this-one\n";
        assert_eq!(
            bump_tkr_line(text, NEW),
            Ok("# cluster settings\nmanagementCluster: mgmt # the AWS one\ntkr: v1.24.11+vmware.1-tkg.2   # pinned\nlabels:\n  tkr: not-this-one\n".to_string())
        );
        let dq = "managementCluster: m\r\ntkr:  \"v1.24.9+vmware.1-tkg.1\" # q\r\n";
        assert_eq!(
            bump_tkr_line(dq, NEW),
            Ok("managementCluster: m\r\ntkr:  \"v1.24.11+vmware.1-tkg.2\" # q\r\n".to_string())
        );
        let sq = "tkr: 'v1.24.9+vmware.1-tkg.1'\nmanagementCluster: m";
        assert_eq!(
            bump_tkr_line(sq, NEW),
            Ok("tkr: 'v1.24.11+vmware.1-tkg.2'\nmanagementCluster: m".to_string())
        );
    }

    #[test]
    fn bump_refuses_what_it_cannot_rewrite_safely() {
        assert_eq!(
            bump_tkr_line("managementCluster: m\nlabels:\n  tkr: x\n", NEW),
            Err(ScheduleError::NoTkrKey)
        );
        assert_eq!(
            bump_tkr_line("tkr: a\ntkr: b\n", NEW),
            Err(ScheduleError::DuplicateTkrKey)
        );
        assert_eq!(
            bump_tkr_line(
                "managementCluster: m\ntkr: >\n  v1.24.9+vmware.1-tkg.1\n",
                NEW
            ),
            Err(ScheduleError::TkrNotScalar(2))
        );
        assert_eq!(
            bump_tkr_line("tkr: v1.24.9+vmware.1-tkg.1\n", "v1.25.0\nevil: true"),
            Err(ScheduleError::InvalidTkr("v1.25.0\nevil: true".into()))
        );
        assert_eq!(
            bump_tkr_line("tkr: \"v1.24.9+vmware.1-tkg.1\n", NEW),
            Err(ScheduleError::TkrNotScalar(1))
        );
    }

    #[test]
    fn branches_are_git_ref_safe_and_deterministic() {
        assert_eq!(
            propose_branch("weekly-patch", "v1.24.9+vmware.1-tkg.1"),
            "tkgops/schedule/weekly-patch/v1.24.9-vmware.1-tkg.1"
        );
        assert_eq!(
            propose_branch("../x", ".hidden..name~^:?*[\\ @{y}.lock"),
            "tkgops/schedule/x/hidden.name----------y"
        );
        assert_eq!(propose_branch("", "..."), "tkgops/schedule/unnamed/unnamed");
    }

    #[test]
    fn bumps_group_per_target_version() {
        let to25 = "v1.25.13+vmware.1-tkg.1";
        let to9 = "v1.24.11+vmware.1-tkg.2";
        let groups = group_bumps(
            "nightly",
            &[
                bump("c", OLD, to25),
                bump("b", OLD, to9),
                bump("a", OLD, to25),
            ],
        );
        assert_eq!(
            groups,
            vec![
                BumpGroup {
                    to: to9.into(),
                    bumps: vec![bump("b", OLD, to9)],
                    branch: "tkgops/schedule/nightly/v1.24.11-vmware.1-tkg.2".into(),
                },
                BumpGroup {
                    to: to25.into(),
                    bumps: vec![bump("a", OLD, to25), bump("c", OLD, to25)],
                    branch: "tkgops/schedule/nightly/v1.25.13-vmware.1-tkg.1".into(),
                },
            ]
        );
    }

    // ---- validation ------------------------------------------------------------------------

    fn findings(text: &str) -> Vec<(Option<u32>, String)> {
        #[derive(Deserialize)]
        struct Doc {
            schedules: Vec<Schedule>,
        }
        let doc: Doc = serde_yaml::from_str(text).expect("parses");
        validate_schedules("tkgops.yaml", text, &doc.schedules)
            .into_iter()
            .map(|f| {
                assert_eq!(f.rule, RULE);
                assert_eq!(f.severity, Severity::Error);
                assert_eq!(f.path, "tkgops.yaml");
                (f.line, f.message)
            })
            .collect()
    }

    #[test]
    fn a_valid_file_has_no_findings() {
        let text = r#"schedules:
  - name: weekly-patch
    cron: "0 2 * * SAT"
    timezone: Europe/Berlin
    window: 4h
    waves:
      - name: canary
        selector: {matchLabels: {tier: canary}}
        soak: 30m
      - name: remaining
        selector: {}
  - name: seconds
    cron: "0 30 1 * * Mon-Fri"
    window: 90m
    selector:
      matchExpressions:
        - {key: env, operator: NotIn, values: [dev]}
        - {key: team, operator: Exists}
"#;
        assert_eq!(findings(text), vec![]);
    }

    #[test]
    fn findings_name_the_offending_line() {
        let text = r#"schedules:
  - name: Weekly_Patch
    cron: "0 2 * *"
    timezone: Europe/Berlln
    window: 0s
  - cron: "0 0 2 * * Sat"
    name: ok
    selector:
      matchExpressions:
        - {key: env, operator: Equals, values: [prod]}
  - name: ok
    action: apply
    cron: "61 2 * * *"
    propose: {maxOpenPRs: 0}
    waves:
    - name: canary
      maxConcurrent: 0
      soak: soon
    - name: remaining
      selector: {matchLabels: {a: b}}
    - name: canary
      selector:
        matchExpressions: [{key: x, operator: Exists, values: [y]}]
"#;
        let got = findings(text);
        let lines: Vec<Option<u32>> = got.iter().map(|(l, _)| *l).collect();
        assert_eq!(
            lines,
            vec![
                Some(2),  // name not a DNS label
                Some(3),  // cron with 4 fields
                Some(4),  // unknown timezone
                Some(5),  // zero window
                Some(6),  // window missing: the item's first line
                Some(8),  // selector operator
                Some(11), // duplicate schedule name
                Some(13), // cron minute 61
                Some(11), // window missing
                Some(14), // propose with apply
                Some(14), // maxOpenPRs 0
                Some(17), // wave maxConcurrent 0
                Some(18), // wave soak
                Some(19), // remaining reserved (selector not empty)
                Some(21), // duplicate wave name
                Some(22), // Exists with values
            ],
            "{got:#?}"
        );
        let msgs: Vec<&str> = got.iter().map(|(_, m)| m.as_str()).collect();
        assert!(msgs[0].contains("DNS-1123"), "{}", msgs[0]);
        assert!(msgs[1].contains("has 4 fields"), "{}", msgs[1]);
        assert_eq!(
            msgs[7],
            "schedule ok: cron \"61 2 * * *\" is invalid: Minutes must be less than 59. ('61' specified.)"
        );
        assert!(msgs[2].contains("Europe/Berlln"), "{}", msgs[2]);
        assert!(msgs[3].contains("longer than 0s"), "{}", msgs[3]);
        assert!(msgs[4].contains("window is required"), "{}", msgs[4]);
        assert!(msgs[5].contains("\"Equals\""), "{}", msgs[5]);
        assert_eq!(msgs[6], "schedule ok is listed twice");
        assert!(msgs[13].contains("reserved"), "{}", msgs[13]);
        assert!(msgs[15].contains("takes no values"), "{}", msgs[15]);
    }

    #[test]
    fn repo_config_loading_reports_schedule_findings() {
        let text = "managementClusters:\n  - name: mgmt\n    kubeconfig: {file: /k}\n    tkgVersion: 2.2\nschedules:\n  - name: nightly\n    cron: \"0 2 * * *\"\n    timezone: Mars/Olympus\n    window: 2h\n";
        let errs = crate::request::parse_repo_config("tkgops.yaml", text.as_bytes())
            .err()
            .unwrap_or_default();
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].rule, RULE);
        assert_eq!(errs[0].line, Some(8));
        assert_eq!(
            errs[0].message,
            "schedule nightly: timezone \"Mars/Olympus\" is not an IANA time zone name (e.g. Europe/Berlin, UTC)"
        );
        let ok = text.replace("Mars/Olympus", "America/New_York");
        let cfg = crate::request::parse_repo_config("tkgops.yaml", ok.as_bytes());
        assert_eq!(cfg.map(|c| c.schedules.len()), Ok(1));
    }

    #[test]
    fn flow_style_lists_fall_back_to_the_schedules_line() {
        let text = "approval: {}\nschedules: [{name: a, cron: '0 2 * * *'}]\n";
        assert_eq!(
            findings(text),
            vec![(
                Some(2),
                "schedule a: window is required (the maintenance window length, e.g. 4h)".into()
            )]
        );
    }
}
