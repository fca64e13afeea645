"""Release mechanisms an attacker queries: plain labels, RP smoothing, randomized response, DP-SGD models."""
