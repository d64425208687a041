//! The pure core: everything that decides, nothing that does I/O.
//!
//! Modules here never read a clock (time is an argument), never touch the network, the
//! disk or a child process, never draw randomness, and never import a shell (`net`,
//! `store`, `node`, `api`, `exec`, `git`, `work`, `fence`, `config`, `identity`, `demo`)
//! or an I/O crate (tokio, libp2p, git2, sled). `tests/boundary.rs` enforces it. The
//! shells beside this folder carry the core's effects out; the simulator (`crate::sim`)
//! drives many cores with a virtual clock and network.
//!
//! - [`model`]: plain data (stories, phases, handoffs, events, limits);
//! - [`codec`]: the wire format (version byte + bincode, size-capped decodes);
//! - [`imported`]: what an imported story brings (progress, the tracker's fields);
//! - [`state`]: the automerge document of write-once facts and `View`, its pure fold;
//! - [`membership`]: heartbeats in, alive/suspect/dead out;
//! - [`lease`]: claims, fencing tokens, the winner rule, expiry;
//! - [`limits`]: the caps on what one member can make a node spend (document size,
//!   write rate, ingress rate);
//! - [`fence`]: the fencing rule at the git origin (record, token check, merge token);
//! - [`scheduler`]: what to run next, and why a story waits;
//! - [`breaker`]: when to stop and resume claiming while the git origin is unavailable;
//! - [`timeline`]: the bounded, deduplicated mesh-wide event timeline;
//! - [`notify`]: notification triggers, their owner, retries and the delivery record;
//! - [`sim_handoff`]: the simulated executor's handoffs, shared by `exec::sim` and `sim`;
//! - the node state machine ([`Core`], [`Input`], [`Effect`]) in `machine`.

pub mod attention;
pub mod breaker;
pub mod calendar;
pub mod codec;
pub mod fence;
pub mod imported;
pub mod lease;
pub mod limits;
mod machine;
pub mod membership;
pub mod model;
pub mod notify;
pub mod scheduler;
pub mod sim_handoff;
pub mod state;
pub mod timeline;
pub mod trust;

pub use machine::*;
