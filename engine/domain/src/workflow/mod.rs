//! Workflows, intents, plan rendering and the PR comment Markdown. Pure: no I/O, no tokio.
//!
//! - [`catalog`]: workflow definitions and handlebars templates from the bot's install.
//! - [`mod@plan`]: intents per cluster between two commits, and the rendered workflow for each.
//! - [`mod@impact`]: the machines a change to an existing cluster replaces, and how long it takes.
//! - [`markdown`]: the sticky PR comment (plan, live step table, final summary).

pub mod catalog;
pub mod change;
pub mod diff;
pub mod impact;
pub mod markdown;
pub mod placement;
pub mod plan;
pub mod summary;

pub use catalog::{Catalog, CatalogError, Workflow, WorkflowStep};
pub use impact::{impact, Impact, MachineGroupChange, RolloutHistory};
pub use plan::{plan, plan_unbounded, ClusterPlan, IntentKind, Plan, PlanInput, PlanStatus};
