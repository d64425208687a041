//! A node's store as the simulator models it: the node shell over sled (`store`,
//! `node::runtime`).
//!
//! * The core's own writes (`Effect::Persist`: claims, results, releases, synced changes)
//!   are appended and not flushed; sled's background flusher makes them durable every
//!   [`FLUSH_EVERY_MS`] (the store opens sled with `flush_every_ms(200)`). The flusher's
//!   phase is drawn per incarnation. Before a sync frame leaves or a job starts, the
//!   shell flushes (`World::flush_before_send`): nothing leaves before it is durable.
//! * A user write (a story added through the API: `Sim::user_write`, here) is flushed
//!   before it is acknowledged; that flush also makes everything appended before it
//!   durable. Its append or flush may fail (a full disk, an I/O error): the write is
//!   then aborted.
//! * A clean stop flushes everything; a crash drops the tail appended since the last
//!   flush, and at a seeded fraction of crashes the first lost chunk reaches the disk
//!   torn. `Doc::load` does not survive every torn chunk (reloading the torn prefix, hostile
//!   seed 1626 failed with "unable to parse chunk: not enough data": the node would not
//!   start), but the product never reads one:
//!   sled checksums its log and drops a torn record whole. The model does what sled
//!   does: the torn chunk is lost whole ([`Tail::Torn`] counts those crashes).

use super::{Ev, Sim, WRITE_FAIL_RATE};
use rand::Rng;

/// sled's background flush period as the product's store configures it.
pub const FLUSH_EVERY_MS: u64 = 200;

/// What a crash did to the tail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Tail {
    /// Everything appended had been flushed.
    Intact,
    /// Chunks appended since the last flush were lost.
    Lost(usize),
    /// As `Lost`, and the first lost chunk was being written when the node died.
    Torn(usize),
}

#[derive(Debug, Default)]
pub(super) struct SimStore {
    /// What a restart reloads.
    pub(super) durable: Vec<Vec<u8>>,
    /// The root of the epoch `durable` holds (`None`: the mesh's first document).
    pub(super) root: Option<[u8; 32]>,
    /// The documents moves left behind, by the epoch moved to (`Store::archived`).
    pub(super) archive: std::collections::BTreeMap<u64, Vec<u8>>,
    /// Appended and not yet flushed: (appended at, chunk).
    tail: Vec<(u64, Vec<u8>)>,
    /// This incarnation's first background flush; then every [`FLUSH_EVERY_MS`].
    first_flush: u64,
}

impl SimStore {
    /// A store whose background flusher first runs at `first_flush`.
    pub(super) fn reopen(&mut self, first_flush: u64) {
        self.tail.clear();
        self.first_flush = first_flush;
    }

    pub(super) fn append(&mut self, now: u64, chunk: Vec<u8>) {
        self.tail.push((now, chunk));
    }

    /// Everything appended is durable (an explicit flush, or a clean stop's).
    pub(super) fn flush(&mut self) {
        self.durable.extend(self.tail.drain(..).map(|(_, c)| c));
    }

    /// The background flushes that ran before `now` made what was appended before them
    /// durable.
    fn background(&mut self, now: u64) {
        if now <= self.first_flush {
            return;
        }
        // The last background flush strictly before `now`.
        let last =
            self.first_flush + (now - 1 - self.first_flush) / FLUSH_EVERY_MS * FLUSH_EVERY_MS;
        let flushed = self.tail.iter().take_while(|(t, _)| *t < last).count();
        self.durable
            .extend(self.tail.drain(..flushed).map(|(_, c)| c));
    }

    /// The node dies at `now`: the unflushed tail is lost, and with probability
    /// `tear_rate` the first lost chunk was being written and reached the disk torn (and
    /// is dropped whole, as sled's checksum does).
    pub(super) fn crash(&mut self, now: u64, tear_rate: f64, rng: &mut impl Rng) -> Tail {
        self.background(now);
        let lost = self.tail.len();
        self.tail.clear();
        match lost {
            0 => Tail::Intact,
            // Torn mid-write: sled's checksum drops the record whole.
            n if rng.gen_bool(tear_rate) => Tail::Torn(n),
            n => Tail::Lost(n),
        }
    }
}

impl Sim {
    /// A node's store takes a new epoch's document (`Effect::BeginEpoch`): atomic and
    /// flushed, like the store's batch (the archive is not read by the simulator).
    pub(super) fn begin_epoch(&mut self, i: usize, s: &crate::core::EpochSwitch) {
        let store = &mut self.nodes[i].store;
        store.flush();
        let old = store.durable.concat();
        store.archive.insert(s.epoch, old);
        store.durable = vec![s.snapshot.clone()];
        store.root = Some(s.root);
        let n = s.epoch;
        if s.whole {
            self.joins += 1;
            self.note(|| format!("node{i} took up epoch {n} whole"));
        } else {
            self.moves += 1;
            self.note(|| format!("node{i} moved to epoch {n}"));
            // A new node meets peers on two epochs past the first (moving from the
            // first, they would sync it the first document as any peer's).
            if let Some(l) = self.join_on_move.filter(|_| n >= 2) {
                self.join_on_move = None;
                let at = self.now + self.rng.gen_range(0..40);
                self.at(at, super::Ev::Restart(l));
            }
        }
    }

    /// A node reads the document a move archived (`Effect::LoadPrevious`), as the store's
    /// `archived` does.
    pub(super) fn load_previous(&mut self, i: usize, epoch: u64) {
        let node = &mut self.nodes[i];
        let bytes = node.store.archive.get(&epoch);
        if let Some(core) = node.core.as_mut() {
            core.previous_loaded(bytes.map(Vec::as_slice));
        }
    }

    /// Backlog story `k` is added on its node as the node shell adds a user's story:
    /// a durable write, acknowledged once appended and flushed, aborted if the append or
    /// the flush fails (with storage faults, at a seeded [`WRITE_FAIL_RATE`]). A node
    /// that is down answers no one: the user tries again a little later.
    pub(super) fn user_write(&mut self, k: usize) {
        let i = k % self.nodes.len();
        let now = self.now;
        if !self.up(i) {
            self.at(now + FLUSH_EVERY_MS, Ev::UserWrite(k));
            return;
        }
        let (mut new, dep) = self.backlog[k].clone();
        if let Some(key) = dep.and_then(|d| self.keys[d].clone()) {
            new.depends_on.push(key);
        }
        let faults = self.cfg.storage_faults;
        let wall = if faults { self.wall(i) } else { 0 };
        self.drain(i);
        let Some(core) = self.nodes[i].core.as_mut() else {
            return;
        };
        core.begin_durable_write();
        let key = core.add_story(&new, wall).ok().map(|s| s.key);
        let chunks = core.take_write_chunks();
        let fails = faults && self.rng.gen_bool(WRITE_FAIL_RATE);
        let Some(core) = self.nodes[i].core.as_mut() else {
            return;
        };
        if fails {
            // The append or the flush failed: the shell takes the chunks back out of the
            // store and the core puts its document back.
            if self.cfg.keep_failed_writes {
                core.commit_durable_write();
            } else {
                core.abort_durable_write();
            }
            self.note(|| format!("node{i} write of story {k} failed: aborted"));
            self.aborted.push(new.title.clone());
        } else {
            core.commit_durable_write();
            let store = &mut self.nodes[i].store;
            for c in chunks {
                if faults {
                    store.append(now, c);
                } else {
                    store.durable.push(c);
                }
            }
            if !self.cfg.ack_before_flush {
                store.flush();
            }
            self.note(|| format!("node{i} wrote story {k}: {key:?}"));
            if let Some(key) = &key {
                self.acked.push((i, new.title.clone()));
                self.acked_keys.insert(new.title.clone(), key.to_string());
            }
            self.keys[k] = key.map(String::from);
        }
        self.drain(i);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    #[test]
    fn a_crash_keeps_what_a_background_flush_reached_and_loses_the_rest() {
        let mut s = SimStore::default();
        s.reopen(100);
        s.append(50, vec![1]);
        s.append(250, vec![2]);
        s.append(350, vec![3]);
        let mut rng = StdRng::seed_from_u64(0);
        // Flushes ran at 100 and 300: chunks 1 and 2 are durable, 3 is lost.
        assert_eq!(s.crash(360, 0.0, &mut rng), Tail::Lost(1));
        assert_eq!(s.durable, vec![vec![1], vec![2]]);
    }

    #[test]
    fn a_flush_makes_everything_appended_durable() {
        let mut s = SimStore::default();
        s.reopen(1_000);
        s.append(0, vec![1]);
        s.append(1, vec![2]);
        s.flush();
        let mut rng = StdRng::seed_from_u64(0);
        assert_eq!(s.crash(2, 1.0, &mut rng), Tail::Intact);
        assert_eq!(s.durable.len(), 2);
    }
}
