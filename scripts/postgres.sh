#!/usr/bin/env bash
# Test-only PostgreSQL server on loopback: a dedicated Debian cluster "saga_test" on port 55432.
# For the benchmarks, a second cluster "saga_durable" on port 55433 with PostgreSQL's durable
# defaults (fsync, synchronous_commit, full_page_writes on) and pg_stat_statements.
#
#   scripts/postgres.sh start    install PostgreSQL from Debian if missing, create the cluster
#                                (once), start it, create role/database saga (idempotent), wait
#                                until it answers; writes .services/postgres.env and prints the
#                                server version
#   scripts/postgres.sh stop     stop that cluster (only that one)
#   scripts/postgres.sh status   exit 0 when it answers, 3 when not
#   scripts/postgres.sh env      print the KEY=VALUE lines tests need
#
#   scripts/postgres.sh start-durable   the same for cluster saga_durable (role/database saga,
#                                extension pg_stat_statements, the saga role may read and reset
#                                the statistics); writes SAGA_BENCH_DURABLE_DATABASE_URL into
#                                .services/postgres-durable.env. Only `make bench` needs it.
#   scripts/postgres.sh stop-durable    stop that cluster (only that one)
#   scripts/postgres.sh status-durable  exit 0 when it answers, 3 when not
#   scripts/postgres.sh env-durable     print its KEY=VALUE lines
#
# With SAGA_TEST_DATABASE_URL already set to another server, start only checks that it answers
# and writes it out; stop then leaves it alone.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SVC="$ROOT/.services"
ENVF="$SVC/postgres.env"
CLUSTER=saga_test
PORT=55432
OWN_URL="postgresql://saga:saga@127.0.0.1:$PORT/saga"
# Which cluster the commands act on: "test" (the defaults above) or "durable" (use_durable).
MODE=test
URL_VAR=SAGA_TEST_DATABASE_URL
CLUSTER_VAR=SAGA_TEST_PG_CLUSTER

use_durable() {
    MODE=durable
    ENVF="$SVC/postgres-durable.env"
    CLUSTER=saga_durable
    PORT=55433
    OWN_URL="postgresql://saga:saga@127.0.0.1:$PORT/saga"
    URL_VAR=SAGA_BENCH_DURABLE_DATABASE_URL
    CLUSTER_VAR=SAGA_BENCH_DURABLE_PG_CLUSTER
}

log() { echo "postgres.sh: $*" >&2; }
die() { echo "postgres.sh: ERROR: $*" >&2; exit 1; }

APT_UPDATED=0
apt_install() {
    command -v apt-get >/dev/null || die "apt-get not found; install $* by hand"
    if [ "$APT_UPDATED" = 0 ]; then
        log "apt-get update"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 || die "apt-get update failed"
        APT_UPDATED=1
    fi
    log "apt-get install -y $*"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >&2 || die "apt-get install $* failed"
}

# An external server: SAGA_TEST_DATABASE_URL set to something other than our own cluster's URL
# (the test cluster only; the durable one is always ours).
external_url() {
    [ "$MODE" = test ] && [ -n "${SAGA_TEST_DATABASE_URL:-}" ] && [ "$SAGA_TEST_DATABASE_URL" != "$OWN_URL" ]
}

# Major version of the $CLUSTER cluster if it exists, else the newest installed server.
pg_version() {
    local v
    if command -v pg_lsclusters >/dev/null; then
        v="$(pg_lsclusters -h 2>/dev/null | awk -v c="$CLUSTER" '$2 == c { print $1; exit }')"
        if [ -n "$v" ]; then echo "$v"; return 0; fi
    fi
    for v in $(ls /usr/lib/postgresql 2>/dev/null | sort -rV); do
        if [ -x "/usr/lib/postgresql/$v/bin/postgres" ]; then echo "$v"; return 0; fi
    done
    return 1
}

ensure_installed() {
    if ! command -v pg_ctlcluster >/dev/null || ! pg_version >/dev/null; then
        apt_install postgresql
    fi
    command -v psql >/dev/null || apt_install postgresql-client
    pg_version >/dev/null || die "no PostgreSQL server binaries under /usr/lib/postgresql after install"
}

cluster_exists() { [ -f "/etc/postgresql/$1/$CLUSTER/postgresql.conf" ]; }

cluster_running() { pg_ctlcluster "$1" "$CLUSTER" status >/dev/null 2>&1; }

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Settings for a throwaway test server (or the durable bench server); kept in conf.d so an
# existing cluster picks them up too.
write_conf() {
    local v="$1" f="/etc/postgresql/$1/$CLUSTER/conf.d/zz-saga-test.conf" tmp
    [ "$MODE" = durable ] && f="/etc/postgresql/$1/$CLUSTER/conf.d/zz-saga-durable.conf"
    tmp="$(mktemp)"
    if [ "$MODE" = durable ]; then
        cat >"$tmp" <<EOF
# Written by scripts/postgres.sh (saga bench server). PostgreSQL's durable defaults, stated.
listen_addresses = '127.0.0.1'
port = $PORT
max_connections = 300
fsync = on
synchronous_commit = on
full_page_writes = on
shared_preload_libraries = 'pg_stat_statements'
pg_stat_statements.track = top
track_io_timing = on
track_wal_io_timing = on
EOF
    else
        cat >"$tmp" <<EOF
# Written by scripts/postgres.sh (saga test server). Not for production: durability is off.
listen_addresses = '127.0.0.1'
port = $PORT
max_connections = 300
fsync = off
synchronous_commit = off
full_page_writes = off
EOF
    fi
    mkdir -p "$(dirname "$f")"
    if [ -f "$f" ] && cmp -s "$tmp" "$f"; then
        rm -f "$tmp"
        return 1 # unchanged
    fi
    install -o postgres -g postgres -m 0644 "$tmp" "$f"
    rm -f "$tmp"
    return 0 # changed
}

psql_super() {
    (cd / && runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1 -h /var/run/postgresql -p "$PORT" -d postgres "$@")
}

psql_super_db() {
    local db="$1"
    shift
    (cd / && runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1 -h /var/run/postgresql -p "$PORT" -d "$db" "$@")
}

# The durable cluster: pg_stat_statements in database saga, and the saga role may read every
# statistic, reset them (the bench does before a measured run) and run CHECKPOINT.
durable_grants() {
    psql_super_db saga <<'SQL' >&2 || die "could not set up pg_stat_statements in database saga"
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS pg_stat_statements;
GRANT pg_monitor, pg_checkpoint TO saga;
SELECT format('GRANT EXECUTE ON FUNCTION %s TO saga', p.oid::regprocedure)
FROM pg_proc p
WHERE p.proname IN ('pg_stat_statements_reset', 'pg_stat_reset_shared', 'pg_stat_reset') \gexec
SQL
}

wait_ready() {
    local url="$1" i
    for i in $(seq 1 60); do
        if psql "$url" -X -qAtc 'SELECT 1' >/dev/null 2>&1; then return 0; fi
        sleep 0.5
    done
    return 1
}

write_env() {
    mkdir -p "$SVC"
    {
        printf '%s=%s\n' "$URL_VAR" "$1"
        # Quoted: the value has a space, and the file is meant to be sourced by sh.
        if [ -n "${2:-}" ]; then printf "%s='%s'\n" "$CLUSTER_VAR" "$2"; fi
    } >"$ENVF.tmp"
    mv "$ENVF.tmp" "$ENVF"
}

cmd_start() {
    rm -f "$ENVF"
    if external_url; then
        command -v psql >/dev/null || apt_install postgresql-client
        wait_ready "$SAGA_TEST_DATABASE_URL" \
            || die "SAGA_TEST_DATABASE_URL is set but the server does not answer: $(psql "$SAGA_TEST_DATABASE_URL" -X -qAtc 'SELECT 1' 2>&1 | head -3)"
        write_env "$SAGA_TEST_DATABASE_URL"
        echo "$(psql "$SAGA_TEST_DATABASE_URL" -X -qAtc 'SELECT version()') (external, from SAGA_TEST_DATABASE_URL)"
        return 0
    fi

    ensure_installed
    local v
    v="$(pg_version)"
    if ! cluster_exists "$v"; then
        port_in_use "$PORT" && die "port $PORT on 127.0.0.1 is taken by another program; cannot create cluster $v/$CLUSTER"
        log "creating cluster $v $CLUSTER on port $PORT"
        pg_createcluster --start-conf=manual -p "$PORT" "$v" "$CLUSTER" >&2 \
            || die "pg_createcluster $v $CLUSTER failed"
    fi
    local changed=0
    write_conf "$v" && changed=1
    install -d -o postgres -g postgres -m 2775 /var/run/postgresql

    if cluster_running "$v" && [ "$changed" = 1 ]; then
        log "settings changed; restarting cluster $v $CLUSTER"
        pg_ctlcluster "$v" "$CLUSTER" restart >&2 || die "pg_ctlcluster $v $CLUSTER restart failed"
    fi
    # Start it unless it already answers. "status" alone is not enough: right after a crash the
    # dead postmaster can still look alive for a moment (a zombie passes kill -0).
    local i started=0
    for i in $(seq 1 60); do
        psql_super -Atc 'SELECT 1' >/dev/null 2>&1 && break
        if [ "$started" = 0 ] && ! cluster_running "$v"; then
            port_in_use "$PORT" && die "port $PORT on 127.0.0.1 is taken by another program; cannot start cluster $v/$CLUSTER"
            log "starting cluster $v $CLUSTER"
            if ! pg_ctlcluster "$v" "$CLUSTER" start >&2; then
                tail -n 30 "/var/log/postgresql/postgresql-$v-$CLUSTER.log" >&2 2>/dev/null || true
                die "pg_ctlcluster $v $CLUSTER start failed"
            fi
            started=1
            continue
        fi
        sleep 0.5
    done
    if ! psql_super -Atc 'SELECT 1' >/dev/null 2>&1; then
        tail -n 30 "/var/log/postgresql/postgresql-$v-$CLUSTER.log" >&2 2>/dev/null || true
        die "cluster $v $CLUSTER does not accept connections after 30 s (pg_ctlcluster $v $CLUSTER status: $(pg_ctlcluster "$v" "$CLUSTER" status 2>&1 | head -1))"
    fi
    psql_super <<'SQL' >&2 || die "could not create role/database saga"
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'saga') THEN
        CREATE ROLE saga LOGIN CREATEDB PASSWORD 'saga';
    ELSE
        ALTER ROLE saga LOGIN CREATEDB PASSWORD 'saga';
    END IF;
END
$$;
SELECT 'CREATE DATABASE saga OWNER saga'
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'saga') \gexec
SQL
    if [ "$MODE" = durable ]; then durable_grants; fi
    wait_ready "$OWN_URL" || die "cluster $v $CLUSTER started but $OWN_URL does not answer"
    write_env "$OWN_URL" "$v $CLUSTER"
    psql "$OWN_URL" -X -qAtc 'SELECT version()'
}

cmd_stop() {
    rm -f "$ENVF"
    if external_url; then
        echo "PostgreSQL is external (SAGA_TEST_DATABASE_URL); not stopping it"
        return 0
    fi
    local v
    if ! command -v pg_ctlcluster >/dev/null || ! v="$(pg_version)" || ! cluster_exists "$v"; then
        echo "PostgreSQL cluster $CLUSTER does not exist; nothing to stop"
        return 0
    fi
    if cluster_running "$v"; then
        pg_ctlcluster "$v" "$CLUSTER" stop -m fast >&2 || die "pg_ctlcluster $v $CLUSTER stop failed"
        echo "PostgreSQL cluster $v $CLUSTER stopped"
    else
        echo "PostgreSQL cluster $v $CLUSTER not running"
    fi
}

cmd_status() {
    local url="$OWN_URL" what
    external_url && url="$SAGA_TEST_DATABASE_URL"
    if command -v psql >/dev/null && what="$(psql "$url" -X -qAtc 'SELECT version()' 2>/dev/null)"; then
        echo "PostgreSQL answering at ${url%%\?*}: $what"
        return 0
    fi
    echo "PostgreSQL not answering at $url"
    return 3
}

cmd_env() {
    if external_url; then
        printf 'SAGA_TEST_DATABASE_URL=%s\n' "$SAGA_TEST_DATABASE_URL"
        return 0
    fi
    local v
    v="$(pg_version)" || die "PostgreSQL is not installed; run: $0 start"
    printf '%s=%s\n' "$URL_VAR" "$OWN_URL"
    printf "%s='%s'\n" "$CLUSTER_VAR" "$v $CLUSTER"
}

case "${1:-}" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    env) cmd_env ;;
    start-durable) use_durable; cmd_start ;;
    stop-durable) use_durable; cmd_stop ;;
    status-durable) use_durable; cmd_status ;;
    env-durable) use_durable; cmd_env ;;
    *) echo "usage: $0 start|stop|status|env|start-durable|stop-durable|status-durable|env-durable" >&2; exit 2 ;;
esac
