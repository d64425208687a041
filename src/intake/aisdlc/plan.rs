//! The import's plan: which stories of a scan the mesh has already (a second import
//! changes nothing), and the rest as one batch in dependency order.

use super::{Found, Problem, Scan};
use crate::core::imported::AI_SDLC;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// What the mesh already holds from ai-sdlc: id there → the mesh story's key and id.
pub fn imported_ids(
    stories: &[crate::core::state::StoryView],
) -> BTreeMap<String, (String, String)> {
    stories
        .iter()
        .filter_map(|s| {
            let i = s.fact.imported.as_ref().filter(|i| i.from == AI_SDLC)?;
            Some((i.id.clone(), (s.key.to_string(), s.id.to_string())))
        })
        .collect()
}

/// The stories of a scan not yet in the mesh, as one batch in dependency order, and
/// what became of each found story.
#[derive(Debug, Default)]
pub struct Plan {
    /// The new stories (dependencies resolved to mesh keys or `#N`).
    pub batch: crate::intake::StoryBatch,
    /// The story file of each batch entry.
    pub paths: Vec<PathBuf>,
    /// Already imported: (story file, ai-sdlc id, mesh id).
    pub existing: Vec<(PathBuf, String, String)>,
    /// What could not be mapped, by story file, and the other files not imported.
    pub notes: Vec<Problem>,
}

/// Plans the import of `scan` into a mesh holding `stories`: stories already imported
/// are left alone (a second import changes nothing); the rest are ordered so each comes
/// after what it depends on; a dependency on a story neither in the folder nor in the
/// mesh, or one closing a cycle, is dropped with a note.
pub fn plan(scan: Scan, stories: &[crate::core::state::StoryView]) -> Plan {
    let known = imported_ids(stories);
    let mut plan = Plan {
        notes: scan.strays,
        ..Plan::default()
    };
    let mut pending: Vec<Found> = Vec::new();
    for f in scan.found {
        for n in &f.notes {
            plan.notes.push(Problem {
                path: f.path.clone(),
                why: n.clone(),
            });
        }
        match known.get(f.id()) {
            Some((_, mesh_id)) => {
                plan.existing
                    .push((f.path.clone(), f.id().to_string(), mesh_id.clone()))
            }
            None => pending.push(f),
        }
    }
    let in_folder: BTreeMap<String, usize> = pending
        .iter()
        .enumerate()
        .map(|(i, f)| (f.id().to_string(), i))
        .collect();
    // Kahn's order: repeatedly the first (by number, then path) whose dependencies in
    // the folder are placed; when none is, a story on a cycle goes first and its open
    // dependencies are dropped.
    let mut order: Vec<usize> = (0..pending.len()).collect();
    order.sort_by_key(|&i| {
        let f = &pending[i];
        (
            f.story
                .imported
                .as_ref()
                .and_then(|x| x.number())
                .unwrap_or(u32::MAX),
            f.path.clone(),
        )
    });
    let mut rank = vec![0; pending.len()];
    for (r, &i) in order.iter().enumerate() {
        rank[i] = r;
    }
    // Open dependencies in the folder per story, and who waits on each.
    let mut open = vec![0usize; pending.len()];
    let mut waiting: Vec<Vec<usize>> = vec![Vec::new(); pending.len()];
    for (i, f) in pending.iter().enumerate() {
        for d in &f.depends {
            if let Some(&j) = in_folder.get(d).filter(|&&j| j != i) {
                open[i] += 1;
                waiting[j].push(i);
            }
        }
    }
    let mut ready: std::collections::BTreeSet<(usize, usize)> = (0..pending.len())
        .filter(|&i| open[i] == 0)
        .map(|i| (rank[i], i))
        .collect();
    let mut position: BTreeMap<usize, usize> = BTreeMap::new();
    while position.len() < pending.len() {
        let i = match ready.pop_first() {
            Some((_, i)) => i,
            None => on_a_cycle(&pending, &in_folder, &order, &position),
        };
        for &w in &waiting[i] {
            open[w] -= 1;
            if open[w] == 0 && !position.contains_key(&w) {
                ready.insert((rank[w], w));
            }
        }
        let f = &pending[i];
        let mut depends_on = Vec::new();
        for d in &f.depends {
            let target = match (in_folder.get(d), known.get(d)) {
                (Some(&j), _) if j == i => Err("it names the story itself"),
                (Some(&j), _) => position
                    .get(&j)
                    .map(|p| format!("#{}", p + 1))
                    .ok_or("it closes a dependency cycle"),
                (None, Some((key, _))) => Ok(key.clone()),
                (None, None) => Err("no story has that id in the folder or the mesh"),
            };
            match target {
                Ok(t) => depends_on.push(t),
                Err(why) => plan.notes.push(Problem {
                    path: f.path.clone(),
                    why: format!("dependency {d:?} dropped: {why}"),
                }),
            }
        }
        let mut story = f.story.clone();
        story.depends_on = depends_on;
        position.insert(i, plan.batch.stories.len());
        plan.batch.stories.push(story);
        plan.paths.push(f.path.clone());
    }
    plan.notes.sort_by(|a, b| a.path.cmp(&b.path));
    plan
}

/// A story on a dependency cycle among the unplaced ones (called when every unplaced
/// story waits for another): follow open dependencies from the first unplaced story
/// until one repeats.
fn on_a_cycle(
    pending: &[Found],
    in_folder: &BTreeMap<String, usize>,
    order: &[usize],
    placed: &BTreeMap<usize, usize>,
) -> usize {
    let Some(mut at) = order.iter().copied().find(|i| !placed.contains_key(i)) else {
        return 0;
    };
    let mut seen = Vec::new();
    while !seen.contains(&at) {
        seen.push(at);
        let next = pending[at]
            .depends
            .iter()
            .filter_map(|d| in_folder.get(d).copied())
            .find(|&j| j != at && !placed.contains_key(&j));
        match next {
            Some(j) => at = j,
            None => break,
        }
    }
    at
}
