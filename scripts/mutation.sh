#!/usr/bin/env bash
# Mutation testing (mutmut) of the modules that carry the safety promises, one module at a time, at low priority.
#   bash scripts/mutation.sh                      # all eight modules, from a fresh mutants/ folder
#   bash scripts/mutation.sh serving.limits ...   # only these (results of the others in mutants/ are kept)
# The tests each module runs against are [tool.mutmut] in pyproject.toml; mutmut runs, for each mutant, only the
# selected tests that reach the mutated function. The score table comes from scripts/mutation_score.py;
# docs/mutation.md explains the survivors. About 0.3-1 mutants per second on 2 shared cores.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
JOBS=${MUTATION_JOBS:-2}
MODULES=(serving.limits rollout.guardrails security.tokens security.auth ingest.sink ingest.validation
         experiments.stats rollout.controller)
if [ $# -gt 0 ]; then
  MODULES=("$@")
else
  rm -rf mutants  # every verdict from this run, none cached from an older tree
fi
for m in "${MODULES[@]}"; do
  echo "== modelmill.$m ($(date +%H:%M:%S))"
  # mutmut redraws its progress line in place; keep only its last report
  nice -n 19 "$VENV/bin/mutmut" run --max-children "$JOBS" "modelmill.$m.*" | tr '\r' '\n' | tail -n 3
done
"$VENV/bin/python" scripts/mutation_score.py
