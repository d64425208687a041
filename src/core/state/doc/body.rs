//! Story bodies, read from the document when shown.
//!
//! A story's body is most of its bytes (up to [`crate::core::model::MAX_BODY_BYTES`]) and
//! decides nothing: no rule of the scheduler, the claims or the view reads it. So the
//! decoded story facts keep none (`consider` empties it once the fact is admitted), and
//! the view's stories, which share those facts, show an empty body. What shows a body —
//! `story show`, the API's story list, the dashboard's story page, a job's prompt and the
//! knowledge chosen for it, an export — reads it here, from the value the story's chosen
//! fact was decoded from, which automerge holds anyway. A body in memory twice cost ~210
//! bytes a story with the benchmark's 200-byte bodies (21 MB at 100,000 stories), and as
//! much again per story as a real backlog's bodies are long.

use super::*;
use automerge::ObjId;

impl Doc {
    /// The body of story `key` (`S-0042@tag`), as its chosen fact was written; `None`
    /// when the document shows no such story.
    pub fn story_body(&self, key: &str) -> Option<String> {
        let doc_key = format!("{STORY_PREFIX}{key}");
        let c = self.chosen(&doc_key)?;
        if !matches!(&c.fact, Fact::Story(_)) {
            return None;
        }
        let value = self.value_written_by(&doc_key, &c.op, self.change_of(c))?;
        // The value was admitted when it was read: its signature held then, and its
        // bytes have not changed since.
        let opened = trust::open_as(&doc_key, &value, self.scheme, false).ok()?;
        serde_json::from_str::<BodyOnly>(opened.json)
            .ok()
            .map(|f| f.body)
    }

    /// `s` with its body read back ([`Doc::story_body`]): what a shown story carries.
    pub fn with_body(&self, s: &StoryView) -> StoryView {
        let mut s = s.clone();
        self.fill_body(&mut s);
        s
    }

    /// Puts `s`'s body back into it (no change when the document has none for it).
    pub fn fill_body(&self, s: &mut StoryView) {
        if let Some(body) = self.story_body(&s.key) {
            s.set_body(body);
        }
    }

    /// The value the operation `op` (of change `change`) put at root key `key`: the
    /// key's current value, or, when a later write hid it, the key's value as of that
    /// change (a historical read: rare, a story key is written once).
    fn value_written_by(&self, key: &str, op: &OpId, change: &ChangeHash) -> Option<String> {
        let find = |values: Vec<(automerge::Value<'_>, ObjId)>| {
            values.into_iter().find_map(|(v, id)| match &id {
                ObjId::Id(counter, actor, _) if *counter == op.0 && actor.to_bytes() == &*op.1 => {
                    v.as_str().map(str::to_string)
                }
                _ => None,
            })
        };
        if let Some(v) = self.inner.get_all(ROOT, key).ok().and_then(find) {
            return Some(v);
        }
        self.inner
            .get_all_at(ROOT, key, std::slice::from_ref(change))
            .ok()
            .and_then(find)
    }
}

/// A story fact's body, and nothing else decoded.
#[derive(Deserialize)]
struct BodyOnly {
    #[serde(default)]
    body: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::model::NewStory;

    fn story(d: &mut Doc, title: &str, body: &str, at: u64) -> String {
        let new = NewStory {
            title: title.into(),
            body: body.into(),
            ..Default::default()
        };
        d.add_story(&new, "A", at).unwrap()
    }

    #[test]
    fn a_story_body_is_kept_out_of_the_view_and_read_back_from_the_document() {
        let mut d = Doc::new([1; 16]).with_test_names();
        let body = "Why, what and how: a body of some length. ".repeat(20);
        let key = story(&mut d, "with a body", &body, 1);
        let plain = story(&mut d, "no body", "", 2);
        let view = d.view();
        assert_eq!(
            &*view.stories[key.as_str()].fact.body,
            "",
            "the view keeps no body"
        );
        assert_eq!(&*view.stories[key.as_str()].fact.title, "with a body");
        assert_eq!(d.story_body(&key).as_deref(), Some(body.as_str()));
        assert_eq!(&*d.with_body(&view.stories[key.as_str()]).fact.body, body);
        assert_eq!(d.story_body(&plain).as_deref(), Some(""));
        assert_eq!(d.story_body("S-9999@nobody"), None);
        // The same after a reload: the body comes from the saved document.
        let loaded = Doc::load_test_names([9; 16], &d.save(), &[]).unwrap();
        assert_eq!(&*loaded.view().stories[key.as_str()].fact.body, "");
        assert_eq!(loaded.story_body(&key).as_deref(), Some(body.as_str()));
    }

    #[test]
    fn a_body_hidden_by_a_later_write_of_its_key_is_read_from_the_history() {
        let mut d = Doc::new([1; 16]).with_test_names();
        let key = story(&mut d, "first", "the first body", 1);
        // A second value at the same key (not a valid one): the first stays chosen,
        // and automerge's current value at the key is the second.
        d.raw_put(&format!("{STORY_PREFIX}{key}"), "not a sealed value".into());
        assert_eq!(&*d.view().stories[key.as_str()].fact.title, "first");
        assert_eq!(d.story_body(&key).as_deref(), Some("the first body"));
    }
}
