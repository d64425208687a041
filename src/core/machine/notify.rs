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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::notify::{notified_hash, TriggerKind};

    const PERIOD: u64 = 1_000;

    /// A core that sends the digest every `PERIOD` (sinks for every kind).
    fn sender(name: &str, actor: u8) -> Core {
        let kinds: BTreeSet<TriggerKind> = TriggerKind::ALL.into_iter().collect();
        let mut c = Core::new(
            name.to_string(),
            CoreConfig {
                membership: MembershipConfig::default(),
                roles: kinds.iter().map(|k| k.role()).collect(),
                capacity: 1,
                role_limits: BTreeMap::new(),
                max_sync_bytes: 1 << 20,
                passive: false,
                lease: LeaseConfig::default(),
                work: false,
                broken_winner_rule: false,
                check_view: false,
                stall_after_ms: 0,
                origin_breaker: Default::default(),
                merge_gate: None,
                epoch_after: 0,
                limits: Default::default(),
                triggers: Default::default(),
                budget: Default::default(),
            },
            Doc::new([actor; 16]).with_test_names(),
            1,
        );
        c.set_notify(NotifyConfig {
            kinds,
            digest_period_ms: PERIOD,
            warmup_ms: 1_000,
            ..Default::default()
        });
        c.announce_node("test");
        c
    }

    /// Carries `src`'s effects to `dst` (heartbeats; sync and probes, answers straight
    /// back); true
    /// if any moved.
    fn carry(src: &mut Core, dst: &mut Core, now: u64) -> bool {
        let mut moved = false;
        while let Some(e) = src.poll_effect() {
            moved = true;
            let from = src.peer().to_string();
            match e {
                Effect::Publish {
                    topic: Topic::Heartbeat,
                    data,
                } => dst.handle(now, Input::Heartbeat { from, data }),
                Effect::SendSync { data, .. } => {
                    dst.handle(
                        now,
                        Input::SyncRequest {
                            from,
                            data,
                            reply: 0,
                        },
                    );
                    while let Some(r) = dst.poll_effect() {
                        if let Effect::Respond { data, .. } = r {
                            let from = dst.peer().to_string();
                            src.handle(now, Input::SyncResponse { from, data });
                        }
                    }
                }
                Effect::Probe { data, .. } => {
                    dst.handle(
                        now,
                        Input::Probe {
                            from,
                            data,
                            reply: 0,
                        },
                    );
                    while let Some(r) = dst.poll_effect() {
                        if let Effect::ProbeAnswer { data, .. } = r {
                            let from = dst.peer().to_string();
                            src.handle(now, Input::ProbeAnswer { from, data });
                        }
                    }
                }
                _ => {}
            }
        }
        moved
    }

    /// Carries effects both ways until both cores are quiet.
    fn pump(a: &mut Core, b: &mut Core, now: u64) {
        for _ in 0..100 {
            let ab = carry(a, b, now);
            let ba = carry(b, a, now);
            if !ab && !ba {
                return;
            }
        }
        panic!("no quiescence");
    }

    /// Both beat and sync at `now`; what each finds due at wall time `wall`.
    fn step(a: &mut Core, b: &mut Core, now: u64, wall: u64) -> (Vec<String>, Vec<String>) {
        a.heartbeat(now, wall);
        b.heartbeat(now, wall);
        pump(a, b, now);
        a.tick(now, wall);
        b.tick(now, wall);
        let ids = |v: Vec<Trigger>| v.into_iter().map(|t| t.id).collect::<Vec<_>>();
        (ids(a.notify_due(now, wall)), ids(b.notify_due(now, wall)))
    }

    #[test]
    fn one_core_sends_records_and_the_other_never_sends_it_even_once_the_sender_is_dead() {
        let (mut a, mut b) = (sender("A", 1), sender("B", 2));
        // Warming up: nothing yet.
        assert_eq!(step(&mut a, &mut b, 0, 4_500), (vec![], vec![]));
        assert_eq!(step(&mut a, &mut b, 600, 4_500), (vec![], vec![]));
        let (da, db) = step(&mut a, &mut b, 1_200, 4_500);
        let id = "digest/3".to_string();
        assert_eq!(
            usize::from(da.contains(&id)) + usize::from(db.contains(&id)),
            1,
            "one owner: {da:?} {db:?}"
        );
        let (owner, other) = if da.contains(&id) {
            (&mut a, &mut b)
        } else {
            (&mut b, &mut a)
        };
        owner.notify_finished(1_300, 4_600, &id, SendResult::Delivered, 0);
        pump(owner, other, 1_300);
        let hash = notified_hash(&id);
        let by = other.view().notified.get(&hash).map(|f| f.by.clone());
        assert_eq!(
            by.as_deref(),
            Some(owner.peer()),
            "the record reached the other"
        );
        // A later digest the owner owns: the other sends it only once the owner is dead
        // (silent past dead-after), and never the recorded one.
        let me = owner.peer().to_string();
        let k = (5..)
            .find(|k| {
                crate::core::notify::owner(&format!("digest/{k}"), ["A", "B"]) == Some(me.as_str())
            })
            .expect("some digest is the owner's");
        let wall = (k + 1) * PERIOD + 1;
        let mut sent = Vec::new();
        for now in [2_000, 3_000, 4_000, 5_000, 6_000, 7_000] {
            other.heartbeat(now, wall);
            other.tick(now, wall);
            let due: Vec<String> = other
                .notify_due(now, wall)
                .into_iter()
                .map(|t| t.id)
                .collect();
            assert!(!due.contains(&id), "recorded: never again");
            let dead = other.peer_state(&me, now) == Some(PeerState::Dead);
            assert_eq!(
                due.contains(&format!("digest/{k}")),
                dead,
                "at {now}: {due:?}"
            );
            sent.extend(due);
        }
        assert_eq!(
            sent,
            [format!("digest/{k}")],
            "taken over once the owner died"
        );
        assert_eq!(other.notify_status().in_flight, 1);
    }
}
