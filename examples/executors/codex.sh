#!/bin/sh
# codex.sh: runs one phase of a story with the OpenAI Codex CLI (`codex exec`,
# non-interactive), for mesh-agent's `command` executor (see README.md for the contract).
#
# Config (the node's config.toml):
#
#   [command]
#   program = "examples/executors/codex.sh"
#   args = ["--model", "gpt-5-codex"]   # optional: passed on to `codex exec` as they are
#   timeout_secs = 1800
#   env_allow = ["PATH", "HOME", "USER", "LANG", "TERM", "OPENAI_API_KEY", "CODEX_HOME"]
#
# Needs `codex` on the allowlisted PATH, logged in (credentials under $HOME/.codex or
# $CODEX_HOME) or given OPENAI_API_KEY through env_allow.
#
# What it runs:
#   codex exec --sandbox <mode> --skip-git-repo-check \
#       --output-last-message <log dir>/<job>.codex-last.md [args] - < $MESH_PROMPT_FILE
# The sandbox is workspace-write for implement and rework (they edit the worktree) and
# read-only for every other phase. The prompt comes on stdin (`-`), so its size is not
# limited by the argument length. Codex's progress goes to stderr (the job's .stderr log);
# its final message, which ends with the handoff JSON the prompt asks for, is printed to
# stdout, where the executor finds the last JSON object.
#
# Usage: this wrapper reports none. Codex reports no cost at all, and token counts only
# in its `--json` event stream (`turn.completed` events with a `usage`; the executor
# reads a `usage` from any JSON object on stdout). A job with no reported cost is
# charged nothing once it ends, so with a budget set, put a cost estimate in the handoff.
#
# Exit codes: codex's own when it fails; 1 when it leaves no final message; 2 when this
# wrapper is misconfigured (no codex, no MESH_* variables).

set -u

die() {
    echo "codex.sh: $*" >&2
    exit 2
}

[ -n "${MESH_PROMPT_FILE:-}" ] && [ -r "$MESH_PROMPT_FILE" ] ||
    die "cannot read MESH_PROMPT_FILE=${MESH_PROMPT_FILE:-}: run me from mesh-agent's command executor"
[ -n "${MESH_HANDOFF_FILE:-}" ] || die "MESH_HANDOFF_FILE is not set"
command -v codex >/dev/null 2>&1 ||
    die "codex is not on PATH ($PATH): install the Codex CLI, or fix PATH in the node's environment"

case "${MESH_PHASE:-}" in
implement | rework) sandbox=workspace-write ;;
*) sandbox=read-only ;;
esac

last="${MESH_HANDOFF_FILE%.handoff.json}.codex-last.md"
rm -f -- "$last"

codex exec --sandbox "$sandbox" --skip-git-repo-check --output-last-message "$last" \
    "$@" - <"$MESH_PROMPT_FILE" >&2
status=$?
if [ "$status" -ne 0 ]; then
    echo "codex.sh: codex exec exited with status $status (its output is above)" >&2
    exit "$status"
fi
if [ ! -s "$last" ]; then
    echo "codex.sh: codex exec left no final message in $last" >&2
    exit 1
fi
cat -- "$last"
