"""Release mechanisms an attacker queries: plain labels, RP smoothing, randomized response, DP-SGD models."""

# Every defense the attack benchmark knows. rp smooths; abstain (random abstention at rp PREDICT's measured
# rate at each (σ, N)) and noise (one forward pass on Gaussian-noised input, N = 1) are its uncertified baselines.
DEFENSES = ("none", "rp", "dpsgd", "rr", "abstain", "noise")
