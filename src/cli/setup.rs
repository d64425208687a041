//! A node's own files, for people and scripts alike: `init` (key and config), `id` (who
//! this data dir is, without scraping) and `config get|set|unset` (one key of
//! `config.toml`, validated, comments kept).

use super::render::short;
use crate::{usage, InitArgs};
use anyhow::{anyhow, bail, Context, Result};
use clap::Subcommand;
use mesh_agent::api::ControlClient;
use mesh_agent::config::{Config, CONFIG_FILE};
use mesh_agent::identity;
use serde::Serialize;
use std::path::{Path, PathBuf};

/// What `init --json` prints: one object, the fields a script needs next.
#[derive(Serialize)]
struct Initialised {
    /// The node's peer id (`12D3KooW...`): what `admit` and bootstrap addresses name.
    peer_id: String,
    /// The label every command prints for this node (the peer id's last 8 characters).
    node: String,
    data_dir: PathBuf,
    config: PathBuf,
    #[serde(skip_serializing_if = "Option::is_none")]
    psk_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    psk_fingerprint: Option<String>,
    operators: Vec<String>,
}

pub(crate) fn init(dir: &Path, a: InitArgs) -> Result<()> {
    identity::ensure_private_dir(dir)
        .with_context(|| format!("cannot create {}", dir.display()))?;
    let cfg_path = dir.join(CONFIG_FILE);
    if cfg_path.exists() && !a.force {
        bail!(usage(format!(
            "{} is already initialised ({} exists); pass --force to replace its key and config",
            dir.display(),
            cfg_path.display()
        )));
    }
    let mut cfg = Config::default();
    if !a.listen.is_empty() {
        cfg.listen = a.listen;
    }
    cfg.bootstrap = a.bootstrap;
    cfg.operators = a.operator;
    // Everything is checked before anything is written: a bad flag leaves no half node.
    cfg.validate().map_err(usage)?;
    let psk_src = match &a.psk_from {
        Some(src) => Some(identity::load_psk(src).map_err(usage)?),
        None => None,
    };
    let key = identity::create_node_key(dir, a.force).map_err(usage)?;
    let mut psk_file = None;
    let mut fingerprint = None;
    if a.psk || psk_src.is_some() {
        let p = dir.join(identity::PSK_FILE);
        let psk = match psk_src {
            Some(psk) => {
                identity::write_private(&p, psk.to_key_file().as_bytes())?;
                psk
            }
            None => identity::create_psk(&p, true)?,
        };
        cfg.psk_file = Some(PathBuf::from(identity::PSK_FILE));
        fingerprint = Some(psk.fingerprint().to_string());
        psk_file = Some(p);
    }
    std::fs::write(&cfg_path, cfg.commented_toml())
        .with_context(|| format!("cannot write {}", cfg_path.display()))?;
    let peer = identity::peer_id(&key).to_string();
    let out = Initialised {
        node: short(&peer).to_string(),
        peer_id: peer,
        data_dir: dir.to_path_buf(),
        config: cfg_path,
        psk_file,
        psk_fingerprint: fingerprint,
        operators: cfg.operators,
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    if let (Some(p), Some(f)) = (&out.psk_file, &out.psk_fingerprint) {
        println!("mesh key: {} (fingerprint {f})", p.display());
    }
    println!("node {}", out.peer_id);
    println!("data dir {}", out.data_dir.display());
    println!("config {}", out.config.display());
    if !out.operators.is_empty() {
        println!(
            "this mesh has operators: the node joins once one of them runs `mesh-agent admit {}`",
            out.peer_id
        );
    }
    Ok(())
}

/// What `id --json` prints.
#[derive(Serialize)]
struct Identity {
    peer_id: String,
    node: String,
    data_dir: PathBuf,
    /// Whether a node runs on this data dir now (its control endpoint answers).
    running: bool,
    /// Addresses other nodes can bootstrap through, `/p2p/<peer id>` included: the
    /// running node's listen addresses, else the configured ones with a fixed port.
    addrs: Vec<String>,
}

pub(crate) fn id(dir: &Path, json: bool) -> Result<()> {
    if !dir.join(identity::KEY_FILE).exists() {
        bail!(usage(format!(
            "no node key in {}: run `mesh-agent init --data-dir {}` first",
            dir.display(),
            dir.display()
        )));
    }
    let key = identity::load_node_key(dir).map_err(usage)?;
    let peer = identity::peer_id(&key).to_string();
    let live = ControlClient::for_data_dir(dir)
        .ok()
        .flatten()
        .and_then(|c| c.status().ok());
    let running = live.is_some();
    let addrs: Vec<String> = match live {
        Some(s) => s.listen_addrs,
        None => {
            let cfg = Config::load(dir, std::env::vars())?;
            cfg.listen
                .into_iter()
                .filter(|a| !a.ends_with("/tcp/0") && !a.contains("/ip4/0.0.0.0/"))
                .collect()
        }
    }
    .into_iter()
    .map(|a| {
        if a.contains("/p2p/") {
            a
        } else {
            format!("{a}/p2p/{peer}")
        }
    })
    .collect();
    let out = Identity {
        node: short(&peer).to_string(),
        peer_id: peer,
        data_dir: dir.to_path_buf(),
        running,
        addrs,
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!("{}", out.peer_id);
    }
    Ok(())
}

#[derive(Subcommand)]
pub(crate) enum ConfigCommand {
    /// Print a key's value as the node would use it (config.toml, then MESH_* variables,
    /// then the default): a string bare, anything else as TOML. Without KEY, the whole
    /// effective config.
    Get {
        /// A key of config.toml; a key inside a table is dotted, e.g. `command.timeout_secs`.
        key: Option<String>,
        /// Print JSON instead.
        #[arg(long)]
        json: bool,
    },
    /// Set a key in config.toml, keeping its comments. VALUE is read as the key's type:
    /// a number, true/false, a string, or for a list a TOML array (`["a", "b"]`) or
    /// comma-separated items. The file is checked as a whole before it is replaced; a
    /// running node reads it at its next start.
    Set { key: String, value: String },
    /// Remove a key from config.toml: the node uses the default again.
    Unset { key: String },
}

pub(crate) fn config(dir: &Path, cmd: ConfigCommand) -> Result<()> {
    match cmd {
        ConfigCommand::Get { key, json } => config_get(dir, key.as_deref(), json),
        ConfigCommand::Set { key, value } => config_edit(dir, &key, Some(&value)),
        ConfigCommand::Unset { key } => config_edit(dir, &key, None),
    }
}

fn effective(cfg: &Config) -> Result<toml::Table> {
    match toml::Value::try_from(cfg)? {
        toml::Value::Table(t) => Ok(t),
        _ => Err(anyhow!("the config does not serialise to a table")),
    }
}

/// The value at a dotted path of a table.
fn lookup<'a>(table: &'a toml::Table, key: &str) -> Option<&'a toml::Value> {
    let mut parts = key.split('.');
    let mut v = table.get(parts.next()?)?;
    for p in parts {
        v = v.as_table()?.get(p)?;
    }
    Some(v)
}

/// Whether `key` names a field of the config, set or not: a table holding just that key
/// fails to parse as "unknown field" only when it names none.
fn known(key: &str) -> bool {
    let mut doc = toml_edit::DocumentMut::new();
    if insert(&mut doc, key, toml_edit::value("")).is_err() {
        return false;
    }
    match Config::parse(&doc.to_string(), "-", std::iter::empty()) {
        Ok(_) => true,
        Err(e) => !e.to_string().contains("unknown field"),
    }
}

fn unknown_key(key: &str) -> anyhow::Error {
    let keys: Vec<String> = effective(&Config::default())
        .map(|t| t.keys().cloned().collect())
        .unwrap_or_default();
    usage(format!(
        "unknown config key {key:?}; the keys are: {} (and psk_file; keys inside a table are dotted, e.g. command.timeout_secs)",
        keys.join(", ")
    ))
}

fn config_get(dir: &Path, key: Option<&str>, json: bool) -> Result<()> {
    let cfg = Config::load(dir, std::env::vars())?;
    let all = effective(&cfg)?;
    let Some(key) = key else {
        if json {
            println!("{}", serde_json::to_string_pretty(&all)?);
        } else {
            print!("{}", toml::to_string(&all)?);
        }
        return Ok(());
    };
    let v = match lookup(&all, key) {
        Some(v) => v.clone(),
        // An optional key that is not set.
        None if known(key) => {
            if json {
                println!("null");
            }
            return Ok(());
        }
        None => return Err(unknown_key(key)),
    };
    if json {
        println!("{}", serde_json::to_string(&v)?);
    } else {
        match &v {
            toml::Value::String(s) => println!("{s}"),
            toml::Value::Table(t) => print!("{}", toml::to_string(t)?),
            other => println!("{other}"),
        }
    }
    Ok(())
}

/// Puts `item` at a dotted path, creating the tables on the way (a table written inline,
/// `role_limits = {}`, stays inline).
fn insert(doc: &mut toml_edit::DocumentMut, key: &str, item: toml_edit::Item) -> Result<()> {
    let parts: Vec<&str> = key.split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        bail!(usage(format!("{key:?} is not a config key")));
    }
    let (last, path) = parts.split_last().ok_or_else(|| usage("empty key"))?;
    let mut table: &mut dyn toml_edit::TableLike = doc.as_table_mut();
    let mut inline = false;
    for p in path {
        if !table.contains_key(p) {
            table.insert(p, toml_edit::Item::Table(toml_edit::Table::new()));
        }
        let item = table
            .get_mut(p)
            .ok_or_else(|| usage(format!("{p} in {key:?} is not a table")))?;
        inline = item.is_inline_table();
        table = item
            .as_table_like_mut()
            .ok_or_else(|| usage(format!("{p} in {key:?} is not a table")))?;
    }
    let item = match item {
        // An inline table holds values only.
        toml_edit::Item::Table(t) if inline => toml_edit::Item::Value(t.into_inline_table().into()),
        other => other,
    };
    table.insert(last, item);
    if inline {
        table.fmt();
    }
    Ok(())
}

fn remove(doc: &mut toml_edit::DocumentMut, key: &str) -> bool {
    let parts: Vec<&str> = key.split('.').collect();
    let Some((last, path)) = parts.split_last() else {
        return false;
    };
    let mut table: &mut dyn toml_edit::TableLike = doc.as_table_mut();
    for p in path {
        match table.get_mut(p).and_then(|i| i.as_table_like_mut()) {
            Some(t) => table = t,
            None => return false,
        }
    }
    table.remove(last).is_some()
}

/// VALUE read as the type the key's default has: a string as given (or TOML-quoted), a
/// list as a TOML array or comma-separated items, anything else as a TOML value (a
/// string when it is none).
fn typed(key: &str, raw: &str) -> Result<toml_edit::Item> {
    let shape = effective(&Config::default())
        .ok()
        .and_then(|t| lookup(&t, key).cloned());
    let parsed = format!("v = {raw}")
        .parse::<toml_edit::DocumentMut>()
        .ok()
        .and_then(|d| d.get("v").and_then(|i| i.as_value()).cloned());
    let value: toml_edit::Value = match shape {
        _ if key == "psk_file" || matches!(shape, Some(toml::Value::String(_))) => {
            match parsed.as_ref().and_then(|v| v.as_str()) {
                Some(s) => s.into(),
                None => raw.into(),
            }
        }
        Some(toml::Value::Array(_)) => match parsed {
            Some(v) if v.is_array() => v,
            _ => {
                let mut a = toml_edit::Array::new();
                for item in raw.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                    a.push(item);
                }
                toml_edit::Value::Array(a)
            }
        },
        Some(toml::Value::Integer(_)) => match parsed {
            Some(v) if v.is_integer() => v,
            _ => bail!(usage(format!("{key} takes a whole number, not {raw:?}"))),
        },
        Some(toml::Value::Boolean(_)) => match parsed {
            Some(v) if v.is_bool() => v,
            _ => bail!(usage(format!("{key} takes true or false, not {raw:?}"))),
        },
        Some(toml::Value::Float(_)) => match parsed {
            Some(v) if v.is_float() => v,
            Some(toml_edit::Value::Integer(i)) => (*i.value() as f64).into(),
            _ => bail!(usage(format!("{key} takes a number, not {raw:?}"))),
        },
        _ => parsed.unwrap_or_else(|| raw.into()),
    };
    Ok(toml_edit::Item::Value(value))
}

fn config_edit(dir: &Path, key: &str, value: Option<&str>) -> Result<()> {
    let path = dir.join(CONFIG_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(usage(format!(
            "no {} in {}: run `mesh-agent init --data-dir {}` first",
            CONFIG_FILE,
            dir.display(),
            dir.display()
        ))),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let mut doc: toml_edit::DocumentMut = text
        .parse()
        .map_err(|e| usage(format!("{} is not valid TOML: {e}", path.display())))?;
    if !known(key) {
        return Err(unknown_key(key));
    }
    match value {
        Some(raw) => insert(&mut doc, key, typed(key, raw)?)?,
        None => {
            if !remove(&mut doc, key) {
                println!("{key} is not set in {}: it has its default", path.display());
                return Ok(());
            }
        }
    }
    let new = doc.to_string();
    // The whole file must still load and validate: a bad value never reaches the node.
    let shown = path.display().to_string();
    let cfg = Config::parse(&new, &shown, std::iter::empty()).map_err(usage)?;
    cfg.validate().map_err(usage)?;
    let tmp = dir.join(format!("{CONFIG_FILE}.tmp"));
    std::fs::write(&tmp, &new).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("cannot replace {}", shown))?;
    let now = effective(&cfg)
        .ok()
        .and_then(|t| lookup(&t, key).cloned())
        .map_or_else(|| "(unset)".to_string(), |v| v.to_string());
    println!("{key} = {now}");
    if ControlClient::for_data_dir(dir).ok().flatten().is_some() {
        eprintln!("note: a node is running on {}: it reads config.toml when it starts, so restart it to apply", dir.display());
    }
    Ok(())
}
