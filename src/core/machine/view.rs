//! The cached view: folded from the whole document once, then brought up to date in
//! place — by a local write of new stories (`View::add_new_stories`) and by the facts a
//! peer's changes bring (`View::apply_changes`) — and folded again only where an update
//! cannot give what the fold would. Debug builds, and the simulator's `--check-view`,
//! check every view updated in place against a fold.

use super::*;

impl Core {
    /// The view of the current document (cached until the document changes).
    pub fn view(&mut self) -> Arc<View> {
        self.derived().0
    }

    /// The view and its claim fold, cached; when the document changed, brought up to
    /// date with the facts chosen since (see `View::apply_changes`), or folded again
    /// where that cannot be done.
    pub(super) fn derived(&mut self) -> (Arc<View>, Arc<Claims>) {
        if let Some((d, v, c)) = self.view.as_mut() {
            if *d != self.digest {
                if self.doc.update_view(Arc::make_mut(v), Arc::make_mut(c)) {
                    *d = self.digest;
                    self.counters.view_updates += 1;
                    if cfg!(debug_assertions) || self.cfg.check_view {
                        check_update(v, c, &self.doc);
                    }
                } else {
                    self.view = None;
                }
            }
        }
        let (digest, doc) = (self.digest, &mut self.doc);
        let counters = &mut self.counters;
        let (_, v, c) = self.view.get_or_insert_with(|| {
            doc.take_changes();
            counters.view_folds += 1;
            let (v, c) = doc.view_and_claims();
            (digest, Arc::new(v), Arc::new(c))
        });
        (v.clone(), c.clone())
    }

    /// After a local write: the cached view is the new document's (it was brought up
    /// to date in place) when `current`, else it is dropped and the next read folds.
    /// Debug builds check an up-to-date view against a fold of the document.
    pub(super) fn keep_view_if(&mut self, current: bool) {
        match self.view.as_mut() {
            Some((digest, view, _)) if current => {
                *digest = self.digest;
                // The view has the write's stories: an update starts after them.
                self.doc.take_changes();
                #[cfg(debug_assertions)]
                check_view(view, &self.doc);
            }
            _ => self.view = None,
        }
    }
}

/// Debug builds: a view brought up to date in place must be exactly the fold of the
/// document.
#[cfg(debug_assertions)]
fn check_view(view: &View, doc: &Doc) {
    same_as_fold(view, &doc.view());
}

/// With `check_view` (the simulator's `--check-view`, any build), and in debug builds: a
/// view and claim fold updated in place must be exactly the fold of the document.
fn check_update(view: &View, claims: &Claims, doc: &Doc) {
    let (folded, folded_claims) = doc.view_and_claims();
    if *claims != folded_claims {
        panic!("the claim fold updated in place differs from the fold");
    }
    same_as_fold(view, &folded);
}

/// Panics, naming the first story that differs, unless `view` is `folded`.
fn same_as_fold(view: &View, folded: &View) {
    if view == folded {
        return;
    }
    let story = folded
        .stories
        .iter()
        .find(|(k, s)| view.stories.get(*k) != Some(*s))
        .map(|(k, s)| format!("{k}: fold {s:?}, in place {:?}", view.stories.get(k)));
    panic!(
        "the view updated in place differs from the fold: {}",
        story.unwrap_or_else(|| "outside the stories".into())
    );
}
