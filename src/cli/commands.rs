//! The CLI's commands that talk to a node (`status`, `claims`, `events`, `log`,
//! `knowledge`, `story`, `demo`): each asks the running node through the control API, or
//! reads the data dir directly when no node runs, and prints through `render`.

use super::render::{
    audit_line, event_line, print_knowledge, print_roster, print_story, print_story_list,
    render_claims, render_status,
};
use crate::{
    load_psk, usage, DemoCommand, EventsArgs, KnowledgeCommand, LogArgs, OperatorCommand,
    RosterArgs, StatusArgs, StoryCommand,
};
use anyhow::{anyhow, bail, Result};
use mesh_agent::api::{self, ControlClient};
use mesh_agent::config::Config;
use mesh_agent::core::model::{KnowledgeKind, NewStory};
use mesh_agent::core::state::LogQuery;
use mesh_agent::demo as demo_project;
use mesh_agent::identity;
use mesh_agent::node::{self, NodeOptions, StatusReport};
use std::path::Path;
use std::time::Duration;

/// The node refused the request as the caller's mistake (bad input, unknown id): a usage
/// error (exit code 2); anything else stays a runtime failure.
pub(crate) fn usage_if_refused(e: api::ClientError) -> anyhow::Error {
    match e {
        api::ClientError::Refused(m) => usage(m),
        e => e.into(),
    }
}

/// The operators in the data dir's config (a node that is not running is read with them).
/// The node key of a data dir, for writing to a stopped node's store.
pub(crate) fn offline_key(dir: &Path) -> Result<libp2p::identity::Keypair> {
    identity::load_node_key(dir).map_err(|_| {
        usage(format!(
            "no node in {}: run `mesh-agent init --data-dir {}` first",
            dir.display(),
            dir.display()
        ))
    })
}

pub(crate) fn operators(dir: &Path) -> Result<std::collections::BTreeSet<String>> {
    let cfg = Config::load(dir, std::env::vars()).map_err(usage)?;
    cfg.validate().map_err(usage)?;
    Ok(cfg.operator_set())
}

pub(crate) fn status(dir: &Path, a: StatusArgs) -> Result<()> {
    let report = if a.bootstrap.is_empty() {
        let client = ControlClient::for_data_dir(dir)?.ok_or_else(|| {
            anyhow!(
                "no node is running with data dir {} (start one with `mesh-agent run --data-dir {}`, or observe a mesh with --bootstrap <multiaddr>)",
                dir.display(),
                dir.display()
            )
        })?;
        client.status()?
    } else {
        observe(dir, &a)?
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render_status(&report));
    }
    Ok(())
}

/// Joins the mesh as a passive observer, waits until it has synced, and reports.
pub(crate) fn observe(dir: &Path, a: &StatusArgs) -> Result<StatusReport> {
    let mut cfg = Config::load(dir, std::env::vars()).unwrap_or_default();
    cfg.bootstrap = a.bootstrap.clone();
    cfg.listen = vec!["/ip4/0.0.0.0/tcp/0".into()];
    if let Some(p) = &a.psk_file {
        cfg.psk_file = Some(std::path::absolute(p).unwrap_or(p.clone()));
    }
    cfg.validate()?;
    let psk = load_psk(&cfg, dir)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let hb = cfg.heartbeat_ms;
        let handle = node::start(NodeOptions {
            config: cfg,
            data_dir: None,
            keypair: libp2p::identity::Keypair::generate_ed25519(),
            psk,
            passive: true,
            executor: None,
        })
        .await?;
        // Wait until we have synced with the mesh and the document stayed quiet for two
        // heartbeats (or the timeout), re-checking on every change we observe.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(a.timeout_secs);
        let quiet = Duration::from_millis(hb * 2);
        let mut rx = handle.observe();
        let mut refused = false;
        let mut progress = super::progress::Progress::new();
        let started = tokio::time::Instant::now();
        loop {
            let o = rx.borrow_and_update().clone();
            let synced = o.sync_sessions_completed > 0 && !o.alive.is_empty();
            // A mesh with operators refuses an observer (its key is fresh, so not on the
            // roster) as it connects: say so, rather than wait out the timeout.
            if !synced && o.closed_on_open >= REFUSALS {
                refused = true;
                break;
            }
            // Cut off after it synced: report the mesh as then, not after watching its
            // peers go dead and their claims expire.
            if synced && o.connected == 0 {
                break;
            }
            progress.show(&format!(
                "{} through {}: {:.0}s of {}s, {} peer(s) alive, {} connected",
                if synced { "synced, waiting for quiet" } else { "joining the mesh" },
                a.bootstrap.join(", "),
                started.elapsed().as_secs_f64(),
                a.timeout_secs,
                o.alive.len(),
                o.connected
            ));
            let until = if synced {
                (tokio::time::Instant::now() + quiet).min(deadline)
            } else {
                deadline
            };
            // Something changed: look again. Otherwise quiet long enough, timed out, or
            // the node stopped.
            if !matches!(tokio::time::timeout_at(until, rx.changed()).await, Ok(Ok(()))) {
                break;
            }
        }
        progress.clear();
        let report = handle.status().await;
        handle.kill().await;
        match report {
            // First: a refused observer never synced, and a redial the peer is about to
            // close again can show as a connection in the report.
            _ if refused => Err(anyhow!(
                "the mesh through {} closed each connection as it opened: a mesh with operators refuses an observer, whose key is fresh and so not on its roster (or the peer is at its `max_peers`); run `mesh-agent status` on a member's machine, or open its dashboard",
                a.bootstrap.join(", ")
            )),
            Some(r) if r.connected > 0 || !r.peers.is_empty() => Ok(r),
            _ => Err(anyhow!(
                "could not reach the mesh through {} within {}s (check the address and the pre-shared key)",
                a.bootstrap.join(", "),
                a.timeout_secs
            )),
        }
    })
}

/// Connections closed as they opened before an observer gives up on a mesh: it refuses
/// the observer.
const REFUSALS: u64 = 2;

/// An observer cut off from the mesh after it synced: `status --bootstrap` reports then,
/// not once its peers look dead.
pub(crate) fn observer_cut_off(r: &StatusReport) -> bool {
    r.passive && r.connected == 0 && !r.peers.is_empty()
}

pub(crate) fn claims(dir: &Path, json: bool) -> Result<()> {
    let client = running(dir)?;
    let r = client.status()?;
    if json {
        println!("{}", serde_json::to_string_pretty(&r.claims)?);
    } else {
        let mut o = String::new();
        render_claims(&r, &mut o);
        print!("{}", o.trim_start());
    }
    Ok(())
}

pub(crate) fn running(dir: &Path) -> Result<ControlClient> {
    ControlClient::for_data_dir(dir)?.ok_or_else(|| {
        anyhow!(
            "no node is running with data dir {} (start one with `mesh-agent run --data-dir {}`)",
            dir.display(),
            dir.display()
        )
    })
}

pub(crate) fn events(dir: &Path, a: EventsArgs) -> Result<()> {
    use std::io::Write;
    let client = running(dir)?;
    let mut after = 0;
    let mut first = true;
    loop {
        let mut batch = client.events(after)?;
        if first {
            if let Some(n) = a.tail {
                let skip = batch.len().saturating_sub(n);
                batch.drain(..skip);
            }
            first = false;
        }
        let mut out = std::io::stdout().lock();
        for (pos, e) in &batch {
            after = after.max(*pos);
            let line = if a.json {
                serde_json::to_string(e)?
            } else {
                event_line(e)
            };
            // A closed pipe (`events | head`) ends the command quietly.
            if writeln!(out, "{line}").is_err() {
                return Ok(());
            }
        }
        let _ = out.flush();
        if !a.follow {
            return Ok(());
        }
        if batch.len() < 1000 {
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

/// `log`: the audit trail, one line (or JSON object) per fact.
pub(crate) fn log(dir: &Path, a: LogArgs) -> Result<()> {
    use std::io::Write;
    let client = running(dir)?;
    let q = LogQuery {
        story: a.story,
        tail: a.tail,
    };
    // An unknown story is the caller's mistake: a usage error naming it.
    let entries = client.log(&q).map_err(usage_if_refused)?;
    let mut out = std::io::stdout().lock();
    for e in &entries {
        let line = if a.json {
            serde_json::to_string(e)?
        } else {
            audit_line(e)
        };
        // A closed pipe (`log | head`) ends the command quietly.
        if writeln!(out, "{line}").is_err() {
            return Ok(());
        }
    }
    if entries.is_empty() && !a.json {
        let _ = writeln!(out, "no facts yet");
    }
    let _ = out.flush();
    Ok(())
}

pub(crate) fn knowledge(dir: &Path, c: KnowledgeCommand) -> Result<()> {
    let client = running(dir)?;
    match c {
        KnowledgeCommand::List { json } => {
            let all = client.knowledge()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&all)?);
                return Ok(());
            }
            print_knowledge(&all);
            Ok(())
        }
        KnowledgeCommand::Add { kind, text } => {
            let kind = KnowledgeKind::parse(&kind).ok_or_else(|| {
                usage(format!(
                    "unknown kind {kind:?}: use convention, pattern, testing or pitfall"
                ))
            })?;
            let id = client
                .add_knowledge(kind, &text)
                .map_err(usage_if_refused)?;
            println!("{id}");
            Ok(())
        }
    }
}

pub(crate) fn story(dir: &Path, c: StoryCommand) -> Result<()> {
    let client = ControlClient::for_data_dir(dir)?;
    match c {
        StoryCommand::Add {
            from: Some(from),
            json,
            ..
        } => super::intake::add_from(dir, &from, json)?,
        StoryCommand::Add {
            title,
            body,
            priority,
            depends,
            files,
            label,
            json,
            from: None,
        } => {
            let new = NewStory {
                title: title.unwrap_or_default(),
                body,
                priority,
                depends_on: depends,
                files,
                labels: label,
                imported: None,
            };
            // Validate locally first so bad input is a usage error either way.
            new.validate().map_err(usage)?;
            let s = match client {
                Some(c) => c.add_story(&new).map_err(usage_if_refused)?,
                None => {
                    let key = offline_key(dir)?;
                    node::offline_add_story(dir, &key, &new, &operators(dir)?).map_err(
                        |e| match e {
                            node::NodeError::State(s) => usage(s),
                            e => e.into(),
                        },
                    )?
                }
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                println!("added {}  {}", s.id, s.fact.title);
            }
        }
        StoryCommand::List { json } => {
            let list = match client {
                Some(c) => c.stories()?,
                None => node::offline_stories(dir, &operators(dir)?)?,
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                print_story_list(&list);
            }
        }
        StoryCommand::Show { id, json } => {
            let s = match client {
                Some(c) => c.story(&id).map_err(usage_if_refused)?,
                None => node::offline_story(dir, &operators(dir)?, &id).map_err(|e| match e {
                    node::NodeError::State(mesh_agent::core::state::StateError::Input(e)) => {
                        usage(e)
                    }
                    e => e.into(),
                })?,
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                print_story(&s.story);
                if let Some(w) = &s.waiting {
                    println!("  waiting    {w}");
                }
            }
        }
    }
    Ok(())
}

pub(crate) fn demo(dir: &Path, c: DemoCommand) -> Result<()> {
    match c {
        DemoCommand::Origin { path } => {
            demo_project::create_origin(&path).map_err(|e| usage(e.message().to_string()))?;
            println!("demo origin {} (branch main)", path.display());
        }
        DemoCommand::Backlog { count, json } => {
            let mut backlog = demo_project::backlog();
            backlog.truncate(count.unwrap_or(backlog.len()));
            let client = ControlClient::for_data_dir(dir)?;
            let existing = match &client {
                Some(c) => c.stories()?.len(),
                None => node::offline_view(dir, &operators(dir)?)?.stories.len(),
            };
            if existing > 0 {
                bail!(usage(format!(
                    "the backlog already has {existing} stories: the demo backlog needs an empty one \
                     (its dependencies name S-0001, S-0002, ...)"
                )));
            }
            let key = match &client {
                Some(_) => None,
                None => Some(identity::load_node_key(dir).map_err(|_| {
                    usage(format!(
                        "no node in {}: run `mesh-agent init --data-dir {}` first",
                        dir.display(),
                        dir.display()
                    ))
                })?),
            };
            let mut added = Vec::new();
            let mut progress = super::progress::Progress::new();
            for (i, new) in backlog.iter().enumerate() {
                progress.show(&format!("adding the demo backlog: {i}/{}", backlog.len()));
                let s = match (&client, &key) {
                    (Some(c), _) => c.add_story(new)?,
                    (None, Some(key)) => node::offline_add_story(dir, key, new, &operators(dir)?)?,
                    (None, None) => bail!("no node key loaded for an offline write"),
                };
                if !json {
                    progress.clear();
                    println!("added {}  {}", s.id, s.fact.title);
                }
                added.push(s);
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&added)?);
            }
        }
    }
    Ok(())
}

pub(crate) fn operator(c: OperatorCommand) -> Result<()> {
    match c {
        OperatorCommand::Init { key, force } => {
            let path = key.unwrap_or_else(identity::default_operator_key_path);
            let signer = identity::create_operator_key(&path, force).map_err(usage)?;
            println!("operator {}", signer.author());
            println!("key {}", path.display());
            println!(
                "list the id in every node's config (`operators = [\"{}\"]`, or `mesh-agent init --operator {}`), then admit nodes with `mesh-agent admit <peer id>`",
                signer.author(),
                signer.author()
            );
        }
        OperatorCommand::Id { key } => {
            let path = key.unwrap_or_else(identity::default_operator_key_path);
            let signer = identity::load_operator_key(&path).map_err(usage)?;
            println!("{}", signer.author());
        }
    }
    Ok(())
}

/// `admit` (true) or `revoke` (false): an operator-signed roster fact, written through
/// the local running node.
pub(crate) fn roster_change(dir: &Path, admit: bool, a: RosterArgs) -> Result<()> {
    use mesh_agent::core::state::{admit_key, revoke_key, RosterFact};
    let peer = a.peer.trim().to_string();
    if mesh_agent::core::trust::key_of_peer_id(&peer).is_none() {
        bail!(usage(format!(
            "{peer:?} is not a node's peer id (12D3KooW..., as `mesh-agent init` prints it)"
        )));
    }
    let path = a.key.unwrap_or_else(identity::default_operator_key_path);
    let signer = identity::load_operator_key(&path).map_err(|e| {
        usage(format!(
            "{e} (admit and revoke are signed with an operator key: --key FILE or $MESH_OPERATOR_KEY)"
        ))
    })?;
    let client = running(dir)?;
    let key = if admit {
        admit_key(&peer)
    } else {
        revoke_key(&peer)
    };
    let at_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let fact = RosterFact {
        peer,
        note: a.note,
        at_ms,
    };
    let json = serde_json::to_string(&fact)?;
    let done = client
        .put_roster(&api::SealedFact {
            value: signer.seal(&key, &json),
            key,
        })
        .map_err(usage_if_refused)?;
    println!("{done}");
    Ok(())
}

pub(crate) fn roster(dir: &Path, json: bool) -> Result<()> {
    let r = running(dir)?.roster()?;
    if json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(());
    }
    print_roster(&r);
    Ok(())
}
