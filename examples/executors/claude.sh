#!/bin/sh
# claude.sh: runs one phase of a story with Claude Code (the `claude` CLI) in print mode,
# for mesh-agent's `command` executor (see README.md for the contract).
#
# Config (the node's config.toml):
#
#   [command]
#   program = "examples/executors/claude.sh"
#   args = ["--model", "sonnet"]        # optional: passed on to `claude` as they are
#   timeout_secs = 1800
#   env_allow = ["PATH", "HOME", "USER", "LANG", "TERM", "ANTHROPIC_API_KEY"]
#
#   # let implement/rework run the project's tests without asking:
#   [command.phases.implement]
#   args = ["--allowedTools", "Bash(cargo test:*)"]
#   [command.phases.rework]
#   args = ["--allowedTools", "Bash(cargo test:*)"]
#
# Needs `claude` on the allowlisted PATH, logged in (credentials under $HOME) or given
# ANTHROPIC_API_KEY through env_allow, and jq (or python3) to read its JSON output.
#
# What it runs:
#   claude -p "<prompt from $MESH_PROMPT_FILE>" --output-format json [phase flags] [args]
# Phase flags: implement and rework may edit files (--permission-mode acceptEdits); every
# other phase runs with the editing tools disallowed. The prompt ends with the handoff
# schema; Claude's answer (`.result` in the JSON output) is printed to stdout, followed by
# the handoff object found in it with `tokens` and `cost_micro_usd` filled in, so the
# executor takes that last JSON object as the handoff.
#
# Exit codes: claude's own when it fails; 1 when it reports an error (is_error); 2 when
# this wrapper is misconfigured (no claude, no jq/python3, no MESH_* variables).

set -u

die() {
    echo "claude.sh: $*" >&2
    exit 2
}

[ -n "${MESH_PROMPT_FILE:-}" ] && [ -r "$MESH_PROMPT_FILE" ] ||
    die "cannot read MESH_PROMPT_FILE=${MESH_PROMPT_FILE:-}: run me from mesh-agent's command executor"
[ -n "${MESH_HANDOFF_FILE:-}" ] || die "MESH_HANDOFF_FILE is not set"
command -v claude >/dev/null 2>&1 ||
    die "claude is not on PATH ($PATH): install Claude Code, or add its directory to PATH in command.env_allow's PATH"
if command -v jq >/dev/null 2>&1; then
    reader=jq
elif command -v python3 >/dev/null 2>&1; then
    reader=python3
else
    die "needs jq or python3 to read claude's JSON output"
fi

# Claude's raw JSON output, kept next to the job's other logs.
raw="${MESH_HANDOFF_FILE%.handoff.json}.claude.json"

case "${MESH_PHASE:-}" in
implement | rework) set -- --permission-mode acceptEdits "$@" ;;
*) set -- --disallowedTools "Edit,Write,NotebookEdit" "$@" ;;
esac

# A prompt over ~100 KB would not fit in one argument (Linux caps one at 128 KiB): it
# goes on stdin, which claude reads as context for a short instruction.
size=$(wc -c <"$MESH_PROMPT_FILE")
if [ "$size" -lt 100000 ]; then
    claude -p "$(cat "$MESH_PROMPT_FILE")" --output-format json "$@" >"$raw"
else
    claude -p "Do the task described in the input, and answer as it says." \
        --output-format json "$@" <"$MESH_PROMPT_FILE" >"$raw"
fi
status=$?
if [ "$status" -ne 0 ]; then
    echo "claude.sh: claude exited with status $status; its output:" >&2
    tail -c 2000 "$raw" >&2
    exit "$status"
fi

if [ "$reader" = jq ]; then
    if ! jq -e 'type == "object"' "$raw" >/dev/null 2>&1; then
        echo "claude.sh: claude's output is not a JSON object:" >&2
        head -c 2000 "$raw" >&2
        exit 1
    fi
    # A rate limit is the provider's, not the work's: exit 75 and say so, and the node
    # backs off without counting an attempt (README "Rate limits").
    if jq -e '.is_error == true and ((.result // "") | test("rate.?limit|429|overloaded"; "i"))' "$raw" >/dev/null; then
        echo '{"rate_limited": true}'
        echo "claude.sh: rate-limited: $(jq -r '.result // ""' "$raw")" >&2
        exit 75
    fi
    if jq -e '.is_error == true' "$raw" >/dev/null; then
        echo "claude.sh: claude reported an error: $(jq -r '.result // .subtype // "unknown"' "$raw")" >&2
        exit 1
    fi
    jq -r '.result // ""' "$raw"
    # The handoff object in the answer (from its first { to its last }), with the cost
    # and tokens of this run; nothing if the answer holds no such object.
    jq -c '((.result // "") | [match("\\{[\\s\\S]*\\}").string][0] // ""
            | try fromjson catch null) as $h
        | select($h | type == "object")
        | $h + {tokens: ((.usage.input_tokens // 0) + (.usage.output_tokens // 0)),
                tokens_in: (.usage.input_tokens // 0), tokens_out: (.usage.output_tokens // 0),
                cost_micro_usd: (((.total_cost_usd // .cost_usd // 0) * 1000000) | floor)}' \
        "$raw" 2>/dev/null || true
else
    python3 - "$raw" <<'PY'
import json, sys
try:
    d = json.load(open(sys.argv[1]))
except ValueError as e:
    sys.stderr.write("claude.sh: claude's output is not JSON: %s\n" % e)
    sys.exit(1)
if not isinstance(d, dict):
    sys.stderr.write("claude.sh: claude's output is not a JSON object\n")
    sys.exit(1)
import re
if d.get("is_error") and re.search(r"rate.?limit|429|overloaded", str(d.get("result") or ""), re.I):
    print(json.dumps({"rate_limited": True}))
    sys.stderr.write("claude.sh: rate-limited: %s\n" % d.get("result"))
    sys.exit(75)
if d.get("is_error"):
    sys.stderr.write("claude.sh: claude reported an error: %s\n" % (d.get("result") or d.get("subtype")))
    sys.exit(1)
text = d.get("result") or ""
print(text)
start, end = text.find("{"), text.rfind("}")
if 0 <= start < end:
    try:
        h = json.loads(text[start:end + 1])
    except ValueError:
        h = None
    if isinstance(h, dict):
        u = d.get("usage") or {}
        h["tokens_in"] = int(u.get("input_tokens") or 0)
        h["tokens_out"] = int(u.get("output_tokens") or 0)
        h["tokens"] = h["tokens_in"] + h["tokens_out"]
        h["cost_micro_usd"] = int(float(d.get("total_cost_usd") or d.get("cost_usd") or 0) * 1000000)
        print(json.dumps(h))
PY
fi
