"""Benchmarks: the MUSE layout (`muse`), raw corpora (`documents`), the embedded synthetic
benchmark (`synthetic`) and the calibration text of GPTQ/AWQ (`calibration`)."""
