//! The Byzantine-lite node of the simulator (`SimConfig::byzantine`): a member with a key
//! of its own — what anyone holding the mesh key can be — that, besides running an
//! honest core, forges facts at random moments. Each forgery goes into its document as
//! a raw write and travels to its peers like any change; the invariants then check that
//! no honest fold counted any of it.
//!
//! The forgeries: another author's fact overwritten with a value signed by the forger
//! but labelled as that author (a bad signature), or signed as itself (not its key to
//! write); a fact deleted; a fact replayed at its own key or copied to another key; a
//! claim in another node's name; a claim of its own with an inflated token; and a
//! takeover release of another node's claim (which any member may write, and which
//! must never un-count finished work).

use super::Sim;
use crate::core::lease::{claim_id, ClaimFact, ReleaseFact, ReleaseReason, Resource};
use crate::core::model::Phase;
use crate::core::trust::{claimed_author, Signer};
use rand::Rng;

/// The JSON inside a sealed value (after `m1 <author> <signature> `).
fn sealed_json(value: &str) -> Option<&str> {
    let mut parts = value.splitn(4, ' ');
    parts.nth(3)
}

impl Sim {
    /// Node `i` forges once.
    pub(super) fn forge(&mut self, i: usize) {
        let me = self.names[i].clone();
        let signer = Signer::for_test(&me);
        let others: Vec<String> = self.names.iter().filter(|n| **n != me).cloned().collect();
        let act = self.rng.gen_range(0..8u32);
        let pick: usize = self.rng.gen();
        let token_back: u64 = self.rng.gen_range(0..3);
        let other = others[pick % others.len().max(1)].clone();
        let Some(core) = self.nodes[i].core.as_mut() else {
            return;
        };
        let keys: Vec<String> = core.doc().fact_keys().map(str::to_string).collect();
        if keys.is_empty() {
            return;
        }
        self.forgeries += 1;
        let key = keys[pick % keys.len()].clone();
        let (now, trace) = (self.now, self.cfg.trace);
        if trace {
            let what = [
                "overwrites, labelled as its author,",
                "overwrites, as itself,",
                "deletes",
                "replays",
                "copies",
                "claims in another's name beside",
                "claims with an inflated token beside",
                "releases (takeover) a claim beside",
            ][act.min(7) as usize];
            self.trace
                .push(format!("{now:>7} node{i} forges: {what} {key}"));
        }
        let current = core.doc().raw_get(&key);
        let view = core.doc().view();
        let story = view
            .stories
            .keys()
            .nth(pick % view.stories.len().max(1))
            .cloned();
        core.hostile_write(|doc| match act {
            // Signed by the forger, labelled as the fact's author.
            0 => {
                if let Some(author) = current.as_deref().and_then(claimed_author) {
                    let json = current.as_deref().and_then(sealed_json).unwrap_or("{}");
                    let forged = signer.seal(&key, json).replacen(&me, author, 1);
                    doc.raw_put(&key, forged);
                }
            }
            // Signed and labelled as the forger: not its key to write.
            1 => {
                if let Some(json) = current.as_deref().and_then(sealed_json) {
                    doc.raw_put(&key, signer.seal(&key, json));
                }
            }
            2 => doc.raw_delete(&key),
            // Replayed at its own key, or copied to another.
            3 => {
                if let Some(v) = current {
                    doc.raw_put(&key, v);
                }
            }
            4 => {
                if let Some(v) = current {
                    let to = &keys[(pick / 7) % keys.len()];
                    doc.raw_put(to, v);
                }
            }
            // A claim in another node's name, with the next token.
            5 => {
                if let Some(s) = &story {
                    if let Ok(r) = Resource::story(s, Phase::Implement) {
                        let token = view.claims().next_token(&r);
                        let id = claim_id(&other, 990_000 + pick as u64 % 1000);
                        let fact = ClaimFact {
                            resources: vec![(r, token)],
                            holder: other.clone(),
                            ttl_ms: 60_000,
                            written_at_ms: 0,
                            attempt: 1,
                            after: None,
                        };
                        let key = format!("claim/{id}");
                        let json = serde_json::to_string(&fact).unwrap_or_default();
                        doc.raw_put(&key, signer.seal(&key, &json).replacen(&me, &other, 1));
                    }
                }
            }
            // A claim of its own with a token from nowhere.
            6 => {
                if let Some(s) = &story {
                    if let Ok(r) = Resource::story(s, Phase::Merge) {
                        let id = claim_id(&me, 980_000 + pick as u64 % 1000);
                        let fact = ClaimFact {
                            resources: vec![(r, u64::MAX - token_back)],
                            holder: me.clone(),
                            ttl_ms: u64::MAX,
                            written_at_ms: 0,
                            attempt: 1,
                            after: None,
                        };
                        let key = format!("claim/{id}");
                        let json = serde_json::to_string(&fact).unwrap_or_default();
                        doc.raw_put(&key, signer.seal(&key, &json));
                    }
                }
            }
            // A takeover release of another node's claim: its to write, as any member's.
            _ => {
                if let Some(id) = view
                    .claims
                    .iter()
                    .filter(|(_, c)| c.holder != me)
                    .map(|(id, _)| id)
                    .nth(pick % view.claims.len().max(1))
                {
                    let key = format!("release/{id}");
                    let fact = ReleaseFact {
                        why: ReleaseReason::Expired,
                        note: format!("forged by {me}"),
                    };
                    let json = serde_json::to_string(&fact).unwrap_or_default();
                    doc.raw_put(&key, signer.seal(&key, &json));
                }
            }
        });
        self.drain(i);
    }
}
