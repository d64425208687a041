//! mesh-agent: a peer-to-peer mesh of AI coding agents that work one backlog together
//! with no central coordinator.
//!
//! The crate is a sans-IO core (`core/`: the node state machine and everything it decides
//! with) wrapped by thin shells that do I/O (`net`, `store`, `node`, `api`, `exec`, `git`,
//! `work`, `fence`), plus a deterministic simulator (`sim/`) that drives many cores on a
//! virtual clock and network. See docs/ARCHITECTURE.md for the module map and the
//! invariants each module keeps.

pub mod api;
pub mod config;
pub mod core;
pub mod dashboard;
pub mod demo;
pub mod exec;
pub mod fence;
pub mod git;
pub mod identity;
pub mod intake;
pub mod metrics;
pub mod net;
pub mod node;
pub mod notify;
pub mod sim;
pub mod store;
pub mod work;
