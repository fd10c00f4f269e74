//! Workflows, intents, plan rendering and the PR comment Markdown. Pure: no I/O, no tokio.
