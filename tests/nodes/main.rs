//! Real nodes on loopback: every test that starts in-process nodes, in one test binary.
//!
//! Each file here was its own test binary, and each linked and optimised the same node
//! runtime and helpers again (about 45 s of compile apiece on 2 cores); one binary
//! builds them once. Run one file's tests with `cargo test --test nodes flow::`.

#[path = "../common/mod.rs"]
mod common;

mod budget;
mod claims;
mod command_flow;
mod durable_writes;
mod flow;
mod mesh;
mod metrics;
mod never_alone;
mod notify;
mod paused_holder;
mod rate_limits;
mod roster;
mod steering;
mod timeline;
mod watch;
