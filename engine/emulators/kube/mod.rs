//! Emulated Kubernetes API servers (management and workload clusters) and simulated controllers.

pub mod controllers;
