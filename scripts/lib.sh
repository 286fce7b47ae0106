# Shared helpers for scripts/setup and scripts/services (sourced, not run).
# shellcheck shell=bash

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE_DIR="$REPO_ROOT/.cache"
CACHE_BIN="$CACHE_DIR/bin"
VENV_DIR="$CACHE_DIR/venv"
VENV_PY="$VENV_DIR/bin/python"

say() { printf '%s\n' "$*"; }
warn() { printf '%s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# find_go: prints the path of a Go toolchain (honours $GO, then PATH, then /usr/local/go).
find_go() {
    local g
    for g in "${GO:-}" "$(command -v go 2>/dev/null || true)" /usr/local/go/bin/go; do
        if [ -n "$g" ] && [ -x "$g" ]; then
            printf '%s\n' "$g"
            return 0
        fi
    done
    return 1
}

# pg_bindir: directory with initdb/pg_ctl/postgres (newest Debian postgresql version first).
pg_bindir() {
    local d
    for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -t/ -k4,4 -rn); do
        if [ -x "$d/postgres" ] && [ -x "$d/initdb" ]; then
            printf '%s\n' "$d"
            return 0
        fi
    done
    if command -v initdb >/dev/null 2>&1; then
        dirname "$(command -v initdb)"
        return 0
    fi
    return 1
}

# free_ports N: prints N distinct free TCP ports on 127.0.0.1, space-separated.
free_ports() {
    python3 -c '
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
' "$1"
}

# show_log_tail NAME FILE: prints the last lines of a log file to stderr.
show_log_tail() {
    local name="$1" file="$2"
    warn "---- last lines of $name log ($file) ----"
    if [ -f "$file" ]; then
        tail -n 30 "$file" >&2 || true
    else
        warn "(no log file)"
    fi
    warn "---- end of $name log ----"
}
