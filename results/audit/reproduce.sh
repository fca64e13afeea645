#!/usr/bin/env bash
# Regenerates results/audit/: the distinguishing audit of the three releases on the built-in models.
# Run from the repository root: bash results/audit/reproduce.sh   (about 75 min on the 2-core machine, plus about 75 min for digits at N = 10,000)
# The digits CNN draws ~30k samples/s on 2 cores against ~1.4M/s for the insurance MLP, so its grid
# is smaller (N ≤ 1,000: 4 inputs, 400 trials, fewer partners; N = 10,000: 2 inputs, 300 trials); the README says so.
set -euo pipefail
export RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0
out=results/audit
rpdist=.venv/bin/rpdist
releases=(--release predict --release majority --release certify)
for sigma in 0.25 0.5 1; do
  $rpdist audit distinguish --dataset insurance --sigma $sigma --n 100 --n 1000 --n 10000 "${releases[@]}" \
    --distance 0 --distance 0.25 --distance 0.5 --distance 1 --radius-fraction 0.5 --radius-fraction 1 \
    --trials 1000 --limit 10 --select boundary --out $out --run-id insurance-s$sigma --quiet
done
for sigma in 0.25 0.5 1; do
  $rpdist audit distinguish --dataset digits --sigma $sigma --n 100 --n 1000 "${releases[@]}" \
    --distance 0.5 --radius-fraction 0.5 --radius-fraction 1 \
    --trials 400 --limit 4 --select boundary --out $out --run-id digits-s$sigma --quiet
done
# N = 10,000 on digits: ~25 min per σ on the loaded 2-core machine (one worker), so 2 boundary inputs and 300 trials.
for sigma in 0.25 0.5 1; do
  $rpdist audit distinguish --dataset digits --sigma $sigma --n 10000 "${releases[@]}" \
    --distance 0.5 --radius-fraction 0.5 --radius-fraction 1 \
    --trials 300 --limit 2 --select boundary --workers 1 --out $out --run-id digits-s$sigma-n10000 --quiet
done
$rpdist report $out --out $out/report.md
