//! Secrets that rotate without a restart: a secret read from a file (a mounted Kubernetes
//! Secret, which the kubelet rewrites in place when the Secret changes) is read again whenever
//! the file changes, and the value it replaced is still accepted for [`ROTATION_GRACE`], the
//! time it takes GitHub (or another sender) and the bot to agree on the new value.
//!
//! A change is noticed by the file's metadata (modification time, size, inode, after following
//! symbolic links, as the kubelet swaps a `..data` link): one `stat` per use, no watcher
//! thread. Every value read is registered for redaction ([`crate::redact::register`]) before it
//! is used.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

/// How long the value a rotation replaced is still accepted: 10 minutes.
pub const ROTATION_GRACE: Duration = Duration::from_secs(10 * 60);

/// Where a secret comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SecretSource {
    /// A value given directly (tests, the sandbox); never changes.
    Value(String),
    /// An environment variable, read once (a process cannot see its environment change).
    Env(String),
    /// A file, read again when it changes; surrounding whitespace is trimmed.
    File(PathBuf),
}

/// What identifies one version of a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
    ino: u64,
}

#[derive(Default)]
struct State {
    /// The stamp of the file version `current` was read from (`None`: not read yet).
    stamp: Option<FileStamp>,
    current: Option<String>,
    /// The value before the last change, and when it was replaced.
    previous: Option<(String, Instant)>,
}

/// A secret from a [`SecretSource`] (module docs). Cheap to share behind an `Arc`.
pub struct RotatingSecret {
    source: SecretSource,
    state: Mutex<State>,
}

impl std::fmt::Debug for RotatingSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let source = match &self.source {
            SecretSource::Value(_) => "value".to_string(),
            SecretSource::Env(v) => format!("env {v}"),
            SecretSource::File(p) => format!("file {}", p.display()),
        };
        f.debug_struct("RotatingSecret")
            .field("source", &source)
            .finish_non_exhaustive()
    }
}

fn non_empty(s: String) -> Option<String> {
    let t = s.trim();
    (!t.is_empty()).then(|| t.to_string())
}

impl RotatingSecret {
    /// The secret of `source`; nothing is read until [`RotatingSecret::accepted`].
    pub fn new(source: SecretSource) -> Self {
        RotatingSecret {
            source,
            state: Mutex::new(State::default()),
        }
    }

    /// A fixed secret (`None` or empty: no secret).
    pub fn fixed(value: Option<String>) -> Self {
        Self::new(SecretSource::Value(value.unwrap_or_default()))
    }

    /// The values to accept now: the current one first, then the one it replaced if that was
    /// less than [`ROTATION_GRACE`] ago. Empty when there is no secret (unset, empty, or a file
    /// that cannot be read: logged, never its content). A file is read again when its
    /// metadata changed since the last read.
    pub fn accepted(&self) -> Vec<String> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        // Registered for redaction once per new value, not at every call (a write lock on the
        // process-wide redactor).
        let mut changed = false;
        match &self.source {
            SecretSource::Value(v) => {
                if st.stamp.is_none() {
                    st.current = non_empty(v.clone());
                    changed = true;
                    st.stamp = Some(FileStamp {
                        modified: None,
                        len: 0,
                        ino: 0,
                    });
                }
            }
            SecretSource::Env(var) => {
                if st.stamp.is_none() {
                    st.current = std::env::var(var).ok().and_then(non_empty);
                    changed = true;
                    st.stamp = Some(FileStamp {
                        modified: None,
                        len: 0,
                        ino: 0,
                    });
                }
            }
            SecretSource::File(path) => {
                let stamp = std::fs::metadata(path).ok().map(|m| FileStamp {
                    modified: m.modified().ok(),
                    len: m.len(),
                    ino: inode(&m),
                });
                if stamp.is_none() || stamp != st.stamp {
                    let read = std::fs::read_to_string(path)
                        .map_err(|e| {
                            tracing::warn!(path = %path.display(), error = %e, "cannot read a secret file");
                        })
                        .ok()
                        .and_then(non_empty);
                    if read != st.current {
                        match st.current.take() {
                            // A file that is gone or empty is no secret at all: fail closed.
                            _ if read.is_none() => st.previous = None,
                            Some(old) => st.previous = Some((old, Instant::now())),
                            None => {}
                        }
                        if st.stamp.is_some() {
                            tracing::info!(path = %path.display(), "a secret file changed: the new value is used, the old one still accepted for 10 minutes");
                        }
                        st.current = read;
                        changed = true;
                    }
                    st.stamp = stamp;
                }
            }
        }
        if let (true, Some(v)) = (changed, &st.current) {
            crate::redact::register(v);
        }
        let mut out: Vec<String> = st.current.iter().cloned().collect();
        if let Some((old, at)) = &st.previous {
            if at.elapsed() < ROTATION_GRACE && Some(old) != st.current.as_ref() {
                out.push(old.clone());
            }
        }
        out
    }
}

#[cfg(unix)]
fn inode(m: &std::fs::Metadata) -> u64 {
    std::os::unix::fs::MetadataExt::ino(m)
}

#[cfg(not(unix))]
fn inode(_: &std::fs::Metadata) -> u64 {
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_rotated_file_is_read_again_and_the_old_value_accepted_for_the_grace() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "first-secret-of-more-than-24-chars\n").unwrap();
        let s = RotatingSecret::new(SecretSource::File(path.clone()));
        assert_eq!(s.accepted(), ["first-secret-of-more-than-24-chars"]);
        // The kubelet swaps in a new file (a new inode): the next use reads it.
        let next = dir.path().join("secret.new");
        std::fs::write(&next, "second-secret-of-more-than-24-chars").unwrap();
        std::fs::rename(&next, &path).unwrap();
        assert_eq!(
            s.accepted(),
            [
                "second-secret-of-more-than-24-chars",
                "first-secret-of-more-than-24-chars"
            ]
        );
        // Both values are redacted from logs (each registered when it was first read).
        let logged = crate::redact::redact(
            "first-secret-of-more-than-24-chars second-secret-of-more-than-24-chars",
        );
        assert!(!logged.contains("secret-of"), "{logged}");
        tokio::time::advance(ROTATION_GRACE).await;
        assert_eq!(s.accepted(), ["second-secret-of-more-than-24-chars"]);
        // A file that disappears is no secret (every delivery refused), not the old value.
        std::fs::remove_file(&path).unwrap();
        assert!(s.accepted().is_empty());
    }

    #[test]
    fn fixed_and_empty_values() {
        assert!(RotatingSecret::fixed(None).accepted().is_empty());
        assert!(RotatingSecret::fixed(Some("  ".into()))
            .accepted()
            .is_empty());
        assert_eq!(
            RotatingSecret::fixed(Some("v".into())).accepted(),
            ["v".to_string()]
        );
    }
}
