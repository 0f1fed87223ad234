"""Evaluation: greedy generation (`generation`), the MUSE metrics (`muse`), the utility
benchmarks (`utility`), the METRICS table (`metrics`), one evaluation cell (`cell`) and the
weight diagnostics (`diagnostics`)."""
