//! The origin's health as the core sees it: why a job failed (the work, or the origin),
//! the breaker's transitions and their events, the idle node's probes, and the cleanup
//! of work this node pushed for stories that have since finished.

use super::*;

/// Why a job ended without a handoff.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobFailure {
    /// The work failed (the executor, the tests, the fence): a failed attempt, counted
    /// toward the story's attempt limit.
    Work(String),
    /// The git origin could not be reached or refused us (network, server, credentials):
    /// not the work's fault. No attempt is counted, the claim is released for anyone to
    /// take again, and this node backs off (`crate::core::breaker`).
    Origin(String),
    /// The agent's provider refused for its rate limit (`retry_after_ms`: when it said
    /// to come back). No attempt is counted; this node backs off and claims more slowly.
    RateLimited {
        reason: String,
        retry_after_ms: Option<u64>,
    },
}

impl From<&str> for JobFailure {
    fn from(reason: &str) -> JobFailure {
        JobFailure::Work(reason.to_string())
    }
}

impl Core {
    /// A job or a probe reached the origin: close the breaker if it was open.
    pub(super) fn origin_answers(&mut self, now_ms: u64) {
        if let Some(OriginTransition::Closed { down_ms }) = self.origin.succeeded(now_ms) {
            tracing::info!(down_ms, "the origin is back: claiming again");
            self.emit(
                EventKind::GitAvailable,
                None,
                None,
                0,
                format!(
                    "the origin answers again after {:.1} s: claiming again",
                    down_ms as f64 / 1000.0
                ),
            );
        }
    }

    /// Asks the shell to probe the origin when the breaker is open and no job will.
    pub(super) fn probe_origin_if_due(&mut self, now_ms: u64) {
        if self.cfg.work && !self.stopping && self.origin.probe_due(now_ms, self.local.len()) {
            self.origin.claimed(now_ms);
            self.effects.push_back(Effect::ProbeOrigin);
        }
    }

    /// The shell's answer to [`Effect::ProbeOrigin`].
    pub(super) fn origin_probed(&mut self, now_ms: u64, outcome: Result<(), String>) {
        match outcome {
            Ok(()) => {
                self.origin_answers(now_ms);
                let wall = self.last_wall;
                self.check_claims(now_ms, wall);
            }
            Err(reason) => {
                tracing::debug!(%reason, "the origin still does not answer");
                self.origin.failed(now_ms, &reason);
            }
        }
    }

    /// Work this node pushed (any implement or rework it started, finished or cancelled)
    /// may reach the origin after the story landed or was blocked (its claim was taken
    /// over while it ran, or it ran on the losing side of a partition), when the merge's
    /// own cleanup is done: once the story is finished in
    /// the view, this node drops the story's work refs (`Effect::DropWorkRefs`), once per
    /// story. Whether the push "counted" cannot tell: a takeover's implement with a higher
    /// token counts in the view though the landing was built on the one before it (chaos
    /// seeds 302 and 307); an extra drop costs one fetch, in the background.
    pub(super) fn drop_stale_pushes(&mut self) {
        if self.pushed.is_empty() {
            return;
        }
        let view = self.view();
        let mut drop = Vec::new();
        self.pushed.retain(|(story, _claim)| {
            let finished = view.stories.get(story.as_str()).is_none_or(|s| {
                matches!(
                    s.status,
                    StoryStatus::Merged | StoryStatus::Blocked | StoryStatus::Cancelled
                )
            });
            if finished && !drop.contains(story) && view.stories.contains_key(story.as_str()) {
                drop.push(story.clone());
            }
            !finished
        });
        for story in drop {
            self.effects.push_back(Effect::DropWorkRefs { story });
        }
    }

    /// Whether the origin answers (the breaker's state), for `status`.
    pub fn origin_health(&self, now_ms: u64) -> OriginHealth {
        self.origin.health(now_ms)
    }
}
