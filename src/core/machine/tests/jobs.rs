//! What a job starts with.

use super::*;
use crate::core::model::KnowledgeKind;

/// The view keeps no story body; a job gets it from the document, and so does the
/// choice of the knowledge it is given.
#[test]
fn a_job_carries_its_storys_body_and_the_knowledge_its_body_calls_for() {
    let mut a = worker_alone("A", 1);
    let body = "Nightly the ledger reconciles every account against the bank.";
    a.add_knowledge(KnowledgeKind::Pattern, "ledger reconciles in one batch", 1)
        .unwrap();
    // Newer, and sharing no word with the story: first if the body were not read.
    a.add_knowledge(KnowledgeKind::Pattern, "css grid for the forms", 2)
        .unwrap();
    let key = a
        .add_story(
            &NewStory {
                title: "accounts".into(),
                body: body.into(),
                ..Default::default()
            },
            3,
        )
        .unwrap()
        .key;
    assert_eq!(&*a.view().stories[key.as_str()].fact.body, "");
    let mut now = 0;
    let job = (0..100)
        .find_map(|_| {
            now += 100;
            a.tick(now, now);
            std::iter::from_fn(|| a.poll_effect()).find_map(|e| match e {
                Effect::StartWork(job) => Some(job),
                _ => None,
            })
        })
        .expect("a job starts");
    assert_eq!(&*job.fact.body, body);
    assert_eq!(job.knowledge[0].text, "ledger reconciles in one batch");
}
