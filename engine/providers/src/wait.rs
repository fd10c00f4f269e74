//! The one wait driver: runs a [`Judge`] (the pure verdict of a wait, `tkgops_domain::wait`)
//! over a [`Source`] of snapshots (the Kubernetes provider's shared watches, a private object
//! watch, or polled TMC `GET`s) until the judge says done or failed.
//!
//! The driver owns everything every wait needs and no wait decides:
//! - **a deadline** ([`DriveOptions::deadline`]): when it passes before a verdict ended the wait,
//!   [`Judge::deadline_passed`] decides the result (a failure, or an output such as TMC's
//!   "still there");
//! - **rechecks**: a judge's [`Progress::recheck_at`](tkgops_domain::wait::Progress) wakes the
//!   wait even without a change, so time-based rules (TKG's error persistence and unchanged
//!   timeouts, package timeouts) fire on time;
//! - **progress**: lines are deduplicated (an identical line is never reported twice in a row,
//!   as `ProgressDedup` did) and, with [`DriveOptions::progress_interval`], reported at most once
//!   per interval (the latest line is held and reported when the interval has passed, and
//!   always before the wait ends);
//! - **an error budget** ([`ErrorBudget`], the rules of the old polling loops): a
//!   [`Observed::Trouble`] that is permanent fails the wait at once; `max_consecutive`
//!   transient ones in a row fail it transiently; fewer are reported as progress and the source
//!   is asked again after `retry_after` (or its next change).
//!
//! Observed time is Tokio time, so tests drive every rule with `tokio::time::pause()`.

use std::time::Duration;

use tkgops_domain::executor::{ProgressSink, StepError};
use tkgops_domain::wait::{Failure, Judge, Retry, Verdict};
use tokio::time::Instant;

/// What a [`Source`] observed.
#[derive(Debug)]
pub enum Observed<S> {
    /// A snapshot for the judge.
    Snapshot(S),
    /// Nothing to judge yet (a watch not listed yet, a store behind a fresh write): wait for the
    /// next change.
    NotYet,
    /// An error the [`ErrorBudget`] counts (a failed poll, a watch that could not be opened).
    Trouble(StepError),
}

/// Where a wait's snapshots come from.
#[async_trait::async_trait]
pub trait Source: Send {
    /// What one observation holds (the judge's snapshot type).
    type Snapshot: Send;

    /// Takes one observation. Lines about the source's own health (e.g. a shared watch backing
    /// off after a transient error) go to `progress`.
    ///
    /// Errors end the wait at once (e.g. a shared watch's permanent error, or one that failed
    /// too often: the watch applies the budget rules itself); errors the driver should count go
    /// in [`Observed::Trouble`].
    async fn observe(
        &mut self,
        progress: &mut Reporter,
    ) -> Result<Observed<Self::Snapshot>, StepError>;

    /// Returns when what the source observes may have changed since the last [`Self::observe`]
    /// (its own objects' notification, its watches' health, its next poll), or at `until`
    /// (`None`: no limit), whichever is first.
    async fn changed(&mut self, until: Option<Instant>);
}

/// How many consecutive troubles a wait tolerates and how it reports them.
#[derive(Clone, Copy, Debug)]
pub struct ErrorBudget {
    /// The transient trouble that fails the wait (transiently): the `max_consecutive`-th in a
    /// row. Earlier ones are reported as progress.
    pub max_consecutive: u32,
    /// The progress line of a tolerated trouble, from its message.
    pub line: fn(&str) -> String,
    /// How long after a tolerated trouble the source is asked again at the latest (`None`: at
    /// its next change only).
    pub retry_after: Option<Duration>,
}

fn kube_trouble_line(m: &str) -> String {
    format!("transient error, retrying: {m}")
}

fn tmc_trouble_line(m: &str) -> String {
    format!("polling TMC failed ({m}); retrying")
}

impl ErrorBudget {
    /// The Kubernetes waits' budget: the [`crate::kube`] polling rule
    /// (`MAX_CONSECUTIVE_POLL_ERRORS` = 5: the fifth transient error in a row fails),
    /// "transient error, retrying: …", asked again after 1 s.
    pub fn kube() -> Self {
        ErrorBudget {
            max_consecutive: crate::kube::MAX_CONSECUTIVE_POLL_ERRORS,
            line: kube_trouble_line,
            retry_after: Some(Duration::from_secs(1)),
        }
    }

    /// The TMC waits' budget: `tolerated` failed polls in a row are tolerated ("polling TMC
    /// failed (…); retrying"), the next one fails (TMC-TF's loops: 3); the next poll is the next
    /// interval's.
    pub fn tmc(tolerated: u32) -> Self {
        ErrorBudget {
            max_consecutive: tolerated + 1,
            line: tmc_trouble_line,
            retry_after: None,
        }
    }

    /// Counts `e` after `consecutive` earlier troubles in a row: `Ok(line)` to report while
    /// tolerated; `Err` for a permanent error or the `max_consecutive`-th transient one.
    fn count(&self, consecutive: &mut u32, e: StepError) -> Result<String, StepError> {
        match e {
            StepError::Permanent(_) => Err(e),
            StepError::Transient(m) => {
                *consecutive += 1;
                if *consecutive >= self.max_consecutive {
                    Err(StepError::Transient(m))
                } else {
                    Ok((self.line)(&m))
                }
            }
        }
    }
}

/// How [`drive`] runs one wait.
#[derive(Clone, Debug)]
pub struct DriveOptions {
    /// The origin of the judge's observed time (`at` = now − origin), normally the step's start.
    pub origin: Instant,
    /// When the wait ends at the latest; [`Judge::deadline_passed`] gives the result then.
    pub deadline: Option<Instant>,
    /// Minimum time between two reported progress lines (zero: every new line at once).
    pub progress_interval: Duration,
    /// The error budget of [`Observed::Trouble`].
    pub errors: ErrorBudget,
}

impl DriveOptions {
    /// Observed time from `origin`, no deadline, every new line reported at once, the
    /// Kubernetes error budget.
    pub fn kube(origin: Instant) -> Self {
        DriveOptions {
            origin,
            deadline: None,
            progress_interval: Duration::ZERO,
            errors: ErrorBudget::kube(),
        }
    }

    /// As [`Self::kube`] with the TMC error budget ([`ErrorBudget::tmc`] of `tolerated`).
    pub fn tmc(origin: Instant, tolerated: u32) -> Self {
        DriveOptions {
            errors: ErrorBudget::tmc(tolerated),
            ..Self::kube(origin)
        }
    }

    /// The same with the deadline `deadline`.
    pub fn with_deadline(mut self, deadline: Instant) -> Self {
        self.deadline = Some(deadline);
        self
    }
}

/// Reports a wait's progress lines: deduplicated, at most one per interval (see the module docs).
pub struct Reporter {
    sink: ProgressSink,
    interval: Duration,
    last: Option<String>,
    last_at: Option<Instant>,
    held: Option<String>,
}

impl Reporter {
    /// A reporter to `sink`, reporting at most one line per `interval` (zero: no limit).
    pub fn new(sink: ProgressSink, interval: Duration) -> Self {
        Reporter {
            sink,
            interval,
            last: None,
            last_at: None,
            held: None,
        }
    }

    /// Reports `line` unless it equals the last one reported; within the interval after the
    /// last report, holds it until [`Self::due`] (a later line replaces it).
    pub fn report(&mut self, line: String) {
        if self.last.as_deref() == Some(line.as_str()) {
            self.held = None;
            return;
        }
        let now = Instant::now();
        match self.last_at {
            Some(t) if !self.interval.is_zero() && now < t + self.interval => {
                self.held = Some(line)
            }
            _ => self.emit(line, now),
        }
    }

    /// Reports `line` at once, outside the deduplication (a tolerated error: every one counts).
    pub fn report_now(&self, line: &str) {
        self.sink.report(line);
    }

    fn emit(&mut self, line: String, now: Instant) {
        self.sink.report(&line);
        self.last = Some(line);
        self.last_at = Some(now);
        self.held = None;
    }

    /// When a held line is due (`None`: nothing held).
    pub fn due(&self) -> Option<Instant> {
        match (&self.held, self.last_at) {
            (Some(_), Some(t)) => Some(t + self.interval),
            _ => None,
        }
    }

    /// Reports the held line if its time has come.
    fn tick(&mut self) {
        if self.due().is_some_and(|d| Instant::now() >= d) {
            self.flush();
        }
    }

    /// Reports the held line now.
    fn flush(&mut self) {
        if let Some(line) = self.held.take() {
            self.emit(line, Instant::now());
        }
    }
}

/// A judge's failure as the engine's error: [`Retry::Never`] is permanent, [`Retry::Later`]
/// transient.
pub fn step_error(f: Failure) -> StepError {
    match f.retry {
        Retry::Never => StepError::Permanent(f.message),
        Retry::Later => StepError::Transient(f.message),
    }
}

/// Runs `judge` over `source` until it is done (its output) or failed, reporting progress to
/// `sink` (see the module docs for the deadline, rechecks, progress and error budget).
///
/// Errors: the judge's failure ([`step_error`]); the source's errors; the error budget's.
pub async fn drive<S, J>(
    source: &mut S,
    judge: &mut J,
    sink: &ProgressSink,
    opts: &DriveOptions,
) -> Result<J::Output, StepError>
where
    S: Source,
    J: Judge<Snapshot = S::Snapshot> + Send,
    J::Output: Send,
{
    let mut progress = Reporter::new(sink.clone(), opts.progress_interval);
    let mut troubles = 0u32;
    let mut recheck: Option<Instant> = None;
    loop {
        let mut retry: Option<Instant> = None;
        let observed = match source.observe(&mut progress).await {
            Ok(o) => o,
            Err(e) => {
                progress.flush();
                return Err(e);
            }
        };
        match observed {
            Observed::NotYet => troubles = 0,
            Observed::Trouble(e) => match opts.errors.count(&mut troubles, e) {
                Ok(line) => {
                    progress.report_now(&line);
                    retry = opts.errors.retry_after.map(|d| Instant::now() + d);
                }
                Err(e) => {
                    progress.flush();
                    return Err(e);
                }
            },
            Observed::Snapshot(s) => {
                troubles = 0;
                let at = Instant::now().saturating_duration_since(opts.origin);
                match judge.judge(&s, at) {
                    Verdict::Done(out) => {
                        if let Some(line) = judge.closing_line(&out) {
                            progress.report(line);
                        }
                        progress.flush();
                        return Ok(out);
                    }
                    Verdict::Failed(f) => {
                        progress.flush();
                        return Err(step_error(f));
                    }
                    Verdict::Waiting(p) => {
                        if let Some(line) = p.line {
                            progress.report(line);
                        }
                        recheck = p.recheck_at.map(|d| opts.origin + d);
                    }
                }
            }
        }
        let now = Instant::now();
        if opts.deadline.is_some_and(|d| now >= d) {
            progress.flush();
            let at = now.saturating_duration_since(opts.origin);
            return judge.deadline_passed(at).map_err(step_error);
        }
        // A recheck already past cannot be honoured without a snapshot: never spin on it.
        recheck = recheck.filter(|r| *r > now);
        let until = [recheck, retry, opts.deadline, progress.due()]
            .into_iter()
            .flatten()
            .min();
        source.changed(until).await;
        progress.tick();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use std::sync::{Arc, Mutex};
    use tkgops_domain::wait::Progress;

    /// A scripted source: each observation pops the next item (the last one repeats); a change
    /// happens every `period` of Tokio time.
    struct Script {
        items: VecDeque<Result<Observed<u32>, StepError>>,
        last: u32,
        period: Option<Duration>,
        observations: Arc<Mutex<Vec<Duration>>>,
        start: Instant,
    }

    impl Script {
        fn new(items: Vec<Result<Observed<u32>, StepError>>, period: Option<Duration>) -> Self {
            Script {
                items: items.into(),
                last: 0,
                period,
                observations: Arc::default(),
                start: Instant::now(),
            }
        }
    }

    #[async_trait::async_trait]
    impl Source for Script {
        type Snapshot = u32;
        async fn observe(&mut self, _: &mut Reporter) -> Result<Observed<u32>, StepError> {
            self.observations
                .lock()
                .unwrap()
                .push(Instant::now() - self.start);
            match self.items.pop_front() {
                Some(Ok(Observed::Snapshot(n))) => {
                    self.last = n;
                    Ok(Observed::Snapshot(n))
                }
                Some(other) => other,
                None => Ok(Observed::Snapshot(self.last)),
            }
        }
        async fn changed(&mut self, until: Option<Instant>) {
            let next = self.period.map(|p| Instant::now() + p);
            match [next, until].into_iter().flatten().min() {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        }
    }

    /// Done at snapshot 10; a snapshot above 100 fails; otherwise waiting with the line
    /// "n=<n>", rechecking `recheck` later when set.
    struct Count {
        recheck: Option<Duration>,
        judged: Vec<(u32, Duration)>,
    }

    impl Judge for Count {
        type Snapshot = u32;
        type Output = u32;
        fn judge(&mut self, n: &u32, at: Duration) -> Verdict<u32> {
            self.judged.push((*n, at));
            match *n {
                10 => Verdict::Done(10),
                n if n > 100 => Verdict::Failed(Failure::permanent(format!("too big: {n}"))),
                n => Verdict::Waiting(Progress {
                    line: Some(format!("n={n}")),
                    recheck_at: self.recheck.map(|r| at + r),
                }),
            }
        }
        fn closing_line(&self, out: &u32) -> Option<String> {
            Some(format!("done at {out}"))
        }
        fn deadline_passed(&mut self, at: Duration) -> Result<u32, Failure> {
            Err(Failure::transient(format!("deadline at {}", at.as_secs())))
        }
    }

    fn count() -> Count {
        Count {
            recheck: None,
            judged: Vec::new(),
        }
    }

    fn sink() -> (ProgressSink, Arc<Mutex<Vec<String>>>) {
        let lines: Arc<Mutex<Vec<String>>> = Arc::default();
        let l = lines.clone();
        (
            ProgressSink::new(move |s| l.lock().unwrap().push(s.to_string())),
            lines,
        )
    }

    fn snap(n: u32) -> Result<Observed<u32>, StepError> {
        Ok(Observed::Snapshot(n))
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[tokio::test(start_paused = true)]
    async fn identical_lines_are_reported_once_and_the_closing_line_last() {
        let (sink, lines) = sink();
        let mut src = Script::new(
            vec![snap(1), snap(1), snap(2), snap(2), snap(1), snap(10)],
            Some(secs(1)),
        );
        let out = drive(
            &mut src,
            &mut count(),
            &sink,
            &DriveOptions::kube(Instant::now()),
        )
        .await
        .unwrap();
        assert_eq!(out, 10);
        assert_eq!(*lines.lock().unwrap(), ["n=1", "n=2", "n=1", "done at 10"]);
    }

    #[tokio::test(start_paused = true)]
    async fn the_deadline_ends_a_wait_with_the_judges_result() {
        let (sink, _) = sink();
        let start = Instant::now();
        // Nothing ever changes: only the deadline wakes the wait.
        let mut src = Script::new(vec![Ok(Observed::NotYet)], None);
        src.items.push_back(Ok(Observed::NotYet));
        let opts = DriveOptions::kube(start).with_deadline(start + secs(300));
        let mut j = count();
        let e = drive(&mut src, &mut j, &sink, &opts).await.unwrap_err();
        assert_eq!(e, StepError::Transient("deadline at 300".into()));
        assert_eq!(Instant::now() - start, secs(300));
        assert!(j.judged.is_empty());
        // A judge's failure wins over the deadline.
        let mut src = Script::new(vec![snap(101)], None);
        let e = drive(&mut src, &mut count(), &sink, &opts)
            .await
            .unwrap_err();
        assert_eq!(e, StepError::Permanent("too big: 101".into()));
    }

    #[tokio::test(start_paused = true)]
    async fn a_recheck_wakes_the_wait_without_a_change() {
        let (sink, _) = sink();
        let start = Instant::now();
        let mut src = Script::new(vec![snap(1), snap(1), snap(10)], None);
        let mut j = Count {
            recheck: Some(secs(90)),
            judged: Vec::new(),
        };
        drive(&mut src, &mut j, &sink, &DriveOptions::kube(start))
            .await
            .unwrap();
        // Nothing changes: judged at 0, then at each recheck time the judge asked for.
        assert_eq!(
            j.judged,
            [(1, Duration::ZERO), (1, secs(90)), (10, secs(180))]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_error_budget_tolerates_fewer_than_the_maximum_in_a_row() {
        let (sink, lines) = sink();
        let t = |m: &str| Ok(Observed::Trouble(StepError::Transient(m.into())));
        // Four transient errors, a success resets the count, four more, then done.
        let mut src = Script::new(
            vec![
                t("e1"),
                t("e2"),
                t("e3"),
                t("e4"),
                snap(1),
                t("e5"),
                t("e6"),
                t("e7"),
                t("e8"),
                snap(10),
            ],
            Some(secs(1)),
        );
        let start = Instant::now();
        drive(&mut src, &mut count(), &sink, &DriveOptions::kube(start))
            .await
            .unwrap();
        let got = lines.lock().unwrap().clone();
        assert_eq!(got[0], "transient error, retrying: e1");
        assert_eq!(got.len(), 10);
        // Retried every second (the kube budget's retry_after), no change needed.
        assert_eq!(Instant::now() - start, secs(9));
        // The fifth in a row fails transiently.
        let mut src = Script::new(vec![t("a"), t("b"), t("c"), t("d"), t("e")], None);
        let e = drive(&mut src, &mut count(), &sink, &DriveOptions::kube(start))
            .await
            .unwrap_err();
        assert_eq!(e, StepError::Transient("e".into()));
        // A permanent one fails at once.
        let mut src = Script::new(
            vec![Ok(Observed::Trouble(StepError::Permanent("401".into())))],
            None,
        );
        let e = drive(&mut src, &mut count(), &sink, &DriveOptions::kube(start))
            .await
            .unwrap_err();
        assert_eq!(e, StepError::Permanent("401".into()));
        // TMC: three tolerated, the fourth fails, with TMC's line.
        let (sink, lines) = self::sink();
        let mut src = Script::new(vec![t("503"), t("503"), t("503"), t("503")], Some(secs(10)));
        let e = drive(&mut src, &mut count(), &sink, &DriveOptions::tmc(start, 3))
            .await
            .unwrap_err();
        assert_eq!(e, StepError::Transient("503".into()));
        assert_eq!(
            *lines.lock().unwrap(),
            ["polling TMC failed (503); retrying"; 3]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_progress_interval_holds_lines_and_reports_the_latest() {
        let (sink, lines) = sink();
        let start = Instant::now();
        // A new state every second; at most one line per 5 s.
        let mut src = Script::new((1..=9).map(snap).chain([snap(10)]).collect(), Some(secs(1)));
        let mut opts = DriveOptions::kube(start);
        opts.progress_interval = secs(5);
        drive(&mut src, &mut count(), &sink, &opts).await.unwrap();
        // n=1 at 0 s; n=5 (the latest held) at 5 s; the rest held until the end, then flushed.
        assert_eq!(*lines.lock().unwrap(), ["n=1", "n=5", "done at 10"]);
        // The source is not observed more often because of the interval.
        assert_eq!(src.observations.lock().unwrap().len(), 10);
    }
}
