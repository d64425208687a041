//! Node configuration: defaults < `config.toml` in the data dir < `MESH_*` environment
//! variables < command-line flags. Validation names the key, the value and what is
//! allowed, so a bad config is one clear line (the binary exits with code 2).

use crate::core::model::Phase;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

mod template;

pub const CONFIG_FILE: &str = "config.toml";

mod env;
use env::apply_env;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Multiaddrs to listen on.
    pub listen: Vec<String>,
    /// Multiaddrs of peers to join through (one is enough).
    pub bootstrap: Vec<String>,
    /// Private-network pre-shared key file (relative paths are under the data dir).
    pub psk_file: Option<PathBuf>,
    /// The mesh's operators (ids printed by `mesh-agent operator init`): only nodes they
    /// admit count, and only they admit and revoke. Every node of a mesh must list the
    /// same. Empty: an open mesh (any holder of the mesh key is a member).
    pub operators: Vec<String>,
    /// Loopback address of the control endpoint used by `status` and `story`.
    pub control_addr: String,
    /// The probe period (membership, docs/DESIGN.md §4).
    pub heartbeat_ms: u64,
    /// Unanswered probes in a row before a peer is suspect.
    pub suspect_after_missed: u32,
    /// From the start of a suspect peer's silence to its death.
    pub dead_after_ms: u64,
    /// Period of the anti-entropy sync with one random alive peer.
    pub anti_entropy_ms: u64,
    /// After a start, a node that knows of a mesh (it remembers peers, or its document
    /// names other nodes) claims no work until it has synced with a peer, or until this
    /// long has passed (0: no wait).
    pub join_wait_ms: u64,
    pub roles: Vec<String>,
    pub capacity: u32,
    /// Per-role concurrency, e.g. `{ implement = 1, review = 3 }`; roles not listed may
    /// use the whole capacity.
    pub role_limits: std::collections::BTreeMap<String, u32>,
    pub log_format: String,
    pub log_level: String,
    /// Cap on one sync message (request or response).
    pub max_sync_message_bytes: usize,
    /// Compact the stored document into a snapshot after this many incremental saves.
    pub snapshot_every: u32,
    /// Most simultaneous peer connections.
    pub max_peers: u32,
    /// Cap on the stored document: past 90 % new stories and knowledge are refused,
    /// past 100 % nothing more is written or taken in from peers.
    pub max_document_bytes: u64,
    /// Writes (stories, knowledge) this node takes from its users per minute.
    pub max_writes_per_minute: u32,
    /// Sync bytes one peer may hand this node per second (bursts of twice
    /// `max_sync_message_bytes` pass); frames over it are dropped and counted.
    pub max_ingress_bytes_per_sec: u64,
    /// Escalation triggers (docs/DESIGN.md §14), applied to the results this node
    /// writes: a handoff's confidence under this needs a human (0: off).
    pub min_confidence: u8,
    /// A plan naming at least this many files needs approval before implement (0: off).
    pub max_planned_files: usize,
    /// A change touching at least this many files needs approval before merge (0: off).
    pub max_changed_files: usize,
    /// Regular expressions matched against every added line of a change: a match is a
    /// security concern, and the change needs a human before merge.
    pub security_patterns: Vec<String>,
    /// A scanner (argv) run in the worktree after each implement or rework commit: a
    /// non-zero exit is a security concern. Empty: none.
    pub security_scanner: Vec<String>,
    /// What one job reserves from this node's allowance before it starts, in USD, when
    /// an operator set a budget (docs/DESIGN.md §16): a job's worst cost.
    pub budget_reserve_usd: f64,
    /// Back-off after a provider's rate limit: the first wait, doubled on each limit in a
    /// row up to the max (jittered; at least what the provider asked).
    pub rate_limit_backoff_ms: u64,
    pub rate_limit_backoff_max_ms: u64,
    /// Lease timing (docs/DESIGN.md §5.4); must satisfy
    /// lease_ttl_ms >= 2*max_clock_drift_ms + 4*message_timeout_ms.
    pub lease_ttl_ms: u64,
    pub lease_grace_ms: u64,
    pub settle_timeout_ms: u64,
    pub max_clock_drift_ms: u64,
    pub message_timeout_ms: u64,
    /// Claim and run work (false: a node that only replicates).
    pub work: bool,
    /// Which executor runs phases: "sim" (built in).
    pub executor: String,
    /// The sim executor: duration of one phase and probability that an attempt fails.
    pub sim_phase_ms: u64,
    pub sim_failure_rate: f64,
    /// The sim executor: probability that a first-round review rejects (exercises rework).
    pub sim_review_reject_rate: f64,
    /// The `command` executor: program and arguments per phase (see examples/executors).
    pub command: crate::exec::command::CommandConfig,
    /// The shared git origin stories land on: a local path, a file:// URL, or a remote
    /// (ssh://user@host[:port]/path.git, user@host:path.git, https://host/path.git,
    /// git://host/path.git; credentials in docs/ARCHITECTURE.md "Remote origins"). Empty: no git
    /// (phases run in scratch directories and merges are simulated).
    pub origin: String,
    /// The branch stories land on.
    pub branch: String,
    /// The project's test command (argv), run by the merge gate on every change before
    /// it lands, e.g. ["sh", "test.sh"]. Empty: land without testing.
    pub test_command: Vec<String>,
    pub test_timeout_secs: u64,
    /// Fetch-rebase-land attempts when main keeps moving under the merge gate.
    pub merge_max_tries: u32,
    /// Jobs in a row that could not reach the origin before this node's breaker opens
    /// (`git_unavailable`; then one probe job at a time).
    pub origin_failures_to_open: u32,
    /// The backoff after an origin failure starts at `origin_backoff_ms` and doubles up
    /// to `origin_backoff_max_ms` (each ±25 %).
    pub origin_backoff_ms: u64,
    pub origin_backoff_max_ms: u64,
    /// Raise a `stalled` event for a story with no progress (no new counted result,
    /// nothing worked on along its chain of waits) for this long. 0: never.
    pub stall_after_ms: u64,
    /// Move the mesh to a new epoch (retiring merged stories' history, docs/DESIGN.md
    /// §3.5) once this many merged stories are live in the document. 0: never. On by
    /// default: without it the document, and every node's memory, only grow.
    pub epoch_after: u32,
    /// Notifications (`[notify]`, `[[notify.sink]]`): see docs/DESIGN.md §15.
    pub notify: crate::notify::NotifyConfig,
    /// The web dashboard (`[dashboard]`): see `crate::dashboard::DashboardConfig`.
    pub dashboard: crate::dashboard::DashboardConfig,
    /// Work from outside (`[intake.github]`: the issues webhook).
    pub intake: crate::intake::IntakeConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: vec!["/ip4/0.0.0.0/tcp/4001".into()],
            bootstrap: vec![],
            psk_file: None,
            operators: Vec::new(),
            control_addr: "127.0.0.1:0".into(),
            heartbeat_ms: 1000,
            suspect_after_missed: 3,
            dead_after_ms: 5000,
            anti_entropy_ms: 5000,
            join_wait_ms: 10_000,
            roles: vec![
                "refine".into(),
                "research".into(),
                "plan".into(),
                "plan_review".into(),
                "implement".into(),
                "review".into(),
                "rework".into(),
                "merge".into(),
            ],
            capacity: 2,
            role_limits: std::collections::BTreeMap::new(),
            log_format: "text".into(),
            log_level: "info".into(),
            max_sync_message_bytes: 32 * 1024 * 1024,
            snapshot_every: 500,
            max_peers: 64,
            max_document_bytes: crate::core::limits::Limits::default().max_document_bytes,
            max_writes_per_minute: crate::core::limits::Limits::default().max_writes_per_minute,
            max_ingress_bytes_per_sec: crate::core::limits::Limits::default()
                .max_ingress_bytes_per_sec,
            min_confidence: crate::core::attention::Triggers::default().min_confidence,
            max_planned_files: crate::core::attention::Triggers::default().max_planned_files,
            max_changed_files: crate::core::attention::Triggers::default().max_changed_files,
            security_patterns: crate::core::attention::DEFAULT_SECURITY_PATTERNS
                .iter()
                .map(|p| p.to_string())
                .collect(),
            security_scanner: Vec::new(),
            budget_reserve_usd: 1.0,
            rate_limit_backoff_ms: crate::core::BudgetConfig::default().rate_limit_base_ms,
            rate_limit_backoff_max_ms: crate::core::BudgetConfig::default().rate_limit_max_ms,
            lease_ttl_ms: 10_000,
            lease_grace_ms: 2_000,
            settle_timeout_ms: 1_000,
            max_clock_drift_ms: 1_000,
            message_timeout_ms: 1_000,
            work: true,
            executor: "sim".into(),
            sim_phase_ms: 2_000,
            sim_failure_rate: 0.0,
            sim_review_reject_rate: 0.0,
            command: Default::default(),
            origin: String::new(),
            branch: "main".into(),
            test_command: Vec::new(),
            test_timeout_secs: 600,
            merge_max_tries: 10,
            origin_failures_to_open: 3,
            origin_backoff_ms: 1_000,
            origin_backoff_max_ms: 60_000,
            stall_after_ms: 300_000,
            epoch_after: 1_000,
            notify: Default::default(),
            dashboard: Default::default(),
            intake: Default::default(),
        }
    }
}

/// A configuration problem, phrased for the person who has to fix it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("invalid config: {key} = {value}: {allowed}")]
    Invalid {
        key: String,
        value: String,
        allowed: String,
    },
    #[error("invalid config: {0}")]
    Rule(String),
    #[error("invalid config file {path}: {message}")]
    File { path: String, message: String },
    #[error("invalid environment variable {var}={value}: {allowed}")]
    Env {
        var: String,
        value: String,
        allowed: String,
    },
}

fn invalid(key: &str, value: impl std::fmt::Display, allowed: &str) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        value: value.to_string(),
        allowed: allowed.into(),
    }
}

impl Config {
    /// Reads `config.toml` from `data_dir` (defaults if absent), then applies `MESH_*`
    /// variables from `env`.
    pub fn load(
        data_dir: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let path = data_dir.join(CONFIG_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => {
                return Err(ConfigError::File {
                    path: path.display().to_string(),
                    message: e.to_string(),
                })
            }
        };
        Config::parse(&text, &path.display().to_string(), env)
    }

    /// Parses the text of a `config.toml` (`path` names it in errors), then applies
    /// `MESH_*` variables from `env`.
    pub fn parse(
        text: &str,
        path: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let file_err = |message: &str| ConfigError::File {
            path: path.to_string(),
            message: message.to_string(),
        };
        let mut table: toml::Table = toml::from_str(text).map_err(|e| file_err(e.message()))?;
        apply_env(&mut table, env)?;
        Config::deserialize(toml::Value::Table(table)).map_err(|e| file_err(e.message()))
    }

    /// The operators as a set (validated ids).
    pub fn operator_set(&self) -> std::collections::BTreeSet<String> {
        self.operators.iter().cloned().collect()
    }

    /// Checks every value; the first problem wins.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for o in &self.operators {
            if crate::core::trust::key_of_peer_id(o).is_none() {
                return Err(invalid(
                    "operators",
                    format!("{o:?}"),
                    "each must be an operator id as `mesh-agent operator init` prints it (12D3KooW...)",
                ));
            }
        }
        for a in &self.listen {
            if a.parse::<libp2p::Multiaddr>().is_err() {
                return Err(invalid(
                    "listen",
                    format!("{a:?}"),
                    "expected a multiaddr like /ip4/127.0.0.1/tcp/4001",
                ));
            }
        }
        if self.listen.is_empty() {
            return Err(invalid("listen", "[]", "give at least one multiaddr"));
        }
        for a in &self.bootstrap {
            if a.parse::<libp2p::Multiaddr>().is_err() {
                return Err(invalid(
                    "bootstrap",
                    format!("{a:?}"),
                    "expected a multiaddr like /ip4/10.0.0.1/tcp/4001/p2p/12D3KooW...",
                ));
            }
        }
        match self.control_addr.parse::<std::net::SocketAddr>() {
            Ok(a) if a.ip().is_loopback() => {}
            _ => {
                return Err(invalid(
                    "control_addr",
                    format!("{:?}", self.control_addr),
                    "expected a loopback ip:port like 127.0.0.1:7400 (port 0 picks one)",
                ))
            }
        }
        if !(50..=60_000).contains(&self.heartbeat_ms) {
            return Err(invalid(
                "heartbeat_ms",
                self.heartbeat_ms,
                "allowed 50..=60000",
            ));
        }
        if !(1..=100).contains(&self.suspect_after_missed) {
            return Err(invalid(
                "suspect_after_missed",
                self.suspect_after_missed,
                "allowed 1..=100",
            ));
        }
        let suspect = self.heartbeat_ms * u64::from(self.suspect_after_missed);
        if self.dead_after_ms <= suspect {
            return Err(invalid(
                "dead_after_ms",
                self.dead_after_ms,
                &format!(
                    "must exceed heartbeat_ms * suspect_after_missed = {suspect} (a peer is suspect before it is dead)"
                ),
            ));
        }
        if !(100..=3_600_000).contains(&self.anti_entropy_ms) {
            return Err(invalid(
                "anti_entropy_ms",
                self.anti_entropy_ms,
                "allowed 100..=3600000",
            ));
        }
        if self.join_wait_ms > 600_000 {
            return Err(invalid(
                "join_wait_ms",
                self.join_wait_ms,
                "allowed 0..=600000",
            ));
        }
        let names: Vec<&str> = Phase::ALL.iter().map(|p| p.as_str()).collect();
        for r in &self.roles {
            if !names.contains(&r.as_str()) {
                return Err(invalid(
                    "roles",
                    format!("{r:?}"),
                    &format!("allowed roles are {}", names.join(", ")),
                ));
            }
        }
        for (r, n) in &self.role_limits {
            if !self.roles.contains(r) {
                return Err(invalid(
                    "role_limits",
                    format!("{r} = {n}"),
                    &format!(
                        "{r:?} is not one of this node's roles ({})",
                        self.roles.join(", ")
                    ),
                ));
            }
        }
        if self.capacity > 1024 {
            return Err(invalid("capacity", self.capacity, "allowed 0..=1024"));
        }
        if !["text", "json"].contains(&self.log_format.as_str()) {
            return Err(invalid(
                "log_format",
                format!("{:?}", self.log_format),
                "allowed values are text, json",
            ));
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log_level).is_err() {
            return Err(invalid(
                "log_level",
                format!("{:?}", self.log_level),
                "expected error, warn, info, debug, trace or a filter like mesh_agent=debug",
            ));
        }
        if !(64 * 1024..=512 * 1024 * 1024).contains(&self.max_sync_message_bytes) {
            return Err(invalid(
                "max_sync_message_bytes",
                self.max_sync_message_bytes,
                "allowed 65536..=536870912",
            ));
        }
        if self.snapshot_every == 0 {
            return Err(invalid("snapshot_every", 0, "allowed 1 and up"));
        }
        if !(1..=10_000).contains(&self.max_peers) {
            return Err(invalid("max_peers", self.max_peers, "allowed 1..=10000"));
        }
        if !((1 << 20)..=(1 << 40)).contains(&self.max_document_bytes) {
            return Err(invalid(
                "max_document_bytes",
                self.max_document_bytes,
                "allowed 1048576 (1 MiB)..=1099511627776 (1 TiB)",
            ));
        }
        if !(1..=1_000_000).contains(&self.max_writes_per_minute) {
            return Err(invalid(
                "max_writes_per_minute",
                self.max_writes_per_minute,
                "allowed 1..=1000000",
            ));
        }
        if !((64 << 10)..=(1 << 40)).contains(&self.max_ingress_bytes_per_sec) {
            return Err(invalid(
                "max_ingress_bytes_per_sec",
                self.max_ingress_bytes_per_sec,
                "allowed 65536..=1099511627776",
            ));
        }
        if !(self.budget_reserve_usd > 0.0 && self.budget_reserve_usd <= 10_000.0) {
            return Err(invalid(
                "budget_reserve_usd",
                self.budget_reserve_usd,
                "allowed above 0 up to 10000 (USD a job may cost at most)",
            ));
        }
        if self.rate_limit_backoff_ms == 0
            || self.rate_limit_backoff_max_ms < self.rate_limit_backoff_ms
        {
            return Err(ConfigError::Rule(format!(
                "rate_limit_backoff_ms ({}) must be above 0 and at most rate_limit_backoff_max_ms ({})",
                self.rate_limit_backoff_ms, self.rate_limit_backoff_max_ms
            )));
        }
        if self.min_confidence > 100 {
            return Err(invalid(
                "min_confidence",
                self.min_confidence,
                "allowed 0..=100",
            ));
        }
        if let Err(e) = crate::core::attention::compile(&self.security_patterns) {
            return Err(ConfigError::Rule(format!(
                "security_patterns: {e} (each is a regular expression, regex crate syntax)"
            )));
        }
        if let Err(e) = self.lease().validate() {
            // The lease module phrases it: keys, values and the rule.
            let msg = e.to_string();
            let msg = msg
                .strip_prefix("invalid config: ")
                .unwrap_or(&msg)
                .to_string();
            return Err(ConfigError::Rule(msg));
        }
        match self.executor.as_str() {
            "sim" => {}
            "command" => self.command.validate().map_err(ConfigError::Rule)?,
            other => {
                return Err(invalid(
                    "executor",
                    format!("{other:?}"),
                    "allowed values are sim (built in) and command (any agent CLI; see [command])",
                ))
            }
        }
        for (key, v) in [
            ("sim_failure_rate", self.sim_failure_rate),
            ("sim_review_reject_rate", self.sim_review_reject_rate),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return Err(invalid(key, v, "allowed 0.0..=1.0"));
            }
        }
        if self.test_command.iter().any(|a| a.is_empty())
            || self
                .test_command
                .first()
                .is_some_and(|p| p.trim().is_empty())
        {
            return Err(invalid(
                "test_command",
                format!("{:?}", self.test_command),
                "expected a program and its arguments, e.g. [\"sh\", \"test.sh\"], or [] for none",
            ));
        }
        if self.test_timeout_secs == 0 {
            return Err(invalid("test_timeout_secs", 0, "allowed 1 and up"));
        }
        if self.stall_after_ms != 0 && !(1_000..=604_800_000).contains(&self.stall_after_ms) {
            return Err(invalid(
                "stall_after_ms",
                self.stall_after_ms,
                "allowed 0 (never) or 1000..=604800000 (a week)",
            ));
        }
        // Every node builds the seed itself when the mesh moves, and its loop waits
        // meanwhile: ~1.4 s at 10,000 merged stories, ~36 s at 100,000 (long enough
        // to be thought dead).
        if self.epoch_after != 0 && !(10..=10_000).contains(&self.epoch_after) {
            return Err(invalid(
                "epoch_after",
                self.epoch_after,
                "allowed 0 (never) or 10..=10000 (every node builds the new epoch itself, ~1.4 s at 10,000 merged stories)",
            ));
        }
        if !(1..=1000).contains(&self.origin_failures_to_open) {
            return Err(invalid(
                "origin_failures_to_open",
                self.origin_failures_to_open,
                "allowed 1..=1000",
            ));
        }
        if !(10..=3_600_000).contains(&self.origin_backoff_ms) {
            return Err(invalid(
                "origin_backoff_ms",
                self.origin_backoff_ms,
                "allowed 10..=3600000 (an hour)",
            ));
        }
        if !(self.origin_backoff_ms..=86_400_000).contains(&self.origin_backoff_max_ms) {
            return Err(invalid(
                "origin_backoff_max_ms",
                self.origin_backoff_max_ms,
                "allowed origin_backoff_ms..=86400000 (a day)",
            ));
        }
        if !(1..=1000).contains(&self.merge_max_tries) {
            return Err(invalid(
                "merge_max_tries",
                self.merge_max_tries,
                "allowed 1..=1000",
            ));
        }
        if !self.branch.is_empty()
            && !git2::Reference::is_valid_name(&format!("refs/heads/{}", self.branch))
        {
            return Err(invalid(
                "branch",
                format!("{:?}", self.branch),
                "expected a branch name like main",
            ));
        }
        self.notify.validate()?;
        self.dashboard.validate()?;
        self.intake.validate()?;
        if self.intake.github.serve_on == crate::intake::config::HookListener::Dashboard
            && self.dashboard.socket_addr().is_none()
        {
            return Err(ConfigError::Rule(
                "intake.github.serve_on = \"dashboard\" needs a dashboard: set dashboard.addr"
                    .into(),
            ));
        }
        Ok(())
    }

    /// The resource caps as the core wants them.
    pub fn limits(&self) -> crate::core::limits::Limits {
        crate::core::limits::Limits {
            max_document_bytes: self.max_document_bytes,
            max_writes_per_minute: self.max_writes_per_minute,
            max_ingress_bytes_per_sec: self.max_ingress_bytes_per_sec,
            ..Default::default()
        }
    }

    /// The escalation thresholds as the core wants them.
    pub fn triggers(&self) -> crate::core::attention::Triggers {
        crate::core::attention::Triggers {
            min_confidence: self.min_confidence,
            max_planned_files: self.max_planned_files,
            max_changed_files: self.max_changed_files,
        }
    }

    /// What a job reserves and how rate limits pace this node, as the core wants them.
    pub fn budget(&self) -> crate::core::BudgetConfig {
        crate::core::BudgetConfig {
            reserve_micro_usd: (self.budget_reserve_usd * 1e6).round() as u64,
            rate_limit_base_ms: self.rate_limit_backoff_ms,
            rate_limit_max_ms: self.rate_limit_backoff_max_ms,
        }
    }

    /// The origin breaker's knobs as the core wants them.
    pub fn origin_breaker(&self) -> crate::core::breaker::BreakerConfig {
        crate::core::breaker::BreakerConfig {
            open_after: self.origin_failures_to_open,
            base_ms: self.origin_backoff_ms,
            max_ms: self.origin_backoff_max_ms,
        }
    }

    /// The lease timing as the lease module wants it.
    pub fn lease(&self) -> crate::core::lease::LeaseConfig {
        crate::core::lease::LeaseConfig {
            ttl_ms: self.lease_ttl_ms,
            grace_ms: self.lease_grace_ms,
            settle_timeout_ms: self.settle_timeout_ms,
            max_clock_drift_ms: self.max_clock_drift_ms,
            message_timeout_ms: self.message_timeout_ms,
        }
    }

    /// The tracing filter the node logs with: `log_level`, plus `automerge=warn` unless
    /// the filter names automerge itself. automerge 0.12 opens an INFO span on every
    /// change it loads (each sync message received) whose fields include its whole change
    /// graph; under an `info` filter the log formatter printed that graph into a string
    /// each time (never written out), which cost time linear in the document per message:
    /// half the CPU of a 50-node testnet.
    pub fn log_filter(&self) -> String {
        if self.log_level.contains("automerge") {
            self.log_level.clone()
        } else {
            format!("{},automerge=warn", self.log_level)
        }
    }

    /// Resolves `psk_file` against the data dir.
    pub fn psk_path(&self, data_dir: &Path) -> Option<PathBuf> {
        self.psk_file.as_ref().map(|p| {
            if p.is_absolute() {
                p.clone()
            } else {
                data_dir.join(p)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether an INFO span from automerge (`target` "automerge") or from this crate is
    /// enabled under the log filter a node builds from `log_level`.
    fn span_enabled(log_level: &str, target: &str) -> bool {
        use tracing_subscriber::layer::SubscriberExt;
        let cfg = Config {
            log_level: log_level.into(),
            ..Config::default()
        };
        let filter = tracing_subscriber::EnvFilter::try_new(cfg.log_filter()).unwrap();
        let subscriber = tracing_subscriber::registry().with(filter);
        tracing::subscriber::with_default(subscriber, || match target {
            "automerge" => !tracing::info_span!(target: "automerge::storage::load", "load_changes")
                .is_disabled(),
            _ => !tracing::info_span!(target: "mesh_agent::node", "ours").is_disabled(),
        })
    }

    #[test]
    fn the_log_filter_keeps_automerge_spans_off_unless_named() {
        // automerge's per-change span formats its whole change graph when enabled.
        for level in ["info", "debug", "trace", "info,mesh_agent::core=debug"] {
            assert!(!span_enabled(level, "automerge"), "{level}");
            assert!(span_enabled(level, "ours"), "{level}");
        }
        assert!(span_enabled("info,automerge=info", "automerge"));
        assert!(!span_enabled("warn", "ours"));
    }

    fn dir_with(text: &str) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join(CONFIG_FILE), text).unwrap();
        d
    }

    #[test]
    fn defaults_are_valid_and_the_commented_file_round_trips() {
        let c = Config::default();
        c.validate().unwrap();
        let d = dir_with(&c.commented_toml());
        assert_eq!(Config::load(d.path(), vec![]).unwrap(), c);
    }

    #[test]
    fn env_overrides_file() {
        let d = dir_with("heartbeat_ms = 700\nbootstrap = [\"/ip4/1.2.3.4/tcp/1\"]\n");
        let c = Config::load(
            d.path(),
            vec![
                ("MESH_HEARTBEAT_MS".to_string(), "300".to_string()),
                ("MESH_ROLES".to_string(), "review, plan".to_string()),
                ("MESH_ROLE_LIMITS".to_string(), "review=3".to_string()),
                ("MESH_DATA_DIR".to_string(), "/x".to_string()),
                ("HOME".to_string(), "/root".to_string()),
            ],
        )
        .unwrap();
        assert_eq!(c.heartbeat_ms, 300);
        assert_eq!(c.roles, vec!["review", "plan"]);
        assert_eq!(c.role_limits.get("review"), Some(&3));
        c.validate().unwrap();
        assert_eq!(c.bootstrap, vec!["/ip4/1.2.3.4/tcp/1"]);
    }

    #[test]
    fn bad_values_name_the_key_and_the_allowed_values() {
        let c = Config {
            log_format: "xml".into(),
            ..Default::default()
        };
        assert_eq!(
            c.validate().unwrap_err().to_string(),
            "invalid config: log_format = \"xml\": allowed values are text, json"
        );
        let c = Config {
            roles: vec!["deploy".into()],
            ..Default::default()
        };
        let e = c.validate().unwrap_err().to_string();
        assert!(
            e.contains("roles") && e.contains("implement, review"),
            "{e}"
        );
        let c = Config {
            dead_after_ms: 2000,
            ..Default::default()
        };
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("must exceed"));
        let c = Config {
            control_addr: "0.0.0.0:7400".into(),
            ..Default::default()
        };
        assert!(c.validate().unwrap_err().to_string().contains("loopback"));
        let c = Config {
            lease_ttl_ms: 3000,
            ..Default::default()
        };
        let e = c.validate().unwrap_err().to_string();
        assert!(
            e.starts_with("invalid config: lease_ttl_ms = 3000 must be at least"),
            "{e}"
        );
        let c = Config {
            stall_after_ms: 10,
            ..Default::default()
        };
        assert_eq!(
            c.validate().unwrap_err().to_string(),
            "invalid config: stall_after_ms = 10: allowed 0 (never) or 1000..=604800000 (a week)"
        );
        let c = Config {
            stall_after_ms: 0,
            ..Default::default()
        };
        assert!(c.validate().is_ok(), "0 turns stall events off");
    }

    #[test]
    fn unknown_keys_and_bad_env_are_clear_errors() {
        let d = dir_with("heartbeat = 5\n");
        let e = Config::load(d.path(), vec![]).unwrap_err().to_string();
        assert!(e.contains("unknown field `heartbeat`"), "{e}");
        let d = dir_with("");
        let e = Config::load(
            d.path(),
            vec![("MESH_HEARTBEAT_MS".to_string(), "fast".to_string())],
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            e,
            "invalid environment variable MESH_HEARTBEAT_MS=fast: expected an integer"
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        /// `config.toml` and `MESH_*` variables are whatever a user typed: loading and
        /// validating answers with a config or an error, never a panic.
        #[test]
        fn any_config_file_or_variable_loads_or_fails_cleanly(
            text in "[a-z_=\\[\\]{}\",.0-9 \n#-]{0,300}",
            at in proptest::prelude::any::<proptest::sample::Index>(),
            byte in proptest::prelude::any::<u8>(),
            key in proptest::sample::select(vec![
                "MESH_HEARTBEAT_MS", "MESH_ROLES", "MESH_ROLE_LIMITS", "MESH_LISTEN",
                "MESH_CAPACITY", "MESH_SIM_FAILURE_RATE", "MESH_WORK", "MESH_PSK_FILE",
                "MESH_MAX_SYNC_MESSAGE_BYTES", "MESH_COMMAND", "MESH_NOT_A_KEY",
            ]),
            value in ".{0,40}",
        ) {
            let check = |text: &[u8], env: Vec<(String, String)>| {
                let d = tempfile::tempdir().unwrap();
                std::fs::write(d.path().join(CONFIG_FILE), text).unwrap();
                if let Ok(c) = Config::load(d.path(), env) {
                    let _ = c.validate();
                }
            };
            check(text.as_bytes(), vec![]);
            let mut file = Config::default().commented_toml().into_bytes();
            let i = at.index(file.len());
            file[i] = byte;
            check(&file, vec![]);
            check(b"", vec![(key.to_string(), value)]);
        }
    }
}
