#!/usr/bin/env bash
# /metrics against the tools that read it: starts the built hookrelay on a
# temporary config (loopback only, ports chosen by the kernel), delivers a
# few events to a loopback receiver (successes, a failure, a dead letter),
# then scrapes both formats:
# - Prometheus text 0.0.4 (no Accept header): `promtool check metrics`
#   must print nothing and exit 0;
# - OpenMetrics (Accept: application/openmetrics-text): the OpenMetrics
#   parser of the Prometheus Python client must read it (promtool reads
#   only the 0.0.4 format).
#
# Usage: tests/conformance/promtool.sh [PATH_TO_HOOKRELAY]
# (default target/debug/hookrelay, built when missing). Needs promtool
# (Debian's `prometheus` package), python3 with `prometheus_client`, curl.
set -euo pipefail
cd "$(dirname "$0")/../.."

bin="${1:-target/debug/hookrelay}"
if [ ! -x "$bin" ]; then
    cargo build --quiet --bin hookrelay
fi
for tool in promtool curl python3; do
    command -v "$tool" >/dev/null || { echo "FAIL: $tool is not installed" >&2; exit 1; }
done
python3 -c "import prometheus_client.openmetrics.parser" 2>/dev/null ||
    { echo "FAIL: python3 has no prometheus_client (pip install prometheus-client)" >&2; exit 1; }

dir="$(mktemp -d)"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$dir"
}
trap cleanup EXIT

# Waits (at most 20 s) until the command "$@" succeeds.
wait_for() {
    local what="$1"
    shift
    for _ in $(seq 200); do
        if "$@"; then
            return 0
        fi
        sleep 0.1
    done
    echo "FAIL: $what" >&2
    [ -f "$dir/relay.log" ] && cat "$dir/relay.log" >&2
    exit 1
}

# A receiver on loopback: 200 on /ok, 500 on anything else.
python3 - "$dir/receiver.port" <<'EOF' &
import http.server, sys
class Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(200 if self.path == "/ok" else 500)
        self.send_header("content-length", "0")
        self.end_headers()
    def log_message(self, *args):
        pass
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
with open(sys.argv[1] + ".tmp", "w") as f:
    f.write(str(server.server_address[1]))
import os
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
server.serve_forever()
EOF
pids+=($!)
wait_for "the receiver did not start" test -s "$dir/receiver.port"
rx="http://127.0.0.1:$(cat "$dir/receiver.port")"

echo "conformance-admin-token-0123456789" > "$dir/admin.tokens"
cat > "$dir/hookrelay.toml" <<EOF
egress.allow = ["127.0.0.0/8"]
ingest.listen = ["127.0.0.1:0"]
admin.listen = ["127.0.0.1:0"]
admin.tokens_file = "$dir/admin.tokens"
store.path = "$dir/store"
delivery.backoff = { initial = "20ms", max = "100ms", multiplier = 2.0, jitter = 0.0 }
delivery.max_attempts = 2

[[routes]]
name = "t"
path = "/t/{event}"

[[routes.targets]]
name = "ok"
url = "$rx/ok"

[[routes.targets]]
name = "failing"
url = "$rx/fail"
events = ["will_fail"]
EOF

"$bin" serve --config "$dir/hookrelay.toml" 2>"$dir/relay.log" &
pids+=($!)
# The addresses the kernel gave, from the log's "listening" lines.
addr_of() { grep "$1 listening" "$dir/relay.log" | grep -o '127\.0\.0\.1:[0-9]*' | head -1; }
wait_for "the relay did not listen" grep -q "admin listening" "$dir/relay.log"
ingest="$(addr_of ingest)"
admin="$(addr_of admin)"

for event in new_order new_order course_completed will_fail; do
    curl -fsS -o /dev/null -X POST -H 'content-type: application/json' \
        --data '{"id": 1}' "http://$ingest/t/$event"
done
delivered() {
    curl -fsS "http://$admin/metrics" >"$dir/poll.txt" || return 1
    awk '/^hookrelay_deliveries_total/ && /outcome="delivered"/ {d += $NF}
         /^hookrelay_deliveries_total/ && /outcome="dead"/ {x += $NF}
         END {exit !(d == 4 && x == 1)}' "$dir/poll.txt"
}
wait_for "the deliveries did not finish (4 delivered, 1 dead)" delivered

curl -fsS -D "$dir/text.headers" -o "$dir/metrics.txt" "http://$admin/metrics"
curl -fsS -D "$dir/om.headers" -o "$dir/metrics.om" \
    -H 'Accept: application/openmetrics-text; version=1.0.0' "http://$admin/metrics"
grep -qi '^content-type: text/plain; version=0.0.4' "$dir/text.headers" ||
    { echo "FAIL: the Prometheus text answer's content type" >&2; cat "$dir/text.headers" >&2; exit 1; }
grep -qi '^content-type: application/openmetrics-text; version=1.0.0' "$dir/om.headers" ||
    { echo "FAIL: the OpenMetrics answer's content type" >&2; cat "$dir/om.headers" >&2; exit 1; }

failed=0
echo "== promtool check metrics (Prometheus text 0.0.4)"
if ! out="$(promtool check metrics <"$dir/metrics.txt" 2>&1)" || [ -n "$out" ]; then
    echo "FAIL: promtool: $out" >&2
    failed=1
fi

echo "== OpenMetrics parser (prometheus_client)"
if ! python3 - "$dir/metrics.om" <<'EOF'; then
import sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
families = list(text_string_to_metric_families(open(sys.argv[1]).read()))
names = {f.name for f in families}
for want in ("hookrelay_deliveries", "hookrelay_attempts", "hookrelay_build",
             "process_resident_memory_bytes", "process_cpu_seconds"):
    if want not in names:
        sys.exit(f"no family {want} in {sorted(names)}")
print(f"{len(families)} families")
EOF
    echo "FAIL: the OpenMetrics answer does not parse" >&2
    failed=1
fi

if [ "$failed" = 0 ]; then
    echo "2 passed, 0 failed"
else
    echo "$((2 - failed)) passed, $failed failed"
fi
exit "$failed"
