//! What an epoch's document inherits besides the facts its seed copies (DESIGN.md §3.5):
//! the stories merged before it, and the tokens its resources had reached.
//!
//! A merged story's whole history leaves the live document at an epoch: its story fact,
//! its results and merges, and its claims and their releases. What the live mesh still
//! reads of it is small — that it landed (its dependents are free), its display id (a
//! dependent shows it; a live story with the same number keeps its suffix) and its number
//! (no story is numbered at or below it again). Its claims decide nothing more, but they
//! held tokens: a file's next claim must still carry a token above every claim left
//! behind, and a claim written before the cut but heard after it must rank against them
//! as it would have there, so each resource's top claim among those left behind is kept
//! as its floor ([`Floor`]: token, release, tie rank and ids).
//!
//! The base is not a fact: no node signs it, so no node can forge it. It is written by
//! the seed change itself, under the root key [`BASE_KEY`] (a key no fact kind has, so a
//! peer's value there is ignored), and a document reads it only from the change it knows
//! as its epoch's root by hash ([`super::Doc::with_epoch_root`]): every node builds that
//! change itself, identically, from the same cut.
//!
//! What the view makes of it: a retired story counts as merged for its dependents; a
//! claim naming a retired story's resource does not count (none is written by an honest
//! node: the story had landed); on a resource with a floor, the floor ranks among the
//! claims as the claim it stands for (it wins a tie as it did, and holds nothing: it was
//! released), every token up to it counts as reached (the anti-inflation run goes on
//! from it), and a new claim's token is above it.

use super::*;

/// The root key the seed change writes its base under.
pub const BASE_KEY: &str = "epoch";

/// `epoch/<n>/<claim-id>`: where the mesh moves to epoch `n` ([`EpochFact`]).
pub const EPOCH_PREFIX: &str = "epoch/";

/// Where the mesh moves to epoch `epoch`: written once the proposal `claim` (on
/// `epoch:<epoch>`) settled and won and no other claim was open, by its holder. Every
/// node builds the seed at `cut` itself and moves only if it gets `root` (the seed
/// change's hash); the fact itself is never trusted for the base (DESIGN.md §3.5).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochFact {
    pub epoch: u64,
    pub claim: String,
    pub holder: String,
    /// The old document's heads the seed is cut at, hex.
    pub cut: Vec<String>,
    /// The seed change's hash, hex.
    pub root: String,
    /// The holder's wall clock when it wrote it (display only).
    pub at_ms: u64,
}

/// Most heads a cut may name (a document has one head per concurrent writer).
pub const MAX_CUT_HEADS: usize = 256;

impl EpochFact {
    /// The document key this fact is written under.
    pub fn key(&self) -> String {
        format!("{EPOCH_PREFIX}{}/{}", self.epoch, self.claim)
    }

    /// The cut's heads and the root, parsed; `None` if any is not a change hash.
    pub fn hashes(&self) -> Option<(Vec<ChangeHash>, ChangeHash)> {
        let parse = |h: &str| h.parse::<ChangeHash>().ok();
        let cut = self
            .cut
            .iter()
            .map(|h| parse(h))
            .collect::<Option<Vec<_>>>()?;
        Some((cut, parse(&self.root)?))
    }
}

/// What an epoch inherits (see the module's documentation).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Base {
    /// The epoch's number (the first document is epoch 0 and has no base).
    pub epoch: u64,
    /// Stories merged before this epoch, by document key.
    pub retired: BTreeMap<String, Retired>,
    /// Each file's and gate's top claim among the claims left behind.
    pub floors: BTreeMap<Resource, Floor>,
    /// The highest number of a retired story.
    #[serde(skip)]
    max_number: u32,
    /// Numbers whose short display id (`S-0042`) a retired story holds.
    #[serde(skip)]
    short_ids: BTreeSet<u32>,
}

/// A story merged before the epoch: its display id, and the commit it landed as.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "(String, String)", into = "(String, String)")]
pub struct Retired {
    pub id: String,
    pub commit: String,
}

impl From<(String, String)> for Retired {
    fn from((id, commit): (String, String)) -> Retired {
        Retired { id, commit }
    }
}

impl From<Retired> for (String, String) {
    fn from(r: Retired) -> (String, String) {
        (r.id, r.commit)
    }
}

/// The number in a story key (`S-0042@tag` → 42).
fn key_number(key: &str) -> Option<u32> {
    let (n, tag) = key.split_once('@')?;
    let digits = n.strip_prefix("S-")?;
    (!tag.is_empty() && digits.len() >= 4 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

impl Base {
    /// A base of epoch `epoch` (its derived indexes built).
    pub fn new(
        epoch: u64,
        retired: BTreeMap<String, Retired>,
        floors: BTreeMap<Resource, Floor>,
    ) -> Result<Base, String> {
        let mut base = Base {
            epoch,
            retired,
            floors,
            ..Base::default()
        };
        for (key, r) in &base.retired {
            let n = key_number(key).ok_or_else(|| format!("retired {key:?} is no story key"))?;
            base.max_number = base.max_number.max(n);
            if r.id == format!("S-{n:04}") {
                base.short_ids.insert(n);
            } else if !r.id.starts_with(&format!("S-{n:04}-")) {
                return Err(format!("retired {key:?} has display id {:?}", r.id));
            }
        }
        for (r, f) in &base.floors {
            if f.token == 0 || f.depth == 0 {
                return Err(format!(
                    "floor of {r} at token {}, depth {}",
                    f.token, f.depth
                ));
            }
            if r.story_key().is_some() {
                return Err(format!("floor of {r}: a story's step has none"));
            }
        }
        Ok(base)
    }

    /// The base a document's root change wrote, as JSON.
    pub fn parse(json: &str) -> Result<Base, String> {
        let raw: Base = serde_json::from_str(json).map_err(|e| e.to_string())?;
        Base::new(raw.epoch, raw.retired, raw.floors)
    }

    pub fn to_json(&self) -> String {
        // A map of strings and numbers always serialises.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The highest number of a retired story (0 when none).
    pub fn max_number(&self) -> u32 {
        self.max_number
    }

    /// The numbers of the retired stories (taken for good).
    pub fn numbers(&self) -> impl Iterator<Item = u32> + '_ {
        self.retired.keys().filter_map(|k| key_number(k))
    }

    /// Whether a retired story holds the short display id of `number`.
    pub fn holds_short_id(&self, number: u32) -> bool {
        self.short_ids.contains(&number)
    }

    /// Whether `claim` names a resource of a retired story (it cannot count).
    pub fn names_retired(&self, claim: &ClaimFact) -> bool {
        !self.retired.is_empty()
            && claim
                .resources
                .iter()
                .any(|(r, _)| r.story_key().is_some_and(|k| self.retired.contains_key(k)))
    }

    /// The token of `resource`'s floor (0: none).
    pub fn floor(&self, resource: &Resource) -> u64 {
        self.floors.get(resource).map_or(0, |f| f.token)
    }

    /// A retired story as the view's landings hold it: only its commit is known here.
    pub fn landing(key: &str, r: &Retired) -> MergeFact {
        MergeFact {
            story: key.to_string(),
            round: 0,
            claim: String::new(),
            token: 0,
            holder: String::new(),
            commit: r.commit.clone(),
            written_at_ms: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_base_reads_back_what_it_wrote_and_refuses_what_no_seed_writes() {
        let retired = BTreeMap::from([
            (
                "S-0042@abcdef".to_string(),
                ("S-0042".into(), "c1".into()).into(),
            ),
            (
                "S-0042@zzzzzz".to_string(),
                ("S-0042-zzzzzz".into(), "c2".into()).into(),
            ),
            (
                "S-0007@abcdef".to_string(),
                ("S-0007".into(), "c3".into()).into(),
            ),
        ]);
        let floor = |token| Floor {
            token,
            why: ReleaseReason::Done,
            depth: 1,
            holder: "h".into(),
            claim: "c".into(),
        };
        let floors = BTreeMap::from([(Resource::file("src/a.rs").unwrap(), floor(4))]);
        let base = Base::new(3, retired, floors).unwrap();
        let back = Base::parse(&base.to_json()).unwrap();
        assert_eq!(back, base);
        assert_eq!(back.max_number(), 42);
        assert!(back.holds_short_id(42) && back.holds_short_id(7) && !back.holds_short_id(8));
        assert_eq!(back.floor(&Resource::file("src/a.rs").unwrap()), 4);
        assert_eq!(back.floor(&Resource::file("src/b.rs").unwrap()), 0);

        for (json, why) in [
            (
                r#"{"epoch":1,"retired":{"x":["S-0001","c"]},"floors":{}}"#,
                "no story key",
            ),
            (
                r#"{"epoch":1,"retired":{"S-0001@ab":["S-0002","c"]},"floors":{}}"#,
                "display id",
            ),
            (
                r#"{"epoch":1,"retired":{},"floors":{"file:a":{"token":0,"why":"done","depth":1,"holder":"h","claim":"c"}}}"#,
                "at token 0",
            ),
            (
                r#"{"epoch":1,"retired":{},"floors":{"story:S-0001@ab/merge":{"token":1,"why":"done","depth":1,"holder":"h","claim":"c"}}}"#,
                "a story's step",
            ),
            (
                r#"{"epoch":1,"retired":{},"floors":{"nonsense":{"token":1,"why":"done","depth":1,"holder":"h","claim":"c"}}}"#,
                "no known kind",
            ),
        ] {
            let err = Base::parse(json).unwrap_err();
            assert!(err.contains(why), "{json}: {err}");
        }
    }
}
