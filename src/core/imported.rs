//! What a story brings when it is imported from another tracker (an ai-sdlc backlog,
//! `mesh-agent import`): the progress made there — phases done, and the landing of a
//! story that was already done — and the tracker's own fields, kept verbatim so
//! `mesh-agent export` gives them back.
//!
//! The progress is part of the story fact, written once by its creator like every other
//! field. The view's walk (`state::walk`) starts after the phases done there, and a story
//! that landed there counts as merged (its dependants may start). No result or landing
//! fact is invented for it: the audit trail shows it arriving, not work it never saw.

use super::model::{MergeFact, Phase, StoryFact};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The tracker an imported story came from (the only one so far).
pub const AI_SDLC: &str = "ai-sdlc";
/// Most tracker fields kept on one story.
pub const MAX_FIELDS: usize = 32;
/// Longest tracker field name and value, in bytes.
pub const MAX_FIELD_NAME: usize = 64;
pub const MAX_FIELD_VALUE: usize = 1024;
/// Longest id in the tracker, in bytes.
pub const MAX_ID: usize = 64;

/// The phases whose progress carries over. Implement and review do not: their change
/// lives on a branch of the tracker's repository, not in the mesh's origin, so the mesh
/// implements again (with the research and plan in the body) unless the story landed.
pub const CARRIED: [Phase; 4] = [
    Phase::Refine,
    Phase::Research,
    Phase::Plan,
    Phase::PlanReview,
];

/// An imported story's origin and progress (see the module doc).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Imported {
    /// The tracker ([`AI_SDLC`]).
    pub from: String,
    /// Its id there (`S-0042`): the number the mesh gives it when that is free, and what
    /// makes a second import of the same story a no-op.
    pub id: String,
    /// Phases completed there ([`CARRIED`] only): the story starts after them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub done: Vec<Phase>,
    /// It landed there: the story counts as merged in the mesh.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merged: Option<PriorMerge>,
    /// The tracker's fields the mesh does not use (slug, type, epic, created, branch, …),
    /// as written there (YAML scalars as text), for the way back.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub fields: BTreeMap<String, String>,
}

/// Where and when a story landed before it was imported.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PriorMerge {
    /// The merge commit, when the tracker knew it (empty otherwise).
    #[serde(default)]
    pub commit: String,
    /// When it landed (ms since the epoch; 0 when unknown).
    #[serde(default)]
    pub at_ms: u64,
}

impl Imported {
    /// The source recorded in the story fact: `ai-sdlc:S-0042`.
    pub fn source(&self) -> String {
        format!("{}:{}", self.from, self.id)
    }

    /// Whether `phase` was done before the import (in its first round).
    pub fn did(&self, phase: Phase) -> bool {
        self.done.contains(&phase)
    }

    /// The number to keep when the tracker's id is `S-<n>` (`S-0042` → 42).
    pub fn number(&self) -> Option<u32> {
        self.id
            .strip_prefix("S-")
            .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|n| n.parse().ok())
            .filter(|n| *n >= 1)
    }

    /// The landing of a story that was done in its tracker, as the view counts it: no
    /// claim, no token (the mesh never ran it), written by the story's creator.
    pub fn landing(key: &str, fact: &StoryFact) -> Option<MergeFact> {
        let m = fact.imported.as_ref()?.merged.as_ref()?;
        Some(MergeFact {
            story: key.to_string(),
            round: 0,
            claim: String::new(),
            token: 0,
            holder: fact.created_by.to_string(),
            commit: m.commit.clone(),
            written_at_ms: m.at_ms,
        })
    }

    /// Within the bounds every node accepts (checked on input and on every fact from a
    /// peer): short printable id and tracker name, a bounded set of short fields, a
    /// short commit, only [`CARRIED`] phases done.
    pub fn check(&self) -> Result<(), &'static str> {
        let printable = |s: &str, max: usize| s.len() <= max && !s.chars().any(char::is_control);
        if self.from.is_empty() || !printable(&self.from, MAX_FIELD_NAME) {
            return Err("imported story: tracker name empty or malformed");
        }
        if self.id.is_empty() || !printable(&self.id, MAX_ID) || self.id.contains(['/', '\\']) {
            return Err("imported story: id empty, too long, not printable or with a slash");
        }
        if self.done.len() > CARRIED.len() || self.done.iter().any(|p| !CARRIED.contains(p)) {
            return Err("imported story: only refine, research, plan and plan review carry over");
        }
        if self
            .merged
            .as_ref()
            .is_some_and(|m| !printable(&m.commit, MAX_ID * 2))
        {
            return Err("imported story: merge commit malformed");
        }
        if self.fields.len() > MAX_FIELDS
            || self.fields.iter().any(|(k, v)| {
                k.is_empty() || !printable(k, MAX_FIELD_NAME) || v.len() > MAX_FIELD_VALUE
            })
        {
            return Err("imported story: too many tracker fields, or one too long");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_numbers_and_bounds() {
        let mut i = Imported {
            from: AI_SDLC.into(),
            id: "S-0042".into(),
            ..Default::default()
        };
        assert_eq!(i.number(), Some(42));
        assert_eq!(i.source(), "ai-sdlc:S-0042");
        assert!(i.check().is_ok());
        for (id, n) in [
            ("story-abc", None),
            ("S-", None),
            ("S-0000", None),
            ("S-+1", None),
        ] {
            i.id = id.into();
            assert_eq!(i.number(), n, "{id}");
        }
        i.id = "x\u{7}".into();
        assert!(i.check().is_err());
        i.id = "S-1".into();
        for p in [Phase::Implement, Phase::Review, Phase::Merge] {
            i.done = vec![Phase::Research, p];
            assert!(i.check().is_err(), "{p:?}");
        }
        i.done = vec![Phase::Research];
        i.fields = (0..=MAX_FIELDS)
            .map(|n| (format!("f{n}"), "v".into()))
            .collect();
        assert!(i.check().is_err());
        i.fields = [("slug".to_string(), "x".repeat(MAX_FIELD_VALUE + 1))].into();
        assert!(i.check().is_err());
    }

    /// In the view: an imported story starts after the phases done in its tracker,
    /// one done there is merged (so its dependants are ready), and it keeps its id when
    /// no story has that number (else it gets the next one).
    #[test]
    fn progress_carries_over_and_ids_are_kept_where_free() {
        use crate::core::model::{NewStory, StoryStatus};
        use crate::core::state::Doc;
        const A: &str = "12D3KooWAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAaaaaaa";
        let mut d = Doc::new([1; 16]).with_test_names();
        d.add_story(
            &NewStory {
                title: "already here".into(),
                ..Default::default()
            },
            A,
            1,
        )
        .unwrap();
        let imp = |id: &str, done: &[Phase], merged: bool| NewStory {
            title: format!("imported {id}"),
            imported: Some(Imported {
                from: AI_SDLC.into(),
                id: id.into(),
                done: done.to_vec(),
                merged: merged.then(|| PriorMerge {
                    commit: "abc123".into(),
                    at_ms: 5,
                }),
                fields: [("slug".to_string(), "a-slug".to_string())].into(),
            }),
            ..Default::default()
        };
        let mut planned = imp("S-0009", &[Phase::Research, Phase::Plan], false);
        planned.depends_on = vec!["#3".into()];
        let mut fresh = imp("S-0010", &[], false);
        fresh.depends_on = vec!["S-0007".into()];
        let keys = d
            .add_story_batch(
                &[
                    imp("S-0007", &[], true),
                    imp("S-0001", &[Phase::Research], false),
                    imp("S-0004", &[Phase::Research, Phase::Plan], true),
                    planned,
                    fresh,
                ],
                "cli",
                A,
                2,
            )
            .unwrap();
        let v = d.view();
        let ids: Vec<&str> = keys
            .iter()
            .map(|k| v.stories[k.as_str()].id.as_str())
            .collect();
        // S-0001 was taken: the next number after the highest that no story of the
        // batch keeps (8: 9 and 10 are kept for the later ones).
        assert_eq!(ids, ["S-0007", "S-0008", "S-0004", "S-0009", "S-0010"]);
        let more = d
            .add_story_batch(
                &[imp("S-0004", &[], false), imp("S-0011", &[], false)],
                "cli",
                A,
                3,
            )
            .unwrap();
        let v2 = d.view();
        let more: Vec<&str> = more
            .iter()
            .map(|k| v2.stories[k.as_str()].id.as_str())
            .collect();
        assert_eq!(more, ["S-0012", "S-0011"], "11 is kept for the second");
        let s = |i: usize| &v.stories[keys[i].as_str()];
        assert_eq!(s(0).status, StoryStatus::Merged);
        assert_eq!(
            s(0).more.merged.as_ref().map(|m| m.commit.as_str()),
            Some("abc123")
        );
        assert_eq!(s(0).fact.source, "ai-sdlc:S-0007");
        assert_eq!(s(1).next_phase, Some(Phase::Plan));
        assert_eq!(s(1).phases_done, [Phase::Research]);
        assert_eq!(s(3).next_phase, Some(Phase::Implement));
        assert_eq!(s(3).status, StoryStatus::InProgress);
        assert_eq!(
            s(4).status,
            StoryStatus::Ready,
            "its dependency landed before"
        );
        assert_eq!(
            s(3).fact
                .imported
                .as_ref()
                .map(|i| i.fields["slug"].as_str()),
            Some("a-slug")
        );

        // Code never carries over: a story claiming an implement done elsewhere is
        // refused, here and (by the same check) in a peer's fact.
        let bad = imp("S-0020", &[Phase::Research, Phase::Implement], false);
        assert!(d.add_story_batch(&[bad], "cli", A, 3).is_err());
    }
}
