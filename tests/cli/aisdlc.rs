//! An ai-sdlc backlog in and out through the binary (`mesh-agent import`, `export`), on
//! the fixture project in tests/fixtures/ai-sdlc/: every field of a story file mapped or
//! noted, every malformed file named with its reason and skipped while the rest goes
//! in, a second import a no-op, and export → import → export the identity.

use super::intake::{node, run, stories};
use crate::common::copy_tree;
use serde_json::Value;
use std::path::{Path, PathBuf};

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/ai-sdlc/project"
);

/// `mesh-agent init` in `dir`.
fn init(dir: &Path) {
    let out = run(&["init"], dir);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `import`/`export` with `--json`: exit code and report.
fn json_cmd(args: &[&str], dir: &Path) -> (i32, Value) {
    let out = run(args, dir);
    let report = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{args:?}: {e}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap_or(-1), report)
}

fn by_id<'a>(list: &'a [Value], id: &str) -> &'a Value {
    list.iter()
        .find(|s| s["id"] == id)
        .unwrap_or_else(|| panic!("{id} missing"))
}

/// Paths in a report, relative to `root`.
fn rel(rows: &Value, root: &Path) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = rows
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| {
            let p = PathBuf::from(r["path"].as_str().expect("path"));
            (
                p.strip_prefix(root).unwrap_or(&p).display().to_string(),
                r["why"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    v.sort();
    v
}

/// What must survive export and import: everything but who created it and when.
fn essence(list: &[Value]) -> Vec<Value> {
    let mut v: Vec<Value> = list
        .iter()
        .map(|s| {
            serde_json::json!({
                "id": s["id"], "status": s["status"], "priority": s["priority"],
                "title": s["fact"]["title"], "body": s["fact"]["body"],
                "labels": s["fact"]["labels"], "depends": s["depends_on_ids"],
                "done": s["phases_done"], "next": s["next_phase"],
                "merged": s["merged"]["commit"], "merged_at": s["merged"]["written_at_ms"],
                "imported": s["fact"]["imported"], "source": s["fact"]["source"],
            })
        })
        .collect();
    v.sort_by_key(|s| s["id"].as_str().map(String::from));
    v
}

fn files_under(root: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let bytes = std::fs::read(&p).expect("read file");
                out.push((p.strip_prefix(root).expect("under").to_path_buf(), bytes));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn an_ai_sdlc_backlog_comes_in_with_each_bad_file_named_and_goes_back_out_unchanged() {
    let d = tempfile::tempdir().expect("tempdir");
    let project = d.path().join("project");
    copy_tree(Path::new(FIXTURE), &project);
    let stories_dir = project.join(".ai-sdlc/stories");
    let (n1, n2) = (d.path().join("n1"), d.path().join("n2"));
    init(&n1);

    // No node runs: straight into the store. Bad files are named and skipped (exit 1),
    // the rest is in.
    let dir = project.to_str().expect("path");
    let (code, report) = json_cmd(&["import", dir, "--json"], &n1);
    assert_eq!(code, 1, "{report}");
    let skipped = rel(&report["skipped"], &stories_dir);
    let want = [
        ("S-0002-copy/story.md", "duplicate id \"S-0002\""),
        ("bad-yaml/story.md", "bad YAML"),
        ("no-frontmatter/story.md", "no YAML frontmatter"),
        ("no-id/story.md", "no `id`"),
        ("no-story", "no story.md in this folder"),
        ("unclosed/story.md", "not closed"),
    ];
    assert_eq!(skipped.len(), want.len(), "{skipped:#?}");
    for ((path, why), (wpath, wwhy)) in skipped.iter().zip(want) {
        assert_eq!(path, wpath);
        assert!(why.contains(wwhy), "{path}: {why}");
    }
    let notes = rel(&report["notes"], &stories_dir);
    for (path, why) in [
        ("README.md", "not a story"),
        ("S-0002/notes.txt", "not imported"),
        ("S-0004/story.md", "priority 1500 is outside"),
        ("S-0004/story.md", "unknown field \"sprint\""),
        ("S-0004/story.md", "review_history: ai-sdlc's run history"),
        ("S-0005/story.md", "the mesh implements it again"),
        ("S-0006/story.md", "status wip is not one of"),
        (
            "S-0008/story.md",
            "blocked in ai-sdlc (Max refinement attempts (2) reached)",
        ),
        ("S-0008/story.md", "dependency \"S-0099\" dropped"),
        ("renamed-folder/story.md", "the story's id is \"S-0007\""),
    ] {
        assert!(
            notes.iter().any(|(p, w)| p == path && w.contains(why)),
            "no note {path}: {why} in {notes:#?}"
        );
    }
    let imported = report["imported"].as_array().expect("imported");
    assert_eq!(imported.len(), 9);
    for row in imported {
        assert_eq!(row["id"], row["story"], "ids are kept where free");
    }

    let list = stories(&n1);
    assert_eq!(list.len(), 9);
    let s1 = by_id(&list, "S-0001");
    assert_eq!(s1["status"], "merged");
    assert_eq!(
        s1["merged"]["commit"],
        "3f2a9c1d0b7e4a5f6c8d9e0f1a2b3c4d5e6f7a8b"
    );
    assert_eq!(s1["priority"], 10);
    assert_eq!(s1["fact"]["labels"], serde_json::json!(["auth", "backend"]));
    let f1 = &s1["fact"]["imported"]["fields"];
    for (k, v) in [
        ("slug", "sign-in-with-email-and-password"),
        ("type", "feature"),
        ("created", "2026-01-05"),
        ("assignee", "dana"),
        ("epic", "auth"),
        ("estimated_effort", "small"),
        ("branch", "ai-sdlc/S-0001-sign-in"),
        ("pr_merged", "true"),
    ] {
        assert_eq!(f1[k], v, "{k}");
    }
    let s2 = by_id(&list, "S-0002");
    assert_eq!(s2["phases_done"], serde_json::json!(["research", "plan"]));
    assert_eq!(s2["next_phase"], "implement");
    assert_eq!(s2["depends_on_ids"], serde_json::json!(["S-0001"]));
    let body = s2["fact"]["body"].as_str().expect("body");
    assert!(body.contains("## Research\n\n"), "{body}");
    assert!(body.contains("## Implementation Plan\n\n"), "{body}");
    assert!(body.contains("reuse the session signer"), "{body}");
    let s3 = by_id(&list, "S-0003");
    assert_eq!(s3["next_phase"], "plan");
    assert_eq!(s3["depends_on_ids"], serde_json::json!(["S-0002"]));
    assert_eq!(s3["fact"]["imported"]["fields"]["ticket_id"], "'42'");
    let s4 = by_id(&list, "S-0004");
    assert_eq!(s4["priority"], 999);
    assert_eq!(
        s4["phases_done"],
        serde_json::json!(["research", "plan", "plan_review"])
    );
    assert_eq!(s4["next_phase"], "implement");
    assert_eq!(by_id(&list, "S-0005")["next_phase"], "implement");
    assert_eq!(by_id(&list, "S-0006")["status"], "ready");
    assert_eq!(
        by_id(&list, "S-0007")["fact"]["title"],
        "Sign out everywhere"
    );
    assert_eq!(
        by_id(&list, "S-0008")["depends_on_ids"],
        serde_json::json!(["S-0002"])
    );

    // Again: nothing changes.
    let (code, again) = json_cmd(&["import", dir, "--json"], &n1);
    assert_eq!(code, 1);
    assert_eq!(again["imported"].as_array().map(Vec::len), Some(0));
    assert_eq!(again["existing"].as_array().map(Vec::len), Some(9));
    assert_eq!(essence(&stories(&n1)), essence(&list));

    // Out, into a fresh mesh, and out again: the same stories, the same bytes.
    let (out1, out2) = (d.path().join("out1"), d.path().join("out2"));
    let (code, written) = json_cmd(&["export", out1.to_str().expect("p"), "--json"], &n1);
    assert_eq!(code, 0, "{written}");
    assert_eq!(written["written"].as_array().map(Vec::len), Some(9));
    let s1_text =
        std::fs::read_to_string(out1.join(".ai-sdlc/stories/S-0001/story.md")).expect("S-0001");
    for line in [
        "status: done\n",
        "created: '2026-01-05'\n",
        "implementation_complete: true\n",
        "merge_sha: 3f2a9c1d0b7e4a5f6c8d9e0f1a2b3c4d5e6f7a8b\n",
        "merged_at: '2026-01-09T14:03:27.512Z'\n",
    ] {
        assert!(s1_text.contains(line), "{line:?} in {s1_text}");
    }
    init(&n2);
    let (code, back) = json_cmd(&["import", out1.to_str().expect("p"), "--json"], &n2);
    assert_eq!(code, 0, "{back}");
    assert_eq!(back["skipped"].as_array().map(Vec::len), Some(0));
    assert_eq!(essence(&stories(&n2)), essence(&list));
    let (code, _) = json_cmd(&["export", out2.to_str().expect("p"), "--json"], &n2);
    assert_eq!(code, 0);
    assert_eq!(files_under(&out1), files_under(&out2));
}

/// Through a running node: ids the mesh has are renumbered while every dependency still
/// names the right story; a dry run writes nothing; a very long body is cut and noted.
#[test]
fn ids_already_taken_are_renumbered_and_a_dry_run_writes_nothing() {
    let d = tempfile::tempdir().expect("tempdir");
    let project = d.path().join("project");
    copy_tree(Path::new(FIXTURE), &project);
    let stories_dir = project.join(".ai-sdlc/stories");
    let long = stories_dir.join("S-0012");
    std::fs::create_dir_all(&long).expect("mkdir");
    std::fs::write(
        long.join("story.md"),
        format!(
            "---\nid: S-0012\ntitle: A long one\nstatus: backlog\n---\n\n{}\n",
            "All work and no play. ".repeat(5000)
        ),
    )
    .expect("write");
    let n = d.path().join("n");
    let _node = node(&n, "");
    for t in ["native one", "native two"] {
        let out = run(&["story", "add", "--title", t], &n);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    let dir = project.to_str().expect("path");
    let (code, dry) = json_cmd(&["import", dir, "--dry-run", "--json"], &n);
    assert_eq!(code, 1);
    assert_eq!(dry["imported"].as_array().map(Vec::len), Some(10));
    assert_eq!(stories(&n).len(), 2, "a dry run writes nothing");

    let (code, report) = json_cmd(&["import", dir, "--json"], &n);
    assert_eq!(code, 1);
    let rows = report["imported"].as_array().expect("rows");
    let mesh_id = |id: &str| {
        rows.iter()
            .find(|r| r["id"] == id)
            .and_then(|r| r["story"].as_str())
            .unwrap_or_else(|| panic!("{id} not imported"))
            .to_string()
    };
    let (m1, m2) = (mesh_id("S-0001"), mesh_id("S-0002"));
    assert!(m1 != "S-0001" && m2 != "S-0002", "{m1} {m2}");
    assert_eq!(
        mesh_id("S-0003"),
        "S-0003",
        "a renumbered story took no kept number"
    );
    let list = stories(&n);
    assert_eq!(list.len(), 12);
    assert_eq!(by_id(&list, &m2)["depends_on_ids"], serde_json::json!([m1]));
    assert_eq!(
        by_id(&list, "S-0003")["depends_on_ids"],
        serde_json::json!([m2])
    );
    let body = by_id(&list, "S-0012")["fact"]["body"]
        .as_str()
        .expect("body")
        .to_string();
    assert!(
        body.len() <= 64 * 1024 && body.ends_with("bytes]"),
        "{}",
        body.len()
    );
    let notes = rel(&report["notes"], &stories_dir);
    assert!(
        notes
            .iter()
            .any(|(p, w)| p == "S-0012/story.md" && w.contains("the rest is cut")),
        "{notes:#?}"
    );
}
