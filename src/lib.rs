//! mesh-agent: a peer-to-peer mesh of AI coding agents that work one backlog together
//! with no central coordinator.
//!
//! The crate is a sans-IO core (`model`, `state`, `membership`, `codec`) wrapped by thin
//! shells that do I/O (`net`, `store`, `node`, `api`). See docs/ARCHITECTURE.md for the
//! module map and the invariants each module keeps.

pub mod api;
pub mod codec;
pub mod config;
pub mod core;
pub mod demo;
pub mod exec;
pub mod fence;
pub mod git;
pub mod identity;
pub mod lease;
pub mod membership;
pub mod model;
pub mod net;
pub mod node;
pub mod scheduler;
pub mod sim;
pub mod state;
pub mod store;
pub mod timeline;
pub mod work;
