"""Benchmarks and their data: the table of benchmark kinds (`benchmarks`: ``BENCHMARKS``), the
MUSE layout (`muse`), the RWKU layout (`rwku`), the Twitter misinformation set (`twitter`), raw
corpora (`documents`), the embedded generators (`synthetic`, `synthetic_rwku`), the calibration
text of GPTQ/AWQ (`calibration`), the utility benchmarks' data (`utility`) and the provenance of
hub inputs (`provenance`). This file only re-exports the table."""

from quantunlearn.data.benchmarks import (
    BENCHMARKS,
    BY_NAME,
    LAYOUTS,
    MUSE_ENTRY_DEFAULTS,
    RWKU_ENTRY_DEFAULTS,
    RWKU_TARGETS,
    SYNTHETIC_DEFAULTS,
    TEXT_KEYS,
    TWITTER_DEFAULTS,
    BenchmarkKind,
    MuseKind,
    RWKUKind,
    TwitterKind,
    benchmark_kind,
    local_targets,
)

__all__ = [
    "BENCHMARKS",
    "BY_NAME",
    "LAYOUTS",
    "MUSE_ENTRY_DEFAULTS",
    "RWKU_ENTRY_DEFAULTS",
    "RWKU_TARGETS",
    "SYNTHETIC_DEFAULTS",
    "TEXT_KEYS",
    "TWITTER_DEFAULTS",
    "BenchmarkKind",
    "MuseKind",
    "RWKUKind",
    "TwitterKind",
    "benchmark_kind",
    "local_targets",
]
