//! The commented `config.toml` that `mesh-agent init` writes: every key with its default
//! and what it does.

use super::Config;

impl Config {
    /// The commented config file `mesh-agent init` writes.
    pub fn commented_toml(&self) -> String {
        let list = |v: &[String]| {
            let items: Vec<String> = v.iter().map(|s| format!("{s:?}")).collect();
            format!("[{}]", items.join(", "))
        };
        let psk = match &self.psk_file {
            Some(p) => format!("psk_file = {:?}", p.display().to_string()),
            None => "# psk_file = \"swarm.key\"".into(),
        };
        format!(
            r#"# mesh-agent node configuration.
# Precedence: this file < MESH_* environment variables (MESH_HEARTBEAT_MS=500,
# lists comma-separated: MESH_BOOTSTRAP=/ip4/...,/ip4/...) < command-line flags.

# Multiaddrs this node listens on.
listen = {listen}
# Peers to join through; one reachable peer is enough (it introduces the rest).
bootstrap = {bootstrap}
# Private network: only nodes holding the same pre-shared key can connect.
# Relative paths are under the data dir. Create one with `mesh-agent init --psk`.
{psk}
# The mesh's operators (`mesh-agent operator init` prints an id): only nodes they admit
# (`mesh-agent admit <peer id>`) count, and only they admit and revoke. Every node of a
# mesh lists the same operators. Empty: an open mesh, any holder of the mesh key joins.
operators = {operators}
# Loopback control endpoint for `mesh-agent status` and `mesh-agent story` (port 0: any).
control_addr = {control:?}

# Membership (docs/DESIGN.md §4): each period a node probes one peer; suspect after
# this many unanswered probes in a row, dead this long after its silence began.
heartbeat_ms = {hb}
suspect_after_missed = {sam}
dead_after_ms = {dead}
# Sync with one random alive peer this often, whatever the probes say.
anti_entropy_ms = {ae}
# After a restart, a node that knows of a mesh (peers it remembers, other nodes in its
# document) claims no work until it synced with one of them, or until this long has
# passed (so a mesh of one still works). 0: no wait.
join_wait_ms = {jw}

# Phases this node works on: refine, research, plan, plan_review, implement, review,
# rework, merge. And how many pieces of work it runs at once.
roles = {roles}
capacity = {cap}
# Per-role concurrency (roles not listed may use the whole capacity), e.g.
# role_limits = {{ implement = 1, review = 3 }}
role_limits = {{ {limits} }}

# Logs: "text" or "json"; level is a tracing filter (info, debug, mesh_agent=trace).
# automerge logs warnings only unless the filter names it (automerge=debug): its spans
# print the whole document history.
log_format = {lf:?}
log_level = {ll:?}

# Limits.
max_sync_message_bytes = {msm}
snapshot_every = {se}
max_peers = {mp}
# What one member can make this node spend: the stored document (past 90 % new stories
# and knowledge are refused, past 100 % nothing more is written or taken in from peers),
# writes this node takes from its users per minute, and sync bytes per second one peer
# may hand it (frames over the rate are dropped and counted; the sync asks again later).
max_document_bytes = {mdb}
max_writes_per_minute = {mwpm}
max_ingress_bytes_per_sec = {mibps}

# Escalation triggers (a human must approve before the story goes on): a handoff whose
# confidence is under min_confidence; a plan naming at least max_planned_files files
# (before implement); a change touching at least max_changed_files files, or an added
# line matching one of security_patterns (before merge). 0 turns a threshold off; an
# empty list turns the scan off. See `mesh-agent attention`.
min_confidence = {minconf}
max_planned_files = {mpf}
max_changed_files = {mcf}
security_patterns = {secpat}
# An external scanner run in the story's worktree after each implement or rework commit
# (argv, e.g. ["gitleaks", "detect", "--no-git", "--source", "."]): a non-zero exit, a
# timeout (test_timeout_secs) or a failure to start it is a security concern.
security_scanner = {secscan}

# Money (see `mesh-agent budget`): with a budget set by an operator, each job reserves
# budget_reserve_usd from this node's allowance before it starts (its worst cost). A
# provider's rate limit makes this node wait rate_limit_backoff_ms, doubling per limit in
# a row up to rate_limit_backoff_max_ms, and claim more slowly until jobs run clean.
budget_reserve_usd = {bru}
rate_limit_backoff_ms = {rlb}
rate_limit_backoff_max_ms = {rlbm}

# Leases (docs/DESIGN.md §5.4). A claim expires when no heartbeat renewed it for lease_ttl_ms
# on the observer's clock; another node takes over lease_grace_ms later. Rule:
# lease_ttl_ms >= 2*max_clock_drift_ms + 4*message_timeout_ms.
lease_ttl_ms = {ttl}
lease_grace_ms = {grace}
# After claiming, sync with every alive peer (at most this long), then re-check.
settle_timeout_ms = {settle}
max_clock_drift_ms = {drift}
message_timeout_ms = {mto}

# Work: claim and run phases here? Executor "sim" is built in (deterministic, no model);
# "command" runs an agent CLI per phase, configured in [command] below.
work = {work}
executor = {exec:?}
sim_phase_ms = {simms}
sim_failure_rate = {simfail:?}
sim_review_reject_rate = {simrej:?}

# Git (docs/DESIGN.md §8). The shared origin stories land on (a local path, file:// URL,
# or remote: ssh://user@host/path.git, user@host:path.git, https://host/path.git, with
# MESH_GIT_TOKEN for https; empty: no git, merges are simulated), its branch, and the
# project's test command the merge gate runs on every change before landing it (argv;
# [] for none).
origin = {origin:?}
branch = {branch:?}
test_command = {test}
test_timeout_secs = {tts}
merge_max_tries = {mmt}
# An unavailable origin (unreachable, failing, refusing our credentials) burns no
# attempt: the job is handed back and this node backs off from origin_backoff_ms,
# doubling to origin_backoff_max_ms; after origin_failures_to_open jobs in a row it raises
# `git_unavailable` and claims one job at a time until the origin answers again.
origin_failures_to_open = {ofo}
origin_backoff_ms = {obm}
origin_backoff_max_ms = {obx}

# A story with no progress for this long (no new result, nothing worked on along what
# it waits for) raises one `stalled` event naming what it waits for. 0: never.
stall_after_ms = {stall}

# Retire settled history: once this many merged stories are in the document, the mesh
# moves to a new one seeded with the live facts (claims pause while it moves; the old
# document is archived in the store). 10..=10000; every node should run the same
# version, and a fresh node cannot join a mesh that has moved yet. 0: never.
epoch_after = {epoch}

# Notifications (README "Budgets and notifications"): each is sent once by the mesh,
# by one node that has a sink for its kind. Sink URLs are secrets.
# [notify]
# digest_period_ms = 86400000
# [[notify.sink]]
# kind = "slack"   # or "webhook" (JSON POST), "command" (argv, JSON on stdin)
# url = "https://hooks.slack.com/services/T000/B000/XXXX"
# triggers = ["story_blocked", "security_concern", "digest"]   # default: all

# The web dashboard (README "Dashboard"): off unless addr is set (or `run --dashboard`).
# Actions (pause, approve, ...) need a login with the control token and are signed with
# the operator key; on an address other than loopback they also need tls_cert + tls_key.
# [dashboard]
# addr = "127.0.0.1:8080"
# tls_cert = "/etc/mesh-agent/dashboard.crt"   # PEM chain; with tls_key: HTTPS
# tls_key = "/etc/mesh-agent/dashboard.key"
# operator_key = "/home/me/.config/mesh-agent/operator.key"   # default: $MESH_OPERATOR_KEY

# GitHub issues in by signed webhook (README "Issues from GitHub"): POST
# /v1/hooks/github on the control address (or the dashboard's: serve_on = "dashboard"),
# HMAC-checked; off (404) without a secret. With an operator key a closed issue
# cancels its story.
# [intake.github]
# secret_file = "github-hook.secret"
# label = "mesh"
# serve_on = "control"
# operator_key = "/home/me/.config/mesh-agent/operator.key"

# The command executor (executor = "command"): see examples/executors/README.md.
# [command]
# program = "examples/executors/claude.sh"
# args = ["{{prompt_file}}"]
# timeout_secs = 1800
# env_allow = ["PATH", "HOME", "USER", "LANG", "TERM", "ANTHROPIC_API_KEY"]
# [command.phases.review]
# program = "examples/executors/codex.sh"
"#,
            listen = list(&self.listen),
            bootstrap = list(&self.bootstrap),
            operators = list(&self.operators),
            control = self.control_addr,
            hb = self.heartbeat_ms,
            sam = self.suspect_after_missed,
            dead = self.dead_after_ms,
            ae = self.anti_entropy_ms,
            jw = self.join_wait_ms,
            roles = list(&self.roles),
            cap = self.capacity,
            limits = self
                .role_limits
                .iter()
                .map(|(k, v)| format!("{k} = {v}"))
                .collect::<Vec<_>>()
                .join(", "),
            lf = self.log_format,
            ll = self.log_level,
            msm = self.max_sync_message_bytes,
            se = self.snapshot_every,
            mp = self.max_peers,
            mdb = self.max_document_bytes,
            mwpm = self.max_writes_per_minute,
            mibps = self.max_ingress_bytes_per_sec,
            minconf = self.min_confidence,
            mpf = self.max_planned_files,
            mcf = self.max_changed_files,
            secpat = list(&self.security_patterns),
            secscan = list(&self.security_scanner),
            bru = self.budget_reserve_usd,
            rlb = self.rate_limit_backoff_ms,
            rlbm = self.rate_limit_backoff_max_ms,
            ttl = self.lease_ttl_ms,
            grace = self.lease_grace_ms,
            settle = self.settle_timeout_ms,
            drift = self.max_clock_drift_ms,
            mto = self.message_timeout_ms,
            work = self.work,
            exec = self.executor,
            simms = self.sim_phase_ms,
            simfail = self.sim_failure_rate,
            simrej = self.sim_review_reject_rate,
            origin = self.origin,
            branch = self.branch,
            test = list(&self.test_command),
            tts = self.test_timeout_secs,
            mmt = self.merge_max_tries,
            ofo = self.origin_failures_to_open,
            obm = self.origin_backoff_ms,
            obx = self.origin_backoff_max_ms,
            stall = self.stall_after_ms,
            epoch = self.epoch_after,
        )
    }
}
