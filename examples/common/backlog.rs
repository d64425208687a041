//! The stories the backlog benchmarks write (`backlog_bench`, `mem_bench`): the same
//! sizes everywhere, so their figures can be set side by side.

use mesh_agent::core::model::NewStory;

/// Story `i`: a title and a body of a realistic length, one planned file of fifty.
pub fn story(i: usize) -> NewStory {
    NewStory {
        title: format!("story {i}: a title of a realistic length for a backlog item"),
        body: "Some body text of a realistic length for a story. ".repeat(4),
        files: vec![format!("src/f{}.rs", i % 50)],
        ..Default::default()
    }
}
