//! The event log: this node's events, the timeline exchange with peers, knowledge
//! entries, and the stall watch.

use super::*;

impl Core {
    /// Raises one `stalled` event per story that stopped moving (see
    /// [`crate::core::scheduler::StallWatch`]); looks once per heartbeat period at most.
    pub(super) fn check_stalls(&mut self, now_ms: u64) {
        let after = self.cfg.stall_after_ms;
        if after == 0
            || self.cfg.passive
            || self
                .stalls_checked_ms
                .is_some_and(|t| now_ms.saturating_sub(t) < self.cfg.membership.heartbeat_ms)
        {
            return;
        }
        self.stalls_checked_ms = Some(now_ms);
        let (view, claims) = self.derived();
        let digest = self.digest;
        for (key, why) in self.stalls.observe(&view, &claims, digest, now_ms, after) {
            let (phase, round) = view
                .stories
                .get(key.as_str())
                .map_or((None, 0), |s| (s.next_phase, s.round));
            tracing::warn!(story = %key, %why, "story stalled");
            self.emit(
                EventKind::Stalled,
                Some(&key),
                phase,
                round,
                why.to_string(),
            );
        }
    }

    /// Adds an event to the timeline; a new one is persisted. True if it was new.
    pub(super) fn log_event(&mut self, ev: Event) -> bool {
        if !self.timeline.insert(ev.clone()) {
            return false;
        }
        self.effects
            .push_back(Effect::PersistEvents { events: vec![ev] });
        true
    }

    /// Merges events a peer sent (hostile input: validated, cut, deduplicated); persists
    /// the new ones in one effect. Returns how many were new.
    pub(super) fn merge_events(&mut self, events: Vec<Event>) -> usize {
        let mut fresh = Vec::new();
        for ev in events.into_iter().take(MAX_EVENTS_PER_FRAME) {
            match accept_remote(ev, self.last_wall) {
                Some(ev) => {
                    if self.timeline.insert(ev.clone()) {
                        fresh.push(ev);
                    }
                }
                None => self.counters.malformed_dropped += 1,
            }
        }
        let n = fresh.len();
        if n > 0 {
            self.effects
                .push_back(Effect::PersistEvents { events: fresh });
        }
        n
    }

    /// Loads events persisted by an earlier run (not persisted again). Own event numbers
    /// continue above the restored ones.
    pub fn restore_events(&mut self, events: Vec<Event>) {
        for ev in events {
            self.timeline.insert(ev);
        }
        if let Some(s) = self.timeline.max_seq(&self.peer, false) {
            self.event_seq = self.event_seq.max(s);
        }
        if let Some(s) = self.timeline.max_seq(&self.peer, true) {
            self.local_event_seq = self.local_event_seq.max(s & !LOCAL_SEQ_BIT);
        }
    }

    /// Records an event of this node in the local log and, unless `local_only`,
    /// publishes it on the events topic.
    pub fn emit(
        &mut self,
        kind: EventKind,
        story: Option<&str>,
        phase: Option<Phase>,
        round: u32,
        detail: impl Into<String>,
    ) {
        let local_only = matches!(
            kind,
            EventKind::PeerJoined | EventKind::PeerDead | EventKind::PeerRefused
        );
        if self.cfg.passive && !local_only {
            return;
        }
        // An event of a write not yet durable waits for it (see `write.rs`).
        if let Some(held) = self.held.as_mut() {
            held.events.push(super::write::HeldEvent {
                kind,
                story: story.map(str::to_string),
                phase,
                round,
                detail: detail.into(),
            });
            return;
        }
        // Display ids rarely change (only when two stories share a number), so an event
        // uses the last folded view when it knows the story rather than folding again.
        let story = story
            .map(|k| {
                let cached = self
                    .view
                    .as_ref()
                    .and_then(|(_, v, _)| v.stories.get(k).map(|s| s.id.to_string()));
                cached.unwrap_or_else(|| {
                    self.view()
                        .stories
                        .get(k)
                        .map_or_else(|| k.to_string(), |s| s.id.to_string())
                })
            })
            .unwrap_or_default();
        let seq = if local_only {
            self.local_event_seq += 1;
            LOCAL_SEQ_BIT | self.local_event_seq
        } else {
            self.event_seq += 1;
            self.event_seq
        };
        let ev = Event {
            node: self.peer.clone(),
            seq,
            at_ms: self.last_wall,
            kind,
            story,
            phase,
            round,
            detail: detail.into(),
        };
        if !local_only {
            self.effects.push_back(Effect::Publish {
                topic: Topic::Events,
                data: codec::encode(&ev),
            });
        }
        self.log_event(ev);
    }

    /// Adds a knowledge entry by hand (an operator's lesson); returns its id.
    pub fn add_knowledge(
        &mut self,
        kind: crate::core::model::KnowledgeKind,
        text: &str,
        wall_ms: u64,
    ) -> Result<String, String> {
        if self.cfg.passive {
            return Err(StateError::Passive.to_string());
        }
        self.last_wall = wall_ms;
        let text = text.trim();
        if text.is_empty() {
            return Err("knowledge text is empty: say what was learned".into());
        }
        if text.len() > crate::core::state::MAX_KNOWLEDGE_BYTES {
            return Err(format!(
                "knowledge text is {} bytes; the limit is {}",
                text.len(),
                crate::core::state::MAX_KNOWLEDGE_BYTES
            ));
        }
        self.user_write(wall_ms).map_err(|e| e.to_string())?;
        let id = self
            .doc
            .put_knowledge(&KnowledgeFact {
                kind,
                text: text.to_string(),
                story: String::new(),
                author: self.peer.clone(),
                written_at_ms: wall_ms,
            })
            .map_err(|e| e.to_string())?;
        self.local_write();
        self.emit(
            EventKind::PatternDiscovered,
            None,
            None,
            0,
            format!("{kind}: {text}"),
        );
        Ok(id)
    }

    /// The timeline with each event's arrival position. `after` 0: the merged history
    /// in time order (the newest `limit`); otherwise what arrived after that position, in
    /// arrival order (for following: an event a peer held may be older than ours).
    pub fn events_after(&self, after: u64, limit: usize) -> Vec<(u64, Event)> {
        if after == 0 {
            self.timeline.ordered(limit)
        } else {
            self.timeline.arrived_after(after, limit)
        }
    }

    /// The arrival position of the newest event in the timeline (grows on every new one).
    pub fn events_pos(&self) -> u64 {
        self.timeline.last_pos()
    }
}
