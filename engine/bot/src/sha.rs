//! Commit SHAs by role, so that one cannot be passed where another is meant: the head of a pull
//! request ([`HeadSha`]), a merge commit runs are pinned to ([`MergeSha`]), and the trusted
//! policy commit ([`PolicySha`]). The journal ([`crate::journal::BotJournal`]) and every
//! function taking more than one SHA use them. Each is the SHA's hex text; serialized as a
//! plain JSON string, as the journal of earlier versions kept them.

use serde::{Deserialize, Serialize};

macro_rules! sha_type {
    ($(#[doc = $doc:literal])* $name:ident) => {
        $(#[doc = $doc])*
        #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// The SHA whose hex text is `sha` (not checked: git and GitHub gave it).
            pub fn new(sha: impl Into<String>) -> Self {
                $name(sha.into())
            }

            /// The hex text.
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// The first 7 characters, as people read commits.
            pub fn short(&self) -> &str {
                crate::short_sha(&self.0)
            }

            /// The hex text, owned.
            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

sha_type! {
    /// The head commit of a pull request: what its plan, its digests and its approvals are for.
    HeadSha
}

sha_type! {
    /// A merge commit on the default branch (`merge_commit_sha` of a merged pull request, or a
    /// wave commit of a scheduled apply): what runs are pinned to and merge records are kept by.
    MergeSha
}

sha_type! {
    /// The trusted policy commit ([`crate::trust`]): the commit whose `tkgops.yaml` and
    /// `CODEOWNERS` are the policy in force.
    PolicySha
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sha_reads_and_writes_as_its_text() {
        let h = HeadSha::new("0123456789abcdef");
        assert_eq!(h.short(), "0123456");
        assert_eq!(h.to_string(), "0123456789abcdef");
        assert_eq!(serde_json::to_string(&h).unwrap(), "\"0123456789abcdef\"");
        let m: MergeSha = serde_json::from_str("\"abc\"").unwrap();
        assert_eq!(m.as_str(), "abc");
        assert_eq!(PolicySha::new("ab").short(), "ab");
    }
}
