//! The deterministic simulator over hundreds of seeds (clean and hostile networks), and
//! proof that it can fail: a core with a broken winner rule is caught.
//! `scripts/sim --seeds 100000` runs many more.

use mesh_agent::sim::{run, Mode, SimConfig};

fn run_seeds(seeds: std::ops::Range<u64>, mode: Mode) -> (usize, usize) {
    let cfg = SimConfig::new(mode);
    let (mut merged, mut blocked) = (0, 0);
    for seed in seeds {
        let r = run(seed, &cfg);
        assert!(
            r.ok(),
            "seed {seed} ({mode:?}) violated invariants: {:#?}\nreplay: scripts/sim --replay {seed} --mode {}",
            r.violations,
            if mode == Mode::Clean { "clean" } else { "hostile" }
        );
        merged += r.merged;
        blocked += r.blocked;
    }
    (merged, blocked)
}

#[test]
fn clean_network_seeds_hold_every_invariant() {
    // Delays, reordering, duplicates, crashes and restarts.
    let (merged, _) = run_seeds(0..300, Mode::Clean);
    assert!(merged > 0, "the runs must do real work");
}

#[test]
fn hostile_network_seeds_hold_every_invariant() {
    // Plus drops, partitions and pauses past the lease.
    let (merged, _) = run_seeds(1_000..1_300, Mode::Hostile);
    assert!(merged > 0, "the runs must do real work");
}

#[test]
fn the_simulator_catches_a_broken_winner_rule() {
    let mut cfg = SimConfig::new(Mode::Clean);
    cfg.broken_winner_rule = true;
    let failing = (0..50).find(|&seed| !run(seed, &cfg).ok());
    assert!(
        failing.is_some(),
        "50 seeds with a broken winner rule and no violation: the invariants are blind"
    );
}

#[test]
fn a_seed_reproduces_its_run_exactly() {
    let mut cfg = SimConfig::new(Mode::Hostile);
    cfg.trace = true;
    let a = run(7, &cfg);
    let b = run(7, &cfg);
    assert_eq!(a.trace, b.trace);
    assert_eq!(a.events, b.events);
    assert!(!a.trace.is_empty());
}
