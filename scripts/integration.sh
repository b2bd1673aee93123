#!/usr/bin/env bash
# The integration tests as `make test` runs them: three pytest processes at once.
#  - the tests that reach a one-node cluster (marked one_node_cluster by tests/conftest.py), in two halves,
#    each on a node cluster of its own (harness.hostshare lets two share the host):
#      1. on this terminal, on a cluster with kube-proxy: the tests marked kube_proxy (their pods reach a
#         ClusterIP Service) and the files in WITH_PROXY, chosen so that the halves take about as long;
#      2. beside it, on a cluster without kube-proxy (ENVKILN_NODE_KUBE_PROXY=0; only one kube-proxy may
#         rewrite the host's KUBE-* chains): every other node test; its log follows the first's;
#  - every other test (the bare control plane, or no cluster at all) beside them; its log follows too.
# Usage: scripts/integration.sh [pytest args...] (paths default to tests/integration tests/e2e).
# SERIAL=1 runs everything in one process (one cluster, with kube-proxy). The exit code is the worst of the
# three (5, "no tests", counts as 0).
set -u
cd "$(dirname "$0")/.."
bin=${BIN:-.venv/bin}
paths=(tests/integration tests/e2e)
if [ "${SERIAL:-}" = 1 ]; then
    exec "$bin/pytest" "${paths[@]}" -q "$@"
fi
node=tests/integration/node
# The first half: the files whose tests are marked kube_proxy, and others that need no Service, chosen so
# that the halves take about as long (the durations are in CI's log). A kube_proxy test in a file not
# listed here fails in the second half, saying so.
WITH_PROXY=(tests/integration/test_node.py "$node/test_chart_operator.py" "$node/test_release.py"
            "$node/test_package_proxy.py" "$node/test_drift.py" "$node/test_cli_follow.py"
            "$node/test_key_rotation.py" "$node/test_security.py")
work=$(mktemp -d /tmp/envkiln-integration-XXXXXX)
trap 'rm -rf "$work"' EXIT
ok() { [ "$1" -eq 0 ] || [ "$1" -eq 5 ]; }
worst() { local rc=0 r; for r in "$@"; do ok "$r" && continue; [ "$rc" -ne 0 ] || rc=$r; done; echo "$rc"; }

"$bin/pytest" "${paths[@]}" -q -m "not one_node_cluster and not faults" -p no:cacheprovider \
    --basetemp "$work/rest" "$@" > "$work/rest.log" 2>&1 &
rest=$!
ignore=(); for file in "${WITH_PROXY[@]}"; do ignore+=(--ignore "$file"); done
ENVKILN_NODE_KUBE_PROXY=0 "$bin/pytest" "${paths[@]}" "${ignore[@]}" -q -m "one_node_cluster and not faults" \
    -p no:cacheprovider --basetemp "$work/plain" "$@" > "$work/plain.log" 2>&1 &
plain=$!
echo "--- two more pytest processes run beside this one (their logs follow): the other node tests on a"
echo "--- second node cluster without kube-proxy (pid $plain), and the tests that need no node (pid $rest)"
"$bin/pytest" "${WITH_PROXY[@]}" -q -m "one_node_cluster and not faults" "$@"
proxy_rc=$?
wait "$plain"
plain_rc=$?
wait "$rest"
rest_rc=$?
echo
echo "--- the node tests on the second node cluster (no kube-proxy): exit $plain_rc"
cat "$work/plain.log"
echo
echo "--- the tests that need no node (bare control plane, no cluster): exit $rest_rc"
cat "$work/rest.log"
echo "--- node tests with kube-proxy: exit $proxy_rc; without: exit $plain_rc; the others: exit $rest_rc"
exit "$(worst "$proxy_rc" "$plain_rc" "$rest_rc")"
