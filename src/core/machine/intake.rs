//! Stories in bulk in the running core: a batch (`story add --from FILE`) written as one
//! change, and a story from an outside source (an issue delivered by a webhook) written
//! once however often it is delivered.
//!
//! Against the user-write cap (`max_writes_per_minute`) a batch counts as **one** write:
//! the cap bounds how many changes and pushes a node's users make, and a batch is one
//! change and one push. Its size is bounded by
//! [`crate::core::state::MAX_BATCH_STORIES`] and the document's
//! size cap, which refuses a user's write once the document is past 90 % of it.

use super::*;
use crate::core::state::BatchError;

/// What [`Core::add_sourced_story`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sourced {
    /// A new story was written.
    Added(StoryView),
    /// A story from this source was already in the document: nothing was written.
    Exists(StoryView),
}

impl Core {
    /// Adds `news` written by this node in one change, all or none (see
    /// [`Doc::add_story_batch`]); returns them in order. The caller must make the
    /// `Persist` effects durable before acknowledging.
    pub fn add_stories(
        &mut self,
        news: &[NewStory],
        wall_ms: u64,
    ) -> Result<Vec<StoryView>, BatchError> {
        self.write_batch(news, "cli", wall_ms)
    }

    /// Adds `new` with its `source` recorded (`github:<owner>/<repo>#<number>`), unless a
    /// story from that source is already in the document — a redelivery, or a second
    /// node that received the same issue after the first one's story reached it.
    pub fn add_sourced_story(
        &mut self,
        new: &NewStory,
        source: &str,
        wall_ms: u64,
    ) -> Result<Sourced, BatchError> {
        if let Some(key) = self.doc.story_from_source(source) {
            if let Some(s) = self.view().stories.get(key.as_str()) {
                return Ok(Sourced::Exists(self.doc.with_body(s)));
            }
        }
        let mut added = self.write_batch(std::slice::from_ref(new), source, wall_ms)?;
        added
            .pop()
            .map(Sourced::Added)
            .ok_or_else(|| BatchError::whole(StateError::Corrupt("no story written".into())))
    }

    fn write_batch(
        &mut self,
        news: &[NewStory],
        source: &str,
        wall_ms: u64,
    ) -> Result<Vec<StoryView>, BatchError> {
        if self.cfg.passive {
            return Err(BatchError::whole(StateError::Passive));
        }
        if news.is_empty() {
            return Ok(Vec::new());
        }
        self.user_write(wall_ms).map_err(BatchError::whole)?;
        let peer = self.peer.clone();
        // The cached view is written against and then brought up to date in place: a
        // write costs no fold of the document, before or after (see
        // `View::add_new_stories`; when that cannot apply, the next read folds).
        let (_, claims) = self.derived();
        let Some((_, view, _)) = self.view.as_mut() else {
            return Err(BatchError::whole(StateError::Corrupt(
                "no view after folding one".into(),
            )));
        };
        let (keys, current) = self.doc.add_story_batch_onto(
            Arc::make_mut(view),
            &claims,
            news,
            source,
            &peer,
            wall_ms,
        )?;
        self.local_write();
        self.keep_view_if(current);
        let view = self.view();
        // Answered with their bodies, as written (a story's body is stored unchanged;
        // the view keeps none).
        keys.iter()
            .zip(news)
            .map(|(k, new)| {
                let mut s = view
                    .stories
                    .get(k.as_str())
                    .map(|s| (**s).clone())
                    .ok_or_else(|| {
                        BatchError::whole(StateError::Corrupt("story vanished after write".into()))
                    })?;
                s.set_body(new.body.clone());
                Ok(s)
            })
            .collect()
    }
}
