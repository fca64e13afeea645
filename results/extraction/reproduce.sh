#!/usr/bin/env bash
# Regenerates results/extraction/: students distilled from each defense's release, fidelity against budget.
# Run from the repository root: bash results/extraction/reproduce.sh
# Budgets run from 30 queries to the whole public pool (insurance 535, digits 719, mnist5k 2,000 inputs); 5 seeds each.
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
# mnist5k (28×28 CNN target, public pool 2,000): RP at σ = 0.25 with N = 100 only, to fit the CNN's
# sample rate on 2 cores; budgets from 100 to the whole pool.
budgets=(--query-budget 100 --query-budget 300 --query-budget 1000 --query-budget 2000)
$rpdist attack extraction --dataset mnist5k --defense none "${budgets[@]}" --out $out --run-id mnist5k-none -q
$rpdist attack extraction --dataset mnist5k --defense rp --sigma 0.25 --n 100 \
  --release predict --release majority --release certify "${budgets[@]}" --out $out --run-id mnist5k-rp -q
$rpdist attack extraction --dataset mnist5k --defense rr --epsilon 1 --epsilon 3 --epsilon 5 "${budgets[@]}" \
  --out $out --run-id mnist5k-rr -q
$rpdist attack extraction --dataset mnist5k --defense dpsgd --epsilon 1 --epsilon 3 --epsilon 8 "${budgets[@]}" \
  --out $out --run-id mnist5k-dpsgd -q
$rpdist report $out --out $out/report.md
