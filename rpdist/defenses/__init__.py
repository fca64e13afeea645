"""Release mechanisms an attacker queries: plain labels, RP smoothing, randomized response, DP-SGD models."""

# Every defense the attack benchmark knows; only rp smooths, so only it has a (σ, N) grid.
DEFENSES = ("none", "rp", "dpsgd", "rr")
