//! GitHub `CODEOWNERS` files: who must approve a change to which path. tkgops reads the file of
//! the default branch as it was before the change (security rule 1) and requires, for every
//! changed path that has owners, an approval from one of them (GitHub's "Require review from
//! Code Owners").
//!
//! Syntax (GitHub docs, "About code owners"): one rule per line, `PATTERN OWNER...`; `#` starts
//! a comment; owners are `@user`, `@org/team` or an e-mail address; the last matching rule
//! wins, and a rule without owners makes its paths unowned. Patterns follow `.gitignore`: a
//! leading `/` or a `/` inside anchors the pattern at the repository root, otherwise it matches
//! at any depth; a trailing `/` matches a directory's contents; `*` does not cross `/`, `**`
//! does. `!` negation and `[ ]` ranges are not supported by GitHub and are refused here.

use globset::{GlobBuilder, GlobMatcher};

/// Where GitHub looks for the file, in order (the first one found is used).
pub const CODEOWNERS_PATHS: &[&str] = &[".github/CODEOWNERS", "CODEOWNERS", "docs/CODEOWNERS"];

/// One rule of a `CODEOWNERS` file.
#[derive(Clone, Debug)]
struct Rule {
    matchers: Vec<GlobMatcher>,
    owners: Vec<String>,
}

/// A parsed `CODEOWNERS` file.
#[derive(Clone, Debug, Default)]
pub struct CodeOwners {
    rules: Vec<Rule>,
}

/// A line of a `CODEOWNERS` file that could not be used (1-based line, why).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CodeOwnersError {
    /// 1-based line number.
    pub line: u32,
    /// What is wrong with it.
    pub message: String,
}

impl CodeOwners {
    /// Parses `text`. Returns the usable rules and one error per line that cannot be used (a
    /// negated pattern, an invalid glob); GitHub ignores such lines too.
    pub fn parse(text: &str) -> (CodeOwners, Vec<CodeOwnersError>) {
        let mut rules = Vec::new();
        let mut errors = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.split_once(" #").map_or(raw, |(l, _)| l).trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut parts = line.split_whitespace();
            let Some(pattern) = parts.next() else {
                continue;
            };
            let owners: Vec<String> = parts.map(str::to_string).collect();
            let err = |message: String| CodeOwnersError {
                line: i as u32 + 1,
                message,
            };
            if pattern.starts_with('!') || pattern.contains('[') {
                errors.push(err(format!(
                    "pattern {pattern:?}: negation and character ranges are not supported in CODEOWNERS"
                )));
                continue;
            }
            match matchers(pattern) {
                Ok(matchers) => rules.push(Rule { matchers, owners }),
                Err(e) => errors.push(err(format!("pattern {pattern:?}: {e}"))),
            }
        }
        (CodeOwners { rules }, errors)
    }

    /// The owners of `path` (relative to the repository root, `/`-separated): those of the last
    /// matching rule; empty when no rule matches or the last one lists no owner.
    pub fn owners_of(&self, path: &str) -> &[String] {
        self.rules
            .iter()
            .rev()
            .find(|r| r.matchers.iter().any(|m| m.is_match(path)))
            .map(|r| r.owners.as_slice())
            .unwrap_or(&[])
    }
}

/// The globs equivalent to one `.gitignore`-style pattern: the path itself and, as a
/// directory, everything below it.
fn matchers(pattern: &str) -> Result<Vec<GlobMatcher>, globset::Error> {
    let dir_only = pattern.ends_with('/');
    let trimmed = pattern.trim_end_matches('/');
    let anchored = trimmed.starts_with('/') || trimmed.contains('/');
    let body = trimmed.trim_start_matches('/');
    let base = if anchored || body.starts_with("**") {
        body.to_string()
    } else {
        format!("**/{body}")
    };
    let mut globs = vec![format!("{base}/**")];
    if !dir_only {
        globs.push(base);
    }
    globs
        .iter()
        .map(|g| {
            GlobBuilder::new(g)
                .literal_separator(true)
                .build()
                .map(|g| g.compile_matcher())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_matching_rule_wins_with_gitignore_anchoring() {
        let (co, errors) = CodeOwners::parse(
            "# owners\n* @acme/platform\nclusters/ @acme/cluster-admins # any depth? no: anchored\n/clusters/prod-*/ @alice @bob\n*.md\ntkgops.yaml @acme/security\n!x @y\n",
        );
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].line, 7);
        assert_eq!(
            co.owners_of("README.md"),
            &[] as &[String],
            "no owners: unowned"
        );
        assert_eq!(co.owners_of("examples/a.yaml"), ["@acme/platform"]);
        assert_eq!(
            co.owners_of("clusters/team-a/cluster-config.yaml"),
            ["@acme/cluster-admins"]
        );
        assert_eq!(
            co.owners_of("clusters/prod-eu/cluster-config.yaml"),
            ["@alice", "@bob"]
        );
        // ... but a later rule matching the same path wins.
        assert_eq!(
            co.owners_of("clusters/prod-eu/tkgops.yaml"),
            ["@acme/security"]
        );
        // `tkgops.yaml` has no slash: it matches at any depth.
        assert_eq!(co.owners_of("tkgops.yaml"), ["@acme/security"]);
        assert_eq!(
            co.owners_of("clusters/dev-1/tkgops.yaml"),
            ["@acme/security"]
        );
        // `*` does not cross directories.
        let (co, _) = CodeOwners::parse("/clusters/*.yaml @carol\n");
        assert_eq!(co.owners_of("clusters/a.yaml"), ["@carol"]);
        assert!(co.owners_of("clusters/x/a.yaml").is_empty());
    }
}
