//! The CLI behind `main.rs`'s argument definitions: `commands` carries out the commands
//! that ask a node (or read its data dir), `render` turns what they get into text.

pub(crate) mod commands;
pub(crate) mod render;
