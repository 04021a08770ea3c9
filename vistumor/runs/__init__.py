"""Bookkeeping of training runs and sweeps: loggers (CSV, W&B), the training callbacks
(learning curves, throughput), run figures, and the comparison table across runs."""
