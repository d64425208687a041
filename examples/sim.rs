//! Runs the deterministic simulator over many seeds and prints the first failure with
//! its trace (or, with `--keep-going`, every failure, one line each, and a list at the
//! end). `scripts/sim --seeds 100000` wraps it.
//!
//!     cargo run --release --example sim -- --seeds 1000 [--start 0] [--mode clean|hostile|both] [--keep-going]
//!         [--files N]   # planned files drawn from N names (default 4; 0: issue 3's backlog, no files)
//!         [--no-stops]  # no clean stops, guards or skewed clocks: the runs of before them
//!         [--no-storage-faults]  # every write durable at once, backlog written at the start
//!         [--remote]    # a remote origin: merges take the gate in the document, the origin has outages
//!         [--byzantine] # the last node also forges, overwrites, deletes, replays and inflates facts
//!         [--steer]     # an operator pauses, resumes, cancels, approves... through random nodes
//!         [--budget USD] # an operator sets a daily budget; the mesh must never spend more
//!         [--broken-reserve USD]   # jobs reserve less than they cost: finds seeds that
//!                       # show the budget invariant catches the overspend
//!         [--broken-job-queue] [--broken-cancel]   # a shell that starts jobs late without
//!                       # asking again, or that does not stop a job the core cancels: finds
//!                       # seeds that show the steering invariants catch it
//!         [--broken-send-before-flush] [--broken-start-before-flush]   # a shell that lets
//!                       # frames or jobs leave before they are durable: finds seeds that show the checker catches it
//!     cargo run --release --example sim -- --replay 1234 --mode hostile   # full trace
//!     cargo run --release --example sim -- --cost 10,30,50,100 [--writes 10] [--idle-secs 60]
//!         [--stories N]  # the cost model: what the protocol sends idle, per write and (with
//!                       # --stories) per story carried to merge, at each mesh size, with the
//!                       # product's timings and no faults (docs/PERFORMANCE.md "Cost model")

use mesh_agent::sim::{cost, run, Mode, SimConfig};
use std::time::Instant;

// A fifth of a run's time went to glibc's malloc and free (small, short-lived automerge
// and view allocations); mimalloc makes sweeps of many seeds noticeably faster.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn usage() -> ! {
    eprintln!("usage: sim [--seeds N] [--start S] [--mode clean|hostile|both] [--replay SEED] [--nodes N] [--stories N] [--files N] [--no-stops] [--no-storage-faults] [--remote] [--byzantine] [--steer] [--budget USD] [--broken-reserve USD] [--broken-job-queue] [--broken-cancel] [--broken-send-before-flush] [--broken-start-before-flush] [--check-view] [--check-seed] [--check-carry] [--epoch-after N] [--late-join] [--keep-going]\n       sim --cost N[,N...] [--writes N] [--idle-secs S] [--stories N] [--start SEED]");
    std::process::exit(2);
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (mut seeds, mut start, mut modes, mut replay) =
        (1000u64, 0u64, vec![Mode::Clean, Mode::Hostile], None);
    let (mut nodes, mut stories, mut files, mut keep_going) = (None, None, None, false);
    let (mut stops, mut storage_faults, mut remote) = (true, true, false);
    let (mut send_early, mut start_early, mut byzantine) = (false, false, false);
    let (mut steer, mut late_jobs, mut no_cancel) = (false, false, false);
    let mut check_view = false;
    let mut check_seed = false;
    let mut check_carry = false;
    let mut epoch_after = 0u32;
    let mut late_join = false;
    let (mut cost_nodes, mut writes, mut idle_secs) = (None::<Vec<usize>>, 10u64, 60u64);
    let (mut budget, mut reserve) = (None::<f64>, None::<f64>);
    while let Some(a) = args.next() {
        let mut val = || args.next().unwrap_or_else(|| usage());
        match a.as_str() {
            "--seeds" => seeds = val().parse().unwrap_or_else(|_| usage()),
            "--start" => start = val().parse().unwrap_or_else(|_| usage()),
            "--replay" => replay = Some(val().parse().unwrap_or_else(|_| usage())),
            "--nodes" => nodes = Some(val().parse().unwrap_or_else(|_| usage())),
            "--stories" => stories = Some(val().parse().unwrap_or_else(|_| usage())),
            "--files" => files = Some(val().parse().unwrap_or_else(|_| usage())),
            "--mode" => {
                modes = match val().as_str() {
                    "clean" => vec![Mode::Clean],
                    "hostile" => vec![Mode::Hostile],
                    "both" => vec![Mode::Clean, Mode::Hostile],
                    _ => usage(),
                }
            }
            "--keep-going" => keep_going = true,
            "--no-stops" => stops = false,
            "--no-storage-faults" => storage_faults = false,
            "--remote" => remote = true,
            "--byzantine" => byzantine = true,
            "--steer" => steer = true,
            "--budget" => budget = Some(val().parse().unwrap_or_else(|_| usage())),
            "--broken-reserve" => reserve = Some(val().parse().unwrap_or_else(|_| usage())),
            "--broken-job-queue" => late_jobs = true,
            "--broken-cancel" => no_cancel = true,
            "--check-view" => check_view = true,
            "--check-seed" => check_seed = true,
            "--check-carry" => check_carry = true,
            "--epoch-after" => epoch_after = val().parse().unwrap_or_else(|_| usage()),
            "--late-join" => late_join = true,
            "--cost" => {
                let list = val();
                let parsed: Result<Vec<usize>, _> = list.split(',').map(str::parse).collect();
                cost_nodes = Some(parsed.unwrap_or_else(|_| usage()));
            }
            "--writes" => writes = val().parse().unwrap_or_else(|_| usage()),
            "--idle-secs" => idle_secs = val().parse().unwrap_or_else(|_| usage()),
            "--broken-send-before-flush" => send_early = true,
            "--broken-start-before-flush" => start_early = true,
            "-h" | "--help" => usage(),
            _ => usage(),
        }
    }
    if (check_seed || check_carry) && epoch_after > 0 {
        // The checks cut epoch 1 from node0's document as it stands; with
        // `--epoch-after` the mesh moves itself, and what it moves to is checked by the
        // run's own invariants (and every view by `--check-view`).
        eprintln!(
            "sim: --check-seed/--check-carry cut epoch 1 from a document that has not moved; \
             with --epoch-after the mesh moves itself: use --check-view instead"
        );
        std::process::exit(2);
    }
    let config = |mode| {
        let mut c = SimConfig::new(mode);
        c.stops_guards_clocks = stops;
        c.storage_faults = storage_faults;
        c.remote = remote;
        c.byzantine = byzantine;
        c.steer = steer;
        c.budget = budget.map(|b| (b * 1e6) as u64);
        if let Some(r) = reserve {
            c.reserve_micro_usd = (r * 1e6) as u64;
        }
        c.broken_job_queue = late_jobs;
        c.broken_cancel = no_cancel;
        c.check_view = check_view;
        c.check_seed = check_seed || check_carry;
        c.check_carry = check_carry;
        c.epoch_after = epoch_after;
        c.late_join = late_join;
        c.send_before_flush = send_early;
        c.start_before_flush = start_early;
        if let Some(n) = nodes {
            c.nodes = n;
        }
        if let Some(s) = stories {
            c.stories = s;
        }
        if let Some(f) = files {
            c.files = f;
        }
        c
    };
    if let Some(list) = cost_nodes {
        costs(&list, start, writes, idle_secs, stories);
        return;
    }
    if let Some(seed) = replay {
        for &mode in &modes {
            let mut c = config(mode);
            c.trace = true;
            let r = run(seed, &c);
            for line in &r.trace {
                println!("{line}");
            }
            println!(
                "seed {seed} {mode:?}: {} events, {} merged, {} blocked, {} cancelled, {} lost tails ({} torn), {} writes acknowledged, {} aborted, {} jobs deferred by outages ({} lost answers), {} operator commands ({} refused, {} outvoted), violations: {:?}",
                r.events, r.merged, r.blocked, r.cancelled, r.lost_tails, r.torn_tails, r.acked_writes, r.aborted_writes, r.deferred_jobs, r.lost_answers, r.commands, r.refused_commands, r.outvoted_commands, r.violations
            );
            let t = &r.traffic;
            println!(
                "messages (count, bytes): beats {:?}, sync requests {:?}, sync answers {:?}, probes {:?}, probe answers {:?}",
                t.beat, t.sync_req, t.sync_resp, t.probe, t.probe_answer
            );
        }
        return;
    }
    let t0 = Instant::now();
    let (mut events, mut merged, mut blocked, mut runs) = (0u64, 0usize, 0usize, 0u64);
    let (mut shutdowns, mut skewed_ticks, mut forgeries) = (0u64, 0u64, 0u64);
    let (mut lost_tails, mut torn_tails, mut acked, mut aborted) = (0u64, 0u64, 0u64, 0u64);
    let (mut deferred, mut lost_answers) = (0u64, 0u64);
    let (mut cancelled, mut commands, mut refused, mut outvoted) = (0usize, 0u64, 0u64, 0u64);
    let (mut spent, mut max_spent, mut ran_out) = (0u64, 0u64, 0u64);
    let (mut asks, mut gives) = (0u64, 0u64);
    let (mut moves, mut epochs, mut joins) = (0u64, 0u64, 0u64);
    let mut failed: Vec<String> = Vec::new();
    for seed in start..start + seeds {
        for &mode in &modes {
            let r = run(seed, &config(mode));
            runs += 1;
            events += r.events;
            merged += r.merged;
            blocked += r.blocked;
            shutdowns += r.shutdowns;
            moves += r.moves;
            joins += r.joins;
            epochs += r.epoch;
            skewed_ticks += r.skewed_ticks;
            forgeries += r.forgeries;
            lost_tails += r.lost_tails;
            torn_tails += r.torn_tails;
            acked += r.acked_writes;
            aborted += r.aborted_writes;
            deferred += r.deferred_jobs;
            lost_answers += r.lost_answers;
            cancelled += r.cancelled;
            commands += r.commands;
            refused += r.refused_commands;
            outvoted += r.outvoted_commands;
            spent += r.spent_micro_usd;
            max_spent = max_spent.max(r.spent_micro_usd);
            ran_out += u64::from(r.out_of_money);
            asks += r.asks;
            gives += r.gives;
            let mode_arg = if mode == Mode::Clean {
                "clean"
            } else {
                "hostile"
            };
            if !r.ok() && keep_going {
                println!("FAILED seed {seed} mode {mode_arg}: {:?}", r.violations);
                failed.push(format!("{seed} {mode_arg}"));
            } else if !r.ok() {
                println!("FAILED seed {seed} mode {mode:?}:");
                for v in &r.violations {
                    println!("  {v}");
                }
                let mut c = config(mode);
                c.trace = true;
                let r = run(seed, &c);
                println!("trace (last 200 events):");
                for line in r.trace.iter().rev().take(200).rev() {
                    println!("  {line}");
                }
                println!(
                    "replay: cargo run --release --example sim -- --replay {seed} --mode {mode_arg}{}{}{}{}{}{}",
                    if remote { " --remote" } else { "" },
                    if byzantine { " --byzantine" } else { "" },
                    if steer { " --steer" } else { "" },
                    budget.map_or(String::new(), |b| format!(" --budget {b}")),
                    if late_jobs { " --broken-job-queue" } else { "" },
                    if no_cancel { " --broken-cancel" } else { "" }
                );
                std::process::exit(1);
            }
        }
        if (seed - start + 1) % 1000 == 0 {
            eprintln!(
                "{} seeds done, {} failed ({:.0} s)",
                seed - start + 1,
                failed.len(),
                t0.elapsed().as_secs_f64()
            );
        }
    }
    println!(
        "{seeds} seeds x {} modes = {runs} runs: {} violations; {events} events, {merged} stories merged, {blocked} blocked, {shutdowns} clean stops, {skewed_ticks} skewed ticks, {forgeries} forgeries; storage: {lost_tails} crashes lost a tail ({torn_tails} torn), {acked} user writes acknowledged, {aborted} aborted; remote origin: {deferred} jobs deferred by outages ({lost_answers} landed, answer lost); operator: {commands} commands ({refused} refused, {outvoted} outvoted), {cancelled} stories cancelled; {:.1} s",
        modes.len(),
        failed.len(),
        t0.elapsed().as_secs_f64()
    );
    if epoch_after > 0 {
        println!("epochs: {moves} moves by nodes, {joins} taken up whole by a new node; node0 ended {epochs} epochs past the first, over all runs");
    }
    if let Some(b) = budget {
        println!(
            "budget ${b:.2} a day: the mesh spent ${:.2} a run on average, ${:.2} at most; {asks} asks, {gives} gives; {ran_out} runs ran out of money before every story finished",
            spent as f64 / runs.max(1) as f64 / 1e6,
            max_spent as f64 / 1e6
        );
    }
    if !failed.is_empty() {
        println!("failing (seed mode): {}", failed.join(", "));
        std::process::exit(1);
    }
}

/// `--cost`: the cost model's figures at each mesh size (see `mesh_agent::sim::cost`).
fn costs(list: &[usize], seed: u64, writes: u64, idle_secs: u64, stories: Option<usize>) {
    println!("| nodes | formed s | idle B/s per node (beats / sync / probes) | idle msgs/s per node | per write: push sessions (all sessions), sync frames, sync KB, beats | write reaches all, p50 / max ms | run s |");
    println!("|---|---|---|---|---|---|---|");
    for &n in list {
        let t0 = Instant::now();
        let c = cost::measure(seed, n, idle_secs * 1000, writes, 3_000);
        let per_s = |b: u64| b as f64 * 1000.0 / c.idle_ms.max(1) as f64 / n.max(1) as f64;
        let (sync_m, sync_b) = c.per_write(cost::Traffic::sync);
        let (beat_m, _) = c.per_write(|t| t.beat);
        let mut spread: Vec<u64> = c.spread_ms.iter().flatten().copied().collect();
        spread.sort_unstable();
        let reached = if spread.len() as u64 == c.writes && !spread.is_empty() {
            format!(
                "{} / {}",
                spread[spread.len() / 2],
                spread[spread.len() - 1]
            )
        } else {
            format!("{} of {} reached all", spread.len(), c.writes)
        };
        println!(
            "| {n} | {} | {:.0} ({:.0} / {:.0} / {:.0}) | {:.2} | {:.1} ({:.1}), {:.1}, {:.1}, {:.1} | {reached} | {:.1} |",
            c.formed_ms.map_or("not formed".to_string(), |ms| format!("{:.0}", ms as f64 / 1000.0)),
            c.idle_bytes_per_node_s(),
            per_s(c.idle.beat.1),
            per_s(c.idle.sync().1),
            per_s(c.idle.probes().1),
            c.idle_msgs_per_node_s(),
            c.pushes as f64 / c.writes.max(1) as f64,
            c.sessions_per_write(),
            sync_m,
            sync_b / 1024.0,
            beat_m,
            t0.elapsed().as_secs_f64(),
        );
    }
    let Some(stories) = stories else {
        return;
    };
    println!();
    println!("| nodes | stories merged | virtual s | claims per story | per story: KB sent (sync / beats / probes), messages | sync KB per story: automerge / pushed / heads / events / snapshots | document KB, whole / new epoch's seed | violations | run s |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for &n in list {
        let t0 = Instant::now();
        let r = cost::lifecycle(seed, n, stories);
        let (t, merged) = (r.traffic, r.merged);
        let per = |b: u64| b as f64 / 1024.0 / merged.max(1) as f64;
        println!(
            "| {n} | {merged} of {stories} | {:.0} | {:.1} | {:.1} ({:.1} / {:.1} / {:.1}), {:.0} | {} | {:.1} / {:.1} | {} | {:.1} |",
            r.took_ms as f64 / 1000.0,
            r.claims as f64 / merged.max(1) as f64,
            per(t.bytes()),
            per(t.sync().1),
            per(t.beat.1),
            per(t.probes().1),
            t.messages() as f64 / merged.max(1) as f64,
            t.parts.map_or(String::new(), |p| format!(
                "{:.1} / {:.1} / {:.1} / {:.1} / {:.1}",
                per(p.msg),
                per(p.push),
                per(p.heads),
                per(p.events),
                per(p.snapshot)
            )),
            r.doc_bytes as f64 / 1024.0,
            r.seed_bytes as f64 / 1024.0,
            r.violations.len(),
            t0.elapsed().as_secs_f64(),
        );
    }
}
