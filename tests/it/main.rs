//! Integration tests. One test binary (linking the full dependency set once), one module per area.

mod support;

mod aws;
mod capi_rollout;
mod cli;
mod day2;
mod e2e;
mod engine;
mod github;
mod kube;
mod kube_ctrl;
mod kube_provider;
mod kubectl;
mod plan;
mod queue;
mod real_systems;
mod schedules;
mod tkg2;
mod tmc;
mod trust;
mod trust_chain;
mod validate;
