//! The docs name the tests that check each invariant; this keeps those names true.
//!
//! docs/DESIGN.md cites tests as `` `src/core/state.rs: test_name` `` followed by more
//! `` `test_name` ``s from the same file, up to the end of the paragraph. Every cited
//! file must exist and define every cited function, so a test renamed or moved without
//! its doc fails here instead of leaving the doc quietly wrong.

use std::path::Path;

#[derive(Debug, PartialEq)]
struct Citation {
    line: usize,
    file: String,
    name: Option<String>,
}

fn is_ident(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The citations in a markdown text: a `path.rs: name` code span starts a file (and
/// cites `name`), a bare `snake_case_name` code span after it in the same paragraph cites
/// another test of that file.
fn citations(text: &str) -> Vec<Citation> {
    let mut out = Vec::new();
    let mut file: Option<String> = None;
    // A code span may wrap across lines in the markdown source: join each paragraph.
    let mut para = String::new();
    let mut para_line = 0;
    let lines: Vec<&str> = text.lines().collect();
    let mut flush = |para: &mut String, para_line: usize, file: &mut Option<String>| {
        let parts: Vec<&str> = para.split('`').collect();
        for (i, span) in parts.iter().enumerate() {
            if i % 2 == 0 {
                continue; // outside a code span
            }
            let span = span.split_whitespace().collect::<Vec<_>>().join(" ");
            if let Some((path, name)) = span.split_once(": ") {
                let placeholder = path.contains('<');
                if path.ends_with(".rs")
                    && !placeholder
                    && (path.starts_with("src/") || path.starts_with("tests/"))
                {
                    *file = Some(path.to_string());
                    let name = name.trim();
                    out.push(Citation {
                        line: para_line,
                        file: path.to_string(),
                        name: is_ident(name).then(|| name.to_string()),
                    });
                    continue;
                }
            }
            if let Some(f) = file.as_ref() {
                if is_ident(&span)
                    && span.contains('_')
                    && span.chars().all(|c| !c.is_ascii_uppercase())
                {
                    out.push(Citation {
                        line: para_line,
                        file: f.clone(),
                        name: Some(span.clone()),
                    });
                }
            }
        }
        para.clear();
        *file = None;
    };
    for (n, line) in lines.iter().enumerate() {
        if line.trim().is_empty() || line.starts_with('#') {
            flush(&mut para, para_line, &mut file);
            continue;
        }
        if para.is_empty() {
            para_line = n + 1;
        }
        para.push_str(line);
        para.push('\n');
    }
    flush(&mut para, para_line, &mut file);
    out
}

fn defines(source: &str, name: &str) -> bool {
    source.contains(&format!("fn {name}(")) || source.contains(&format!("fn {name}<"))
}

#[test]
fn every_test_the_design_cites_exists_where_it_says() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = std::fs::read_to_string(root.join("docs/DESIGN.md")).expect("docs/DESIGN.md");
    let cites = citations(&doc);
    assert!(
        cites.len() >= 20,
        "docs/DESIGN.md should cite its tests, found {}",
        cites.len()
    );
    let mut wrong = Vec::new();
    for c in &cites {
        let Ok(source) = std::fs::read_to_string(root.join(&c.file)) else {
            wrong.push(format!(
                "docs/DESIGN.md:{}: `{}` does not exist",
                c.line, c.file
            ));
            continue;
        };
        if let Some(name) = &c.name {
            if !defines(&source, name) {
                wrong.push(format!(
                    "docs/DESIGN.md:{}: `{}` defines no `fn {name}`",
                    c.line, c.file
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "stale citations:\n{}", wrong.join("\n"));
}

#[test]
fn the_citation_reader_follows_a_file_through_its_paragraph_and_no_further() {
    let text = "\
Tests are cited as `src/<file>.rs: test_name`. Checked by `src/a.rs: first_test`,
`second_test`; `tests/b.rs:
third_test` and `Input::Heartbeat`, `CamelCase`, `main`.

Then `lonely_name` in a new paragraph cites nothing.
";
    let got: Vec<(String, Option<String>)> = citations(text)
        .into_iter()
        .map(|c| (c.file, c.name))
        .collect();
    let want = [
        ("src/a.rs", "first_test"),
        ("src/a.rs", "second_test"),
        ("tests/b.rs", "third_test"),
    ];
    assert_eq!(
        got,
        want.iter()
            .map(|(f, n)| (f.to_string(), Some(n.to_string())))
            .collect::<Vec<_>>()
    );
    assert!(defines("fn first_test() {}", "first_test"));
    assert!(!defines("fn first_test_more() {}", "first_test"));
}
