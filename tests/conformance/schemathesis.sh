#!/usr/bin/env bash
# The admin API against its contract, docs/openapi.json: schemathesis sends
# generated requests (valid and invalid by the document) to a running
# hookrelay and fails on any answer the document does not allow, a 5xx, a
# 405 without `Allow`, a valid request refused or an invalid one accepted.
#
# Nothing leaves loopback: schemathesis creates endpoints with whatever
# target URLs the document allows and asks for Send Tests, so the relay and
# schemathesis run in a network namespace of their own with only `lo` up
# (`unshare --net`; for a user other than root, inside a user namespace,
# `unshare --user --map-root-user --net`).
#
# Bounded: a fixed number of examples per operation, a fixed seed (the
# same run every time), a timeout on each request and one of ten minutes on
# the whole run. One worker: with two, schemathesis's generator threads
# share hypothesis's unlocked caches, and a run once failed with a
# "FlakyFailure" raised inside hypothesis, before any request was sent.
#
# Usage: tests/conformance/schemathesis.sh   (from anywhere; builds the
# debug binary if needed). Env: SCHEMATHESIS_EXAMPLES, SCHEMATHESIS_SEED,
# SCHEMATHESIS_ARGS (more options for `schemathesis run`, e.g. one
# operation: `--include-operation-id createEndpoint`).
set -euo pipefail
self="$(cd "$(dirname "$0")" && pwd)/$(basename "$0")"
cd "$(dirname "$self")/../.."

# The versions this contract was last run clean with. Hypothesis is pinned
# too: schemathesis generates with it, and a newer one generates otherwise.
SCHEMATHESIS_VERSION="4.32.5"
HYPOTHESIS_VERSION="6.170.17"
EXAMPLES="${SCHEMATHESIS_EXAMPLES:-100}"
SEED="${SCHEMATHESIS_SEED:-20261201}"
# The token is fixed, like the seed, so that a run can be repeated: it
# opens a relay that lives only in the namespace.
TOKEN="conformance-token-0123456789abcdef"

if [ "${1:-}" != "--inside" ]; then
    # As root, a network namespace of its own; otherwise inside a user
    # namespace too, where this user is root.
    unshare=(unshare --net)
    if [ "$(id -u)" -ne 0 ]; then
        unshare=(unshare --user --map-root-user --net)
    fi
    installed="$(python3 -m pip list --format=freeze 2>/dev/null | grep -iE '^(schemathesis|hypothesis)==' | sort -f | tr '\n' ' ' || true)"
    if [ "$installed" != "hypothesis==$HYPOTHESIS_VERSION schemathesis==$SCHEMATHESIS_VERSION " ]; then
        echo "== pip install schemathesis==$SCHEMATHESIS_VERSION hypothesis==$HYPOTHESIS_VERSION"
        python3 -m pip install --quiet "schemathesis==$SCHEMATHESIS_VERSION" "hypothesis==$HYPOTHESIS_VERSION"
    fi
    if ! command -v ip >/dev/null 2>&1; then
        echo "== apt-get install iproute2 (ip, to bring up the namespace's loopback)"
        sudo=""
        if [ "$(id -u)" -ne 0 ]; then
            sudo="sudo"
        fi
        $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends iproute2
    fi
    echo "== cargo build (debug)"
    cargo build --quiet --bin hookrelay
    exec timeout --kill-after=10 600 "${unshare[@]}" -- "$self" --inside
fi

# --- inside the namespace: only loopback exists -------------------------
ip link set lo up
if ip -o link show | grep -v ': lo:' | grep -q .; then
    echo "schemathesis.sh: the namespace has links other than lo" >&2
    exit 2
fi

work="$(mktemp -d)"
relay=""
cleanup() {
    if [ -n "$relay" ]; then
        kill "$relay" 2>/dev/null || true
        wait "$relay" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

# The namespace is empty, so fixed ports cannot be taken by anyone else.
INGEST=127.0.0.1:18080
ADMIN=127.0.0.1:18081
printf '%s admin name=conformance\n' "$TOKEN" >"$work/admin.tokens"
chmod 600 "$work/admin.tokens"
cat >"$work/hookrelay.toml" <<EOF
ingest.listen = ["$INGEST"]
admin.listen = ["$ADMIN"]
admin.tokens_file = "$work/admin.tokens"
store.path = "$work/store"
delivery.timeout = "2s"
delivery.connect_timeout = "1s"
delivery.shutdown_grace = "2s"

# schemathesis makes endpoints for any address: the policy allows every
# one it can, since nothing can leave the namespace anyway.
egress.allow_private = true
egress.allow = ["0.0.0.0/0", "::/0"]

# Nothing listens at the target: the event's delivery waits and retries.
[[routes]]
name = "lms"
path = "/lms/{event}"
event = "{path.event}"

  [[routes.targets]]
  name = "lms-log"
  url = "http://127.0.0.1:18082/hook"
EOF

# One HTTP request with the Python schemathesis runs on (no curl needed);
# fails unless the answer is 2xx.
http() {
    python3 - "$@" <<'PY'
import sys, urllib.request
method, url, body = sys.argv[1], sys.argv[2], (sys.argv[3] if len(sys.argv) > 3 else None)
req = urllib.request.Request(url, method=method, data=body.encode() if body else None,
                             headers={"content-type": "application/json"})
urllib.request.urlopen(req, timeout=5).read()
PY
}

./target/debug/hookrelay serve --config "$work/hookrelay.toml" 2>"$work/relay.log" &
relay=$!
# Ready within 10 s, checked every 0.1 s.
for _ in $(seq 1 100); do
    if http GET "http://$ADMIN/readyz" 2>/dev/null; then
        break
    fi
    if ! kill -0 "$relay" 2>/dev/null; then
        echo "hookrelay did not start:" >&2
        cat "$work/relay.log" >&2
        exit 1
    fi
    sleep 0.1
done
http GET "http://$ADMIN/readyz"

# An event, so the event and delivery operations have something to find.
http POST "http://$INGEST/lms/course_completed" '{"user": "conformance"}'

status=0
spec="$PWD/docs/openapi.json"
config="$PWD/tests/conformance/schemathesis.toml"
# schemathesis keeps a cache in its working directory: keep it out of the tree.
cd "$work"
schemathesis --config-file "$config" run "$spec" \
    --url "http://$ADMIN" \
    --header "Authorization: Bearer $TOKEN" \
    --checks all \
    --max-examples "$EXAMPLES" \
    --seed "$SEED" \
    --workers 1 \
    --request-timeout 10 \
    --report junit --report-dir "$work/report" \
    ${SCHEMATHESIS_ARGS:-} \
    || status=$?
if [ "$status" -ne 0 ]; then
    echo "== schemathesis failed ($status); the relay's log:" >&2
    tail -n 50 "$work/relay.log" >&2
fi
exit "$status"
