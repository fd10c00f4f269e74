//! Integration and end-to-end tests of what needs the emulators, moto, the bot or its binaries.
//! One test binary (linking the full dependency set once), one module per area. The domain's
//! and the engine's own tests are in `engine/domain/tests/` and `engine/engine/tests/`.

mod support;

mod aws;
mod capi_rollout;
mod chaos;
mod chart;
mod cli;
mod crash_window;
mod day2;
mod drift;
mod e2e;
mod github;
mod github_app;
mod kube;
mod kube_ctrl;
mod kube_provider;
mod kubectl;
mod lease;
mod metrics;
mod operations;
mod proxy;
mod queue;
mod rbac;
mod real_systems;
mod rotation;
mod schedules;
mod shutdown;
mod tkg2;
mod tmc;
mod trust;
mod trust_chain;
