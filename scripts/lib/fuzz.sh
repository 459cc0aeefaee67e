# Sourced by scripts/test: schemathesis against a real server on each store,
# from the server's own /openapi.json. Counts its runs in EXTRA_PASSED and EXTRA_FAILED.

if ! command -v schemathesis >/dev/null; then
  echo "installing schemathesis…"
  python3 -m pip install -q --disable-pip-version-check schemathesis >/dev/null 2>&1 || python3 -m pip install -q schemathesis
fi

EXTRA_PASSED=0
EXTRA_FAILED=0

# $1: a label; $2: a database URL (empty for SQLite).
fuzz_one() {
  local label=$1 db=$2 dir port pid key rc
  dir=$(mktemp -d "$PGDIR/fuzz.XXXXXX")
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  target/debug/datask serve --listen "127.0.0.1:$port" --data-dir "$dir" --root-key fuzz-root \
    ${db:+--database-url "$db"} >"$dir/out" 2>"$dir/err" &
  pid=$!
  key=$(python3 - "$port" <<'PY'
import json, sys, time, urllib.request
url = f"http://127.0.0.1:{sys.argv[1]}"
for _ in range(200):
    try:
        urllib.request.urlopen(url + "/healthz", timeout=1)
        break
    except Exception:
        time.sleep(0.05)
req = urllib.request.Request(url + "/admin/tenants", data=b'{"name": "fuzz"}', method="POST",
                             headers={"Authorization": "Bearer fuzz-root", "Content-Type": "application/json"})
print(json.load(urllib.request.urlopen(req))["privileged_key"])
PY
)
  echo "== schemathesis on $label"
  set +e
  schemathesis run "http://127.0.0.1:$port/openapi.json" -H "Authorization: Bearer $key" \
    --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
    --phases examples,coverage,fuzzing -n 25 --seed 1 --no-color
  rc=$?
  set -e
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  if [ "$rc" -eq 0 ]; then EXTRA_PASSED=$((EXTRA_PASSED + 1)); else EXTRA_FAILED=$((EXTRA_FAILED + 1)); fi
}

fuzz_one SQLite ""
run_pg "$PGBIN/psql" -h 127.0.0.1 -p "$PORT" -U postgres -q -c "CREATE DATABASE fuzz" >/dev/null
fuzz_one PostgreSQL "postgres://postgres@127.0.0.1:$PORT/fuzz"
