#!/usr/bin/env bash
# A local testnet: N mesh-agent processes on 127.0.0.1, one shared private-network key,
# node 1 as everyone's bootstrap peer, a bare git origin holding the demo project
# (testnet/origin.git) and the demo backlog, carried to main by the `sim` executor.
# Data, logs and pids live in testnet/nodeI/.
#
#   scripts/testnet.sh up [N] [--keep] [--wait]   start N nodes (default 5), seed the backlog
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

usage() {
    cat <<EOF
Usage: $PROG <command> [args]

Commands:
  up [N] [--keep] [--wait]
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
  wait                Block until every story is merged or blocked (or ${WAIT_TIMEOUT}s pass),
                      printing progress, then a summary. Exit 0 when all settled, 1 if not.
  down [--keep]       Stop every node (SIGTERM, then SIGKILL after ${STOP_TIMEOUT}s) and any process
                      still running in the testnet dir, then remove the nodes' data and the
                      origin. --keep keeps data and logs (for 'up N --keep' or a post-mortem).
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
  MESH_TESTNET_PHASE_MS      sim executor: duration of one phase (default 1500)
  MESH_TESTNET_REJECT_RATE   sim executor: share of first reviews that reject (default 0.2)
  MESH_TESTNET_WAIT_TIMEOUT  seconds 'wait' (and 'up --wait') wait (default 900)
  MESH_HEARTBEAT_MS, MESH_DEAD_AFTER_MS, ...   passed to the nodes (see mesh-agent run --help)

Each node's data dir is testnet/nodeI (config.toml, node.key, swarm.key, store, git/ with
its clone and per-story worktrees), its log is testnet/nodeI/node.log and its pid
testnet/nodeI/pid; the origin is testnet/origin.git. You can also talk to a node directly:
target/$PROFILE/mesh-agent status --data-dir testnet/node2
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

# Sets key $2 to the TOML value $3 in node I's config.toml (the line `key = ...`).
set_config() {
    local f
    f="$(node_dir "$1")/config.toml"
    grep -q "^$2 = " "$f" || die "$f has no '$2 = ' line to set"
    V=$3 awk -v k="$2" '$1 == k && $2 == "=" { print k " = " ENVIRON["V"]; next } { print }' "$f" >"$f.tmp" &&
        mv "$f.tmp" "$f"
}

# Story counts by status from node I's JSON status, as "done blocked total".
settled_counts() {
    "$BIN" status --data-dir "$(node_dir "$1")" --json 2>/dev/null | tr -d ' \n' |
        grep -o '"story_counts":{[^}]*}' | head -n1 |
        awk -F'[{},:"]+' '{ d = 0; b = 0; t = 0
            for (i = 3; i < NF; i += 2) { t += $(i + 1); if ($i == "done") d = $(i + 1); if ($i == "blocked") b = $(i + 1) }
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
    cmd_down --keep >&2 || true
    exit 1
}

cmd_up() {
    local n=5 keep=0 wait=0 a
    for a in "$@"; do
        case $a in
            --keep) keep=1 ;;
            --wait) wait=1 ;;
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
        rm -rf "$ORIGIN" "$TESTNET_DIR/started_ms"
        if ((DEMO)); then
            out=$("$BIN" demo origin "$ORIGIN" 2>&1) || die "creating the demo origin failed: $out"
            info "demo origin: $ORIGIN (main: the toy calculator and its test.sh)"
        fi
        info "creating $n nodes in $TESTNET_DIR"
        local peer1=""
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
            # Work settings (MESH_* variables in the environment still override them).
            set_config "$i" sim_phase_ms "$PHASE_MS"
            set_config "$i" sim_review_reject_rate "$REJECT_RATE"
            if ((DEMO)); then
                set_config "$i" origin "\"$ORIGIN\""
                set_config "$i" test_command '["sh", "test.sh"]'
            fi
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

    # The demo backlog, added in order on node 1 (its dependencies name S-0001, S-0002, ...).
    local have_stories
    have_stories=$(story_count "$(status_json 1)")
    if ((fresh)) && [[ $SEED != 0 ]] && ((have_stories == 0)); then
        local count=()
        [[ $SEED == all ]] || count=(--count "$SEED")
        out=$("$BIN" demo backlog --data-dir "$(node_dir 1)" "${count[@]}" 2>&1) || fail_up "demo backlog on node1 failed: $out"
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
    printf '%-7s %-6s %-8s %-54s %s\n' NODE PORT PID PEER "ALIVE PEERS"
    for ((i = 1; i <= n; i++)); do
        json=$(status_json "$i")
        printf '%-7s %-6s %-8s %-54s %s\n' "node$i" $((BASE_PORT + i - 1)) "$(node_pid "$i")" \
            "$(cat "$(node_dir "$i")/peer_id")" "$(count_state "$json" alive)/$((n - 1))"
    done
    local rel=${TESTNET_DIR#"$PWD"/} bin=${BIN#"$PWD"/} orel=${ORIGIN#"$PWD"/}
    echo
    echo "\$ $PROG status"
    "$BIN" status --data-dir "$(node_dir 1)"
    echo
    echo "Next:"
    echo "  $PROG status                 # node 1's view: peers, stories by state, claims (or: status 3, status 2 --json)"
    echo "  $PROG events --follow        # the mesh-wide timeline as it happens (= $bin events --follow --data-dir $rel/node1)"
    echo "  $PROG wait                   # block until every story is merged or blocked, then a summary"
    if ((DEMO)) && [[ -d $ORIGIN ]]; then
        if command -v git >/dev/null; then
            echo "  git -C $orel log --oneline main    # what landed"
        else
            echo "  (install git to see what landed: git -C $orel log --oneline main)"
        fi
    fi
    echo "  $bin story list --data-dir $rel/node$n"
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
            "$BIN" status --data-dir "$(node_dir "$node")" >&2 || true
            return 1
        fi
        sleep 1
    done
    local wall=$((($(now_ms) - started)))
    echo
    info "every story settled: $line, in $((wall / 1000)).$((wall % 1000 / 100)) s since the backlog was added"
    local list
    list=$("$BIN" story list --data-dir "$(node_dir "$node")" --json 2>/dev/null | tr -d '\n' || true)
    local reworked
    # A story's own round (not its merge fact's) follows its next_phase.
    reworked=$({ grep -o '"next_phase": *[^,]*, *"round": *[1-9]' <<<"$list" || true; } | wc -l)
    info "stories that went through rework (a review rejected them first): $reworked"
    if ((b > 0)); then
        info "blocked:"
        "$BIN" story list --data-dir "$(node_dir "$node")" | awk '$2 == "blocked"' | sed 's/^/    /'
        "$BIN" events --data-dir "$(node_dir "$node")" 2>/dev/null | grep -i 'blocked' | sed 's/^/    /' | tail -n "$((b * 2))" || true
    fi
    if [[ -d $ORIGIN ]] && command -v git >/dev/null; then
        local landed
        landed=$(git -C "$ORIGIN" rev-list --count main 2>/dev/null || echo '?')
        info "origin main: $landed commits (the initial one + one per merged story); the last ones:"
        git -C "$ORIGIN" log --oneline -n 5 main | sed 's/^/    /'
    fi
    return 0
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
    if ((keep)); then
        [[ -d $TESTNET_DIR ]] && info "data and logs kept in $TESTNET_DIR"
        return 0
    fi
    local i removed=0
    for i in $(existing_nodes); do rm -rf "$(node_dir "$i")"; removed=$((removed + 1)); done
    rm -rf "$ORIGIN" "$TESTNET_DIR/started_ms"
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
    exec "$BIN" status --data-dir "$(node_dir "$i")" "$@"
}

cmd_events() {
    local i=1
    if [[ $# -gt 0 && $1 != -* ]]; then
        i=$(node_index_arg "$1")
        shift
    fi
    [[ -n $(node_pid "$i") ]] || die "node$i is not running (start the testnet with '$PROG up N')"
    ensure_binary
    exec "$BIN" events --data-dir "$(node_dir "$i")" "$@"
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
    down) cmd_down "$@" ;;
    wait) cmd_wait "$@" ;;
    status) cmd_status "$@" ;;
    events) cmd_events "$@" ;;
    logs) cmd_logs "$@" ;;
    help | -h | --help) usage ;;
    "") usage >&2; exit 2 ;;
    *) echo "testnet: error: unknown command '$cmd'" >&2; usage >&2; exit 2 ;;
esac
