# Sourced by scripts/test and scripts/bench: installs what is missing
# (PostgreSQL, the sqlite3 CLI) when run as root, starts a throwaway
# PostgreSQL cluster on a free loopback port and stops it on exit.
# Sets PGBIN, PGDIR and DATASK_TEST_PG_URL.

need_root() {
  if [ "$(id -u)" -ne 0 ]; then
    echo "$0: $1 is missing; install it (e.g. apt-get install -y $2) or run as root" >&2
    exit 1
  fi
}

apt_updated=""
apt_install() {
  if [ -z "$apt_updated" ]; then apt-get update -qq; apt_updated=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

PGBIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
if [ -z "$PGBIN" ] || [ ! -x "$PGBIN/initdb" ]; then
  need_root "PostgreSQL" postgresql
  echo "installing PostgreSQL…"
  apt_install postgresql
  PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
fi
if ! command -v sqlite3 >/dev/null; then
  need_root "the sqlite3 CLI" sqlite3
  apt_install sqlite3
fi
if ! command -v psql >/dev/null; then
  need_root "psql" postgresql-client
  apt_install postgresql-client
fi

if [ "$(id -u)" -eq 0 ]; then
  run_pg() { runuser -u postgres -- "$@"; }
else
  run_pg() { "$@"; }
fi

PGDIR=$(mktemp -d /tmp/datask-pg.XXXXXX)
pg_cleanup() {
  if [ -f "$PGDIR/data/postmaster.pid" ]; then
    run_pg "$PGBIN/pg_ctl" -D "$PGDIR/data" -m immediate stop >/dev/null 2>&1 || true
  fi
  rm -rf "$PGDIR"
}
trap pg_cleanup EXIT

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
mkdir -p "$PGDIR/data" "$PGDIR/sock"
[ "$(id -u)" -eq 0 ] && chown -R postgres:postgres "$PGDIR"
run_pg "$PGBIN/initdb" -D "$PGDIR/data" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >/dev/null
run_pg "$PGBIN/pg_ctl" -D "$PGDIR/data" -l "$PGDIR/server.log" -w \
  -o "-p $PORT -k $PGDIR/sock -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300" \
  start >/dev/null
echo "PostgreSQL $("$PGBIN/postgres" --version | awk '{print $3}') on 127.0.0.1:$PORT"
export DATASK_TEST_PG_URL="postgres://postgres@127.0.0.1:$PORT/postgres"
