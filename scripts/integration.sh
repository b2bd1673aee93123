#!/usr/bin/env bash
# The integration tests as `make test` runs them: two pytest processes at once.
#  - the tests that reach the one-node cluster (marked one_node_cluster by tests/conftest.py), in order, on
#    this terminal: two such clusters cannot share the host (each node's kube-proxy rewrites the host's
#    KUBE-* iptables chains), so they stay in one process;
#  - every other test (the bare control plane, or no cluster at all) beside them, into a log printed after.
# Usage: scripts/integration.sh [pytest args...] (paths default to tests/integration tests/e2e).
# SERIAL=1 runs everything in one process. The exit code is the worse of the two (5, "no tests", is 0).
set -u
cd "$(dirname "$0")/.."
bin=${BIN:-.venv/bin}
paths=(tests/integration tests/e2e)
if [ "${SERIAL:-}" = 1 ]; then
    exec "$bin/pytest" "${paths[@]}" -q "$@"
fi
work=$(mktemp -d /tmp/envkiln-integration-XXXXXX)
trap 'rm -rf "$work"' EXIT
ok() { [ "$1" -eq 0 ] || [ "$1" -eq 5 ]; }

"$bin/pytest" "${paths[@]}" -q -m "not one_node_cluster and not faults" -p no:cacheprovider \
    --basetemp "$work/basetemp" "$@" > "$work/rest.log" 2>&1 &
rest=$!
echo "--- the tests that need no node run beside these (their log follows): pid $rest"
"$bin/pytest" "${paths[@]}" -q -m "one_node_cluster and not faults" "$@"
node_rc=$?
wait "$rest"
rest_rc=$?
echo
echo "--- the tests that need no node (bare control plane, no cluster), run beside the node's: exit $rest_rc"
cat "$work/rest.log"
echo "--- node tests: exit $node_rc; the others: exit $rest_rc"
if ok "$node_rc" && ok "$rest_rc"; then exit 0; fi
ok "$node_rc" && exit "$rest_rc"
exit "$node_rc"
