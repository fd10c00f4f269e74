//! The binaries' log output: human-readable text (the default) or JSON, one object per line
//! (`tkgops --log-format json`, or `TKGOPS_LOG_FORMAT=json`; the flag wins).
//!
//! A JSON line holds `timestamp`, `level`, `target`, the event's fields flattened into the
//! object (`message` and the others), and the fields of every span the event happened in
//! (`spans`, outermost first, each with its `name`), plus `span`, the innermost one. The
//! engine and the bot open spans where runs, steps, pull-request plans and merges are handled,
//! carrying `run_id`, `cluster`, `step`, `pr` and `merge_commit`, so every event inside them
//! names what it is about.
//!
//! Both formats are written through [`crate::redact::Redacting`]: a registered secret is
//! replaced by `<redacted>` in the line as written, in its raw form and in the form JSON
//! escapes it to (a PEM key's newlines become `\n`), also inside span fields.

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

/// The format of log lines.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event (tracing-subscriber's full format).
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// A subscriber writing events of at least the level `filter` allows in `format` to the
/// writers `make_writer` hands out (each event is one `write_all`, so a writer sees whole
/// lines). The writer is used as is: wrap it in [`crate::redact::Redacting`] to redact.
pub fn subscriber<W>(
    format: LogFormat,
    filter: EnvFilter,
    make_writer: W,
) -> Box<dyn tracing::Subscriber + Send + Sync>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(make_writer);
    match format {
        LogFormat::Text => Box::new(builder.finish()),
        LogFormat::Json => Box::new(
            builder
                .json()
                .flatten_event(true)
                .with_current_span(true)
                .with_span_list(true)
                .finish(),
        ),
    }
}

/// Installs the global subscriber of a binary: `format`, the level filter of `RUST_LOG`
/// (default `info`), standard error through [`crate::redact::stderr`]. Call once, first thing.
///
/// Panics if a global subscriber is already installed.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let sub = subscriber(format, filter, crate::redact::stderr);
    tracing::subscriber::set_global_default(sub).expect("a global log subscriber is installed");
}

/// A writer that appends to a shared buffer, for tests that read what was logged.
#[cfg(test)]
#[derive(Clone, Default)]
pub(crate) struct Captured(pub(crate) std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

#[cfg(test)]
impl std::io::Write for Captured {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
impl Captured {
    /// Everything written so far, as text.
    pub(crate) fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_lines_carry_the_fields_of_the_spans_they_are_in() {
        let out = Captured::default();
        let sink = out.clone();
        let sub = subscriber(LogFormat::Json, EnvFilter::new("info"), move || {
            sink.clone()
        });
        tracing::subscriber::with_default(sub, || {
            let run = tracing::info_span!("run", run_id = "r-1", cluster = "team-a-prod");
            let _r = run.enter();
            let step = tracing::info_span!("step", step = "kube-apply");
            let _s = step.enter();
            tracing::info!(attempt = 2, "attempt started");
        });
        let text = out.text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 1, "{text}");
        let v: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(v["message"], "attempt started", "{v}");
        assert_eq!(v["attempt"], 2, "{v}");
        assert_eq!(v["level"], "INFO", "{v}");
        assert_eq!(v["span"]["step"], "kube-apply", "{v}");
        assert_eq!(v["spans"][0]["run_id"], "r-1", "{v}");
        assert_eq!(v["spans"][0]["cluster"], "team-a-prod", "{v}");
        assert_eq!(v["spans"][1]["step"], "kube-apply", "{v}");
    }

    #[test]
    fn text_is_the_default_and_is_not_json() {
        assert_eq!(LogFormat::default(), LogFormat::Text);
        let out = Captured::default();
        let sink = out.clone();
        let sub = subscriber(LogFormat::Text, EnvFilter::new("info"), move || {
            sink.clone()
        });
        tracing::subscriber::with_default(sub, || tracing::info!(pr = 7, "planned"));
        let text = out.text();
        assert!(text.contains("planned") && text.contains("pr"), "{text}");
        assert!(serde_json::from_str::<serde_json::Value>(text.trim()).is_err());
    }
}
