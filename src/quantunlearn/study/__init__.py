"""The study: one config, validated once into typed objects that the workflow asks.

``config`` loads the YAML, fills the defaults and words every error under its config key
(``config_tree``: merging and the benchmarks' model questions; ``method_grid``: the methods'
grids, checked and warned about by their hyperparameter groups; ``config_checks``: the checks
across sections, a benchmark's own asked of its BENCHMARKS row);
``runs`` holds the typed model of the grid (a `Benchmark` per entry of ``benchmarks``, with its
row of the BENCHMARKS table resolved once; a `Run` per folder: references, external
checkpoints, and every unlearning run with its hyperparameters, whose typed groups are
``run.typed``); ``grid`` holds the `Study` (the benchmarks, the runs and their `Cell`s, and every
path: `Study.run` gives a job its `Run` back from its wildcards, `Study.cell_config` the config
that determines a cell); ``jobs`` builds what an evaluation or diagnostic job gets
(`quantunlearn.evaluation.cell.CellJob`). Around them: the generated schema (``schema``) and
key reference (``config_docs``), audit mode's checkpoints (``external``), the hub inputs
(``inputs``), disk use (``storage``), the cost model and plan (``costs``, ``plan``), a failed
job's restored outputs (``recovery``) and ``python -m quantunlearn.study.check``.
"""

from quantunlearn.study.config import ConfigError
from quantunlearn.study.grid import Study, load_study, load_study_file

__all__ = ["ConfigError", "Study", "load_study", "load_study_file"]
