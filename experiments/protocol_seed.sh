#!/usr/bin/env bash
# One seed of a protocol figure: each policy in its own process, one after another, through the
# round timer (`benchmarks.round_breakdown`, which runs `gpjax run`'s loop unchanged and keeps
# its output), from a detached git worktree of HEAD, so edits to the checkout cannot reach the
# running code. Interrupted? Run the same command again: every policy resumes (--resume).
# The session ending before a policy does? `python -m experiments.handover --work $WORK
# --figure FIGURE pack <policy>-seed<k>` and commit experiments/results/FIGURE/inprogress/: the
# next machine's run of this command continues from there.
#
# usage: experiments/protocol_seed.sh CONFIG FIGURE SEED POLICY...
#   e.g. nohup experiments/protocol_seed.sh lenet5_mnist fig11 0 growprune tfs nft nest \
#          > fig11_seed0.log 2>&1 &
# Output: $WORK/runs/<policy>-seed<k>/results.{json,csv} and
# $WORK/breakdown/round_breakdown_<date>_<figure>_<policy>_seed<k>.{json,md};
# WORK defaults to /tmp/gpjax-<figure>, PYTHON to the checkout's .venv/bin/python.
set -u
if [ $# -lt 4 ]; then
  echo "usage: $0 CONFIG FIGURE SEED POLICY... (e.g. lenet300_mnist fig10 2 growprune tfs)" >&2
  exit 2
fi
CONFIG=$1 FIGURE=$2 SEED=$3
shift 3
REPO=$(cd "$(dirname "$0")/.." && pwd)
WORK=${WORK:-/tmp/gpjax-$FIGURE}
PY=${PYTHON:-$REPO/.venv/bin/python}
mkdir -p "$WORK"
# The worktree is made once per WORK (so a resumed policy keeps its code): a new commit wants a
# fresh WORK. `prune` forgets a worktree whose folder was deleted (rm -rf $WORK), which
# `worktree add` would refuse to register again.
git -C "$REPO" worktree prune
[ -d "$WORK/wt" ] || git -C "$REPO" worktree add --detach "$WORK/wt" HEAD
cd "$WORK/wt" || exit 1
# A run handed over by an earlier machine (experiments/handover.py) continues from its step.
"$PY" -m experiments.handover unpack --work "$WORK" --figure "$FIGURE" \
  --results "$REPO/experiments/results"
echo "=== commit $(git rev-parse --short HEAD), config $CONFIG, seed $SEED"
for P in "$@"; do
  echo "=== $P seed $SEED start $(date -u +%FT%TZ)"
  "$PY" -m benchmarks.round_breakdown --config "$CONFIG" --policy "$P" --seed "$SEED" \
    --keep "$WORK/runs" --resume --out "$WORK/breakdown" --suffix "_${FIGURE}_${P}_seed${SEED}"
  rc=$?
  echo "=== $P seed $SEED end $(date -u +%FT%TZ) rc $rc"
done
