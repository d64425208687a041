//! Notifications in the running core: the triggers this node owns and may send now
//! (pulled by the shell after each tick), the end of each send (the delivery record
//! written on success or a refusal for good, a retry scheduled otherwise), and the
//! state `status` shows. The decisions are [`crate::core::notify`]'s; this wires them
//! to the view, the timeline, membership and the guards.

use super::*;
use crate::core::notify::{NotifyConfig, NotifyStatus, SendResult, Trigger};

impl Core {
    /// This node's notification settings (its sinks' kinds, the digest period, …).
    pub fn set_notify(&mut self, cfg: NotifyConfig) {
        self.notify = crate::core::notify::Notifier::new(cfg);
    }

    /// Triggers derived elsewhere (the budget code's [`crate::core::notify::budget_exhausted`])
    /// that join the derived ones from now on.
    pub fn set_notify_extra(&mut self, triggers: Vec<Trigger>) {
        self.notify_extra = triggers;
    }

    /// The triggers this node owns and should send now; each is in flight until
    /// [`Core::notify_finished`]. Nothing while it is warming up, joining, stopping,
    /// passive or not a member.
    pub fn notify_due(&mut self, now_ms: u64, wall_ms: u64) -> Vec<Trigger> {
        if !self.notify.enabled() || self.cfg.passive {
            return Vec::new();
        }
        self.notify.tick(now_ms);
        loop {
            let events = self.timeline.arrived_after(self.notify.events_pos(), 1000);
            if events.is_empty() {
                break;
            }
            self.notify.read_events(&events);
        }
        let ready = !self.stopping && self.may_work_on_roster() && self.joining(now_ms).is_none();
        let view = self.view();
        let (membership, refused) = (&self.membership, &self.refused);
        let not_dead = |p: &str| {
            !refused.contains(p)
                && matches!(
                    membership.state(p, now_ms),
                    Some(PeerState::Alive | PeerState::Suspect)
                )
        };
        let me = self.peer.clone();
        let extra = &self.notify_extra;
        self.notify
            .due(&view, &me, now_ms, wall_ms, ready, extra, not_dead)
    }

    /// A send of trigger `id` ended: on delivery (or a refusal for good) the record is
    /// written, so no node sends it again; on failure it is retried after a backoff with
    /// `jitter` (drawn by the shell).
    pub fn notify_finished(
        &mut self,
        now_ms: u64,
        wall_ms: u64,
        id: &str,
        result: SendResult,
        jitter: u64,
    ) {
        let me = self.peer.clone();
        let Some(fact) = self
            .notify
            .finished(id, result, &me, now_ms, wall_ms, jitter)
        else {
            return;
        };
        match self.doc.put_notified(&fact) {
            Ok(true) => self.local_write(),
            Ok(false) => {}
            Err(e) => tracing::error!(error = %e, id, "cannot record a notification as sent"),
        }
    }

    /// What `status` shows of the notifications.
    pub fn notify_status(&self) -> NotifyStatus {
        self.notify.status()
    }
}
