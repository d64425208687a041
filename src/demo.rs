//! The demo project and backlog behind the README's first command (and the end-to-end
//! tests): a bare git origin holding a small real project with a test script, and a
//! backlog of stories over it (some sharing files, some depending on others) that the
//! `sim` executor can carry to main.
//!
//! The project is a toy calculator whose "source" files are line lists; `test.sh` is its
//! test suite: no conflict markers, no story applied twice to one file, every line well
//! formed. A broken merge (a bad conflict resolution, a story landing twice) fails it.

use crate::core::model::NewStory;
use git2::{Repository, Signature};
use std::path::Path;

/// The project's test suite (POSIX sh, no other tools than grep/sort/uniq).
pub const TEST_SH: &str = r#"#!/bin/sh
# The project's tests, run by the merge gate on every change before it lands.
fail=0
for f in $(find src docs -type f 2>/dev/null | sort); do
    if grep -n '^<<<<<<<\|^>>>>>>>\|^=======$' "$f"; then
        echo "FAIL $f: conflict markers"; fail=1
    fi
    dup=$(grep -o '^S-[0-9][0-9]*[-A-Za-z0-9]*:' "$f" | sort | uniq -d)
    if [ -n "$dup" ]; then
        echo "FAIL $f: applied twice: $dup"; fail=1
    fi
    bad=$(grep -v '^#\|^S-[0-9][0-9]*[-A-Za-z0-9]*: .* (round [0-9][0-9]*)$' "$f" | head -n 3)
    if [ -n "$bad" ]; then
        echo "FAIL $f: malformed lines: $bad"; fail=1
    fi
done
[ "$fail" = 0 ] && echo "ok: all files well formed"
exit $fail
"#;

const FILES: &[(&str, &str)] = &[
    ("README.md", "# calc\n\nA toy calculator the mesh builds one story at a time.\nRun the tests with `sh test.sh`.\n"),
    ("test.sh", TEST_SH),
    ("src/lexer.txt", "# lexer: one line per feature\n"),
    ("src/parser.txt", "# parser: one line per feature\n"),
    ("src/eval.txt", "# evaluator: one line per feature\n"),
    ("src/cli.txt", "# command line: one line per feature\n"),
    ("src/errors.txt", "# error messages: one line per feature\n"),
    ("docs/guide.txt", "# user guide: one line per section\n"),
];

/// Creates a bare origin at `path` whose `main` holds the demo project. Fails if `path`
/// exists and is not empty.
pub fn create_origin(path: &Path) -> Result<(), git2::Error> {
    if path.exists()
        && std::fs::read_dir(path)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        return Err(git2::Error::from_str(&format!(
            "{} exists and is not empty: pick a new path for the origin",
            path.display()
        )));
    }
    let repo = Repository::init_bare(path)?;
    let mut root = repo.treebuilder(None)?;
    let mut dirs: std::collections::BTreeMap<&str, git2::TreeBuilder<'_>> = Default::default();
    for (name, content) in FILES {
        let blob = repo.blob(content.as_bytes())?;
        let mode = if name.ends_with(".sh") {
            0o100755
        } else {
            0o100644
        };
        match name.split_once('/') {
            Some((dir, file)) => {
                if !dirs.contains_key(dir) {
                    dirs.insert(dir, repo.treebuilder(None)?);
                }
                if let Some(tb) = dirs.get_mut(dir) {
                    tb.insert(file, blob, mode)?;
                }
            }
            None => {
                root.insert(name, blob, mode)?;
            }
        }
    }
    for (dir, tb) in dirs {
        let oid = tb.write()?;
        root.insert(dir, oid, 0o040000)?;
    }
    let tree = repo.find_tree(root.write()?)?;
    let sig = Signature::now("mesh-agent demo", "demo@mesh-agent.invalid")?;
    repo.commit(
        Some("refs/heads/main"),
        &sig,
        &sig,
        "calc: an empty project with its tests",
        &tree,
        &[],
    )?;
    repo.set_head("refs/heads/main")?;
    Ok(())
}

fn s(title: &str, files: &[&str], depends: &[&str], priority: u32) -> NewStory {
    NewStory {
        title: title.into(),
        body: format!("{title}. Keep the change small and covered by test.sh."),
        priority: Some(priority),
        depends_on: depends.iter().map(|d| d.to_string()).collect(),
        files: files.iter().map(|f| f.to_string()).collect(),
        labels: vec!["demo".into()],
        imported: None,
    }
}

/// The demo backlog, in the order to add it (dependencies name earlier stories by the
/// display ids they get when added in this order to an empty mesh: S-0001, S-0002, ...).
pub fn backlog() -> Vec<NewStory> {
    vec![
        s("Lex integers", &["src/lexer.txt"], &[], 10),
        s("Parse sums", &["src/parser.txt"], &["S-0001"], 20),
        s("Evaluate sums", &["src/eval.txt"], &["S-0002"], 30),
        s("Read an expression from argv", &["src/cli.txt"], &[], 40),
        s("Lex operators * and /", &["src/lexer.txt"], &[], 50),
        s(
            "Parse products with precedence",
            &["src/parser.txt"],
            &["S-0005"],
            60,
        ),
        s("Evaluate products", &["src/eval.txt"], &["S-0006"], 70),
        s(
            "Report division by zero",
            &["src/eval.txt", "src/errors.txt"],
            &[],
            80,
        ),
        s("Lex parentheses", &["src/lexer.txt"], &[], 90),
        s(
            "Parse parenthesised groups",
            &["src/parser.txt"],
            &["S-0009"],
            100,
        ),
        s("Print results with --format", &["src/cli.txt"], &[], 110),
        s(
            "Explain syntax errors with a caret",
            &["src/errors.txt", "src/parser.txt"],
            &[],
            120,
        ),
        s("Lex negative numbers", &["src/lexer.txt"], &[], 130),
        s("Document the operators", &["docs/guide.txt"], &[], 140),
        s(
            "Document the command line",
            &["docs/guide.txt", "src/cli.txt"],
            &["S-0004"],
            150,
        ),
        s("Evaluate unary minus", &["src/eval.txt"], &["S-0013"], 160),
        s("Read expressions from stdin", &["src/cli.txt"], &[], 170),
        s(
            "Report unknown characters",
            &["src/errors.txt", "src/lexer.txt"],
            &[],
            180,
        ),
        s("Lex decimals", &["src/lexer.txt"], &[], 190),
        s(
            "Evaluate decimals exactly",
            &["src/eval.txt"],
            &["S-0019"],
            200,
        ),
        s("Add a REPL mode", &["src/cli.txt"], &["S-0017"], 210),
        s(
            "Document error messages",
            &["docs/guide.txt"],
            &["S-0008"],
            220,
        ),
        s("Write a changelog entry", &[], &[], 230),
        s("Add a --version flag", &["src/cli.txt"], &[], 240),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_origin_has_main_with_the_project_and_backlog_is_consistent() {
        let tmp = tempfile::tempdir().unwrap();
        let origin = tmp.path().join("origin.git");
        create_origin(&origin).unwrap();
        let repo = Repository::open_bare(&origin).unwrap();
        let main = repo.find_reference("refs/heads/main").unwrap();
        let tree = main.peel_to_tree().unwrap();
        assert!(tree.get_path(Path::new("test.sh")).is_ok());
        assert!(tree.get_path(Path::new("src/lexer.txt")).is_ok());
        assert!(
            create_origin(&origin).is_err(),
            "an existing origin is refused"
        );
        let b = backlog();
        assert!(b.len() >= 20);
        for (i, st) in b.iter().enumerate() {
            st.validate().unwrap();
            for d in &st.depends_on {
                let n: usize = d.trim_start_matches("S-").parse().unwrap();
                assert!(n >= 1 && n <= i, "{} depends on a later story", st.title);
            }
        }
    }
}
