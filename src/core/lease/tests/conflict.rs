//! Conflict prediction: hard and soft conflicts between planned files.

use super::*;

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn a_planned_file_in_flight_elsewhere_is_a_hard_conflict() {
    let in_flight = vec![
        ("S-2@b".to_string(), strings(&["docs/x.md", "src/net.rs"])),
        ("S-1@a".to_string(), strings(&["./src/net.rs"])),
    ];
    let got = predict_conflict(
        &strings(&["src/net.rs", "README.md"]),
        &in_flight,
        &CoChange::default(),
    );
    assert_eq!(
        got,
        Conflict::Hard {
            story: "S-1@a".into(),
            file: "src/net.rs".into()
        }
    );
}

#[test]
fn files_in_the_same_directory_or_module_are_a_soft_conflict() {
    let co = CoChange::default();
    let same_dir = predict_conflict(
        &strings(&["src/lease.rs"]),
        &[("S-2@b".into(), strings(&["src/fence.rs"]))],
        &co,
    );
    let Conflict::Soft { reasons } = same_dir else {
        panic!("expected soft, got {same_dir:?}");
    };
    assert_eq!(
        reasons,
        ["src/lease.rs is in the same directory (src) as src/fence.rs, in flight in S-2@b"]
    );
    let same_module = predict_conflict(
        &strings(&["src/net/peer.rs"]),
        &[("S-2@b".into(), strings(&["src/net/proto/codec.rs"]))],
        &co,
    );
    assert!(
        matches!(&same_module, Conflict::Soft { reasons } if reasons[0].contains("same module (src/net)")),
        "{same_module:?}"
    );
    let file_and_its_submodule = predict_conflict(
        &strings(&["src/net.rs"]),
        &[("S-2@b".into(), strings(&["src/net/peer.rs"]))],
        &co,
    );
    assert!(matches!(file_and_its_submodule, Conflict::Soft { .. }));
}

#[test]
fn files_that_historically_change_together_are_a_soft_conflict() {
    let history = vec![
        strings(&["api/handler.go", "web/form.ts"]),
        strings(&["web/form.ts", "api/handler.go", "README.md"]),
        strings(&["api/handler.go"]),
    ];
    let co = CoChange::from_commits(&history, 2);
    assert_eq!(co.support("web/form.ts", "api/handler.go"), 2);
    assert!(co.changes_together("api/handler.go", "web/form.ts"));
    assert!(!co.changes_together("api/handler.go", "README.md"));
    let got = predict_conflict(
        &strings(&["web/form.ts"]),
        &[("S-9@c".into(), strings(&["api/handler.go"]))],
        &co,
    );
    assert_eq!(
        got,
        Conflict::Soft {
            reasons: strings(&[
                "web/form.ts changed together with api/handler.go (in flight in S-9@c) in 2 past commits"
            ])
        }
    );
}

#[test]
fn unrelated_files_and_root_level_files_do_not_conflict() {
    let co = CoChange::default();
    assert_eq!(
        predict_conflict(
            &strings(&["docs/guide.md", "README.md"]),
            &[("S-2@b".into(), strings(&["src/net.rs", "Cargo.toml"]))],
            &co,
        ),
        Conflict::None
    );
    assert_eq!(
        predict_conflict(&strings(&["a.rs"]), &[], &co),
        Conflict::None
    );
}

#[test]
fn huge_commits_teach_cochange_nothing() {
    let big: Vec<String> = (0..=COCHANGE_MAX_FILES_PER_COMMIT)
        .map(|i| format!("f{i}.rs"))
        .collect();
    let co = CoChange::from_commits(&[big], 1);
    assert_eq!(co.support("f0.rs", "f1.rs"), 0);
}

#[test]
fn soft_reasons_are_capped() {
    let planned: Vec<String> = (0..40).map(|i| format!("src/p{i}.rs")).collect();
    let got = predict_conflict(
        &planned,
        &[("S-2@b".into(), strings(&["src/x.rs"]))],
        &CoChange::default(),
    );
    let Conflict::Soft { reasons } = got else {
        panic!("expected soft");
    };
    assert_eq!(reasons.len(), MAX_SOFT_REASONS + 1);
    assert_eq!(reasons[MAX_SOFT_REASONS], "and 24 more");
}
