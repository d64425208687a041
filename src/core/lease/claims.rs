//! `Claims`: the pure, order-independent fold of claim and release facts that decides
//! winners (fencing tokens, the tie rank, all-or-nothing holds).

use super::*;

// ---------------------------------------------------------------------------------------
// Claims: the fold that decides winners
// ---------------------------------------------------------------------------------------

/// The highest claim seen for one resource.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Top {
    token: u64,
    rank: TieRank,
    /// The length of the longest chain of live work built on this claim (see [`depths`]).
    depth: u32,
    holder: String,
    claim: String,
    /// An earlier epoch's claim (a [`Floor`]): not in this document, released.
    floor: bool,
}

/// The top claim an earlier epoch left behind on a file or gate (DESIGN.md §3.5). The
/// claim is not in this epoch's document (its story retired), but it still ranks among the
/// claims on its resource exactly as it did there: a claim at or below its token still
/// counts and loses to it, as in the old epoch, and a new claim's token is above it. Only
/// a released claim is left behind (an open one could be taken over only where it is).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Floor {
    pub token: u64,
    /// Its release, at the cut.
    pub why: ReleaseReason,
    /// Its depth at the cut (see [`depths`]).
    pub depth: u32,
    pub holder: String,
    pub claim: String,
}

impl Floor {
    fn top(&self) -> Top {
        Top {
            token: self.token,
            rank: TieRank::of(Some(self.why)),
            depth: self.depth,
            holder: self.holder.clone(),
            claim: self.claim.clone(),
            floor: true,
        }
    }

    /// Whether `self` ranks above `other` as the top claim of one resource.
    pub fn beats(&self, other: &Floor) -> bool {
        other.top().beaten_by(self.top().key())
    }
}

/// How a claim fares in a token tie, by its release: a finished claim keeps its result
/// counted, an open claim may be running, and a claim its holder released without a
/// result (it never started, failed, lost, or its holder restarted) gives way to both.
/// A takeover's release (`Expired`, which any member may write) proves nothing about the
/// holder, which may still be running until it hears of it: it stands as an open claim
/// would. Were it to give way, a concurrent claim with the same token would win and start
/// while the holder still ran (simulator seed 5059, clean, `--byzantine`: a member forged
/// a takeover of a claim that had just won its tie).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum TieRank {
    Done,
    Open,
    Void,
}

impl TieRank {
    fn of(release: Option<ReleaseReason>) -> TieRank {
        match release {
            Some(ReleaseReason::Done) => TieRank::Done,
            None | Some(ReleaseReason::Expired) => TieRank::Open,
            Some(_) => TieRank::Void,
        }
    }
}

impl Top {
    /// True if a claim with this key beats `self`: higher token, then the better tie
    /// rank, then the longer chain of work built on it, then lower holder id, then lower
    /// claim id. A total order, so the fold does not depend on insertion order.
    fn beaten_by(&self, other: TopKey<'_>) -> bool {
        other < self.key()
    }

    fn key(&self) -> TopKey<'_> {
        top_key(self.token, self.rank, self.depth, &self.holder, &self.claim)
    }
}

/// What [`Top`]s are ordered by, smallest best (borrowed: a losing candidate costs no
/// allocation).
type TopKey<'a> = (
    std::cmp::Reverse<u64>,
    TieRank,
    std::cmp::Reverse<u32>,
    &'a str,
    &'a str,
);

fn top_key<'a>(
    token: u64,
    rank: TieRank,
    depth: u32,
    holder: &'a str,
    claim: &'a str,
) -> TopKey<'a> {
    (
        std::cmp::Reverse(token),
        rank,
        std::cmp::Reverse(depth),
        holder,
        claim,
    )
}

/// Where a story step sits in the pipeline: by round, then by the order phases run in a
/// round (a rework opens rounds after the first, before their review).
fn step_order(phase: Phase, round: u32) -> (u32, u8) {
    let at = match phase {
        Phase::Refine => 0,
        Phase::Research => 1,
        Phase::Plan => 2,
        Phase::PlanReview => 3,
        Phase::Implement => 4,
        Phase::Rework => 5,
        Phase::Review => 6,
        Phase::Merge => 7,
    };
    (round, at)
}

/// The story step a claim is for: its story resource, if it names one.
fn step_of(claim: &ClaimFact) -> Option<(&str, (u32, u8))> {
    claim.resources.iter().find_map(|(r, _)| match r {
        Resource::Story {
            story,
            phase,
            round,
        } => Some((story.as_str(), step_order(*phase, *round))),
        Resource::File(_) | Resource::Gate(_) | Resource::Epoch(_) => None,
    })
}

/// For every claim that later work built on, the length of the longest chain of live work
/// (finished or open claims, each naming the one before in `after`) that starts at it; a
/// claim nothing built on has depth 1 and is left out. A link counts only within one story
/// and toward a later step, so chains are finite whatever the facts say.
///
/// Two claims can tie on a token when they were written on two sides of a partition. Both
/// may finish, and each side builds its next steps on its own; when the sides meet, the
/// view must keep the result the surviving work built on, or it would flip a round that
/// later rounds (and a running merge) depend on (simulator seed 78990, clean).
///
/// Links never cross stories, so the depths of one story's claims follow from that
/// story's claims alone: `ids` may be every claim or one story's (an update).
fn depths<'a>(
    ids: impl Iterator<Item = &'a String>,
    claims: &'a BTreeMap<String, ClaimFact>,
    released: &BTreeMap<String, ReleaseReason>,
) -> BTreeMap<&'a str, u32> {
    let mut order: Vec<(&str, (u32, u8), &str)> = ids
        .filter_map(|id| claims.get_key_value(id))
        .filter_map(|(id, c)| step_of(c).map(|(story, at)| (story, at, id.as_str())))
        .collect();
    // Later steps first: a claim's children are all done before it passes its depth on.
    order.sort_by(|a, b| (b.1, b.0, b.2).cmp(&(a.1, a.0, a.2)));
    let mut depth: BTreeMap<&str, u32> = BTreeMap::new();
    for (story, at, id) in order {
        let Some(c) = claims.get(id) else { continue };
        // Live work only: finished or open (a takeover's release ends it too).
        if released.get(id).is_some_and(|r| *r != ReleaseReason::Done) {
            continue;
        }
        let Some(parent) = c.after.as_deref() else {
            continue;
        };
        let Some((parent, p)) = claims.get_key_value(parent) else {
            continue;
        };
        let Some((p_story, p_at)) = step_of(p) else {
            continue;
        };
        if p_story != story || p_at >= at {
            continue;
        }
        let mine = depth.get(id).copied().unwrap_or(1);
        let theirs = depth.entry(parent.as_str()).or_insert(1);
        *theirs = (*theirs).max(mine.saturating_add(1));
    }
    depth
}

/// Everything the claim and release facts say, folded. Built from the document's maps; the
/// result depends only on their contents, never on the order facts arrived in.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Claims {
    claims: BTreeMap<String, ClaimFact>,
    released: BTreeMap<String, ReleaseReason>,
    top: BTreeMap<Resource, Top>,
    /// Claim ids with no release, in id order: the only candidates for `active` and
    /// `losing` (most claims of a long-lived mesh are released).
    open: Vec<String>,
    /// The ids of the claims naming each resource, in id order (a claim naming one
    /// resource twice once): what an update recomputes a resource's top from.
    by_resource: BTreeMap<Resource, Vec<String>>,
    /// The ids of the claims for a step of each story (see `step_of`), in id order.
    by_story: BTreeMap<String, Vec<String>>,
    /// Each claim later work built on, with its depth (see [`depths`]).
    depth: BTreeMap<String, u32>,
    /// The top claim of each resource among those an earlier epoch left behind (see
    /// [`Claims::with_floors`]).
    floors: BTreeMap<Resource, Floor>,
}

/// Files claim `id` in the indexes of [`Claims`] (ids arrive in any order).
fn index(
    by_resource: &mut BTreeMap<Resource, Vec<String>>,
    by_story: &mut BTreeMap<String, Vec<String>>,
    id: &str,
    claim: &ClaimFact,
) {
    let put = |ids: &mut Vec<String>| {
        if let Err(at) = ids.binary_search_by(|x| x.as_str().cmp(id)) {
            ids.insert(at, id.to_string());
        }
    };
    for (r, _) in &claim.resources {
        match by_resource.get_mut(r) {
            Some(ids) => put(ids),
            None => {
                by_resource.insert(r.clone(), vec![id.to_string()]);
            }
        }
    }
    if let Some((story, _)) = step_of(claim) {
        match by_story.get_mut(story) {
            Some(ids) => put(ids),
            None => {
                by_story.insert(story.to_string(), vec![id.to_string()]);
            }
        }
    }
}

impl Claims {
    /// Folds the claim facts (by claim id) and the release facts (by claim id).
    pub fn new(
        claims: &BTreeMap<String, ClaimFact>,
        releases: &BTreeMap<String, ReleaseFact>,
    ) -> Claims {
        Claims::from_owned(
            claims.clone(),
            releases
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        )
    }

    /// Like [`Claims::new`], taking ownership of the maps.
    pub fn from_owned(
        claims: BTreeMap<String, ClaimFact>,
        releases: BTreeMap<String, ReleaseFact>,
    ) -> Claims {
        let released: BTreeMap<String, ReleaseReason> =
            releases.into_iter().map(|(k, v)| (k, v.why)).collect();
        let depth: BTreeMap<String, u32> = depths(claims.keys(), &claims, &released)
            .into_iter()
            .map(|(k, d)| (k.to_string(), d))
            .collect();
        let mut by_resource: BTreeMap<Resource, Vec<String>> = BTreeMap::new();
        let mut by_story: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut top: BTreeMap<Resource, Top> = BTreeMap::new();
        for (id, claim) in &claims {
            index(&mut by_resource, &mut by_story, id, claim);
            let rank = TieRank::of(released.get(id).copied());
            let depth = depth.get(id.as_str()).copied().unwrap_or(1);
            for (resource, token) in &claim.resources {
                let candidate = || Top {
                    token: *token,
                    rank,
                    depth,
                    holder: claim.holder.clone(),
                    claim: id.clone(),
                    floor: false,
                };
                match top.get_mut(resource) {
                    Some(t) if !t.beaten_by(top_key(*token, rank, depth, &claim.holder, id)) => {}
                    Some(t) => *t = candidate(),
                    None => {
                        top.insert(resource.clone(), candidate());
                    }
                }
            }
        }
        let open = claims
            .keys()
            .filter(|id| !released.contains_key(*id))
            .cloned()
            .collect();
        Claims {
            claims,
            released,
            top,
            open,
            by_resource,
            by_story,
            depth,
            floors: BTreeMap::new(),
        }
    }

    /// Brings the fold up to date with claims written since (`added`: ids not in it
    /// yet) and releases written, changed or withdrawn since (`releases`: id, reason or
    /// `None`), as [`Claims::from_owned`] of the new maps would give: only the depths of
    /// the stories those claims are for and the tops of the resources their claims name
    /// are computed again. Returns those resources.
    pub fn update(
        &mut self,
        added: Vec<(String, ClaimFact)>,
        releases: Vec<(String, Option<ReleaseReason>)>,
    ) -> BTreeSet<Resource> {
        let mut touched: BTreeSet<String> = BTreeSet::new();
        for (id, claim) in added {
            index(&mut self.by_resource, &mut self.by_story, &id, &claim);
            self.claims.insert(id.clone(), claim);
            touched.insert(id);
        }
        for (id, why) in releases {
            match why {
                Some(w) => self.released.insert(id.clone(), w),
                None => self.released.remove(&id),
            };
            touched.insert(id);
        }
        let mut stories: BTreeSet<String> = BTreeSet::new();
        let mut resources: BTreeSet<Resource> = BTreeSet::new();
        for id in &touched {
            let open = self.claims.contains_key(id) && !self.released.contains_key(id);
            match (self.open.binary_search(id), open) {
                (Err(at), true) => self.open.insert(at, id.clone()),
                (Ok(at), false) => {
                    self.open.remove(at);
                }
                _ => {}
            }
            if let Some(c) = self.claims.get(id) {
                resources.extend(c.resources.iter().map(|(r, _)| r.clone()));
                if let Some((story, _)) = step_of(c) {
                    stories.insert(story.to_string());
                }
            }
        }
        // A release changes the depths along its story's chains, and with them the tie
        // order of every resource those claims name.
        for story in &stories {
            let Some(ids) = self.by_story.get(story) else {
                continue;
            };
            for id in ids {
                self.depth.remove(id);
                if let Some(c) = self.claims.get(id) {
                    resources.extend(c.resources.iter().map(|(r, _)| r.clone()));
                }
            }
            let fresh = depths(ids.iter(), &self.claims, &self.released);
            for (id, d) in fresh {
                self.depth.insert(id.to_string(), d);
            }
        }
        for r in &resources {
            self.recompute_top(r);
        }
        resources
    }

    /// The top of one resource, from the claims naming it.
    fn recompute_top(&mut self, resource: &Resource) {
        let mut best: Option<Top> = self.floors.get(resource).map(Floor::top);
        for id in self.by_resource.get(resource).into_iter().flatten() {
            let Some(claim) = self.claims.get(id) else {
                continue;
            };
            let rank = TieRank::of(self.released.get(id).copied());
            let depth = self.depth.get(id).copied().unwrap_or(1);
            for (r, token) in &claim.resources {
                if r != resource {
                    continue;
                }
                let key = top_key(*token, rank, depth, &claim.holder, id);
                if best.as_ref().is_none_or(|b| b.beaten_by(key)) {
                    best = Some(Top {
                        token: *token,
                        rank,
                        depth,
                        holder: claim.holder.clone(),
                        claim: id.clone(),
                        floor: false,
                    });
                }
            }
        }
        match best {
            Some(t) => self.top.insert(resource.clone(), t),
            None => self.top.remove(resource),
        };
    }

    /// The ids of the claims naming `resource`, in id order.
    pub fn naming(&self, resource: &Resource) -> &[String] {
        self.by_resource.get(resource).map_or(&[], Vec::as_slice)
    }

    /// The resources of story `key` any claim names, with those claims' ids (one run of
    /// the resource order).
    pub fn story_resources<'a>(
        &'a self,
        key: &'a str,
    ) -> impl Iterator<Item = (&'a Resource, &'a [String])> + 'a {
        let first = Resource::Story {
            story: key.to_string(),
            phase: Phase::Refine,
            round: 0,
        };
        self.by_resource
            .range(first..)
            .take_while(move |(r, _)| r.story_key() == Some(key))
            .map(|(r, ids)| (r, ids.as_slice()))
    }

    /// Whether a claim that holds names a resource of story `key`.
    pub fn story_active(&self, key: &str) -> bool {
        self.story_resources(key)
            .any(|(_, ids)| ids.iter().any(|id| self.holds(id)))
    }

    /// The token a new claim on `resource` must carry: one more than the highest token ever
    /// seen for it, released claims included (and an earlier epoch's); 1 if it was never
    /// claimed.
    pub fn next_token(&self, resource: &Resource) -> u64 {
        self.top
            .get(resource)
            .map_or(0, |t| t.token)
            .saturating_add(1)
    }

    /// The same fold, on a document whose epoch left claims behind: `floors` holds each
    /// resource's top claim among them, which ranks with the claims here as it did in the
    /// epoch it was written in.
    pub fn with_floors(mut self, floors: BTreeMap<Resource, Floor>) -> Claims {
        for (r, f) in &floors {
            let phantom = f.top();
            match self.top.get_mut(r) {
                Some(t) if !t.beaten_by(phantom.key()) => {}
                Some(t) => *t = phantom,
                None => {
                    self.top.insert(r.clone(), phantom);
                }
            }
        }
        self.floors = floors;
        self
    }

    /// The highest token an earlier epoch reached on `resource` (0: none): every token up
    /// to it was reached there.
    pub fn floor(&self, resource: &Resource) -> u64 {
        self.floors.get(resource).map_or(0, |f| f.token)
    }

    /// Claim `claim_id`, released, as the floor it leaves on `resource` when its story
    /// retires (`None`: it is not here, not released, or does not name `resource`).
    pub fn floor_of(&self, claim_id: &str, resource: &Resource) -> Option<Floor> {
        let claim = self.claims.get(claim_id)?;
        Some(Floor {
            token: claim.token_of(resource)?,
            why: *self.released.get(claim_id)?,
            depth: self.depth.get(claim_id).copied().unwrap_or(1),
            holder: claim.holder.clone(),
            claim: claim_id.to_string(),
        })
    }

    /// Whether `top` is released (an earlier epoch's always is).
    fn top_released(&self, top: &Top) -> bool {
        top.floor || self.released.contains_key(&top.claim)
    }

    /// The claim id that currently wins `resource`: the claim with the highest token; among
    /// equal tokens a finished (`Done`) claim first, then an open one, then one released
    /// without a result; then the one with the longest chain of live work built on it
    /// (`ClaimFact::after`); then the lowest holder id, then the lowest claim id. `None` if the
    /// resource was never claimed or that top claim was released: a lower, superseded claim
    /// never comes back.
    ///
    /// The rank in a tie is what keeps work from being voided by a claim that never ran: a
    /// claim written from a stale view, or one a crashing node wrote and its restart
    /// brought back, can tie a claim that settled and ran meanwhile; it must not become
    /// the top claim and un-count that result (seed 96953 of the clean simulation).
    ///
    /// Winning one resource is not holding: see [`Claims::holds`].
    pub fn winner(&self, resource: &Resource) -> Option<&str> {
        let top = self.top.get(resource)?;
        if self.top_released(top) {
            None
        } else {
            Some(&top.claim)
        }
    }

    /// The top claim of `resource` whether or not it was released: the claim whose result
    /// counts (fencing in the view). A result written under any other claim is stale.
    pub fn top(&self, resource: &Resource) -> Option<&str> {
        self.top.get(resource).map(|t| t.claim.as_str())
    }

    /// The holder (peer id) of the claim that wins `resource`, if any.
    pub fn winner_holder(&self, resource: &Resource) -> Option<&str> {
        let top = self.top.get(resource)?;
        if self.top_released(top) {
            None
        } else {
            Some(&top.holder)
        }
    }

    /// True if `resource` has ever been claimed (released claims included).
    pub fn ever_claimed(&self, resource: &Resource) -> bool {
        self.top.contains_key(resource)
    }

    /// True if the claim holds: it is not released, names at least one resource, and wins
    /// every resource it names. All-or-nothing: a claim that loses one resource holds none.
    pub fn holds(&self, claim_id: &str) -> bool {
        let Some(claim) = self.claims.get(claim_id) else {
            return false;
        };
        !claim.resources.is_empty()
            && !self.released.contains_key(claim_id)
            && claim.resources.iter().all(|(r, _)| {
                self.top
                    .get(r)
                    .is_some_and(|t| !t.floor && t.claim == claim_id)
            })
    }

    /// True if a release was written for the claim.
    pub fn is_released(&self, claim_id: &str) -> bool {
        self.released.contains_key(claim_id)
    }

    /// Why the claim was released, if it was.
    pub fn release_reason(&self, claim_id: &str) -> Option<ReleaseReason> {
        self.released.get(claim_id).copied()
    }

    /// The token `claim_id` carries for `resource`, if it names it.
    pub fn token_of(&self, claim_id: &str, resource: &Resource) -> Option<u64> {
        self.claims.get(claim_id)?.token_of(resource)
    }

    /// The claim fact with this id.
    pub fn claim(&self, claim_id: &str) -> Option<&ClaimFact> {
        self.claims.get(claim_id)
    }

    /// Every claim fact, by id (released and losing claims included).
    pub fn all(&self) -> impl Iterator<Item = (&str, &ClaimFact)> {
        self.claims.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Whether any claim names a resource of story `key` (a lookup, not a scan: the
    /// story resources of one key are one run of the resource order).
    pub fn names_story(&self, key: &str) -> bool {
        self.story_resources(key).next().is_some()
    }

    /// The claims that hold (see [`Claims::holds`]), in claim id order.
    pub fn active(&self) -> impl Iterator<Item = (&str, &ClaimFact)> {
        self.unreleased().filter(|(id, _)| self.holds(id))
    }

    /// The claims with no release, in claim id order.
    fn unreleased(&self) -> impl Iterator<Item = (&str, &ClaimFact)> {
        self.open
            .iter()
            .filter_map(|id| self.claims.get(id).map(|c| (id.as_str(), c)))
    }

    /// The claims that hold and belong to `holder`, in claim id order.
    pub fn active_of<'a>(
        &'a self,
        holder: &'a str,
    ) -> impl Iterator<Item = (&'a str, &'a ClaimFact)> + 'a {
        self.active().filter(move |(_, c)| c.holder == holder)
    }

    /// Claims that are neither released nor holding: they lost a resource (or raced into a
    /// cycle with another claim) and their holder should write a `Lost` release.
    pub fn losing(&self) -> impl Iterator<Item = (&str, &ClaimFact)> {
        self.unreleased().filter(|(id, _)| !self.holds(id))
    }

    /// Each resource with a current winner, and that winning claim id, in resource order.
    pub fn winners(&self) -> impl Iterator<Item = (&Resource, &str)> {
        self.top
            .iter()
            .filter_map(|(r, t)| (!self.top_released(t)).then_some((r, t.claim.as_str())))
    }
}
