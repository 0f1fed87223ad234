"""Evaluation: greedy generation (`generation`), the MUSE metrics (`muse_metrics`), RWKU's
probes (`rwku_metrics`), the utility benchmarks (`utility_metrics`, `harness`), classification
accuracy (`classification`), the METRICS table (`metrics`), one evaluation cell as its job gets it
(`cell`: `CellJob`, `evaluate_cell`), the weight diagnostics (`diagnostics`), QUAIL's Table I
(`quail_table`) and the predictor of frozen codes (`frozen_codes`)."""
