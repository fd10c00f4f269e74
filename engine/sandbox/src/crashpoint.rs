//! Test-only crash points for the `tkgops-crashpoint` binary (README "Chaos harness", "Kills
//! between a side effect and its journal write"): a [`StepExecutor`] around the bot's real one
//! that aborts the process at a chosen step, either right *after* the real executor returned
//! `Ok` (the side effect happened, the engine has not journaled the step's success) or right
//! *before* calling it (the engine journaled the attempt's start, nothing was done).
//!
//! The points come from [`ENV_POINTS`]; with [`ENV_STATE_DIR`] each point fires at most once
//! across restarts (a marker file, fsynced before the abort), so the restarted bot gets past
//! it. This code lives only in the sandbox crate: the production `tkgops` binary has no crash
//! path ([`tkgops::serve::serve_command`] gets no executor wrapper there).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use tkgops::serve::ExecutorWrapper;
use tkgops_engine::{StepContext, StepError, StepExecutor};

/// The crash points: a comma-separated list of `<when>:[<cluster>/]<step>[:<nth>]`, where
/// `<when>` is `after` (abort once the real executor returned `Ok`, before the engine
/// journals the success) or `before` (abort after the engine journaled the attempt's start,
/// before the real executor is called); `<step>` is a step id of the workflow (`tmc-attach`)
/// or a step kind (`tmc.attach`); `<cluster>` restricts the point to one workload cluster's
/// runs; `<nth>` (default 1) fires at the nth matching attempt (`after`: the nth success)
/// this process sees. E.g. `after:aws-preflight,before:team-a-prod/tmc-attach,after:kube.apply:2`.
pub const ENV_POINTS: &str = "TKGOPS_CRASH_AT";

/// A directory for the markers of spent crash points: a point whose marker exists never fires
/// again, so a restarted bot goes past it. Unset: every point fires in every process.
pub const ENV_STATE_DIR: &str = "TKGOPS_CRASH_STATE_DIR";

/// The line `tkgops-crashpoint` writes to standard error (and its log) just before it aborts,
/// followed by the crash point and the step.
pub const ABORT_LINE: &str = "tkgops-crashpoint: aborting at crash point";

/// Exit status when a crash point's marker cannot be written (so it would fire again after a
/// restart): the process exits with this instead of aborting (sysexits `EX_CANTCREAT`).
pub const EXIT_MARKER_FAILED: i32 = 73;

/// Where a crash point sits relative to the real executor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum When {
    /// Before the real executor is called (after the engine journaled the attempt's start).
    Before,
    /// After the real executor returned `Ok`, before the engine journals the step's success.
    After,
}

/// One crash point, as parsed from [`ENV_POINTS`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CrashPoint {
    /// Before or after the real executor.
    pub when: When,
    /// Only this workload cluster's runs; `None`: any.
    pub cluster: Option<String>,
    /// A step id (`tmc-attach`) or step kind wire name (`tmc.attach`).
    pub step: String,
    /// The matching attempt (counted in this process, from 1) that fires.
    pub nth: u32,
}

/// A crash point that cannot be parsed.
#[derive(Debug, thiserror::Error)]
#[error("{ENV_POINTS}: {point:?}: {reason} (want <before|after>:[<cluster>/]<step>[:<nth>])")]
pub struct ParseError {
    /// The offending point.
    pub point: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl FromStr for CrashPoint {
    type Err = ParseError;

    /// `<when>:[<cluster>/]<step>[:<nth>]`; see [`ENV_POINTS`].
    fn from_str(s: &str) -> Result<Self, ParseError> {
        let err = |reason| ParseError {
            point: s.to_string(),
            reason,
        };
        let mut parts = s.trim().split(':');
        let when = match parts.next() {
            Some("before") => When::Before,
            Some("after") => When::After,
            _ => return Err(err("it must start with before: or after:")),
        };
        let target = parts.next().ok_or_else(|| err("no step"))?;
        let nth = match parts.next() {
            None => 1,
            Some(n) => n
                .parse::<u32>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| err("<nth> must be a positive number"))?,
        };
        if parts.next().is_some() {
            return Err(err("too many ':'"));
        }
        let (cluster, step) = match target.split_once('/') {
            Some((c, s)) => (Some(c.to_string()), s),
            None => (None, target),
        };
        if step.is_empty() || cluster.as_deref() == Some("") {
            return Err(err("empty step or cluster"));
        }
        Ok(CrashPoint {
            when,
            cluster,
            step: step.to_string(),
            nth,
        })
    }
}

impl std::fmt::Display for CrashPoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let when = match self.when {
            When::Before => "before",
            When::After => "after",
        };
        write!(f, "{when}:")?;
        if let Some(c) = &self.cluster {
            write!(f, "{c}/")?;
        }
        write!(f, "{}:{}", self.step, self.nth)
    }
}

impl CrashPoint {
    /// Whether the attempt `ctx` is one this point counts.
    fn matches(&self, when: When, ctx: &StepContext) -> bool {
        self.when == when
            && self.cluster.as_deref().is_none_or(|c| c == ctx.cluster)
            && (self.step == ctx.step.id || self.step == ctx.step.kind().as_str())
    }

    /// The marker file of this point in `dir`.
    fn marker(&self, dir: &Path) -> PathBuf {
        let name: String = self
            .to_string()
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        dir.join(format!("{name}.fired"))
    }
}

/// The crash points of this process, with how many matching attempts each has seen.
#[derive(Debug)]
pub struct CrashPoints {
    points: Vec<(CrashPoint, AtomicU32)>,
    state_dir: Option<PathBuf>,
}

impl CrashPoints {
    /// The points `spec` lists (see [`ENV_POINTS`]; empty: none), spent ones marked in
    /// `state_dir` when given.
    ///
    /// Errors: [`ParseError`] for a point that does not parse.
    pub fn parse(spec: &str, state_dir: Option<PathBuf>) -> Result<CrashPoints, ParseError> {
        let points = spec
            .split(',')
            .filter(|p| !p.trim().is_empty())
            .map(|p| Ok((p.parse::<CrashPoint>()?, AtomicU32::new(0))))
            .collect::<Result<_, ParseError>>()?;
        Ok(CrashPoints { points, state_dir })
    }

    /// The points of [`ENV_POINTS`] (unset: none) with the markers in [`ENV_STATE_DIR`].
    ///
    /// Errors: [`ParseError`] for a point that does not parse.
    pub fn from_env() -> Result<CrashPoints, ParseError> {
        CrashPoints::parse(
            &std::env::var(ENV_POINTS).unwrap_or_default(),
            std::env::var_os(ENV_STATE_DIR).map(PathBuf::from),
        )
    }

    /// The points, in the order given.
    pub fn points(&self) -> impl Iterator<Item = &CrashPoint> {
        self.points.iter().map(|(p, _)| p)
    }

    /// The wrapper [`tkgops::serve::serve_command`] puts around the bot's step executor.
    pub fn wrapper(self) -> ExecutorWrapper {
        let points = Arc::new(self);
        Arc::new(move |inner| {
            Arc::new(CrashingExecutor {
                inner,
                points: points.clone(),
            }) as Arc<dyn StepExecutor>
        })
    }

    /// Aborts the process when an unspent point for `when` reaches its nth match with `ctx`;
    /// otherwise returns.
    fn check(&self, when: When, ctx: &StepContext) {
        for (point, seen) in &self.points {
            if !point.matches(when, ctx) || seen.fetch_add(1, Ordering::SeqCst) + 1 != point.nth {
                continue;
            }
            let what = format!(
                "{point}: run {} cluster {} step {} ({}) attempt {}",
                ctx.run_id,
                ctx.cluster,
                ctx.step.id,
                ctx.step.kind(),
                ctx.attempt
            );
            if let Some(dir) = &self.state_dir {
                match spend(&point.marker(dir), &what) {
                    Ok(true) => {}
                    // Spent by an earlier process (or a concurrent attempt of this one).
                    Ok(false) => continue,
                    Err(e) => {
                        tracing::error!(error = %e, point = %point, "tkgops-crashpoint: cannot record the crash point; exiting instead of aborting");
                        std::process::exit(EXIT_MARKER_FAILED);
                    }
                }
            }
            tracing::error!("{ABORT_LINE} {what}");
            eprintln!("{ABORT_LINE} {what}");
            std::process::abort();
        }
    }
}

/// Creates the marker `path` (with `what` in it) and makes it durable (the file and its
/// directory fsynced). Returns false when it exists already (the point is spent).
fn spend(path: &Path, what: &str) -> std::io::Result<bool> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut file = match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(false),
        Err(e) => return Err(e),
    };
    writeln!(file, "{what}")?;
    file.sync_all()?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(true)
}

/// The bot's step executor with the crash points around every attempt.
struct CrashingExecutor {
    inner: Arc<dyn StepExecutor>,
    points: Arc<CrashPoints>,
}

#[async_trait::async_trait]
impl StepExecutor for CrashingExecutor {
    async fn execute(&self, ctx: &StepContext) -> Result<serde_json::Value, StepError> {
        self.points.check(When::Before, ctx);
        let output = self.inner.execute(ctx).await;
        if output.is_ok() {
            self.points.check(When::After, ctx);
        }
        output
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_parse_with_cluster_and_nth() {
        let p = CrashPoints::parse("after:aws-preflight, before:team-a-prod/tmc.attach:2", None)
            .unwrap();
        let points: Vec<_> = p.points().cloned().collect();
        assert_eq!(
            points,
            [
                CrashPoint {
                    when: When::After,
                    cluster: None,
                    step: "aws-preflight".into(),
                    nth: 1
                },
                CrashPoint {
                    when: When::Before,
                    cluster: Some("team-a-prod".into()),
                    step: "tmc.attach".into(),
                    nth: 2
                }
            ]
        );
        assert_eq!(points[1].to_string(), "before:team-a-prod/tmc.attach:2");
        assert!(CrashPoints::parse("", None)
            .unwrap()
            .points()
            .next()
            .is_none());
    }

    #[test]
    fn bad_points_are_refused() {
        for bad in [
            "tmc-attach",
            "during:tmc-attach",
            "after:",
            "after:tmc-attach:0",
            "after:tmc-attach:x",
            "after:/tmc-attach",
            "after:a:1:2",
        ] {
            assert!(CrashPoints::parse(bad, None).is_err(), "{bad} was accepted");
        }
    }

    #[test]
    fn a_marker_is_spent_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spent").join("after_x_1.fired");
        assert!(spend(&path, "first").unwrap());
        assert!(!spend(&path, "second").unwrap());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "first\n");
    }
}
