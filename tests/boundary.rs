//! The line between the pure core and the shells, enforced.
//!
//! `src/core/` decides and `src/sim/` simulates; neither may reach a shell module or an
//! I/O crate, and neither may read a real clock. A violation names the file, the line and
//! the rule, so the fix is obvious. The rules are plain text patterns over the source
//! (comments skipped), which is enough because every path into a shell starts with
//! `crate::<shell>` or the crate's name.

use std::path::{Path, PathBuf};

/// Shell modules: they do I/O, so the core must never name them.
const SHELLS: &[&str] = &[
    "api", "config", "demo", "exec", "fence", "git", "identity", "net", "node", "notify", "store",
    "work",
];

/// Crates that do I/O or that would make a run depend on the world.
const IO_CRATES: &[&str] = &[
    "tokio", "libp2p", "git2", "sled", "axum", "ureq", "futures", "libc",
];

/// Standard-library doors to the world. `std::time::Duration` is fine; `Instant` and
/// `SystemTime` are clocks.
const STD_IO: &[&str] = &[
    "std::fs",
    "std::net",
    "std::process",
    "std::thread",
    "std::env",
    "std::io::stdin",
    "Instant",
    "SystemTime",
];

#[derive(Debug, PartialEq)]
struct Violation {
    file: String,
    line: usize,
    rule: String,
    text: String,
}

/// Whether `word` occurs in `line` as a whole path segment (not inside a longer name).
fn has_word(line: &str, word: &str) -> bool {
    let bytes = line.as_bytes();
    let mut from = 0;
    while let Some(i) = line[from..].find(word) {
        let at = from + i;
        let end = at + word.len();
        let ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
        let before_ok = at == 0 || !ident(bytes[at - 1]);
        let after_ok = end >= bytes.len() || !ident(bytes[end]);
        if before_ok && after_ok {
            return true;
        }
        from = end;
    }
    false
}

/// The violations in one file's text. `allow_rand` lets the simulator use a seeded RNG
/// (its randomness comes from the run's seed); the core may not draw randomness at all.
fn check(file: &str, text: &str, allow_rand: bool, allow_sim: bool) -> Vec<Violation> {
    let mut out = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim_start();
        if line.starts_with("//") {
            continue;
        }
        // Drop a trailing comment so prose after code does not count.
        let code = match line.find("//") {
            Some(i) if !line[..i].contains('"') => &line[..i],
            _ => line,
        };
        let mut hit = |rule: String| {
            out.push(Violation {
                file: file.to_string(),
                line: n + 1,
                rule,
                text: raw.trim().to_string(),
            })
        };
        for shell in SHELLS {
            for prefix in ["crate::", "mesh_agent::"] {
                if code.contains(&format!("{prefix}{shell}::"))
                    || has_word(code, &format!("{prefix}{shell}"))
                {
                    hit(format!("imports the shell `{shell}`"));
                }
            }
        }
        if !allow_sim && (code.contains("crate::sim::") || has_word(code, "crate::sim")) {
            hit("imports the simulator".into());
        }
        for krate in IO_CRATES {
            if code.contains(&format!("{krate}::")) && has_word(code, krate) {
                hit(format!("uses the I/O crate `{krate}`"));
            }
        }
        if !allow_rand && code.contains("rand::") && has_word(code, "rand") {
            hit("draws randomness (`rand`)".into());
        }
        for door in STD_IO {
            if has_word(code, door) {
                hit(format!("uses `{door}`"));
            }
        }
    }
    out
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = std::fs::read_dir(&d).unwrap_or_else(|e| panic!("read {d:?}: {e}"));
        for entry in entries {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

fn check_dir(rel: &str, allow_rand: bool, allow_sim: bool) -> (usize, Vec<Violation>) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let files = rust_files(&root.join(rel));
    let mut violations = Vec::new();
    for path in &files {
        let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {path:?}: {e}"));
        let name = path
            .strip_prefix(root)
            .unwrap_or(path)
            .display()
            .to_string();
        violations.extend(check(&name, &text, allow_rand, allow_sim));
    }
    (files.len(), violations)
}

fn report(vs: &[Violation]) -> String {
    vs.iter()
        .map(|v| format!("{}:{}: {}: {}", v.file, v.line, v.rule, v.text))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn the_core_imports_no_shell_no_io_crate_no_clock_and_no_randomness() {
    let (files, vs) = check_dir("src/core", false, false);
    assert!(
        files >= 8,
        "src/core should hold the core's modules, found {files} files"
    );
    assert!(
        vs.is_empty(),
        "the pure core crosses the line:\n{}",
        report(&vs)
    );
}

#[test]
fn the_simulator_drives_cores_without_a_shell_or_real_io() {
    let (files, vs) = check_dir("src/sim", true, true);
    assert!(files >= 1, "src/sim should hold the simulator");
    assert!(
        vs.is_empty(),
        "the simulator crosses the line:\n{}",
        report(&vs)
    );
}

#[test]
fn the_checker_catches_each_kind_of_crossing_and_ignores_comments_and_longer_names() {
    let bad = "\
use crate::store::Store;
use crate::exec::{Executor, Job};
    let t = std::time::Instant::now();
use tokio::sync::mpsc;
let x: u32 = rand::random();
use crate::sim::World;
";
    let vs = check("x.rs", bad, false, false);
    let rules: Vec<&str> = vs.iter().map(|v| v.rule.as_str()).collect();
    assert_eq!(
        rules,
        [
            "imports the shell `store`",
            "imports the shell `exec`",
            "uses `Instant`",
            "uses the I/O crate `tokio`",
            "draws randomness (`rand`)",
            "imports the simulator",
        ],
        "{vs:#?}"
    );
    assert_eq!(vs[2].line, 3);

    let fine = "\
// use crate::store::Store; (a comment)
use crate::core::model::Phase; // not crate::net
use std::time::Duration;
let storey = crate::core::state::View::default();
fn networked() {}
";
    assert_eq!(check("y.rs", fine, false, false), vec![]);
    assert_eq!(
        check(
            "z.rs",
            "use rand::Rng;\nuse crate::sim::World;\n",
            true,
            true
        ),
        vec![]
    );
}

/// Lines of a file before its unit tests (`#[cfg(test)]` at the start of a line); a file
/// that only holds tests (`tests.rs`, `testkit.rs`) counts as none.
fn non_test_lines(path: &Path, text: &str) -> usize {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    if name == "tests.rs" || name == "testkit.rs" {
        return 0;
    }
    text.lines()
        .take_while(|l| !l.starts_with("#[cfg(test)]"))
        .count()
}

/// Rooms small enough to live in: a file that grows past this is split along its seams.
const MAX_NON_TEST_LINES: usize = 800;

#[test]
fn no_source_file_holds_more_than_800_lines_of_non_test_code() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut big = Vec::new();
    for path in rust_files(&root.join("src")) {
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path:?}: {e}"));
        let n = non_test_lines(&path, &text);
        if n > MAX_NON_TEST_LINES {
            big.push(format!(
                "{}: {n} lines",
                path.strip_prefix(root).unwrap_or(&path).display()
            ));
        }
    }
    assert!(
        big.is_empty(),
        "split these along their seams (limit {MAX_NON_TEST_LINES} non-test lines):\n{}",
        big.join("\n")
    );
    let sample = "fn a() {}\nfn b() {}\n#[cfg(test)]\nmod tests {\n}\n";
    assert_eq!(non_test_lines(Path::new("x.rs"), sample), 2);
    assert_eq!(non_test_lines(Path::new("state/tests.rs"), sample), 0);
}
