# Sourced by scripts/test after pg.sh: installs s3s-fs when missing (an
# S3-compatible server over a directory), starts it on a free loopback port
# with a throwaway directory and stops it on exit.
# Sets S3DIR and exports DATASK_TEST_S3_URL, DATASK_TEST_S3_DIR and the
# AWS_* variables object_store reads (endpoint, credentials, region, http).

S3S_VERSION=0.14.1
if ! command -v s3s-fs >/dev/null; then
  # Newer releases need a newer rustc than the project's.
  echo "installing s3s-fs $S3S_VERSION…"
  cargo install "s3s-fs@$S3S_VERSION" --features binary --locked --quiet
fi

S3DIR=$(mktemp -d /tmp/datask-s3.XXXXXX)
S3PID=""
s3_cleanup() {
  if [ -n "$S3PID" ]; then
    kill "$S3PID" 2>/dev/null || true
    wait "$S3PID" 2>/dev/null || true
  fi
  rm -rf "$S3DIR"
}
# pg.sh owns the EXIT trap already: run its clean-up too, not instead.
_s3_prev_exit_trap=$(trap -p EXIT | sed -E "s/^trap -- '(.*)' EXIT\$/\\1/")
trap "s3_cleanup; ${_s3_prev_exit_trap:-:}" EXIT

S3PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
mkdir -p "$S3DIR/data/datask-test"
s3s-fs --host 127.0.0.1 --port "$S3PORT" --access-key datask-test --secret-key datask-test-secret \
  "$S3DIR/data" >"$S3DIR/server.log" 2>&1 &
S3PID=$!
for _ in $(seq 100); do
  if (exec 3<>"/dev/tcp/127.0.0.1/$S3PORT") 2>/dev/null; then break; fi
  sleep 0.05
done
if ! kill -0 "$S3PID" 2>/dev/null; then
  echo "$0: s3s-fs did not start:" >&2
  cat "$S3DIR/server.log" >&2
  exit 1
fi
echo "s3s-fs $S3S_VERSION on 127.0.0.1:$S3PORT"

export DATASK_TEST_S3_URL="s3://datask-test"
# The tests look here for multipart uploads left open (s3s-fs keeps their
# parts as .upload* files in its root).
export DATASK_TEST_S3_DIR="$S3DIR/data"
export AWS_ENDPOINT_URL="http://127.0.0.1:$S3PORT"
export AWS_ACCESS_KEY_ID=datask-test
export AWS_SECRET_ACCESS_KEY=datask-test-secret
export AWS_REGION=us-east-1
export AWS_ALLOW_HTTP=true
