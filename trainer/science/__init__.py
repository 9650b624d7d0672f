"""Published scientific relations used as baselines."""
