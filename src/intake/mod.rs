//! Work brought in from outside: stories in bulk from a JSON-lines file
//! (`story add --from FILE`, [`bulk`]), an ai-sdlc backlog in and out
//! (`import`/`export`, [`aisdlc`]), issues from GitHub by signed webhook ([`github`])
//! and the `[intake]` config ([`config`]).

pub mod aisdlc;
pub mod bulk;
pub mod config;
pub mod github;

pub use bulk::{parse_jsonl, LineError, StoryBatch};
pub use config::IntakeConfig;
