#!/bin/bash
# Issue 16's constraint: a refactor leaves behaviour unchanged. Trains the runs of
# tools/run_fingerprint.py (20 steps, --deterministic, seed 0) from commit OLD (default: the
# last commit before the redesign) and from the working tree, on this machine, and compares
# weights bit for bit and eval.json without timings. Exit 0: identical; 1: a difference (printed).
#
#   tools/behaviour_unchanged.sh [OLD_COMMIT] [RUNS]   # e.g. tools/behaviour_unchanged.sh fc5f237
#
# OLD_JSON=<old.json of an earlier call on this machine> skips training the old side again.
set -euo pipefail
OLD=${1:-fc5f237}
RUNS=${2:-mnist_madry_aad,mnist_trades,cifar10_alp_aad}
DATA=${DATA:-$(cd "$(dirname "$0")/../../shared/data" 2>/dev/null && pwd || echo ../shared/data)}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d /tmp/behaviour_unchanged.XXXXXX)
export TF_NUM_INTRAOP_THREADS=${TF_NUM_INTRAOP_THREADS:-1} TF_NUM_INTEROP_THREADS=${TF_NUM_INTEROP_THREADS:-1}
# The script itself comes from the working tree, so both sides are fingerprinted the same way.
if [ -n "${OLD_JSON:-}" ]; then
  cp "$OLD_JSON" "$WORK/old.json"
else
  git -C "$ROOT" worktree add --detach "$WORK/old" "$OLD" >/dev/null
  trap 'git -C "$ROOT" worktree remove --force "$WORK/old"' EXIT
  python "$ROOT/tools/run_fingerprint.py" --source="$WORK/old" --work="$WORK/runs_old" \
    --out="$WORK/old.json" --data_dir="$DATA" --runs="$RUNS"
fi
python "$ROOT/tools/run_fingerprint.py" --source="$ROOT" --work="$WORK/runs_new" \
  --out="$WORK/new.json" --data_dir="$DATA" --runs="$RUNS"
python - "$WORK/old.json" "$WORK/new.json" <<'PY'
import json, sys
old, new = (json.load(open(p)) for p in sys.argv[1:3])
bad = 0
for run in old:
  for part in ('weights', 'eval'):
    key = 'variables' if part == 'weights' else None
    a = old[run][part][key] if key else old[run][part]
    b = new[run][part][key] if key else new[run][part]
    same = a == b
    bad += not same
    print(f'{run:18s} {part:8s} {"identical" if same else "DIFFERENT"}')
  if old[run]['weights']['names'] != new[run]['weights']['names']:
    print(f'{run:18s} checkpoint variable names changed (values compared as a multiset)')
sys.exit(1 if bad else 0)
PY
echo "fingerprints: $WORK/old.json $WORK/new.json"
