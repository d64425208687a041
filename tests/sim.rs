//! The deterministic simulator over hundreds of seeds (clean and hostile networks, with
//! storage faults; a remote origin; a forging member; an operator steering), and proof
//! that it can fail: a core with a broken winner rule, a fence that accepts any token, a
//! shell that acknowledges before flushing, one that keeps a write it reported failed,
//! one that starts work late (after a pause or cancel) and one that lets a cancelled
//! job run on are caught.
//! `scripts/sim --seeds 100000` runs many more.

use mesh_agent::sim::{run, Mode, SimConfig};

/// Totals over the seeds.
#[derive(Default)]
struct Totals {
    merged: usize,
    stops: u64,
    skewed: u64,
    lost_tails: u64,
    torn_tails: u64,
    aborted: u64,
}

fn run_seeds(seeds: std::ops::Range<u64>, mode: Mode) -> Totals {
    let cfg = SimConfig::new(mode);
    let mut t = Totals::default();
    for seed in seeds {
        let r = run(seed, &cfg);
        assert!(
            r.ok(),
            "seed {seed} ({mode:?}) violated invariants: {:#?}\nreplay: scripts/sim --replay {seed} --mode {}",
            r.violations,
            if mode == Mode::Clean { "clean" } else { "hostile" }
        );
        t.merged += r.merged;
        t.stops += r.shutdowns;
        t.skewed += r.skewed_ticks;
        t.lost_tails += r.lost_tails;
        t.torn_tails += r.torn_tails;
        t.aborted += r.aborted_writes;
    }
    t
}

/// Storage faults are on by default: the runs must have met each kind.
fn assert_storage_faults_happened(t: &Totals) {
    assert!(t.lost_tails > 0, "no crash lost an unflushed tail");
    assert!(t.torn_tails > 0, "no crash tore a chunk");
    assert!(t.aborted > 0, "no user write failed to append or flush");
}

#[test]
fn clean_network_seeds_with_storage_faults_hold_every_invariant() {
    // Delays, reordering, duplicates, crashes (losing what was not flushed), clean stops
    // and restarts, user writes that fail; wall clocks apart by less than the drift
    // bound, with the joining and skew guards on.
    let t = run_seeds(0..300, Mode::Clean);
    assert!(t.merged > 0, "the runs must do real work");
    assert!(t.stops > 0, "the runs must stop nodes cleanly");
    // Here a crash seldom finds an unflushed tail (1-3 of these 300 runs: the shell
    // flushes before anything leaves), so tails lost and torn are the hostile runs' to
    // show (about a dozen lost, a few torn in theirs).
    assert!(t.aborted > 0, "no user write failed to append or flush");
    assert_eq!(
        t.skewed, 0,
        "clocks within the drift bound were judged skewed"
    );
}

#[test]
fn hostile_network_seeds_with_storage_faults_hold_every_invariant() {
    // Plus drops, partitions, pauses past the lease, and a wall clock off by more than
    // the drift bound for a while (the node must claim nothing while it sees that).
    // (Seeds 1 000-1 299 lost 11 tails and tore none once a connection closed as it
    // opened was no longer probed at once: 0-299 lost 11 and tore 6.)
    let t = run_seeds(0..300, Mode::Hostile);
    assert!(t.merged > 0, "the runs must do real work");
    assert!(t.stops > 0, "the runs must stop nodes cleanly");
    assert_storage_faults_happened(&t);
    assert!(
        t.skewed > 0,
        "no node ever saw its clock skewed: the skew rule is untested"
    );
}

#[test]
fn the_simulator_catches_a_shell_that_acknowledges_a_write_before_flushing_it() {
    // The node shell flushes a user's story before it answers; one that answered first
    // would lose an acknowledged story whenever its node crashed before the next
    // background flush. The invariants must see that.
    // The broken shell flushes before nothing: the flush before a sync frame leaves
    // would otherwise cover the write, which is pushed to the peers at once.
    let mut cfg = SimConfig::new(Mode::Clean);
    cfg.ack_before_flush = true;
    cfg.send_before_flush = true;
    cfg.start_before_flush = true;
    let caught = (0..SEEDS_TO_CATCH_AN_EARLY_ACK)
        .map(|seed| run(seed, &cfg))
        .find(|r| !r.ok());
    let Some(r) = caught else {
        panic!("no lost acknowledged write in {SEEDS_TO_CATCH_AN_EARLY_ACK} seeds: the invariant is blind");
    };
    assert!(
        r.violations
            .iter()
            .any(|v| v.contains("lost the acknowledged story")),
        "seed {} failed, but not as a lost acknowledged write: {:?}",
        r.seed,
        r.violations
    );
}

const SEEDS_TO_CATCH_AN_EARLY_ACK: u64 = 100;

#[test]
fn the_simulator_catches_a_shell_that_keeps_a_write_it_reported_failed() {
    // A write whose append or flush failed was reported failed to its user: it must
    // leave no fact behind. A shell that kept it would show it in the views.
    let mut cfg = SimConfig::new(Mode::Clean);
    cfg.keep_failed_writes = true;
    let caught = (0..50).map(|seed| run(seed, &cfg)).find(|r| !r.ok());
    let Some(r) = caught else {
        panic!(
            "no aborted write seen in 50 seeds of a shell that keeps them: the invariant is blind"
        );
    };
    assert!(
        r.violations
            .iter()
            .any(|v| v.contains("whose write was aborted")),
        "seed {} failed, but not as a seen aborted write: {:?}",
        r.seed,
        r.violations
    );
}

#[test]
fn the_simulator_catches_a_shell_that_lets_things_leave_before_they_are_durable() {
    // Nothing leaves a node before it is durable (docs/DESIGN.md §1.6). A sync frame
    // carries the sender's heads: a peer settles its claim on them ("you hold my claim")
    // and builds on them. A job acts outside: a merge lands at the origin under its
    // claim's token. The two seeds that found it:
    // - 1577 clean (neither flushed): a node acknowledged a peer's settled review claim in its heads before
    //   flushing it, crashed, lost it, and later claimed the same review round with the
    //   same token, so two results shared one token and the view flipped a round later
    //   rounds were built on (two merges of one story at once);
    // - 2362 hostile (frames flushed, jobs not): an isolated node landed a merge, crashed and lost the claim with
    //   its tail, and later claimed the merge again with the same token: the fence took
    //   it as the same holder repeating its land, and the story landed twice.
    // The shell now flushes before any frame leaves and any job starts; each broken shell
    // must still be caught. (Since the tie rule keeps the chain later work built on,
    // 1577's reused token no longer flips a view; the simulator now checks the cause
    // itself: no node hands out a token its frames had acknowledged as taken.)
    // Signed facts (issue 15) changed every change's bytes, and with them the runs:
    // 1577 still finds the frames case, but 2362 no longer meets the jobs case, and a
    // search for another seed found none in ~5 000 runs (hostile 0-999; hostile 0-1999
    // with 3 nodes; 0-999 in both modes with 3 nodes and 12 stories). Until one is found
    // (`scripts/sim --broken-start-before-flush --keep-going`), only the frames case is
    // asserted here. Claims on news going to one node first changed the runs again:
    // clean seed 521 found the frames case (the one of 0-599; 1577 no longer). SWIM-style
    // liveness (probes instead of a beat to every peer each second) changed them once
    // more: clean seeds 425 and 954 find it now (the two of 0-1499; 521 no longer).
    // Sessions that end at once between equal documents (`same`) changed them again:
    // clean 109, 942 and 1187 of 0-1499. A push the peer holds ending without automerge
    // sync (`covered`) did once more: none of clean 0-1499, hostile 81, 156, 193 and 9
    // more of 0-1499. Any session answered `covered` (and sync received without
    // automerge's history walk): hostile 101, 156, 262, 439, 491 and 572 of 0-599. `need`
    // answers (a push's missing dependencies fetched alone) and full syncs on a new
    // connection: hostile 19, 111, 156, 190, 349, 439, 517 and 553 of 0-599. A suspicion
    // another peer named already left unpublished: hostile 111, 156, 262, 349, 407, 439
    // and 596 of 0-599. A sync asked for while one was out going once that one fails:
    // hostile 156, 272, 331, 439 and 554 of 0-599.
    let (seed, mode) = (156, Mode::Hostile);
    let mut cfg = SimConfig::new(mode);
    cfg.send_before_flush = true;
    let r = run(seed, &cfg);
    assert!(
        !r.ok(),
        "seed {seed} {mode:?} with frames sent before the flush held every invariant: the invariants (or the seed) no longer see the reused token"
    );
    let fixed = run(seed, &SimConfig::new(mode));
    assert!(fixed.ok(), "seed {seed} {mode:?}: {:?}", fixed.violations);
}

#[test]
fn changes_to_one_file_made_on_both_sides_of_a_partition_all_land_or_block() {
    // Issue 11: each side of a partition implemented a story planning the same file;
    // after the heal one review rejected and the other's merge hit a rebase conflict, and
    // each rework waited for the other's change to land — a wait-for cycle, and every
    // story sharing a file waited behind it. These hostile seeds (2 planned files, the
    // default) stalled that way on 7ebbe6f; now only changes ahead in the order are
    // waited for, so they finish.
    // (The runs of then: no storage faults, the backlog written at the start.)
    let mut cfg = SimConfig::new(Mode::Hostile);
    cfg.storage_faults = false;
    for seed in [1_021, 1_080, 1_092, 1_174, 1_288, 1_299] {
        let r = run(seed, &cfg);
        assert!(
            r.ok(),
            "seed {seed} (hostile) stalled again: {:#?}\nreplay: scripts/sim --replay {seed} --mode hostile",
            r.violations
        );
        assert_eq!(r.merged + r.blocked, cfg.stories, "seed {seed}");
    }
}

#[test]
fn a_claim_that_never_left_its_crashed_node_is_owed_no_takeover() {
    // The takeover check owes a crashed node's settling claims a takeover within the
    // bound. These clean seeds crashed a node a few ms after it wrote a claim whose push
    // was still queued behind a running session: no other node ever had the claim (in
    // 5009 not even its story), so none could take it over; the node's restart released
    // it and the story finished. The check now owes only claims that reached another
    // node before their holder came back.
    let cfg = SimConfig::new(Mode::Clean);
    for seed in [5_009, 56_960] {
        let r = run(seed, &cfg);
        assert!(
            r.ok(),
            "seed {seed} (clean): {:#?}\nreplay: scripts/sim --replay {seed} --mode clean",
            r.violations
        );
    }
}

#[test]
fn a_sync_lost_with_a_failed_session_does_not_delay_a_takeover() {
    // Clean seed 85328 (the 100,000-seed sweep on 4c07ef4): node1 pushed to node3 while
    // node3 was down; node3 came back and the new connection's full sync waited behind
    // that session, then went down with it when it failed. node1 never synced with node3,
    // so its claims waited for node3 to answer until a backoff ran out, and its takeover
    // of a crashed node's review started 286 ms past the bound. A sync asked for while
    // one was out now goes when that one fails.
    let r = run(85_328, &SimConfig::new(Mode::Clean));
    assert!(
        r.ok(),
        "{:#?}\nreplay: scripts/sim --replay 85328 --mode clean",
        r.violations
    );
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
fn the_simulator_catches_a_fence_rule_that_accepts_any_token() {
    // The origin's fence runs the product's rule (`core::fence::token_check`, whose own
    // unit tests fail the same broken rule). Accepting any token lets a stale or second
    // merge land a story that already landed: the invariants must see it.
    let mut cfg = SimConfig::new(Mode::Hostile);
    cfg.fence_rule = |_, _, _| None;
    let caught = (1_000..1_100).map(|seed| run(seed, &cfg)).find(|r| !r.ok());
    let Some(r) = caught else {
        panic!("100 hostile seeds with a fence that accepts any token and no violation: the invariants are blind");
    };
    assert!(
        r.violations.iter().any(|v| v.contains("landed 2 times")),
        "seed {} failed, but not as a double landing: {:?}",
        r.seed,
        r.violations
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

#[test]
fn a_view_never_flips_a_round_later_rounds_built_on() {
    // Seed 78990 (clean, on 5e108a5): node0, alone, reviewed round 0 of a story (approve,
    // token 1) and started its merge; the others, not knowing, reviewed round 0 too
    // (reject, token 1), reworked, reviewed round 1 and started merge round 1. When node0
    // came back the token tie went to the lower holder, the view flipped round 0 to
    // approved and a node merged round 0 while another merged round 1. A tie between
    // finished claims now goes to the one later work built on, and running work the story
    // no longer needs stops (docs/DESIGN.md §5.2, §5.4).
    let cfg = SimConfig::new(Mode::Clean);
    let r = run(78_990, &cfg);
    assert!(
        r.ok(),
        "seed 78990 (clean): {:#?}\nreplay: scripts/sim --replay 78990 --mode clean",
        r.violations
    );
}

#[test]
fn a_remote_origin_with_outages_and_lost_answers_holds_every_invariant() {
    // Merges take the gate in the document; the origin is down for a few windows of the
    // chaos, jobs ending then are deferred (no attempt), and a third of the merges ending
    // then had landed before their answer was lost: the next holder finds them landed.
    // Every story still finishes within the bound, lands once, and none is blocked by an
    // outage (a blocked story would need failed attempts, and outages are not attempts).
    let (mut deferred, mut lost, mut blocked) = (0, 0, 0);
    for (seeds, mode) in [(0..100, Mode::Clean), (1_000..1_100, Mode::Hostile)] {
        let mut cfg = SimConfig::new(mode);
        cfg.remote = true;
        for seed in seeds {
            let r = run(seed, &cfg);
            assert!(
                r.ok(),
                "seed {seed} ({mode:?}, remote) violated invariants: {:#?}\nreplay: scripts/sim --replay {seed} --remote",
                r.violations
            );
            deferred += r.deferred_jobs;
            lost += r.lost_answers;
            blocked += r.blocked;
        }
    }
    assert!(deferred > 100, "outages deferred only {deferred} jobs");
    assert!(lost > 0, "no merge landed with its answer lost");
    assert_eq!(blocked, 0, "stories blocked though outages are no attempts");
}

#[test]
fn a_new_epoch_cut_after_a_run_keeps_every_live_story_and_every_merge() {
    // At the heal and at the end of each run a node's document is cut into a new
    // epoch's seed (`Doc::seed`: merged stories retired whole, each file's top claim
    // among theirs kept as its floor) and folded again: stories not merged read the
    // same, merged ones merged (or retired with the same id and commit), every
    // resource's next token the same, roster and knowledge the same. And the heal's
    // epoch, with all the node heard after the heal carried in (`Doc::carry_from`),
    // reads as the node does at the end. Files make claims share resources across
    // stories (a live claim below a file's floor still counts, and loses to it), the
    // remote origin adds gates, the byzantine member inflated and forged claims; every
    // kind of run is cut.
    let mut merged = 0;
    for (i, mode) in [Mode::Clean, Mode::Hostile].into_iter().enumerate() {
        for (j, seed) in (0..30u64).enumerate() {
            let mut cfg = SimConfig::new(mode);
            cfg.check_seed = true;
            cfg.check_carry = true;
            cfg.files = 3;
            cfg.remote = j % 2 == 0;
            cfg.byzantine = (i + j) % 3 == 0;
            let seed = 72_000 + seed;
            let r = run(seed, &cfg);
            assert!(
                r.ok(),
                "seed {seed} ({mode:?}) violated invariants: {:#?}\nreplay: scripts/sim --replay {seed} --mode {} --check-carry --files 3{}{}",
                r.violations,
                if mode == Mode::Clean { "clean" } else { "hostile" },
                if cfg.remote { " --remote" } else { "" },
                if cfg.byzantine { " --byzantine" } else { "" },
            );
            merged += r.merged;
        }
    }
    assert!(
        merged > 300,
        "only {merged} stories merged: the seeds retired little"
    );
}

#[test]
fn a_mesh_that_moves_to_new_epochs_while_it_works_breaks_no_invariant() {
    // Every node proposes a new epoch once two merged stories are live: the mesh moves
    // again and again while stories are half done, nodes crash (some right after a cut,
    // then catch up from a peer's previous document), partitions heal and restarts
    // reload an epoch's document with its root. Every invariant holds as without
    // epochs: nothing twice, no token falls (floors stand for retired claims), every
    // acknowledged story reaches every node (or retired merged), every story finishes.
    let (mut moves, mut epochs, mut merged) = (0, 0, 0);
    for mode in [Mode::Clean, Mode::Hostile] {
        for seed in 0..30u64 {
            let mut cfg = SimConfig::new(mode);
            cfg.stories = 8;
            cfg.epoch_after = 2;
            let r = run(seed, &cfg);
            assert!(
                r.ok(),
                "seed {seed} ({mode:?}) violated invariants: {:#?}\nreplay: scripts/sim --replay {seed} --mode {} --stories 8 --epoch-after 2",
                r.violations,
                if mode == Mode::Clean { "clean" } else { "hostile" },
            );
            (moves, epochs, merged) = (moves + r.moves, epochs + r.epoch, merged + r.merged);
        }
    }
    assert!(
        epochs >= 60,
        "node0 moved only {epochs} epochs over 60 runs"
    );
    assert!(
        moves >= 4 * epochs,
        "{moves} moves for {epochs} epochs: nodes left behind"
    );
    assert!(merged >= 400, "only {merged} stories merged");
}

#[test]
fn a_new_node_meeting_a_mesh_that_moved_takes_its_epoch_up_and_breaks_no_invariant() {
    // node1 starts late, its store empty, while the mesh moves again and again: most
    // often it meets a mesh on a later epoch than its first document and takes that
    // epoch's document up whole (with the stories users wrote on it meanwhile); right
    // after a move it may instead be served the cut and move. Either way every invariant
    // holds: its acknowledged stories reach every node, nothing lands twice, every story
    // finishes. (Judging "holds only its own" by automerge actor, seed 4 failed: a node
    // writes under a new actor at each start, so one that crashed before it joined never
    // did.) With three nodes, half the seeds bring it up as the mesh moves to epoch 2, its
    // two peers on two epochs: when a node holding the cut waited for the new node's
    // first document as if it were another cut, and the new node for most of its peers to
    // name one epoch, neither moved again (7 of 60 clean seeds). Hostile seed 88 with
    // three nodes: the writer of a cut restarted, moved with no peer up, restarted again;
    // the document it moved from was in its archive only, and the two nodes still on it
    // never got the cut (a restarted node now reads it back for them). Clean seed 93
    // with three nodes: a restarted node on epoch 1 served the new node the first
    // document while the other was on epoch 2; it took it in and was stranded two
    // epochs behind (a new node now refuses a document a peer moved from). Clean seed
    // 5053 with three nodes: the check owed a takeover to node1 before it had ever
    // come up (a late node is down until it first starts).
    let mut joins = 0;
    let runs = [
        (Mode::Clean, 0, 0..20),
        (Mode::Hostile, 0, 0..20),
        (Mode::Clean, 3, 0..20),
        (Mode::Hostile, 3, 88..89),
        (Mode::Clean, 3, 93..94),
        (Mode::Clean, 3, 5053..5054),
    ];
    for (mode, nodes, seeds) in runs {
        for seed in seeds {
            let mut cfg = SimConfig::new(mode);
            cfg.nodes = if nodes > 0 { nodes } else { cfg.nodes };
            cfg.stories = 8;
            cfg.epoch_after = 2;
            cfg.late_join = true;
            let r = run(seed, &cfg);
            assert!(
                r.ok(),
                "seed {seed} ({mode:?}, {} nodes) violated invariants: {:#?}\nreplay: scripts/sim --replay {seed} --mode {} --nodes {} --stories 8 --epoch-after 2 --late-join",
                cfg.nodes,
                r.violations,
                if mode == Mode::Clean { "clean" } else { "hostile" },
                cfg.nodes,
            );
            joins += r.joins;
        }
    }
    assert!(
        joins >= 5,
        "a new node took an epoch up whole in only {joins} of 63 runs"
    );
}

#[test]
fn a_byzantine_member_forging_overwriting_and_inflating_breaks_no_invariant() {
    // The last node also forges through the run: facts re-signed in other nodes' names,
    // overwritten, deleted, replayed or copied, claims in others' names and with
    // inflated tokens, takeover releases of others' claims. Every invariant holds for
    // every node, and the stories still land. (With signature and entitlement checks
    // switched off, a fifth of these seeds broke an invariant.) Clean seed 5059: a forged
    // takeover of a claim that had just won a token tie let the other claim start while
    // its holder still ran.
    let mut forgeries = 0;
    for (seeds, mode) in [
        (0..50, Mode::Clean),
        (5_059..5_060, Mode::Clean),
        (2_000..2_050, Mode::Hostile),
    ] {
        let mut cfg = SimConfig::new(mode);
        cfg.byzantine = true;
        for seed in seeds {
            let r = run(seed, &cfg);
            assert!(
                r.ok(),
                "seed {seed} ({mode:?}, byzantine) violated invariants: {:#?}\nreplay: scripts/sim --replay {seed} --byzantine",
                r.violations
            );
            forgeries += r.forgeries;
        }
    }
    assert!(forgeries > 1_000, "only {forgeries} forgeries were tried");
}

/// Runs `seeds` with an operator steering; returns (commands, stories cancelled, merged).
fn run_steered(seeds: std::ops::Range<u64>, mode: Mode) -> (u64, usize, usize) {
    let mut cfg = SimConfig::new(mode);
    cfg.steer = true;
    let (mut commands, mut cancelled, mut merged) = (0, 0, 0);
    for seed in seeds {
        let r = run(seed, &cfg);
        assert!(
            r.ok(),
            "seed {seed} ({mode:?}, steer) violated invariants: {:#?}\nreplay: scripts/sim --replay {seed} --mode {} --steer",
            r.violations,
            if mode == Mode::Clean { "clean" } else { "hostile" }
        );
        commands += r.commands;
        cancelled += r.cancelled;
        merged += r.merged;
    }
    (commands, cancelled, merged)
}

// Issue 16: the operator gives random commands at random moments through a random node
// that is up — pause and resume (a story, a node, the mesh), prioritize, context,
// assign, approve, dismiss, and a few cancels, requests for changes and unblocks; part
// of the backlog waits at approval gates. No node starts a phase its view has paused,
// held or cancelled, no node lands a story its view has cancelled, the views converge
// (steering included), and once the operator resumes everything and approves what
// waits, every story lands, is blocked or was cancelled within the bound.

#[test]
fn an_operator_steering_at_random_moments_breaks_no_invariant() {
    let (commands, cancelled, merged) = run_steered(0..STEERED_SEEDS, Mode::Clean);
    assert!(
        commands > 5 * STEERED_SEEDS,
        "only {commands} operator commands"
    );
    assert!(cancelled > 0, "no story was cancelled");
    assert!(
        merged > 3 * STEERED_SEEDS as usize,
        "only {merged} stories landed"
    );
}

#[test]
fn an_operator_steering_through_partitions_breaks_no_invariant() {
    // Commands given on the minority side of a partition, through a node that is about
    // to crash, signed on a clock skewed beyond the drift bound.
    let (commands, cancelled, merged) = run_steered(1_000..1_000 + STEERED_SEEDS, Mode::Hostile);
    assert!(
        commands > 5 * STEERED_SEEDS,
        "only {commands} operator commands"
    );
    assert!(cancelled > 0, "no story was cancelled");
    assert!(
        merged > 3 * STEERED_SEEDS as usize,
        "only {merged} stories landed"
    );
}

/// Seeds per mode with an operator (~0.45 s each here; `scripts/sim --steer` runs more).
const STEERED_SEEDS: u64 = 60;

#[test]
fn the_simulator_catches_a_shell_that_starts_work_an_operator_paused_or_cancelled() {
    // A shell whose job queue starts each job half a phase after the core asked, without
    // asking again, starts work whose story, node or mesh an operator paused (or whose
    // story was cancelled) meanwhile: the invariants must see it. (A core that does not
    // check for a pause when its claim settles is caught the same way: 35 of 200 runs
    // with `--steer`, tried once by hand.)
    let mut cfg = SimConfig::new(Mode::Clean);
    cfg.steer = true;
    cfg.broken_job_queue = true;
    let caught = (0..20).map(|seed| run(seed, &cfg)).find(|r| !r.ok());
    let Some(r) = caught else {
        panic!("20 seeds of a shell that starts work late and no violation: the pause invariant is blind");
    };
    assert!(
        r.violations.iter().any(|v| v.contains("paused (at")),
        "seed {} failed, but not as paused work started: {:?}",
        r.seed,
        r.violations
    );
    // A cancel is rarer (one story in eight at most): seed 13 clean starts a cancelled
    // story's implement (2 of the 100 runs of `scripts/sim --steer --broken-job-queue
    // --keep-going --seeds 100 --mode clean`; seed 19 until claims on news went to one
    // node first; 13 until sessions between equal documents ended at once, now 88, the
    // one of those 100).
    let seed = 88;
    let r = run(seed, &cfg);
    assert!(
        r.violations
            .iter()
            .any(|v| v.contains("though its view has the story cancelled")),
        "seed {seed} clean with a late job queue: {:?}",
        r.violations
    );
    cfg.broken_job_queue = false;
    let fixed = run(seed, &cfg);
    assert!(
        fixed.ok(),
        "seed {seed} clean, steer: {:?}",
        fixed.violations
    );
}

#[test]
fn the_simulator_catches_a_shell_that_lets_a_cancelled_story_land() {
    // A shell that does not stop the job the core cancels lets a cancelled story's merge
    // land: in clean seed 412 the operator cancels S-0003 while a node merges it; the
    // core asks to stop the job, the shell lets it run on, and it lands. (4 runs of the
    // 1 800 of `scripts/sim --steer --broken-cancel --keep-going --start 300 --seeds 900`,
    // none of seeds 0-299; hostile 191, then 140, before claims on news went to one node
    // first. Since SWIM-style liveness: clean 308, 370, 481, 650, 1001 and hostile 437,
    // 651 of the same 1 800. Since sessions between equal documents end at once: clean
    // 276, 341, 370 and 396 of seeds 0-599. Since a push the peer holds ends without
    // automerge sync (`covered`): clean 140 and 143 of 0-599. Since any session may be
    // answered `covered`: clean 101 of 0-599. Since a suspicion another peer named
    // already stays unpublished: clean 276, 377, 408 and hostile 307 of 0-599. Since a
    // connection closed as it opened is not probed at once: clean 408 of 0-599.)
    let seed = 408;
    let mut cfg = SimConfig::new(Mode::Clean);
    cfg.steer = true;
    cfg.broken_cancel = true;
    let r = run(seed, &cfg);
    assert!(
        r.violations
            .iter()
            .any(|v| v.contains("which its view has cancelled")),
        "seed {seed} clean with a shell that runs cancelled jobs on: {:?}",
        r.violations
    );
    cfg.broken_cancel = false;
    let fixed = run(seed, &cfg);
    assert!(
        fixed.ok(),
        "seed {seed} clean, steer: {:?}",
        fixed.violations
    );
}

#[test]
fn a_budget_split_into_allowances_is_never_overspent() {
    // An operator sets a tight daily budget ($10 for a backlog that costs ~$6 when nothing
    // goes wrong): nodes reserve before each job, ask and give allowance, crash and are
    // cut off, and the mesh's true spend — every job started, in full — never passes
    // it. `scripts/sim --budget 10 --seeds 10000` runs many more.
    let (mut spent, mut ran_out, mut runs) = (0u64, 0u64, 0u64);
    for mode in [Mode::Clean, Mode::Hostile] {
        let mut cfg = SimConfig::new(mode);
        cfg.budget = Some(10_000_000);
        for seed in 0..30 {
            let r = run(seed, &cfg);
            assert!(
                r.ok(),
                "seed {seed} ({mode:?}) with a budget: {:#?}\nreplay: scripts/sim --budget 10 --replay {seed}",
                r.violations
            );
            assert!(r.spent_micro_usd <= 10_000_000);
            spent += r.spent_micro_usd;
            ran_out += u64::from(r.out_of_money);
            runs += 1;
        }
    }
    assert!(
        spent > 0,
        "the budget runs spent nothing: the invariant saw no job"
    );
    assert!(
        ran_out < runs,
        "every run ran out of money: the budget is too tight to show liveness"
    );
}

#[test]
fn the_simulator_catches_jobs_that_cost_more_than_they_reserve() {
    // A reservation that is no cap (5 cents, for jobs costing up to 70) lets nodes start
    // jobs their allowance cannot pay for: the budget invariant must see the overspend
    // (with a $6 budget, 7 of the clean seeds 0..20 break it, `scripts/sim --budget 6
    // --broken-reserve 0.05 --seeds 20 --mode clean --keep-going`).
    let mut cfg = SimConfig::new(Mode::Clean);
    cfg.budget = Some(6_000_000);
    cfg.reserve_micro_usd = 50_000;
    let Some(r) = (0..20).map(|seed| run(seed, &cfg)).find(|r| !r.ok()) else {
        panic!("20 seeds with 5-cent reservations and no overspend: the budget invariant is blind");
    };
    let seed = r.seed;
    assert!(
        r.violations.iter().any(|v| v.contains("over its budget")),
        "seed {seed} clean with 5-cent reservations: {:?}",
        r.violations
    );
    cfg.reserve_micro_usd = mesh_agent::core::BudgetConfig::default().reserve_micro_usd;
    let fixed = run(seed, &cfg);
    assert!(
        fixed.ok(),
        "seed {seed} clean, real reservations: {:?}",
        fixed.violations
    );
}
