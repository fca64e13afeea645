#!/usr/bin/env bash
# Regenerates results/extraction/: students distilled from each defense's release, fidelity against budget.
# Run from the repository root: bash results/extraction/reproduce.sh
# Budgets run from 30 queries to the whole public pool (insurance 535, digits 719 inputs); 5 seeds each.
set -euo pipefail
export RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0
out=results/extraction
rpdist=.venv/bin/rpdist
for dataset in insurance digits; do
  pool=$([ $dataset = insurance ] && echo 535 || echo 719)
  budgets=(--query-budget 30 --query-budget 100 --query-budget 300 --query-budget $pool)
  sigma=$([ $dataset = insurance ] && echo 0.5 || echo 0.25)
  $rpdist attack extraction --dataset $dataset --defense none "${budgets[@]}" --out $out --run-id $dataset-none -q
  $rpdist attack extraction --dataset $dataset --defense rp --sigma $sigma --n 100 --n 1000 \
    --release predict --release majority --release certify "${budgets[@]}" --out $out --run-id $dataset-rp -q
  $rpdist attack extraction --dataset $dataset --defense dpsgd --epsilon 1 --epsilon 3 --epsilon 8 "${budgets[@]}" \
    --out $out --run-id $dataset-dpsgd -q
  $rpdist attack extraction --dataset $dataset --defense rr --epsilon 1 --epsilon 3 --epsilon 5 "${budgets[@]}" \
    --out $out --run-id $dataset-rr -q
done
$rpdist report $out --out $out/report.md
