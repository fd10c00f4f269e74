//! git2 access to the config repository: fetch, diff between commits, read files at a commit.
