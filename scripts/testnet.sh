#!/usr/bin/env bash
# A local testnet: N mesh-agent processes on 127.0.0.1, one shared private-network key,
# node 1 as everyone's bootstrap peer. Data, logs and pids live in testnet/nodeI/.
#
#   scripts/testnet.sh up [N] [--keep]   start N nodes (default 5), wait for the mesh
#   scripts/testnet.sh down              stop every node (SIGTERM, then SIGKILL)
#   scripts/testnet.sh status [I] [--json]
#   scripts/testnet.sh logs [I] [-f]
#
# Run `scripts/testnet.sh --help` for the environment variables.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TESTNET_DIR=${MESH_TESTNET_DIR:-$ROOT/testnet}
BASE_PORT=${MESH_TESTNET_PORT:-4101}
PROFILE=${MESH_TESTNET_PROFILE:-release}
STOP_TIMEOUT=${MESH_TESTNET_STOP_TIMEOUT:-10}
SEED=${MESH_TESTNET_SEED:-5}
PROG="scripts/testnet.sh"

usage() {
    cat <<EOF
Usage: $PROG <command> [args]

Commands:
  up [N] [--keep]     Start N nodes (default 5) on 127.0.0.1, ports $BASE_PORT.., node 1 as the
                      bootstrap peer for the others, one shared pre-shared key. Waits until
                      every node sees the N-1 others alive, seeds $SEED demo stories written on
                      different nodes, waits until all nodes hold the same document, then
                      prints a summary. Old data in the testnet dir is wiped first unless
                      --keep is given (then the existing nodes restart with their data).
  down                Stop every node: SIGTERM, then SIGKILL after ${STOP_TIMEOUT}s.
  status [I] [ARGS]   'mesh-agent status' on node I (default 1); extra ARGS such as --json are
                      passed through.
  logs [I] [-f]       Last lines of node I's log (all nodes if I is omitted); -f follows.
  help, --help        This text.

Environment:
  MESH_TESTNET_DIR           data dirs (default: <repo>/testnet)
  MESH_TESTNET_PORT          first TCP port (default 4101; node I listens on PORT+I-1)
  MESH_TESTNET_PROFILE       release (default) or debug build of the binary
  MESH_TESTNET_BIN           use this mesh-agent binary instead of building one
  MESH_TESTNET_TIMEOUT       seconds 'up' waits for the mesh to converge (default 30 + N)
  MESH_TESTNET_STOP_TIMEOUT  seconds 'down' waits before SIGKILL (default 10)
  MESH_TESTNET_SEED          demo stories 'up' writes on a fresh testnet (default 5; 0: none)
  MESH_HEARTBEAT_MS, MESH_DEAD_AFTER_MS, ...   passed to the nodes (see mesh-agent run --help)

Each node's data dir is testnet/nodeI (config.toml, node.key, swarm.key, store), its log
is testnet/nodeI/node.log and its pid testnet/nodeI/pid. You can also talk to a node
directly: target/$PROFILE/mesh-agent status --data-dir testnet/node2
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
}

# Prints node I's `status --json`, or nothing if it does not answer.
status_json() {
    "$BIN" status --data-dir "$(node_dir "$1")" --json 2>/dev/null || true
}

# Count of peers in state $2 in the JSON status $1.
count_state() { { grep -o "\"state\": *\"$2\"" <<<"$1" || true; } | wc -l; }

# The node's own (top-level) heads digest from its pretty-printed JSON status.
own_digest() { sed -n 's/^  "heads_digest": *"\([0-9a-f]*\)".*/\1/p' <<<"$1"; }

story_count() { { grep -o '"id": *"S-[^"]*"' <<<"$1" || true; } | wc -l; }

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

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
    local i=$1 d
    d=$(node_dir "$i")
    rm -f "$d/control.json" "$d/pid"
    echo "=== $(date -u +%FT%TZ) testnet: starting node$i" >>"$d/node.log"
    # Addresses come from each node's config.toml; keep the caller's shell from
    # overriding them.
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
    cmd_down >&2 || true
    exit 1
}

cmd_up() {
    local n=5 keep=0 a
    for a in "$@"; do
        case $a in
            --keep) keep=1 ;;
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
    is_uint "$SEED" || die "MESH_TESTNET_SEED must be a number, got '$SEED'"

    local running
    running=$(running_nodes | wc -l)
    if ((running > 0)); then
        if ((running == n)); then
            info "already running: $n nodes in $TESTNET_DIR (pids: $(for i in $(running_nodes); do node_pid "$i"; done | tr '\n' ' '))"
            info "stop it with '$PROG down', or see it with '$PROG status'"
            exit 0
        fi
        die "a testnet of $running node(s) is already running in $TESTNET_DIR; run '$PROG down' first"
    fi

    ensure_binary
    local i port d
    for ((i = 1; i <= n; i++)); do
        port=$((BASE_PORT + i - 1))
        port_in_use "$port" && die "port $port is already in use (set MESH_TESTNET_PORT to another base port)"
    done

    mkdir -p "$TESTNET_DIR"
    local fresh=1
    if ((keep)); then
        for ((i = 1; i <= n; i++)); do
            [[ -f $(node_dir "$i")/node.key && -f $(node_dir "$i")/peer_id ]] || die "up --keep: $(node_dir "$i") was not created by this script; run '$PROG up $n' without --keep"
        done
        fresh=0
        info "restarting $n existing nodes in $TESTNET_DIR"
    else
        for i in $(existing_nodes); do rm -rf "$(node_dir "$i")"; done
        info "creating $n nodes in $TESTNET_DIR"
        local out peer1=""
        for ((i = 1; i <= n; i++)); do
            d=$(node_dir "$i")
            port=$((BASE_PORT + i - 1))
            local args=(init --data-dir "$d" --listen "/ip4/127.0.0.1/tcp/$port")
            if ((i == 1)); then
                args+=(--psk)
            else
                args+=(--psk-from "$(node_dir 1)/swarm.key" --bootstrap "/ip4/127.0.0.1/tcp/$BASE_PORT/p2p/$peer1")
            fi
            out=$("$BIN" "${args[@]}" 2>&1) || die "init of node$i failed: $out"
            grep -o '12D3Koo[1-9A-HJ-NP-Za-km-z]*' <<<"$out" | head -n1 >"$d/peer_id"
            [[ -s $d/peer_id ]] || die "could not read node$i's peer id from: $out"
            if ((i == 1)); then peer1=$(cat "$d/peer_id"); fi
        done
    fi

    local timeout=${MESH_TESTNET_TIMEOUT:-$((30 + n))}
    is_uint "$timeout" || die "MESH_TESTNET_TIMEOUT must be a number of seconds"
    local t0 deadline
    t0=$(now_ms)
    deadline=$((t0 + timeout * 1000))

    # Node 1 first: the others dial it.
    start_node 1
    until [[ -f $(node_dir 1)/control.json ]]; do
        [[ -n $(node_pid 1) ]] || fail_up "node1 exited during start"
        (($(now_ms) < deadline)) || fail_up "node1 did not start within ${timeout}s"
        sleep 0.1
    done
    for ((i = 2; i <= n; i++)); do start_node "$i"; done
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

    # Demo stories, written on different nodes.
    local have_stories
    have_stories=$(story_count "$(status_json 1)")
    if ((fresh && SEED > 0 && have_stories == 0)); then
        local titles=("Add login page" "Rate-limit the public API" "Fix flaky sync test"
            "Document the release process" "Cache user avatars" "Upgrade the TLS library"
            "Add a dark mode" "Paginate the story list")
        local w t
        for ((j = 0; j < SEED; j++)); do
            w=$((j % n + 1))
            t="${titles[$((j % ${#titles[@]}))]}"
            if ((j >= ${#titles[@]})); then t="$t ($((j / ${#titles[@]} + 1)))"; fi
            "$BIN" story add --data-dir "$(node_dir "$w")" --title "$t" --priority $((10 * (j + 1))) >/dev/null ||
                fail_up "story add on node$w failed"
            # Let it reach the next writer first: story numbers are allocated from what
            # the writer has seen, so back-to-back writes on different nodes would get
            # disambiguated ids (S-0001-xxxxxx) instead of S-0001, S-0002, ...
            wait_stories "$n" $((have_stories + j + 1)) "$deadline" ||
                fail_up "story $((j + 1)) did not reach every node within ${timeout}s"
        done
        info "wrote $SEED demo stories on nodes 1..$((SEED < n ? SEED : n))"
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
    printf '%-7s %-6s %-8s %-54s %s\n' NODE PORT PID PEER "ALIVE PEERS"
    for ((i = 1; i <= n; i++)); do
        json=$(status_json "$i")
        printf '%-7s %-6s %-8s %-54s %s\n' "node$i" $((BASE_PORT + i - 1)) "$(node_pid "$i")" \
            "$(cat "$(node_dir "$i")/peer_id")" "$(count_state "$json" alive)/$((n - 1))"
    done
    local rel=${TESTNET_DIR#"$PWD"/} bin=${BIN#"$PWD"/}
    cat <<EOF

Try:
  $PROG status            # node 1's view (or: $PROG status 3, $PROG status 2 --json)
  $bin story add --data-dir $rel/node2 --title "My story"
  $bin story list --data-dir $rel/node$n
  $PROG logs 2 -f
  $PROG down

EOF
    echo "\$ $PROG status"
    "$BIN" status --data-dir "$(node_dir 1)"
}

cmd_down() {
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
    info "stopped ${#nodes[@]} node(s): $clean cleanly, $killed killed (data and logs kept in $TESTNET_DIR)"
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
    exec "$BIN" status --data-dir "$(node_dir "$i")" "$@"
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

cmd=${1:-}
[[ $# -gt 0 ]] && shift
case $cmd in
    up) cmd_up "$@" ;;
    down)
        [[ $# -eq 0 ]] || die "down takes no arguments"
        cmd_down
        ;;
    status) cmd_status "$@" ;;
    logs) cmd_logs "$@" ;;
    help | -h | --help) usage ;;
    "") usage >&2; exit 2 ;;
    *) echo "testnet: error: unknown command '$cmd'" >&2; usage >&2; exit 2 ;;
esac
