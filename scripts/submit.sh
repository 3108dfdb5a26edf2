#!/usr/bin/env bash
# Submit a fedray job (or a -m sweep) to a running Ray cluster through the Ray Jobs API.
#
#   scripts/submit.sh HEAD num_clients=64 rounds=50 data=synthetic
#   scripts/submit.sh HEAD -m lr=0.01,0.05 num_clients=32,64
#
# HEAD is the head node's host name (Jobs API on port ${RAY_DASHBOARD_PORT:-8265}). The driver runs
# on the head, so that is where the outputs land: ~/fedray-outputs/<date>/<time>/ of the user Ray
# runs as there. At the end the script prints the rsync line that fetches them.
set -euo pipefail
head=${1:?usage: scripts/submit.sh HEAD [-m] [key=value ...]}
shift
stamp=$(date +%Y-%m-%d/%H-%M-%S)
remote_dir="fedray-outputs/$stamp"
cd "$(dirname "$0")/.."

status=0
# ${oc.env:HOME} is left for Hydra to resolve on the head (ray job submit quotes it for the shell there).
ray job submit --address "http://$head:${RAY_DASHBOARD_PORT:-8265}" --working-dir . -- \
    python -m fedray.run "$@" \
    "hydra.run.dir=\${oc.env:HOME}/$remote_dir" "hydra.sweep.dir=\${oc.env:HOME}/$remote_dir" || status=$?
echo "fedray: outputs on $head:~/$remote_dir; fetch them with:"
echo "  rsync -a $head:$remote_dir/ outputs/$stamp/"
exit "$status"
