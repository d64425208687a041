#!/bin/sh
# shell-sim.sh: a model-free agent for mesh-agent's `command` executor, in plain POSIX sh.
#
# It does what the built-in `sim` executor does, through the same contract a real agent
# CLI uses (see README.md): implement and rework append one line to each planned file of
# the story (from the job JSON in $MESH_JOB_FILE) in the worktree; every phase prints a
# JSON handoff as the last thing on stdout; reviews approve.
#
# Config (the node's config.toml):
#
#   [command]
#   program = "examples/executors/shell-sim.sh"
#
# Needs only sh, awk, sed and mkdir. jq is used when present; without it (or with
# SHELL_SIM_NO_JQ=1 in command.env_allow) the planned files are read with awk from the
# pretty-printed job file.

set -eu

die() {
    echo "shell-sim.sh: $*" >&2
    exit 2
}

phase=${MESH_PHASE:-}
story=${MESH_STORY:-}
round=${MESH_ROUND:-0}
job=${MESH_JOB_FILE:-}
[ -n "$phase" ] || die "MESH_PHASE is not set: run me from mesh-agent's command executor"
[ -n "$story" ] || die "MESH_STORY is not set"
[ -r "$job" ] || die "cannot read the job file MESH_JOB_FILE=$job"

# The story's planned files (job.fact.files), one per line.
planned_files() {
    if [ -z "${SHELL_SIM_NO_JQ:-}" ] && command -v jq >/dev/null 2>&1; then
        jq -r '.fact.files[]' "$job"
    else
        # The job file is serde_json's pretty print (two-space indent): `  "fact": {`
        # holds `    "files": [` with one quoted path per line, up to `    ]`.
        awk '
            /^  "fact": \{/ { fact = 1; next }
            fact && /^  \}/ { exit }
            fact && /^    "files": \[\]/ { exit }
            fact && /^    "files": \[/ { files = 1; next }
            files && /^    \]/ { exit }
            files {
                line = $0
                sub(/^ *"/, "", line)
                sub(/",?$/, "", line)
                gsub(/\\"/, "\"", line)
                print line
            }
        ' "$job"
    fi
}

# A JSON string literal for $1 (paths are normalised: no backslashes or control characters).
json_str() {
    printf '"%s"' "$(printf '%s' "$1" | sed 's/"/\\"/g')"
}

files=$(planned_files) || die "cannot read the planned files from $job"
[ -n "$files" ] || files="changes/$story.txt"

files_json=""
while IFS= read -r f; do
    [ -n "$f" ] || continue
    files_json="$files_json${files_json:+, }$(json_str "$f")"
done <<FILES
$files
FILES

echo "shell-sim: $phase of $story (round $round)" >&2

case "$phase" in
implement | rework)
    while IFS= read -r f; do
        [ -n "$f" ] || continue
        case "$f" in
        /* | ../* | */../* | *"/.." | "..") die "refusing to edit $f: not a path inside the worktree" ;;
        esac
        dir=$(dirname -- "$f")
        mkdir -p -- "$dir"
        printf '%s: edited by shell-sim (round %s)\n' "$story" "$round" >>"$f"
    done <<FILES
$files
FILES
    echo "edited: $files_json"
    printf '{"summary": "%s of %s done (shell-sim)", "files": [%s], "confidence": 90}\n' \
        "$phase" "$story" "$files_json"
    ;;
research)
    printf '{"summary": "research of %s done (shell-sim)", "findings": ["the code paths involved are known"], "files": [%s], "learnings": [{"kind": "convention", "text": "changes append one line per story"}], "confidence": 90}\n' \
        "$story" "$files_json"
    ;;
plan)
    printf '{"summary": "plan of %s done (shell-sim)", "decisions": ["change the planned files only"], "suggested_approach": "small, tested steps", "files": [%s], "confidence": 90}\n' \
        "$story" "$files_json"
    ;;
review | plan_review)
    printf '{"summary": "%s of %s: approved (shell-sim)", "verdict": "approve", "confidence": 90}\n' \
        "$phase" "$story"
    ;;
*)
    printf '{"summary": "%s of %s done (shell-sim)", "confidence": 90}\n' "$phase" "$story"
    ;;
esac
