#!/usr/bin/env bash
# Start/stop the real services the test suite needs (PostgreSQL, Kafka), on loopback only.
#
#   scripts/services.sh up     start both (idempotent); write .services/env with the addresses
#   scripts/services.sh down   stop both (only what scripts/postgres.sh and scripts/kafka.sh started)
#
# .services/env has KEY=VALUE lines: use it with  set -a; . .services/env; set +a
# (tests/services.py reads it by itself). When a service fails to start: with CI=true, a clear
# message on stderr and exit 1; otherwise a warning, and the tests that need it skip.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SVC="$ROOT/.services"
HERE="$ROOT/scripts"

is_ci() { case "${CI:-}" in true | TRUE | True | 1 | yes) return 0 ;; *) return 1 ;; esac; }

cmd_up() {
    mkdir -p "$SVC"
    rm -f "$SVC/env"
    local failed=() t0=$SECONDS
    if ! bash "$HERE/postgres.sh" start; then failed+=(postgres); fi
    if ! bash "$HERE/kafka.sh" start; then failed+=(kafka); fi
    {
        echo "# Written by scripts/services.sh up; source with: set -a; . .services/env; set +a"
        local f
        for f in "$SVC/postgres.env" "$SVC/kafka.env"; do
            if [ -f "$f" ]; then cat "$f"; fi
        done
    } >"$SVC/env.tmp"
    mv "$SVC/env.tmp" "$SVC/env"
    if [ "${#failed[@]}" -gt 0 ]; then
        if is_ci; then
            echo "services.sh: ERROR: failed to start: ${failed[*]} (see the messages above)" >&2
            exit 1
        fi
        echo "services.sh: WARNING: failed to start: ${failed[*]}; tests that need them will be skipped" >&2
    fi
    echo "services up in $((SECONDS - t0)) s; env: $SVC/env"
}

cmd_down() {
    rm -f "$SVC/env"
    local rc=0
    bash "$HERE/kafka.sh" stop || rc=1
    bash "$HERE/postgres.sh" stop || rc=1
    return "$rc"
}

case "${1:-}" in
    up) cmd_up ;;
    down) cmd_down ;;
    *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
