//! Durable local writes: a write a caller waits on (a story or a knowledge entry added
//! through the API) is held until the shell has made it durable, and undone if it could
//! not be.
//!
//! The shell drains the effect queue, calls [`Core::begin_durable_write`], makes the
//! write (`add_story`, `add_knowledge`), takes its document chunks with
//! [`Core::take_write_chunks`], appends and flushes them, then calls
//! [`Core::commit_durable_write`] (the write's pushes, heartbeat and events flow as
//! usual) or [`Core::abort_durable_write`] (the document is put back as it was before
//! the write and nothing the write queued leaves the node). Between begin and end the
//! shell hands the core no other input, so no peer can see the write before it is
//! durable.

use super::*;

/// A local write held until the shell says whether it is durable.
#[derive(Debug)]
pub(super) struct HeldWrite {
    /// The document's heads and stored size before the write: it goes back there if
    /// the write is not durable ([`Doc::rewound`]).
    heads: Vec<crate::core::state::ChangeHash>,
    stored: u64,
    /// Events the write raised: emitted once it is durable, dropped if not.
    pub(super) events: Vec<HeldEvent>,
}

/// An event raised during a held write (the arguments of [`Core::emit`]).
#[derive(Debug)]
pub(super) struct HeldEvent {
    pub(super) kind: EventKind,
    pub(super) story: Option<String>,
    pub(super) phase: Option<Phase>,
    pub(super) round: u32,
    pub(super) detail: String,
}

impl Core {
    /// Checks a write a user asked for (a story, a knowledge entry, a roster fact)
    /// against the caps: at most `max_writes_per_minute`, and none once the document is
    /// past 90 % of its size cap — the rest is kept for the work already in flight
    /// (claims, results, merges), so a full document still finishes what it started.
    pub(super) fn user_write(&mut self, wall_ms: u64) -> Result<(), StateError> {
        let cap = self.doc.size_cap();
        let stored = self.doc.stored_bytes();
        if stored > cap - cap / 10 {
            return Err(StateError::Full { stored, cap });
        }
        self.writes
            .take(1, wall_ms)
            .map_err(|retry_ms| StateError::RateLimited {
                per_minute: self.cfg.limits.max_writes_per_minute,
                retry_ms,
            })
    }

    /// The simulator's Byzantine-lite node: `act` writes anything into the document (raw
    /// values, deletes), which is then persisted and pushed like a local write. A real
    /// node never calls it.
    #[doc(hidden)]
    pub fn hostile_write(&mut self, act: impl FnOnce(&mut Doc)) {
        act(&mut self.doc);
        self.local_write();
    }

    /// Starts a local write whose caller waits until it is durable. The shell must have
    /// drained the effect queue first: everything queued from here to the end of the
    /// write belongs to the write. A write already held is committed first.
    pub fn begin_durable_write(&mut self) {
        self.commit_durable_write();
        self.held = Some(HeldWrite {
            heads: self.doc.heads(),
            stored: self.doc.stored_bytes(),
            events: Vec::new(),
        });
    }

    /// The document chunks of the held write, taken out of the effect queue: the shell
    /// makes them durable before anything else about the write leaves the node.
    pub fn take_write_chunks(&mut self) -> Vec<Vec<u8>> {
        let queued = std::mem::take(&mut self.effects);
        let mut chunks = Vec::new();
        for e in queued {
            match e {
                Effect::Persist { chunk } => chunks.push(chunk),
                other => self.effects.push_back(other),
            }
        }
        chunks
    }

    /// The held write is durable: its events are raised and its pushes and heartbeat
    /// leave with the next effects. Nothing to do without a held write.
    pub fn commit_durable_write(&mut self) {
        let Some(held) = self.held.take() else {
            return;
        };
        for ev in held.events {
            self.emit(ev.kind, ev.story.as_deref(), ev.phase, ev.round, ev.detail);
        }
    }

    /// The held write could not be made durable: the document goes back to what it was
    /// before the write, and the pushes, heartbeat, events and chunks the write queued
    /// are dropped, so no peer and no later persist ever sees it. Nothing to do without
    /// a held write.
    pub fn abort_durable_write(&mut self) {
        let Some(held) = self.held.take() else {
            return;
        };
        // The heads are this document's own, so going back cannot fail; if it somehow
        // did, the document is left as it is rather than lost.
        if let Ok(before) = self.doc.rewound(&held.heads, held.stored) {
            self.doc = before;
        }
        self.digest = self.doc.heads_digest();
        self.view = None;
        self.effects.clear();
        self.push_pending = false;
    }

    /// Whether a local write is held (see [`Core::begin_durable_write`]).
    pub fn write_held(&self) -> bool {
        self.held.is_some()
    }
}
