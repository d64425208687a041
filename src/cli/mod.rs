//! The CLI behind `main.rs`'s argument definitions: `commands` carries out the commands
//! that ask a node (or read its data dir), `render` turns what they get into text,
//! `steer` signs and sends the operator commands, `watch` is `status --watch` and
//! `progress` the progress line long commands draw on stderr.

pub(crate) mod budget;
pub(crate) mod commands;
pub(crate) mod intake;
pub(crate) mod progress;
pub(crate) mod render;
pub(crate) mod setup;
pub(crate) mod steer;
pub(crate) mod watch;
