//! Typed writes: every fact is sealed in the writer's name and checked as every peer
//! will check it before it is written (a refused write is never made), plus the
//! operator's pre-sealed roster facts and the hostile raw writes of tests and the
//! simulator.

use super::*;

impl Doc {
    /// How this document's writer seals in `author`'s name, or why it cannot.
    pub(super) fn sealer(&self, author: &str) -> Result<Sealer<'_>, String> {
        match &self.writer {
            Writer::Node(s) if s.author() == author => Ok(Sealer::Own(s)),
            Writer::Node(s) => Err(format!(
                "this node signs as {}, not as {author}",
                s.author()
            )),
            Writer::AnyTestName if self.scheme == KeyScheme::Unchecked => {
                Ok(Sealer::Unchecked(author.to_string()))
            }
            Writer::AnyTestName => Ok(Sealer::Test(Box::new(Signer::for_test(author)))),
            Writer::None => Err("this copy of the document has no signing key".into()),
        }
    }

    /// Why nothing `author` writes would count on this document's roster, if so.
    pub(super) fn may_write(&self, author: &str) -> Result<(), String> {
        if self.roster.is_member(author) {
            return Ok(());
        }
        Err(if self.roster.revoked.contains_key(author) {
            format!("{author} was revoked by an operator: nothing it writes counts")
        } else {
            format!(
                "{author} is not on the mesh's roster, so nothing it writes would count: \
                 an operator must run `mesh-agent admit {author}` first"
            )
        })
    }

    /// Whether a signature by this node's signer needs checking: its first under this
    /// document's key scheme is checked as peers will check it (an author whose key the
    /// scheme does not map to its signing key would be refused); one it makes after that
    /// is made the same way (~50 µs a check: ~40 % of a bulk load's time at 100,000
    /// stories was checking its own).
    pub(super) fn check_own(&self, own: bool) -> bool {
        !(own && self.own_seals_hold == Some(self.scheme))
    }

    /// Seals one fact in `author`'s name and checks it as every peer will; the sealed
    /// value, or why it cannot be written.
    pub(super) fn seal_checked<T: Serialize>(
        &mut self,
        key: &str,
        fact: &T,
        author: &str,
    ) -> Result<String, StateError> {
        let json = serde_json::to_string(fact).map_err(|e| StateError::Write {
            key: key.to_string(),
            why: e.to_string(),
        })?;
        self.seal_json_checked(key, &json, author)
    }

    /// [`Doc::seal_checked`] of a fact already in JSON.
    pub(super) fn seal_json_checked(
        &mut self,
        key: &str,
        json: &str,
        author: &str,
    ) -> Result<String, StateError> {
        let write_err = |why: String| StateError::Write {
            key: key.to_string(),
            why,
        };
        let sealer = self.sealer(author).map_err(write_err)?;
        let own = sealer.is_own();
        let sealed = sealer.seal(key, json);
        // What peers would refuse is never written: the writer hears why.
        let kind = FactKind::of_key(key).ok_or_else(|| write_err("unknown kind of fact".into()))?;
        self.may_write(author).map_err(write_err)?;
        if let Err(why) = admit_as(
            kind,
            key,
            &sealed,
            self.scheme,
            &self.roster.operators,
            self.check_own(own),
        ) {
            return Err(write_err(format!(
                "peers would refuse it: {}",
                why.as_str()
            )));
        }
        if own {
            self.own_seals_hold = Some(self.scheme);
        }
        Ok(sealed)
    }

    /// Seals one fact in `author`'s name, checks it as every peer will, writes it at a
    /// root key and commits it. On error nothing was written.
    pub(in crate::core::state) fn put_fact<T: Serialize>(
        &mut self,
        key: &str,
        fact: &T,
        author: &str,
    ) -> Result<(), StateError> {
        let sealed = self.seal_checked(key, fact, author)?;
        self.put_sealed(&[(key.to_string(), sealed)])
    }

    /// Writes sealed values in one change. On error nothing was written. Every value was
    /// admitted just before ([`Doc::seal_checked`], or an operator's sealed fact checked
    /// whole), so reading the change back does not check their signatures again.
    pub(super) fn put_sealed(&mut self, values: &[(String, String)]) -> Result<(), StateError> {
        // Key, value and a change's overhead (~100 bytes) per value: a bound close enough
        // for a cap that is meant to be far above a healthy document.
        self.room_for(
            values
                .iter()
                .map(|(k, v)| (k.len() + v.len() + 128) as u64)
                .sum(),
        )?;
        for (key, sealed) in values {
            // Writing a scalar at the root only fails on a corrupt op set.
            if let Err(e) = self.inner.put(ROOT, key.as_str(), sealed.as_str()) {
                self.inner.rollback();
                return Err(StateError::Write {
                    key: key.clone(),
                    why: e.to_string(),
                });
            }
        }
        self.inner.commit();
        self.log_local_change();
        self.local_change = self.local_log.back().map(|c| c.hash);
        self.refresh();
        self.local_change = None;
        Ok(())
    }

    /// Validates and writes a new story fact. `now_ms` is the creator's wall clock,
    /// recorded for display and age ordering only.
    pub fn add_story(
        &mut self,
        new: &NewStory,
        creator: &str,
        now_ms: u64,
    ) -> Result<String, StateError> {
        let view = self.view();
        self.add_story_in(&view, new, creator, now_ms)
    }

    /// [`Doc::add_story`] against `view`, this document's current view (see
    /// [`Doc::add_story_batch_in`]).
    pub fn add_story_in(
        &mut self,
        view: &View,
        new: &NewStory,
        creator: &str,
        now_ms: u64,
    ) -> Result<String, StateError> {
        let mut keys = self.add_stories_in(view, std::slice::from_ref(new), creator, now_ms)?;
        keys.pop().ok_or_else(|| StateError::Write {
            key: STORY_PREFIX.into(),
            why: "no story written".into(),
        })
    }

    /// Validates and writes new stories, numbered in order, in one change: all or none.
    /// Dependencies name stories already in the document.
    pub fn add_stories(
        &mut self,
        news: &[NewStory],
        creator: &str,
        now_ms: u64,
    ) -> Result<Vec<String>, StateError> {
        let view = self.view();
        self.add_stories_in(&view, news, creator, now_ms)
    }

    /// The stories of one user write: the batch path, without batch references to
    /// resolve (each dependency names a story in the document).
    fn add_stories_in(
        &mut self,
        view: &View,
        news: &[NewStory],
        creator: &str,
        now_ms: u64,
    ) -> Result<Vec<String>, StateError> {
        self.add_story_batch_in(view, news, "cli", creator, now_ms)
            .map_err(|e| e.error)
    }

    /// Records this node's description, only when it differs from what the document has.
    /// Returns whether a write happened.
    pub fn put_node(&mut self, peer: &str, fact: &NodeFact) -> Result<bool, StateError> {
        let key = format!("{NODE_PREFIX}{peer}");
        // The same description from a new run is not news (a restart writes nothing).
        let same = |f: &NodeFact| {
            f.roles == fact.roles && f.capacity == fact.capacity && f.version == fact.version
        };
        if matches!(self.fact(&key), Some(Fact::Node(f)) if same(f)) {
            return Ok(false);
        }
        self.put_fact(&key, fact, peer)?;
        Ok(true)
    }

    /// Writes a claim fact. Claim ids are unique per writer, so the key has one writer.
    pub fn put_claim(&mut self, id: &str, fact: &ClaimFact) -> Result<(), StateError> {
        self.put_fact(&format!("{CLAIM_PREFIX}{id}"), fact, &fact.holder)
    }

    /// Writes a claim and the reservation of its job's budget in one change: a peer
    /// never sees the claim without the money set aside for it.
    pub fn put_claim_reserved(
        &mut self,
        id: &str,
        fact: &ClaimFact,
        reserve: &BudgetFact,
    ) -> Result<(), StateError> {
        let key = format!("{CLAIM_PREFIX}{id}");
        let claim = self.seal_checked(&key, fact, &fact.holder)?;
        let rkey = reserve.key();
        let sealed = self.seal_checked(&rkey, reserve, &fact.holder)?;
        self.put_sealed(&[(key, claim), (rkey, sealed)])
    }

    /// Writes a budget fact (usage, ask, give) in `author`'s name; one already written
    /// under its key is left as first written.
    pub fn put_budget(&mut self, fact: &BudgetFact, author: &str) -> Result<(), StateError> {
        let key = fact.key();
        if self.facts().contains_key(key.as_str()) {
            return Ok(());
        }
        self.put_fact(&key, fact, author)
    }

    /// The holder of claim `id` as written in the document (winning or not), without
    /// folding a view.
    pub fn claim_holder(&self, id: &str) -> Option<&str> {
        match self.fact(&format!("{CLAIM_PREFIX}{id}")) {
            Some(Fact::Claim(c)) => Some(&c.holder),
            _ => None,
        }
    }

    /// Writes a release fact for a claim, by its holder or (`expired`) by a node `by` that
    /// took it over. Rewriting an existing release is skipped: the first reason stands.
    pub fn put_release(
        &mut self,
        id: &str,
        fact: &ReleaseFact,
        by: &str,
    ) -> Result<(), StateError> {
        let key = format!("{RELEASE_PREFIX}{id}");
        if matches!(self.fact(&key), Some(Fact::Release(_))) {
            return Ok(());
        }
        self.put_fact(&key, fact, by)
    }

    /// Writes a phase result under its claim.
    pub fn put_result(&mut self, fact: &ResultFact) -> Result<(), StateError> {
        let key = format!(
            "{RESULT_PREFIX}{}/{}/{}",
            fact.story,
            fact.phase.as_str(),
            fact.claim
        );
        self.put_fact(&key, fact, &fact.holder)
    }

    /// Records a landing on main.
    pub fn put_merge(&mut self, fact: &MergeFact) -> Result<(), StateError> {
        let key = format!("{MERGE_PREFIX}{}/{}", fact.story, fact.claim);
        self.put_fact(&key, fact, &fact.holder)
    }

    /// Writes a knowledge entry under the hash of its kind and normalised text, so the
    /// same lesson learned twice (by any nodes) is one entry. Returns its id; an entry
    /// already present is left as first written. Over-long or empty text is refused.
    pub fn put_knowledge(&mut self, fact: &KnowledgeFact) -> Result<String, StateError> {
        let text = fact.text.trim();
        if text.is_empty() || text.len() > MAX_KNOWLEDGE_BYTES {
            return Err(StateError::KnowledgeRefused);
        }
        let id = knowledge_id(fact.kind, text);
        let key = format!("{KNOWLEDGE_PREFIX}{id}");
        if self.inner.get(ROOT, key.as_str()).ok().flatten().is_none() {
            let mut f = fact.clone();
            f.text = text.to_string();
            self.put_fact(&key, &f, &fact.author)?;
        }
        Ok(id)
    }

    /// Records that a notification was sent (or refused for good), by its sender. A
    /// trigger already recorded is left as first written; returns whether it wrote.
    pub fn put_notified(
        &mut self,
        fact: &crate::core::notify::NotifiedFact,
    ) -> Result<bool, StateError> {
        let key = format!(
            "{NOTIFIED_PREFIX}{}",
            crate::core::notify::notified_hash(&fact.id)
        );
        if self.facts().contains_key(key.as_str()) {
            return Ok(false);
        }
        self.put_fact(&key, fact, &fact.by)?;
        Ok(true)
    }

    /// Writes where the mesh moves to a new epoch (by the holder of the claim that won
    /// its proposal). Once per key: returns whether it wrote.
    pub fn put_epoch(&mut self, fact: &EpochFact) -> Result<bool, StateError> {
        let key = fact.key();
        if self.facts().contains_key(key.as_str()) {
            return Ok(false);
        }
        self.put_fact(&key, fact, &fact.holder)?;
        Ok(true)
    }

    /// Writes a value sealed elsewhere (an operator's roster fact or command: the
    /// operator's key is not this node's), after checking it as every peer will. Only
    /// operators' facts.
    pub fn put_signed(&mut self, key: &str, sealed: &str) -> Result<(), StateError> {
        let write_err = |why: String| StateError::Write {
            key: key.to_string(),
            why,
        };
        let kind = FactKind::of_key(key)
            .filter(|k| k.by_operator())
            .ok_or_else(|| {
                write_err(
                    "only an operator's facts (roster, commands) are written pre-signed".into(),
                )
            })?;
        if !self.roster.enforced() {
            let what = if kind == FactKind::Command {
                "no one may steer it"
            } else {
                "it has no roster"
            };
            return Err(write_err(format!(
                "this mesh has no operators (config `operators` is empty), so {what}: \
                 create a key with `mesh-agent operator init` and list its id in every node's \
                 config (`operators`) first"
            )));
        }
        if let Err(why) = admit(kind, key, sealed, self.scheme, &self.roster.operators) {
            let author = trust::claimed_author(sealed).unwrap_or("?");
            return Err(write_err(match why {
                Refusal::NotEntitled => format!(
                    "{author} is not an operator of this mesh (config `operators` lists {})",
                    self.roster
                        .operators
                        .iter()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                why => format!("peers would refuse it: {}", why.as_str()),
            }));
        }
        self.put_sealed(&[(key.to_string(), sealed.to_string())])
    }

    /// Hostile writes for the simulator's Byzantine-lite node and the tests: puts `value`
    /// at root key `key` as is, unchecked and unsigned unless it already is.
    #[doc(hidden)]
    pub fn raw_put(&mut self, key: &str, value: String) {
        if self.inner.put(ROOT, key, value).is_ok() {
            self.inner.commit();
            self.log_local_change();
            self.refresh();
        }
    }

    /// Deletes root key `key` (see [`Doc::raw_put`]).
    #[doc(hidden)]
    pub fn raw_delete(&mut self, key: &str) {
        if self.inner.delete(ROOT, key).is_ok() {
            self.inner.commit();
            self.log_local_change();
            self.refresh();
        }
    }

    /// The value at root key `key` as automerge has it now (sealed text, if a string).
    #[doc(hidden)]
    pub fn raw_get(&self, key: &str) -> Option<String> {
        match self.inner.get(ROOT, key).ok().flatten()? {
            (automerge::Value::Scalar(v), _) => match v.as_ref() {
                ScalarValue::Str(s) => Some(s.to_string()),
                _ => None,
            },
            _ => None,
        }
    }
}

/// How a document's writer seals a value ([`Doc::sealer`]).
pub(super) enum Sealer<'a> {
    /// The node's own signer.
    Own(&'a Signer),
    /// A test name's derived key.
    Test(Box<Signer>),
    /// No signature ([`KeyScheme::Unchecked`], benchmarks).
    Unchecked(String),
}

impl Sealer<'_> {
    pub(super) fn seal(&self, key: &str, json: &str) -> String {
        match self {
            Sealer::Own(s) => s.seal(key, json),
            Sealer::Test(s) => s.seal(key, json),
            Sealer::Unchecked(author) => crate::core::trust::seal_unchecked(author, json),
        }
    }

    pub(super) fn is_own(&self) -> bool {
        matches!(self, Sealer::Own(_))
    }
}
