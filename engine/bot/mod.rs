//! The pull-request loop: poll GitHub, plan each new head SHA, run on merge, report back.
