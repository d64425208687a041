#!/usr/bin/env bash
# A local testnet: N mesh-agent processes on 127.0.0.1, one shared private-network key,
# node 1 as everyone's bootstrap peer, a bare git origin holding the demo project
# (testnet/origin.git) and the demo backlog, carried to main by the `sim` executor.
# Data, logs and pids live in testnet/nodeI/.
#
# With --hosts (Linux, root) each node is a host of its own instead: its own network
# namespace and address in 198.18.0.0/15, its own mount and pid namespaces (it sees no
# other node's files), and the origin is served by a git host namespace over ssh (sshd +
# git-shell) and smart http (git http-backend behind lighttpd).
#
#   scripts/testnet.sh up [N] [--hosts] [--keep] [--wait]   start N nodes (default 5), seed the backlog
#   scripts/testnet.sh wait               block until every story is merged or blocked
#   scripts/testnet.sh down [--keep]      stop every node, remove the testnet's data
#   scripts/testnet.sh status [I] [--json]
#   scripts/testnet.sh events [I] [ARGS]  (e.g. --follow)
#   scripts/testnet.sh logs [I] [-f]
#
# Run `scripts/testnet.sh --help` for the environment variables.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TESTNET_DIR=${MESH_TESTNET_DIR:-$ROOT/testnet}
BASE_PORT=${MESH_TESTNET_PORT:-4101}
PROFILE=${MESH_TESTNET_PROFILE:-release}
STOP_TIMEOUT=${MESH_TESTNET_STOP_TIMEOUT:-10}
SEED=${MESH_TESTNET_SEED:-all}
DEMO=${MESH_TESTNET_DEMO:-1}
PHASE_MS=${MESH_TESTNET_PHASE_MS:-1500}
REJECT_RATE=${MESH_TESTNET_REJECT_RATE:-0.2}
WAIT_TIMEOUT=${MESH_TESTNET_WAIT_TIMEOUT:-900}
ORIGIN=$TESTNET_DIR/origin.git
PROG="scripts/testnet.sh"

# --hosts mode. Namespaces are named $NS-hub (the bridge), $NS-git (the git host) and
# $NS-nI (node I); 'down' (and the next 'up --hosts') deletes every namespace named $NS-*.
NS=${MESH_TESTNET_NS:-mesh-tn}
NET=198.18.0                # the benchmarking range (RFC 2544), never a real network
GIT_ADDR=$NET.1             # the git host; node I is $NET.(10+I)
HOSTS_P2P_PORT=4001         # every node listens on its own address, same port
GITHOST=$TESTNET_DIR/githost
HOSTS_MARK=$TESTNET_DIR/hosts   # present while the testnet in this dir is a --hosts one
HTTP_USER=mesh
if [[ -f $HOSTS_MARK ]]; then ORIGIN=$GITHOST/repos/origin.git; fi

usage() {
    cat <<EOF
Usage: $PROG <command> [args]

Commands:
  up [N] [--hosts] [--keep] [--wait]
                      Start N nodes (default 5) on 127.0.0.1, ports $BASE_PORT.., node 1 as the
                      bootstrap peer for the others, one shared pre-shared key, and a bare git
                      origin (testnet/origin.git) holding the demo project and its test.sh.
                      Waits until every node sees the N-1 others alive, adds the demo backlog
                      (24 stories, some sharing files, some depending on others) on node 1,
                      waits until every node holds it, prints a summary and what to run next.
                      The sim executor then carries every story through research, plan,
                      implement, review (rejecting ~${REJECT_RATE} of first reviews: rework) and
                      merge, landing each on origin's main through the merge gate (sh test.sh).
                      With --wait, then blocks like 'wait'. Old data in the testnet dir is
                      wiped first unless --keep is given (then the existing nodes restart
                      with their data and the backlog is not seeded again).
                      --hosts (Linux, root): a testnet of hosts instead of loopback ports:
                      node I in network namespace $NS-nI at $NET.(10+I):$HOSTS_P2P_PORT, bridged in
                      $NS-hub, in its own mount and pid namespaces where the other nodes'
                      dirs and the origin are hidden (checked at start, printed in the
                      summary); the origin on a git host ($NS-git, $GIT_ADDR) served by a real
                      sshd (key auth only, every key forced into git-shell) and by git
                      http-backend behind lighttpd. Each node has its own ssh key and
                      known_hosts (GIT_SSH_COMMAND) and reaches the origin at
                      ssh://$(id -un 2>/dev/null || echo root)@$GIT_ADDR/<dir>/githost/repos/origin.git.
  wait                Block until every story is merged or blocked (or ${WAIT_TIMEOUT}s pass),
                      printing progress, then a summary (checking that no story landed on
                      origin's main twice: its Mesh-Story trailers). Exit 0 when all settled
                      and none landed twice, 1 if not.
  down [--keep]       Stop every node (SIGTERM, then SIGKILL after ${STOP_TIMEOUT}s) and any process
                      still running in the testnet dir, then remove the nodes' data and the
                      origin. --keep keeps data and logs (for 'up N --keep' or a post-mortem).
                      A --hosts testnet: also the git host's servers, every process left in
                      the namespaces and the namespaces $NS-* themselves (with their links,
                      firewall rules and mounts), including those of a crashed earlier run.
  status [I] [ARGS]   'mesh-agent status' on node I (default 1); extra ARGS such as --json are
                      passed through.
  events [I] [ARGS]   'mesh-agent events' on node I (default 1), e.g. events --follow.
  logs [I] [-f]       Last lines of node I's log (all nodes if I is omitted); -f follows.
  help, --help        This text.

Environment:
  MESH_TESTNET_DIR           data dirs (default: <repo>/testnet)
  MESH_TESTNET_PORT          first TCP port (default 4101; node I listens on PORT+I-1)
  MESH_TESTNET_PROFILE       release (default) or debug build of the binary
  MESH_TESTNET_BIN           use this mesh-agent binary instead of building one
  MESH_TESTNET_TIMEOUT       seconds 'up' waits for the mesh to converge (default 30 + N)
  MESH_TESTNET_STOP_TIMEOUT  seconds 'down' waits before SIGKILL (default 10)
  MESH_TESTNET_SEED          how many of the demo backlog's stories 'up' adds on a fresh
                             testnet (default all, 24; 0: none)
  MESH_TESTNET_DEMO          1 (default): nodes work against the demo origin; 0: no origin,
                             no test command (merges are simulated)
  MESH_TESTNET_DASHBOARD     IP:PORT: node 1 serves the web dashboard and /metrics there
  MESH_TESTNET_PHASE_MS      sim executor: duration of one phase (default 1500)
  MESH_TESTNET_REJECT_RATE   sim executor: share of first reviews that reject (default 0.2)
  MESH_TESTNET_EPOCH_AFTER   epoch_after: move to a new epoch every N merged stories
                             (0: never; default: the node's, 1000; docs/DESIGN.md §3.5)
  MESH_TESTNET_WAIT_TIMEOUT  seconds 'wait' (and 'up --wait') wait (default 900)
  MESH_TESTNET_NS            --hosts: prefix of the namespaces' names (default mesh-tn)
  MESH_HEARTBEAT_MS, MESH_DEAD_AFTER_MS, ...   passed to the nodes (see mesh-agent run --help)

Each node's data dir is testnet/nodeI (config.toml, node.key, swarm.key, store, git/ with
its clone and per-story worktrees), its log is testnet/nodeI/node.log and its pid
testnet/nodeI/pid; the origin is testnet/origin.git. You can also talk to a node directly:
target/$PROFILE/mesh-agent status --data-dir testnet/node2
(with --hosts, inside the node's network namespace: ip netns exec $NS-n2 target/...).

With --hosts the git host lives in testnet/githost (repos/origin.git, sshd and lighttpd
configs, keys and logs), each node's ssh key and known_hosts in testnet/nodeI/ssh/, and
the script reads the origin (testnet/githost/repos/origin.git) directly for its checks.
EOF
}

die() {
    echo "testnet: error: $*" >&2
    exit 1
}

info() { echo "testnet: $*"; }

now_ms() { date +%s%3N; }

is_uint() { [[ $1 =~ ^[0-9]+$ ]]; }

node_dir() { echo "$TESTNET_DIR/node$1"; }

# ---- --hosts mode: namespaces, the git host, nodes in their own namespaces ----

hosts_mode() { [[ -f $HOSTS_MARK ]]; }

node_ns() { echo "$NS-n$1"; }

node_addr() { echo "$NET.$((10 + $1))"; }

# Runs the mesh-agent CLI against node I: `node_cli I status --json`. In --hosts mode
# inside the node's network namespace, where its control endpoint (127.0.0.1) lives.
node_cli() {
    local i=$1
    shift
    if hosts_mode; then
        ip netns exec "$(node_ns "$i")" "$BIN" "$@" --data-dir "$(node_dir "$i")"
    else
        "$BIN" "$@" --data-dir "$(node_dir "$i")"
    fi
}

exec_node_cli() {
    local i=$1
    shift
    if hosts_mode; then
        exec ip netns exec "$(node_ns "$i")" "$BIN" "$@" --data-dir "$(node_dir "$i")"
    fi
    exec "$BIN" "$@" --data-dir "$(node_dir "$i")"
}

# The program's path, on PATH or in the sbin directories; empty if missing.
find_prog() {
    local p
    for p in "$(command -v "$1" 2>/dev/null)" "/usr/sbin/$1" "/sbin/$1" "/usr/local/sbin/$1"; do
        [[ -n $p && -x $p ]] && { echo "$p"; return; }
    done
    return 0
}

# Checks what --hosts needs; sets SSHD, LIGHTTPD, GIT_SHELL, HTTP_BACKEND.
require_hosts() {
    if [[ $(uname -s) != Linux ]]; then
        die "--hosts needs Linux (network, mount and pid namespaces); the loopback mode (without --hosts) works here"
    fi
    if ((EUID != 0)); then
        die "--hosts needs root: it creates network, mount and pid namespaces, veth links and a bridge, and runs sshd and lighttpd for the git host (run it as root, or leave out --hosts for the loopback testnet)"
    fi
    local prog missing=()
    for prog in ip:iproute2 unshare:util-linux nsenter:util-linux ssh:openssh-client ssh-keygen:openssh-client sshd:openssh-server lighttpd:lighttpd git:git; do
        [[ -n $(find_prog "${prog%%:*}") ]] || missing+=("${prog%%:*} (apt-get install ${prog#*:})")
    done
    ((${#missing[@]} == 0)) || die "--hosts needs: ${missing[*]}"
    SSHD=$(find_prog sshd)
    LIGHTTPD=$(find_prog lighttpd)
    local exec_path
    exec_path=$(git --exec-path)
    GIT_SHELL=$(find_prog git-shell)
    [[ -n $GIT_SHELL ]] || GIT_SHELL=$exec_path/git-shell
    HTTP_BACKEND=$exec_path/git-http-backend
    [[ -x $GIT_SHELL ]] || die "--hosts needs git-shell (it comes with git; not found at $GIT_SHELL)"
    [[ -x $HTTP_BACKEND ]] || die "--hosts needs git-http-backend (it comes with git; not found at $HTTP_BACKEND)"
    case ${BIN:-} in
        "$TESTNET_DIR"/* | /tmp/*) die "the mesh-agent binary ($BIN) must not live in the testnet dir or /tmp: the nodes could not see it" ;;
    esac
}

# The namespaces of this testnet (and of a crashed earlier run), one per line.
our_namespaces() {
    { ip netns list 2>/dev/null || true; } | awk -v p="$NS-" 'index($1, p) == 1 { print $1 }'
}

# Pids of every process in our namespaces (the nodes, their children, the git servers).
pids_in_namespaces() {
    local ns
    for ns in $(our_namespaces); do ip netns pids "$ns" 2>/dev/null || true; done
}

# Stops every process left in our namespaces (SIGKILL, by pid) and deletes them: their
# links, bridge, firewall rules and the mounts of their processes go with them.
hosts_teardown() {
    local pids=() ns n=0
    mapfile -t pids < <(pids_in_namespaces)
    if ((${#pids[@]} > 0)); then
        kill -KILL "${pids[@]}" 2>/dev/null || true
        info "killed ${#pids[@]} process(es) left in the namespaces $NS-*"
        sleep 0.2
    fi
    for ns in $(our_namespaces); do
        ip netns del "$ns" 2>/dev/null || info "warning: could not delete namespace $ns"
        n=$((n + 1))
    done
    ((n == 0)) || info "deleted $n namespace(s) $NS-* (links, bridge, firewall rules, mounts)"
}

# Puts namespace $1 on the hub's bridge with address $2, through a veth pair whose hub
# end is called $3.
attach_ns() {
    local ns=$1 addr=$2 hubif=$3
    ip netns add "$ns"
    ip -n "$ns" link set lo up
    ip -n "$NS-hub" link add "$hubif" type veth peer name eth0 netns "$ns"
    ip -n "$NS-hub" link set "$hubif" master br0 up
    ip -n "$ns" addr add "$addr/24" dev eth0
    ip -n "$ns" link set eth0 up
}

# The hub (a bridge), the git host and N nodes, each a network namespace.
setup_network() {
    local n=$1 i
    ip netns add "$NS-hub"
    ip -n "$NS-hub" link set lo up
    ip -n "$NS-hub" link add br0 type bridge
    ip -n "$NS-hub" link set br0 up
    attach_ns "$NS-git" "$GIT_ADDR" git
    for ((i = 1; i <= n; i++)); do attach_ns "$(node_ns "$i")" "$(node_addr "$i")" "n$i"; done
    info "network: bridge in $NS-hub, git host $NS-git at $GIT_ADDR, nodes $NS-n1..$NS-n$n at $(node_addr 1)..$(node_addr "$n")"
}

ssh_url() { echo "ssh://$(id -un)@$GIT_ADDR$GITHOST/repos/origin.git"; }

http_url() { echo "http://$GIT_ADDR/git/origin.git"; }

# Node I's ssh command: its own key, its own known_hosts, strict host key checking, no
# user config or agent.
node_ssh_command() {
    local s
    s="$(node_dir "$1")/ssh"
    echo "ssh -F /dev/null -o BatchMode=yes -o IdentitiesOnly=yes -o IdentityAgent=none -o ConnectTimeout=10 -i $s/id_ed25519 -o UserKnownHostsFile=$s/known_hosts -o StrictHostKeyChecking=yes"
}

# The git host's files: the demo origin, host key, sshd and lighttpd configs, http token.
setup_githost() {
    local g=$GITHOST out
    mkdir -p "$g/repos"
    if [[ ! -d $g/repos/origin.git ]]; then
        out=$("$BIN" demo origin "$g/repos/origin.git" 2>&1) || die "creating the demo origin failed: $out"
        git -C "$g/repos/origin.git" config http.receivepack true
        info "demo origin: ${g#"$PWD"/}/repos/origin.git (main: the toy calculator and its test.sh)"
    fi
    [[ -f $g/host_key ]] || ssh-keygen -q -t ed25519 -N "" -C mesh-testnet-githost -f "$g/host_key"
    [[ -f $g/http_token ]] || { od -An -tx1 -N16 /dev/urandom | tr -d ' \n' >"$g/http_token"; chmod 600 "$g/http_token"; }
    printf '%s:%s\n' "$HTTP_USER" "$(cat "$g/http_token")" >"$g/htpasswd"
    chmod 600 "$g/htpasswd"
    # Key auth only; every key is forced into git-shell (authorized_keys says so too).
    cat >"$g/sshd_config" <<CONF
Port 22
ListenAddress $GIT_ADDR
HostKey $g/host_key
AuthorizedKeysFile $g/authorized_keys
PidFile none
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
UsePAM no
StrictModes no
AllowUsers $(id -un)
PermitRootLogin forced-commands-only
ForceCommand $GIT_SHELL -c "\$SSH_ORIGINAL_COMMAND"
AllowTcpForwarding no
X11Forwarding no
PermitTTY no
MaxStartups 100:30:200
LogLevel VERBOSE
CONF
    cat >"$g/lighttpd.conf" <<CONF
server.bind = "$GIT_ADDR"
server.port = 80
server.document-root = "$g/repos"
server.errorlog = "$g/lighttpd.err"
server.modules = ( "mod_auth", "mod_authn_file", "mod_alias", "mod_setenv", "mod_cgi" )
auth.backend = "plain"
auth.backend.plain.userfile = "$g/htpasswd"
auth.require = ( "/git/" => ( "method" => "basic", "realm" => "git", "require" => "valid-user" ) )
alias.url = ( "/git/" => "$HTTP_BACKEND/" )
\$HTTP["url"] =~ "^/git/" {
  cgi.assign = ( "" => "" )
  setenv.add-environment = ( "GIT_PROJECT_ROOT" => "$g/repos", "GIT_HTTP_EXPORT_ALL" => "1" )
}
CONF
}

# Node I's ssh key, its known_hosts (the git host's key), and authorized_keys rebuilt for
# nodes 1..N.
setup_node_keys() {
    local n=$1 i s line
    local restrict="restrict,command=\"$GIT_SHELL -c \\\"\$SSH_ORIGINAL_COMMAND\\\"\""
    : >"$GITHOST/authorized_keys.tmp"
    for ((i = 1; i <= n; i++)); do
        s="$(node_dir "$i")/ssh"
        mkdir -p "$s"
        chmod 700 "$s"
        [[ -f $s/id_ed25519 ]] || ssh-keygen -q -t ed25519 -N "" -C "node$i" -f "$s/id_ed25519"
        line="$GIT_ADDR $(cut -d' ' -f1,2 "$GITHOST/host_key.pub")"
        echo "$line" >"$s/known_hosts"
        echo "$restrict $(cat "$s/id_ed25519.pub")" >>"$GITHOST/authorized_keys.tmp"
    done
    mv "$GITHOST/authorized_keys.tmp" "$GITHOST/authorized_keys"
    chmod 600 "$GITHOST/authorized_keys"
}

# Waits until something listens on $GIT_ADDR port $1 (probed from the git host), up to 10 s.
wait_listening() {
    local port=$1 deadline=$(($(now_ms) + 10000))
    until ip netns exec "$NS-git" bash -c "exec 3<>/dev/tcp/$GIT_ADDR/$port" 2>/dev/null; do
        (($(now_ms) < deadline)) || return 1
        sleep 0.05
    done
}

# Starts sshd and lighttpd in the git host's namespace (their pids in githost/*.pid).
start_githost() {
    local g=$GITHOST
    [[ -n ${SSHD:-} ]] || require_hosts
    mkdir -p /run/sshd # sshd's privilege separation directory
    echo "=== $(date -u +%FT%TZ) testnet: starting sshd" >>"$g/sshd.log"
    # sshd runs each forced command through the user's shell, and bash started by sshd
    # reads ~/.bashrc: the host user's shell setup (a pyenv rehash waiting on a lock a
    # killed session left, say) must not stall the git host, so sshd gets its own mount
    # namespace with an empty tmpfs over that home.
    local home
    home=$(getent passwd "$(id -un)" | cut -d: -f6)
    [[ -n $home && $home != / ]] || home=/nonexistent
    # shellcheck disable=SC2016
    ip netns exec "$NS-git" unshare --mount --propagation private \
        sh -c 'if [ -d "$1" ]; then mount -t tmpfs -o mode=0700,size=1m mesh-tn-githome "$1"; fi; shift; exec "$@"' \
        githost "$home" "$SSHD" -D -e -f "$g/sshd_config" >>"$g/sshd.log" 2>&1 </dev/null &
    echo $! >"$g/sshd.pid"
    disown # its end (a chaos run kills it) is no news for this shell
    echo "=== $(date -u +%FT%TZ) testnet: starting lighttpd" >>"$g/lighttpd.log"
    ip netns exec "$NS-git" "$LIGHTTPD" -D -f "$g/lighttpd.conf" >>"$g/lighttpd.log" 2>&1 </dev/null &
    echo $! >"$g/lighttpd.pid"
    disown
    wait_listening 22 || { tail -n 5 "$g/sshd.log" >&2; return 1; }
    wait_listening 80 || { tail -n 5 "$g/lighttpd.log" "$g/lighttpd.err" >&2 2>/dev/null; return 1; }
}

# Stops the git host: every process in its namespace (the servers and the ssh sessions
# and git commands they are running), as an outage would.
stop_githost() {
    local pids=()
    mapfile -t pids < <(ip netns pids "$NS-git" 2>/dev/null || true)
    ((${#pids[@]} == 0)) || kill -KILL "${pids[@]}" 2>/dev/null || true
    rm -f "$GITHOST/sshd.pid" "$GITHOST/lighttpd.pid"
}

# The pids of the children of process $1 (from /proc/*/stat: this kernel may not have
# /proc/PID/task/TID/children).
child_pids() {
    local f line ppid
    for f in /proc/[0-9]*/stat; do
        { read -r line <"$f"; } 2>/dev/null || continue
        read -r _ ppid _ <<<"${line##*) }" # after "pid (comm) ": state ppid ...
        if [[ $ppid == "$PARENT" ]]; then
            f=${f#/proc/}
            echo "${f%/stat}"
        fi
    done
}

# Runs as pid 1 of node I's own mount and pid namespaces (inside its network namespace):
# gives it a private /tmp, hides the testnet dir behind an empty tmpfs and puts back only
# the node's own dir (bound from a descriptor opened before anything was hidden), then
# runs the node and waits for it (reaping orphans, as pid 1 must).
# shellcheck disable=SC2016
NODE_SHELL='
set -euo pipefail
tn=$1 d=$2
shift 2
exec 3<"$d"
mount -t tmpfs -o mode=1777 mesh-tn-tmp /tmp
mkdir -p "$tn"
mount -t tmpfs -o mode=0755,size=1m mesh-tn-hidden "$tn"
mkdir -p "$d"
mount --no-canonicalize --bind /proc/self/fd/3 "$d"
exec 3<&-
"$@" &
agent=$!
trap "kill -TERM $agent 2>/dev/null" TERM INT
while :; do
    rc=0
    wait "$agent" || rc=$?
    kill -0 "$agent" 2>/dev/null || exit "$rc"
done
'

# Starts node I in its namespaces. FAKETIME (e.g. +2s) runs it under libfaketime.
start_node_hosts() {
    local i=$1 d outer pid deadline pre=()
    d=$(node_dir "$i")
    rm -f "$d/control.json" "$d/pid" "$d/ns_pid"
    echo "=== $(date -u +%FT%TZ) testnet: starting node$i in $(node_ns "$i") at $(node_addr "$i")${FAKETIME:+ under libfaketime $FAKETIME}" >>"$d/node.log"
    if [[ -n ${FAKETIME:-} ]]; then
        local lib
        lib=$(find /usr/lib /usr/local/lib -name libfaketime.so.1 -print -quit 2>/dev/null)
        [[ -n $lib ]] || die "libfaketime.so.1 not found (apt-get install libfaketime)"
        pre=(LD_PRELOAD="$lib" FAKETIME="$FAKETIME" FAKETIME_DONT_FAKE_MONOTONIC=1)
    fi
    # shellcheck disable=SC2094 # both append to node.log
    ip netns exec "$(node_ns "$i")" unshare --mount --pid --fork --kill-child --mount-proc --propagation private \
        bash -c "$NODE_SHELL" "node$i" "$TESTNET_DIR" "$d" \
        env -u MESH_LISTEN -u MESH_BOOTSTRAP -u MESH_PSK_FILE -u MESH_CONTROL_ADDR -u MESH_DATA_DIR \
        GIT_SSH_COMMAND="$(node_ssh_command "$i")" "${pre[@]}" \
        "$BIN" run --data-dir "$d" --log-file "$d/node.log" >>"$d/node.log" 2>&1 </dev/null &
    outer=$!
    disown
    echo "$outer" >"$d/ns_pid"
    # unshare's child is the namespace's pid 1 (the shell above); its child is the node.
    deadline=$(($(now_ms) + 5000))
    pid=""
    while [[ -z $pid ]]; do
        local c
        for c in $(PARENT=$outer child_pids); do
            for pid in $(PARENT=$c child_pids) ""; do
                [[ -n $pid ]] && { tr '\0' ' ' <"/proc/$pid/cmdline"; } 2>/dev/null | grep -q mesh-agent && break 2
            done
        done
        [[ -n $pid ]] && break
        kill -0 "$outer" 2>/dev/null || return 1
        (($(now_ms) < deadline)) || return 1
        sleep 0.05
    done
    echo "$pid" >"$d/pid"
}

# Proves node I runs without sight of the other nodes' files: inside its mount and pid
# namespaces (entered with nsenter), the testnet dir holds only its own dir, no other
# node's dir nor the git host's files (the origin) exist, and it sees no other
# mesh-agent process. Prints one line; returns 1 (loudly) if anything is visible.
isolation_check() {
    local i=$1 n=$2 pid out
    pid=$(node_pid "$i")
    [[ -n $pid ]] || { echo "node$i: not running"; return 1; }
    # shellcheck disable=SC2016
    out=$(nsenter -t "$pid" -m -p --wd=/ -- bash -c '
        tn=$1 i=$2 n=$3 g=$4 bad=""
        [[ -f $tn/node$i/node.key ]] || bad+=" own-dir-missing"
        for ((j = 1; j <= n; j++)); do
            ((j == i)) && continue
            [[ -e $tn/node$j ]] && bad+=" node$j"
        done
        [[ -e $g ]] && bad+=" githost"
        [[ -e $tn/origin.git ]] && bad+=" origin.git"
        agents=0
        for p in /proc/[0-9]*; do
            [[ $(readlink "$p/exe" 2>/dev/null) == */mesh-agent ]] && agents=$((agents + 1))
        done
        procs=$(ls -d /proc/[0-9]* | wc -l)
        echo "sees $tn = {$(ls -A "$tn" | tr "\n" " " | sed "s/ $//")}, $agents mesh-agent of $procs processes${bad:+; VISIBLE:$bad}"
    ' isolation "$TESTNET_DIR" "$i" "$n" "$GITHOST" 2>&1) || out="check failed: $out"
    echo "node$i: $out"
    [[ $out == *"sees "* && $out != *VISIBLE* && $out == *", 1 mesh-agent of "* ]]
}

# One `git ls-remote` of main over smart http, from node 1's namespace, with the token.
check_http() {
    local token
    token=$(cat "$GITHOST/http_token")
    # shellcheck disable=SC2016
    MESH_TN_TOKEN=$token ip netns exec "$(node_ns 1)" git -c credential.helper= \
        -c credential.helper='!f() { test "$1" = get && printf "username=%s\npassword=%s\n" mesh "$MESH_TN_TOKEN"; }; f' \
        ls-remote "$(http_url)" refs/heads/main 2>&1
}

# The pid of node I if that process is alive and is a mesh-agent, else nothing.
node_pid() {
    local f pid
    f="$(node_dir "$1")/pid"
    [[ -f $f ]] || return 0
    pid=$(cat "$f" 2>/dev/null || true)
    is_uint "$pid" || return 0
    if { tr '\0' ' ' <"/proc/$pid/cmdline"; } 2>/dev/null | grep -q mesh-agent; then
        echo "$pid"
    fi
}

# Node indices that have a data dir, in numeric order.
existing_nodes() {
    local d
    [[ -d $TESTNET_DIR ]] || return 0
    for d in "$TESTNET_DIR"/node*; do
        [[ -d $d ]] || continue
        d=${d##*/node}
        is_uint "$d" && echo "$d"
    done | sort -n
}

running_nodes() {
    local i
    for i in $(existing_nodes); do
        [[ -n $(node_pid "$i") ]] && echo "$i"
    done
    return 0
}

# Builds the binary if it is missing or older than the sources; sets BIN.
ensure_binary() {
    if [[ -n ${MESH_TESTNET_BIN:-} ]]; then
        BIN=$MESH_TESTNET_BIN
        [[ -x $BIN ]] || die "MESH_TESTNET_BIN=$BIN is not an executable file"
        return
    fi
    case $PROFILE in
        release) BIN=$ROOT/target/release/mesh-agent; flags=(--release) ;;
        debug) BIN=$ROOT/target/debug/mesh-agent; flags=() ;;
        *) die "MESH_TESTNET_PROFILE must be release or debug, not '$PROFILE'" ;;
    esac
    if [[ -n ${CARGO_TARGET_DIR:-} ]]; then
        BIN=$CARGO_TARGET_DIR/$PROFILE/mesh-agent
    fi
    local stale=""
    if [[ ! -x $BIN ]]; then
        stale="missing"
    elif [[ -n $(find "$ROOT/src" "$ROOT/Cargo.toml" "$ROOT/Cargo.lock" -newer "$BIN" -print -quit 2>/dev/null) ]]; then
        stale="older than the sources"
    fi
    [[ -z $stale ]] && return
    command -v cargo >/dev/null || {
        [[ -x $BIN ]] && { info "warning: $BIN is $stale and cargo is not installed; using it anyway"; return; }
        die "$BIN is missing and cargo is not installed"
    }
    info "binary $stale: cargo build ${flags[*]} --bin mesh-agent (a first release build takes several minutes)"
    if ! (cd "$ROOT" && cargo build "${flags[@]}" --bin mesh-agent); then
        [[ -x $BIN ]] || die "build failed"
        info "warning: build failed; using the existing, older $BIN"
    fi
    # A known LLVM miscompile crashes nodes with SIGSEGV (scripts/check-codegen --help).
    if command -v objdump >/dev/null && command -v python3 >/dev/null; then
        "$ROOT/scripts/check-codegen" "$BIN" >&2 \
            || die "$BIN has instructions that fault at run time (a compiler bug; see scripts/check-codegen --help)"
    fi
}

# Prints node I's `status --json`, or nothing if it does not answer.
status_json() {
    node_cli "$1" status --json 2>/dev/null || true
}

# Count of peers in state $2 in the JSON status $1.
count_state() { { grep -o "\"state\": *\"$2\"" <<<"$1" || true; } | wc -l; }

# The node's own (top-level) heads digest from its pretty-printed JSON status.
own_digest() { sed -n 's/^  "heads_digest": *"\([0-9a-f]*\)".*/\1/p' <<<"$1"; }

story_count() { { grep -o '"id": *"S-[^"]*"' <<<"$1" || true; } | wc -l; }

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Sets key $2 to value $3 in node I's config.toml (`mesh-agent config set`: typed, validated).
set_config() {
    "$BIN" config set --data-dir "$(node_dir "$1")" "$2" "$3" >/dev/null ||
        die "cannot set $2 = $3 in node$1's config.toml"
}

# Story counts by status from node I's JSON status, as "merged blocked total".
settled_counts() {
    node_cli "$1" status --json 2>/dev/null | tr -d ' \n' |
        grep -o '"story_counts":{[^}]*}' | head -n1 |
        awk -F'[{},:"]+' '{ d = 0; b = 0; t = 0
            for (i = 3; i < NF; i += 2) { t += $(i + 1); if ($i == "merged") d = $(i + 1); if ($i == "blocked") b = $(i + 1) }
            print d, b, t }'
}

# Waits until every node 1..N lists at least $2 stories, or until the deadline (ms).
wait_stories() {
    local n=$1 want=$2 deadline=$3 i have
    while :; do
        have=0
        for ((i = 1; i <= n; i++)); do
            if (($(story_count "$(status_json "$i")") >= want)); then have=$((have + 1)); fi
        done
        ((have == n)) && return 0
        (($(now_ms) < deadline)) || return 1
        sleep 0.05
    done
}

# Waits until nodes 1..N report the same heads digest, or until the deadline (ms) passes.
# Sets WANT (node 1's digest) and SAME (how many nodes match it).
wait_same_doc() {
    local n=$1 deadline=$2 i digest
    while :; do
        WANT=$(own_digest "$(status_json 1)")
        SAME=0
        for ((i = 1; i <= n; i++)); do
            digest=$(own_digest "$(status_json "$i")")
            if [[ -n $digest && $digest == "$WANT" ]]; then SAME=$((SAME + 1)); fi
        done
        ((SAME == n)) && return 0
        (($(now_ms) < deadline)) || return 1
        sleep 0.05
    done
}

# Starts node I in the background, appending stdout/stderr and logs to node.log.
start_node() {
    if hosts_mode; then
        start_node_hosts "$1"
        return
    fi
    local i=$1 d
    d=$(node_dir "$i")
    rm -f "$d/control.json" "$d/pid"
    echo "=== $(date -u +%FT%TZ) testnet: starting node$i" >>"$d/node.log"
    # Addresses come from each node's config.toml; keep the caller's shell from
    # overriding them.
    # (The node appends its log to node.log; so does its stdout, for a panic's message.)
    # shellcheck disable=SC2094
    env -u MESH_LISTEN -u MESH_BOOTSTRAP -u MESH_PSK_FILE -u MESH_CONTROL_ADDR -u MESH_DATA_DIR \
        "$BIN" run --data-dir "$d" --log-file "$d/node.log" >>"$d/node.log" 2>&1 </dev/null &
    echo $! >"$d/pid"
}

fail_up() {
    local i
    echo "testnet: error: $*" >&2
    for i in $(existing_nodes); do
        if [[ -z $(node_pid "$i") && -f $(node_dir "$i")/pid ]]; then
            echo "--- node$i is not running; last lines of $(node_dir "$i")/node.log:" >&2
            tail -n 15 "$(node_dir "$i")/node.log" >&2 || true
        fi
    done
    echo "testnet: stopping what was started (logs stay in $TESTNET_DIR)" >&2
    cmd_down --keep >&2 || true
    exit 1
}

cmd_up() {
    local n=5 keep=0 wait=0 hosts=0 a
    for a in "$@"; do
        case $a in
            --keep) keep=1 ;;
            --wait) wait=1 ;;
            --hosts) hosts=1 ;;
            -h | --help) usage; exit 0 ;;
            *)
                is_uint "$a" || die "up: N must be a number of nodes, got '$a' (try: $PROG up 5)"
                n=$((10#$a))
                ;;
        esac
    done
    ((n >= 1)) || die "up: N must be at least 1"
    ((n <= 100)) || die "up: N=$n is more than this testnet supports (100)"
    is_uint "$BASE_PORT" || die "MESH_TESTNET_PORT must be a port number, got '$BASE_PORT'"
    ((BASE_PORT >= 1024 && BASE_PORT + n - 1 <= 65535)) ||
        die "ports $BASE_PORT..$((BASE_PORT + n - 1)) are out of range (MESH_TESTNET_PORT)"
    [[ $SEED == all ]] || is_uint "$SEED" || die "MESH_TESTNET_SEED must be a number or 'all', got '$SEED'"
    [[ $DEMO == 0 || $DEMO == 1 ]] || die "MESH_TESTNET_DEMO must be 0 or 1, got '$DEMO'"

    local running out
    running=$(running_nodes | wc -l)
    if ((running > 0)); then
        if ((running == n)); then
            info "already running: $n nodes in $TESTNET_DIR (pids: $(for i in $(running_nodes); do node_pid "$i"; done | tr '\n' ' '))"
            info "stop it with '$PROG down', or see it with '$PROG status'"
            exit 0
        fi
        die "a testnet of $running node(s) is already running in $TESTNET_DIR; run '$PROG down' first"
    fi

    if ((hosts)); then
        # Before anything else (such as a build): say at once what is missing.
        [[ $(uname -s) == Linux && $EUID == 0 ]] || require_hosts
        ((DEMO)) || die "--hosts needs the demo origin (MESH_TESTNET_DEMO=1): the git host serves it"
        ((keep)) && [[ ! -f $HOSTS_MARK ]] && die "up --hosts --keep: the testnet in $TESTNET_DIR was not made with --hosts; run '$PROG up $n --hosts' without --keep"
    elif ((keep)) && [[ -f $HOSTS_MARK ]]; then
        die "up --keep: the testnet in $TESTNET_DIR was made with --hosts; run '$PROG up $n --hosts --keep'"
    fi

    ensure_binary
    local i port d
    if ((hosts)); then
        require_hosts
        # Leftovers of an earlier run that crashed or was not taken down.
        hosts_teardown
    else
        for ((i = 1; i <= n; i++)); do
            port=$((BASE_PORT + i - 1))
            port_in_use "$port" && die "port $port is already in use (set MESH_TESTNET_PORT to another base port)"
        done
    fi

    mkdir -p "$TESTNET_DIR"
    local fresh=1
    if ((keep)); then
        for ((i = 1; i <= n; i++)); do
            [[ -f $(node_dir "$i")/node.key && -f $(node_dir "$i")/peer_id ]] || die "up --keep: $(node_dir "$i") was not created by this script; run '$PROG up $n' without --keep"
        done
        fresh=0
        info "restarting $n existing nodes in $TESTNET_DIR"
        if ((hosts)); then
            setup_network "$n"
            start_githost || fail_up "the git host's sshd or lighttpd did not start (logs in $GITHOST)"
        fi
    else
        for i in $(existing_nodes); do rm -rf "$(node_dir "$i")"; done
        rm -rf "$TESTNET_DIR/origin.git" "$GITHOST" "$HOSTS_MARK" "$TESTNET_DIR/started_ms" "$TESTNET_DIR/operator.key"
        ORIGIN=$TESTNET_DIR/origin.git
        if ((hosts)); then
            echo "$n" >"$HOSTS_MARK"
            ORIGIN=$GITHOST/repos/origin.git
            setup_githost
        elif ((DEMO)); then
            out=$("$BIN" demo origin "$ORIGIN" 2>&1) || die "creating the demo origin failed: $out"
            info "demo origin: $ORIGIN (main: the toy calculator and its test.sh)"
        fi
        info "creating $n nodes in $TESTNET_DIR"
        # One operator for the testnet: every node lists it, and it admits every node
        # below (a mesh with operators counts only the nodes they admitted).
        out=$("$BIN" operator init --key "$TESTNET_DIR/operator.key" --force 2>&1) ||
            die "creating the testnet's operator key failed: $out"
        local operator
        operator=$("$BIN" operator id --key "$TESTNET_DIR/operator.key" 2>&1) ||
            die "could not read the operator id: $operator"
        local peer1=""
        for ((i = 1; i <= n; i++)); do
            d=$(node_dir "$i")
            port=$((BASE_PORT + i - 1))
            local addr=127.0.0.1 addr1=127.0.0.1 port1=$BASE_PORT
            if ((hosts)); then
                addr=$(node_addr "$i") addr1=$(node_addr 1) port=$HOSTS_P2P_PORT port1=$HOSTS_P2P_PORT
            fi
            local args=(init --data-dir "$d" --listen "/ip4/$addr/tcp/$port" --operator "$operator")
            if ((i == 1)); then
                args+=(--psk)
            else
                args+=(--psk-from "$(node_dir 1)/swarm.key" --bootstrap "/ip4/$addr1/tcp/$port1/p2p/$peer1")
            fi
            out=$("$BIN" "${args[@]}" 2>&1) || die "init of node$i failed: $out"
            "$BIN" id --data-dir "$d" >"$d/peer_id" 2>/dev/null && [[ -s $d/peer_id ]] ||
                die "could not read node$i's peer id: $("$BIN" id --data-dir "$d" 2>&1)"
            if ((i == 1)); then peer1=$(cat "$d/peer_id"); fi
            # Work settings (MESH_* variables in the environment still override them).
            if ((i == 1)) && [[ -n ${MESH_TESTNET_DASHBOARD:-} ]]; then
                set_config 1 dashboard.addr "$MESH_TESTNET_DASHBOARD"
            fi
            set_config "$i" sim_phase_ms "$PHASE_MS"
            set_config "$i" sim_review_reject_rate "$REJECT_RATE"
            if [[ -n ${MESH_TESTNET_EPOCH_AFTER:-} ]]; then
                set_config "$i" epoch_after "$MESH_TESTNET_EPOCH_AFTER"
            fi
            if ((hosts)); then
                set_config "$i" origin "\"$(ssh_url)\""
                set_config "$i" test_command '["sh", "test.sh"]'
            elif ((DEMO)); then
                set_config "$i" origin "\"$ORIGIN\""
                set_config "$i" test_command '["sh", "test.sh"]'
            fi
        done
        if ((hosts)); then
            setup_node_keys "$n"
            setup_network "$n"
            start_githost || fail_up "the git host's sshd or lighttpd did not start (logs in $GITHOST)"
            info "git host: $(ssh_url) (sshd, key auth, git-shell) and $(http_url) (user $HTTP_USER, token in ${GITHOST#"$PWD"/}/http_token)"
        fi
    fi

    local timeout=${MESH_TESTNET_TIMEOUT:-$((30 + n))}
    is_uint "$timeout" || die "MESH_TESTNET_TIMEOUT must be a number of seconds"
    local t0 deadline
    t0=$(now_ms)
    deadline=$((t0 + timeout * 1000))

    # Node 1 first: the others dial it.
    start_node 1 || fail_up "node1 did not start"
    until [[ -f $(node_dir 1)/control.json ]]; do
        [[ -n $(node_pid 1) ]] || fail_up "node1 exited during start"
        (($(now_ms) < deadline)) || fail_up "node1 did not start within ${timeout}s"
        sleep 0.1
    done
    if ((fresh)); then
        # The operator admits every node through node 1 before the others dial it.
        for ((i = 1; i <= n; i++)); do
            out=$(MESH_OPERATOR_KEY="$TESTNET_DIR/operator.key" node_cli 1 admit \
                "$(cat "$(node_dir "$i")/peer_id")" --note "testnet node$i" 2>&1) ||
                fail_up "admitting node$i failed: $out"
        done
        info "operator $(MESH_OPERATOR_KEY="$TESTNET_DIR/operator.key" "$BIN" operator id) admitted $n nodes (key: $TESTNET_DIR/operator.key)"
    fi
    for ((i = 2; i <= n; i++)); do start_node "$i" || fail_up "node$i did not start"; done
    info "started $n nodes; waiting up to ${timeout}s until every node sees $((n - 1)) peers alive"

    local ok alive j json
    declare -A seen_alive=()
    while :; do
        ok=0
        for ((i = 1; i <= n; i++)); do
            [[ -n $(node_pid "$i") ]] || fail_up "node$i exited"
            json=$(status_json "$i")
            alive=$(count_state "$json" alive)
            seen_alive[$i]=$alive
            if ((alive >= n - 1)); then ok=$((ok + 1)); fi
        done
        ((ok == n)) && break
        if (($(now_ms) >= deadline)); then
            for ((j = 1; j <= n; j++)); do echo "  node$j sees ${seen_alive[$j]:-?} alive" >&2; done
            fail_up "the mesh did not converge within ${timeout}s"
        fi
        sleep 0.2
    done
    info "membership converged in $(($(now_ms) - t0)) ms"

    local isolation=() http=""
    if ((hosts)); then
        # Nothing read from another node's files: prove it for every running node.
        local line bad=0
        for ((i = 1; i <= n; i++)); do
            line=$(isolation_check "$i" "$n") || bad=1
            isolation+=("$line")
        done
        if ((bad)); then
            printf '  %s\n' "${isolation[@]}" >&2
            fail_up "a node can see files that are not its own (mount namespaces did not isolate it)"
        fi
        http=$(check_http) || fail_up "git ls-remote over http from node1 failed: $http"
        [[ -n $http ]] || fail_up "git ls-remote over http from node1 listed no main"
    fi

    # The demo backlog, added in order on node 1 (its dependencies name S-0001, S-0002, ...).
    local have_stories
    have_stories=$(story_count "$(status_json 1)")
    if ((fresh)) && [[ $SEED != 0 ]] && ((have_stories == 0)); then
        local count=()
        [[ $SEED == all ]] || count=(--count "$SEED")
        out=$(node_cli 1 demo backlog "${count[@]}" 2>&1) || fail_up "demo backlog on node1 failed: $out"
        now_ms >"$TESTNET_DIR/started_ms"
        info "added the demo backlog on node1: $(grep -c '^added' <<<"$out") stories ($(head -n1 <<<"$out" | sed 's/^added //') .. $(tail -n1 <<<"$out" | sed 's/^added //'))"
    fi

    local stories
    stories=$(story_count "$(status_json 1)")
    wait_stories "$n" "$stories" "$deadline" || fail_up "the stories did not reach every node within ${timeout}s"
    # Nodes that work (the default) keep writing claims and results, so the documents
    # may be moving: report agreement, do not insist on it.
    if wait_same_doc "$n" $(($(now_ms) + 3000)); then
        info "documents converged: all $n nodes hold $stories stories, heads digest $WANT"
    else
        info "all $n nodes hold $stories stories; documents still changing ($SAME of $n match node1 right now: nodes are working)"
    fi

    echo
    if ((hosts)); then
        printf '%-7s %-11s %-19s %-8s %-54s %s\n' NODE NAMESPACE ADDRESS PID PEER "ALIVE PEERS"
        for ((i = 1; i <= n; i++)); do
            json=$(status_json "$i")
            printf '%-7s %-11s %-19s %-8s %-54s %s\n' "node$i" "$(node_ns "$i")" "$(node_addr "$i"):$HOSTS_P2P_PORT" \
                "$(node_pid "$i")" "$(cat "$(node_dir "$i")/peer_id")" "$(count_state "$json" alive)/$((n - 1))"
        done
        echo
        echo "git host ($NS-git, $GIT_ADDR):"
        echo "  ssh:  $(ssh_url)   (sshd: key auth only, each node's key forced into git-shell)"
        echo "  http: $(http_url)   (git http-backend behind lighttpd; user $HTTP_USER, token in ${GITHOST#"$PWD"/}/http_token)"
        echo "  git ls-remote over http from node1: $(awk '{ print $1 }' <<<"$http") main"
        echo
        echo "No shared files: each node runs in its own mount and pid namespaces; seen from inside:"
        printf '  %s\n' "${isolation[@]}"
    else
        printf '%-7s %-6s %-8s %-54s %s\n' NODE PORT PID PEER "ALIVE PEERS"
        for ((i = 1; i <= n; i++)); do
            json=$(status_json "$i")
            printf '%-7s %-6s %-8s %-54s %s\n' "node$i" $((BASE_PORT + i - 1)) "$(node_pid "$i")" \
                "$(cat "$(node_dir "$i")/peer_id")" "$(count_state "$json" alive)/$((n - 1))"
        done
    fi
    local rel=${TESTNET_DIR#"$PWD"/} bin=${BIN#"$PWD"/} orel=${ORIGIN#"$PWD"/}
    echo
    echo "\$ $PROG status"
    node_cli 1 status
    echo
    echo "Next:"
    echo "  $PROG status                 # node 1's view: peers, stories by state, claims (or: status 3, status 2 --json)"
    echo "  $PROG events --follow        # the mesh-wide timeline as it happens (= $bin events --follow --data-dir $rel/node1)"
    echo "  $PROG wait                   # block until every story is merged or blocked, then a summary"
    if [[ -n ${MESH_TESTNET_DASHBOARD:-} ]]; then
        echo "  open http://$MESH_TESTNET_DASHBOARD/        # node 1's web dashboard (metrics: /metrics)"
    fi
    if ((DEMO)) && [[ -d $ORIGIN ]]; then
        if command -v git >/dev/null; then
            echo "  git -C $orel log --oneline main    # what landed"
        else
            echo "  (install git to see what landed: git -C $orel log --oneline main)"
        fi
    fi
    if ((hosts)); then
        echo "  ip netns exec $(node_ns "$n") $bin story list --data-dir $rel/node$n"
    else
        echo "  $bin story list --data-dir $rel/node$n"
    fi
    echo "  $PROG logs 2 -f"
    echo "  $PROG down                   # stop every node and remove the testnet's data"
    if ((wait)); then
        echo
        cmd_wait
    fi
}

# Story progress as one line.
progress_line() { echo "$1 merged, $2 blocked, $(($3 - $1 - $2)) to go of $3"; }

cmd_wait() {
    [[ $# -eq 0 ]] || die "wait takes no arguments"
    [[ -d $(node_dir 1) ]] || die "no testnet in $TESTNET_DIR (start one with '$PROG up 5')"
    ensure_binary
    is_uint "$WAIT_TIMEOUT" || die "MESH_TESTNET_WAIT_TIMEOUT must be a number of seconds"
    local t0 deadline counts d b t last="" line i node="" started
    t0=$(now_ms)
    deadline=$((t0 + WAIT_TIMEOUT * 1000))
    started=$(cat "$TESTNET_DIR/started_ms" 2>/dev/null || echo "$t0")
    info "waiting up to ${WAIT_TIMEOUT}s until every story is merged or blocked (Ctrl-C stops waiting, not the nodes)"
    while :; do
        # Ask the first running node (node 1 may have been stopped by hand).
        counts=""
        for i in $(running_nodes); do
            counts=$(settled_counts "$i")
            if [[ -n $counts ]]; then node=$i; break; fi
        done
        [[ -n $counts ]] || die "no testnet node answers (is the testnet up? '$PROG up 5')"
        read -r d b t <<<"$counts"
        line=$(progress_line "$d" "$b" "$t")
        if [[ $line != "$last" ]]; then
            printf 'testnet: %5ss  %s\n' "$((($(now_ms) - started) / 1000))" "$line"
            last=$line
        fi
        if ((t > 0 && d + b == t)); then break; fi
        if (($(now_ms) >= deadline)); then
            info "timed out after ${WAIT_TIMEOUT}s: $line"
            echo "\$ $PROG status $node" >&2
            node_cli "$node" status >&2 || true
            return 1
        fi
        sleep 1
    done
    local wall=$(($(now_ms) - started))
    echo
    info "every story settled: $line, in $((wall / 1000)).$((wall % 1000 / 100)) s since the backlog was added"
    local list
    list=$(node_cli "$node" story list --json 2>/dev/null | tr -d '\n' || true)
    local reworked
    # A story's own round (not its merge fact's) follows its next_phase.
    reworked=$({ grep -o '"next_phase": *[^,]*, *"round": *[1-9]' <<<"$list" || true; } | wc -l)
    info "stories that went through rework (a review rejected them first): $reworked"
    if ((b > 0)); then
        info "blocked:"
        node_cli "$node" story list | awk '$2 == "blocked"' | sed 's/^/    /'
        node_cli "$node" events 2>/dev/null | grep -i 'blocked' | sed 's/^/    /' | tail -n "$((b * 2))" || true
    fi
    if [[ -d $ORIGIN ]] && command -v git >/dev/null; then
        local landed stories twice
        landed=$(git -C "$ORIGIN" rev-list --count main 2>/dev/null || echo '?')
        info "origin main: $landed commits (the initial one + one per merged story); the last ones:"
        git -C "$ORIGIN" log --oneline -n 5 main | sed 's/^/    /'
        # Each story lands once: count the Mesh-Story trailers of main's commits.
        stories=$(story_trailers "$ORIGIN" | sort)
        twice=$(uniq -d <<<"$stories" | tr '\n' ' ')
        if [[ -n ${twice// /} ]]; then
            info "LANDED TWICE on origin main (Mesh-Story trailers): $twice"
            return 1
        fi
        info "Mesh-Story trailers on origin main: $(grep -c . <<<"$stories" || true) stories, none twice"
    fi
    return 0
}

# The Mesh-Story trailer of every commit on main of the bare repository $1, one a line.
story_trailers() {
    git -C "$1" log main --format='%(trailers:key=Mesh-Story,valueonly)' 2>/dev/null | grep . || true
}

cmd_down() {
    local keep=0 a
    for a in "$@"; do
        case $a in
            --keep) keep=1 ;;
            *) die "down: unknown argument '$a' (down [--keep])" ;;
        esac
    done
    stop_nodes
    kill_leftovers
    # The namespaces of a --hosts testnet (or of a crashed one): the git host's servers,
    # anything left in them, the namespaces themselves.
    if [[ -n $(our_namespaces) ]]; then
        if ((EUID == 0)); then
            if [[ -n $(ip netns pids "$NS-git" 2>/dev/null) ]]; then
                stop_githost
                info "stopped the git host (sshd, lighttpd)"
            fi
            hosts_teardown
        else
            info "warning: namespaces $NS-* exist but only root can delete them: sudo $PROG down"
        fi
    fi
    if ((keep)); then
        [[ -d $TESTNET_DIR ]] && info "data and logs kept in $TESTNET_DIR"
        return 0
    fi
    local i removed=0
    for i in $(existing_nodes); do rm -rf "$(node_dir "$i")"; removed=$((removed + 1)); done
    rm -rf "$ORIGIN" "$GITHOST" "$HOSTS_MARK" "$TESTNET_DIR/started_ms" "$TESTNET_DIR/operator.key"
    ((removed == 0)) || info "removed the data of $removed node(s) and the origin from $TESTNET_DIR"
}

# Processes still running with their working directory inside the testnet dir (test.sh
# runs of the merge gate, agent commands of a node that was SIGKILLed): SIGKILL them, by pid.
kill_leftovers() {
    [[ -d $TESTNET_DIR ]] || return 0
    local dir p cwd left=()
    dir=$(cd "$TESTNET_DIR" && pwd -P)
    for p in /proc/[0-9]*; do
        cwd=$(readlink "$p/cwd" 2>/dev/null) || continue
        [[ $cwd == "$dir"/* ]] || continue
        p=${p#/proc/}
        ((p == $$ || p == BASHPID)) && continue
        left+=("$p")
    done
    ((${#left[@]} > 0)) || return 0
    kill -KILL "${left[@]}" 2>/dev/null || true
    info "killed ${#left[@]} leftover process(es) working in $TESTNET_DIR: ${left[*]}"
}

stop_nodes() {
    local nodes=() pids=() i pid
    for i in $(existing_nodes); do
        pid=$(node_pid "$i")
        if [[ -n $pid ]]; then
            nodes+=("$i")
            pids+=("$pid")
        else
            rm -f "$(node_dir "$i")/pid"
        fi
    done
    if ((${#nodes[@]} == 0)); then
        info "no testnet node is running in $TESTNET_DIR"
        return 0
    fi
    is_uint "$STOP_TIMEOUT" || die "MESH_TESTNET_STOP_TIMEOUT must be a number of seconds"
    kill -TERM "${pids[@]}" 2>/dev/null || true
    info "sent SIGTERM to ${#nodes[@]} node(s); waiting up to ${STOP_TIMEOUT}s"
    local deadline=$(($(now_ms) + STOP_TIMEOUT * 1000)) left k
    while :; do
        left=0
        for k in "${!nodes[@]}"; do
            if [[ -n $(node_pid "${nodes[$k]}") ]]; then left=$((left + 1)); fi
        done
        ((left == 0)) && break
        (($(now_ms) >= deadline)) && break
        sleep 0.1
    done
    local clean=0 killed=0
    for k in "${!nodes[@]}"; do
        i=${nodes[$k]}
        if [[ -n $(node_pid "$i") ]]; then
            kill -KILL "${pids[$k]}" 2>/dev/null || true
            info "node$i (pid ${pids[$k]}) did not stop within ${STOP_TIMEOUT}s: sent SIGKILL"
            killed=$((killed + 1))
        else
            clean=$((clean + 1))
        fi
        rm -f "$(node_dir "$i")/pid"
    done
    info "stopped ${#nodes[@]} node(s): $clean cleanly, $killed killed"
}

node_index_arg() {
    local i=$1
    is_uint "$i" || die "node index must be a number, got '$i'"
    i=$((10#$i))
    [[ -d $(node_dir "$i") ]] || die "there is no node$i in $TESTNET_DIR (start a testnet with '$PROG up N')"
    echo "$i"
}

cmd_status() {
    local i=1
    if [[ $# -gt 0 && $1 != -* ]]; then
        i=$(node_index_arg "$1")
        shift
    fi
    [[ -d $(node_dir "$i") ]] || die "no testnet in $TESTNET_DIR (start one with '$PROG up 5')"
    [[ -n $(node_pid "$i") ]] || die "node$i is not running (start the testnet with '$PROG up N')"
    ensure_binary
    exec_node_cli "$i" status "$@"
}

cmd_events() {
    local i=1
    if [[ $# -gt 0 && $1 != -* ]]; then
        i=$(node_index_arg "$1")
        shift
    fi
    [[ -n $(node_pid "$i") ]] || die "node$i is not running (start the testnet with '$PROG up N')"
    ensure_binary
    exec_node_cli "$i" events "$@"
}

cmd_logs() {
    local follow=() idx="" a
    for a in "$@"; do
        case $a in
            -f | --follow) follow=(-F) ;;
            -h | --help) usage; exit 0 ;;
            *)
                [[ -z $idx ]] || die "logs: one node index at most"
                idx=$(node_index_arg "$a")
                ;;
        esac
    done
    local files=() i
    if [[ -n $idx ]]; then
        files=("$(node_dir "$idx")/node.log")
    else
        for i in $(existing_nodes); do files+=("$(node_dir "$i")/node.log"); done
    fi
    ((${#files[@]} > 0)) || die "no testnet in $TESTNET_DIR (start one with '$PROG up 5')"
    for i in "${files[@]}"; do [[ -f $i ]] || : >"$i"; done
    exec tail -n 20 "${follow[@]}" "${files[@]}"
}

# scripts/chaos sources this file for its functions; only a direct run dispatches.
[[ ${BASH_SOURCE[0]} == "$0" ]] || return 0

cmd=${1:-}
[[ $# -gt 0 ]] && shift
case $cmd in
    up) cmd_up "$@" ;;
    down) cmd_down "$@" ;;
    wait) cmd_wait "$@" ;;
    status) cmd_status "$@" ;;
    events) cmd_events "$@" ;;
    logs) cmd_logs "$@" ;;
    help | -h | --help) usage ;;
    "") usage >&2; exit 2 ;;
    *) echo "testnet: error: unknown command '$cmd'" >&2; usage >&2; exit 2 ;;
esac
