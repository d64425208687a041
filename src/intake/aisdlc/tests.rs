use super::export::{folders, render, slugify};
use super::*;
use crate::core::state::Doc;

const A: &str = "12D3KooWAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAaaaaaa";

fn story(front: &str, body: &str) -> String {
    format!("---\n{front}---\n{body}")
}

#[test]
fn frontmatter_is_split_off_whatever_the_line_ends() {
    assert_eq!(split("---\nid: a\n---\nbody\n"), Ok(("id: a\n", "body\n")));
    assert_eq!(
        split("\u{feff}---\r\nid: a\r\n---\r\nbody"),
        Ok(("id: a\r\n", "body"))
    );
    assert_eq!(split("---\nid: a\n...\n"), Ok(("id: a\n", "")));
    assert!(split("# heading\n")
        .unwrap_err()
        .contains("no YAML frontmatter"));
    assert!(split("---\nid: a\n").unwrap_err().contains("not closed"));
}

#[test]
fn messy_fields_are_mapped_or_noted_never_fatal() {
    let f = parse(&story(
        "id: 42\npriority: high\nlabels: solo\nresearch_complete: 'yes'\nplan_complete: true\n\
         status: done\nmerged_at: '2026-01-09T14:03:27Z'\ndependencies: [S-0001, 7, {a: b}]\n\
         slug: [not, scalar]\n",
        "\n# From the heading\n\nbody text\n",
    ))
    .unwrap();
    assert_eq!(f.id(), "42");
    assert_eq!(f.story.title, "From the heading");
    assert_eq!(f.story.priority, Some(crate::core::model::PRIORITY_DEFAULT));
    assert_eq!(f.story.labels, ["solo"]);
    assert_eq!(f.depends, ["S-0001", "7"]);
    assert_eq!(f.story.body, "# From the heading\n\nbody text");
    let i = f.story.imported.as_ref().unwrap();
    assert_eq!(i.done, [Phase::Plan], "'yes' is not true");
    assert_eq!(
        i.merged,
        Some(PriorMerge {
            commit: String::new(),
            at_ms: 1_767_967_407_000
        })
    );
    assert_eq!(i.fields.get("priority").map(String::as_str), Some("high"));
    let notes = f.notes.join("\n");
    for want in [
        "priority high is not a number",
        "research_complete is yes",
        "an item of dependencies is not text",
        "slug is not a single value",
    ] {
        assert!(notes.contains(want), "{want:?} in {notes}");
    }

    for (front, why) in [
        ("title: t\n", "no `id`"),
        ("id: [a]\n", "`id` is not text"),
        ("id: a/b\ntitle: t\n", "slash"),
        ("id: a\n", "no `title`"),
        ("- a\n- b\n", "not a set of"),
        ("id: a\ntitle: [\n", "bad YAML"),
    ] {
        let e = parse(&story(front, "")).unwrap_err();
        assert!(e.contains(why), "{front:?}: {e}");
    }
}

#[test]
fn a_long_body_is_cut_at_a_character_and_says_so() {
    let body = "é".repeat(40_000);
    let f = parse(&story("id: S-0001\ntitle: t\n", &body)).unwrap();
    let mut notes = f.notes.clone();
    let cut = fit_body(f.story.body, &mut notes);
    assert!(cut.len() <= MAX_BODY_BYTES);
    assert!(cut.ends_with("[cut by mesh-agent import: the body was 80000 bytes]"));
    assert!(notes.iter().any(|n| n.contains("the rest is cut")));
}

#[test]
fn times_and_slugs() {
    assert_eq!(parse_time("1970-01-01"), Some(0));
    assert_eq!(
        parse_time("2026-01-09T14:03:27.512Z"),
        Some(1_767_967_407_512)
    );
    assert_eq!(
        parse_time("2026-01-09T14:03:27.5Z"),
        Some(1_767_967_407_500)
    );
    assert_eq!(parse_time("2026-01-09T14:03:27+02:00"), None);
    assert_eq!(parse_time("2026-13-01"), None);
    assert_eq!(parse_time("yesterday"), None);
    assert_eq!(slugify("  Sign-in: with E-mail!! "), "sign-in-with-e-mail");
}

fn found(id: &str, depends: &[&str]) -> Found {
    let mut f = parse(&story(&format!("id: {id}\ntitle: story {id}\n"), "")).unwrap();
    f.path = PathBuf::from(format!("{id}/story.md"));
    f.depends = depends.iter().map(|d| d.to_string()).collect();
    f
}

/// Stories come after what they depend on; a cycle, a self-dependency and a missing
/// story each drop one dependency with a note; what the mesh has is left alone and
/// can be depended on.
#[test]
fn the_plan_orders_by_dependency_and_drops_what_cannot_hold() {
    let mut doc = Doc::new([1; 16]).with_test_names();
    let first = Scan {
        found: vec![found("S-0001", &[])],
        ..Scan::default()
    };
    let p = plan(first, &[]);
    doc.add_story_batch(&p.batch.stories, "cli", A, 1).unwrap();
    let mesh: Vec<_> = doc.view().stories.values().map(|s| (**s).clone()).collect();

    let scan = Scan {
        found: vec![
            found("S-0001", &[]),
            found("S-0002", &["S-0004", "S-0001"]),
            found("S-0003", &["S-0003", "S-0099"]),
            found("S-0004", &["S-0005"]),
            found("S-0005", &["S-0004"]),
        ],
        ..Scan::default()
    };
    let p = plan(scan, &mesh);
    assert_eq!(p.existing.len(), 1, "S-0001 is in the mesh already");
    let order: Vec<&str> = p
        .batch
        .stories
        .iter()
        .map(|s| s.imported.as_ref().unwrap().id.as_str())
        .collect();
    assert_eq!(order, ["S-0003", "S-0004", "S-0002", "S-0005"]);
    let s1 = &mesh[0].key;
    assert_eq!(p.batch.stories[2].depends_on, ["#2", s1.as_str()]);
    assert_eq!(p.batch.stories[3].depends_on, ["#2"]);
    assert!(p.batch.stories[1].depends_on.is_empty(), "the cycle's edge");
    let notes: Vec<String> = p
        .notes
        .iter()
        .map(|n| n.why.clone())
        .filter(|n| n.starts_with("dependency"))
        .collect();
    assert_eq!(notes.len(), 3, "{notes:?}");
    assert!(notes
        .iter()
        .any(|n| n.contains("\"S-0003\" dropped: it names the story itself")));
    assert!(notes
        .iter()
        .any(|n| n.contains("\"S-0099\" dropped: no story")));
    assert!(notes
        .iter()
        .any(|n| n.contains("\"S-0005\" dropped: it closes a dependency cycle")));
    doc.add_story_batch(&p.batch.stories, "cli", A, 2).unwrap();
}

/// An id from a peer never names a folder outside the stories folder, and two stories
/// never share one.
#[test]
fn export_folders_stay_inside_and_apart() {
    let mut doc = Doc::new([1; 16]).with_test_names();
    let mut hostile = found("S-0001", &[]);
    hostile.story.imported.as_mut().unwrap().id = "..".into();
    let p = plan(
        Scan {
            found: vec![found("S-0001", &[]), found("S-0002", &[]), hostile],
            ..Scan::default()
        },
        &[],
    );
    // A story of the mesh's own holds number 1 first: the imported S-0001 gets
    // another number but keeps its folder; the native one gives way.
    let native = crate::core::model::NewStory {
        title: "native".into(),
        ..Default::default()
    };
    doc.add_story(&native, A, 1).unwrap();
    doc.add_story_batch(&p.batch.stories, "cli", A, 2).unwrap();
    let view = doc.view();
    let all: Vec<&crate::core::state::StoryView> = view.stories.values().map(|s| &**s).collect();
    let mut notes = Vec::new();
    let f = folders(&all, &mut notes);
    let names: std::collections::BTreeSet<&String> = f.values().collect();
    assert_eq!(names.len(), 4, "{f:?}");
    assert!(
        names
            .iter()
            .all(|n| !n.contains('/') && !n.starts_with('.')),
        "{f:?}"
    );
    assert!(names.contains(&"S-0001".to_string()) && names.contains(&"S-0002".to_string()));
    assert_eq!(notes.len(), 2, "{notes:?}");
    let text = render(all[0], &f);
    assert!(text.starts_with("---\nid: "), "{text}");
}
