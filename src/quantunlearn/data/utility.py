"""The data of the utility benchmarks (Zhang et al. section 6.2: Gen, Tru, Fac, Flu), one row of
``UTILITY_DATA`` per utility metric: where its rows come from by default, which split, which
columns every row must have.

Two protocols:

* the seeds' (the ``*_rwku`` metrics): Zhang et al. measured Gen, Tru, Fac and Flu "following
  Jin et al." with RWKU's code on RWKU's small utility files of target 1 (their repository
  zzwjames/FailureLLMUnlearning ships them as LLama_factory/data/utility/): 171 MMLU questions
  with their 5 shots (utility_general), 50 TruthfulQA questions (utility_truthfulness), 100
  TriviaQA questions (utility_factuality) and 50 AlpacaEval instructions (utility_fluency); the
  rows are those of target 1 in the hub dataset jinzhuoran/RWKU (at ``rwku.HUB_REVISION``,
  pinned by the download step) or in a local folder in RWKU's layout;
* the full benchmarks (``mmlu``, ``truthfulqa_mc1``, ``triviaqa``, ``fluency``): cais/mmlu,
  truthfulqa/truthful_qa, mandarjoshi/trivia_qa, and the 805 AlpacaEval instructions read as the
  JSON file they are (the hub dataset tatsu-lab/alpaca_eval is a loading script, which current
  `datasets` refuses to run).

A source is a hub dataset id, a JSON file (``hf://``, ``https://`` or a path ending in
``.json``), or a local folder holding one JSON list per split in the same row schema (what
``write_utility_fixture`` writes). ``check_utility_data`` loads and checks every configured
source: the workflow runs it before any model is loaded.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quantunlearn.data import rwku
from quantunlearn.data.provenance import is_hub_spec, split_spec

ALPACA_EVAL_REVISION = "0cd24d711fe90d0c1aae5bde03fe98ee48ae52f8"
ALPACA_EVAL_JSON = f"hf://datasets/tatsu-lab/alpaca_eval@{ALPACA_EVAL_REVISION}/alpaca_eval.json"
#: Hub datasets that are loading scripts (current `datasets` refuses to run them), with the
#: JSON file to name instead: refused at parse time (`source_problem`).
SCRIPT_DATASETS = {"tatsu-lab/alpaca_eval": ALPACA_EVAL_JSON}
#: The RWKU target whose utility files the seeds' code read (--target 1_Stephen_King).
RWKU_UTILITY_TARGET = 1


@dataclass(frozen=True)
class UtilityData:
    """Where one utility metric's rows come from and what every row must hold."""

    source: str  # the default source
    split: str  # the evaluated split
    columns: tuple[str, ...]  # keys every row must have
    config: str | None = None  # the hub config of a hub dataset
    shot_split: str | None = None  # the few-shot split, if any
    rwku_config: str | None = None  # an RWKU config: the rows of RWKU_UTILITY_TARGET

    def describe(self) -> str:
        return f"RWKU config {self.rwku_config}" if self.rwku_config else f"split {self.split}"


UTILITY_DATA: dict[str, UtilityData] = {
    # the seeds' protocol: RWKU's files of target 1
    "mmlu_rwku": UtilityData(
        rwku.HUB_SPEC,
        "test",
        ("question", "task", "choices", "answer", "examples"),
        rwku_config="utility_general",
    ),
    "truthfulqa_rwku": UtilityData(
        rwku.HUB_SPEC,
        "test",
        ("question", "mc1_targets", "mc2_targets"),
        rwku_config="utility_truthfulness",
    ),
    "triviaqa_rwku": UtilityData(
        rwku.HUB_SPEC,
        "test",
        ("question", "answers"),
        rwku_config="utility_factuality",
    ),
    "fluency_rwku": UtilityData(
        rwku.HUB_SPEC,
        "test",
        ("instruction",),
        rwku_config="utility_fluency",
    ),
    # the full benchmarks
    "mmlu": UtilityData(
        "cais/mmlu", "test", ("question", "subject", "choices", "answer"), "all", "dev"
    ),
    "truthfulqa_mc1": UtilityData(
        "truthfulqa/truthful_qa", "validation", ("question", "mc1_targets"), "multiple_choice"
    ),
    "triviaqa": UtilityData(
        "mandarjoshi/trivia_qa", "validation", ("question", "answer"), "rc.nocontext", "train"
    ),
    "fluency": UtilityData(ALPACA_EVAL_JSON, "eval", ("instruction",)),
}
#: The default source of each utility metric.
UTILITY_HUB = {name: data.source for name, data in UTILITY_DATA.items()}


class UtilityDataError(ValueError):
    """A utility source that cannot be loaded or whose rows are not in the expected schema."""


def hub_patterns(name: str) -> list[str]:
    """The files of a utility benchmark's hub repo the download step fetches: the card (its
    YAML names each config's data files) and the files of the config that is read."""
    data = UTILITY_DATA[name]
    if data.rwku_config:  # the target's number comes from forget_target
        return rwku.hub_patterns([data.rwku_config])
    return ["README.md", f"{data.config}/*"]


def utility_sources(evaluation: dict) -> dict[str, str]:
    """Where each utility benchmark's data come from: evaluation.utility_data or the defaults."""
    return {**UTILITY_HUB, **(evaluation.get("utility_data") or {})}


def source_problem(name: str, source: str) -> str | None:
    """What is wrong with a source at parse time (no download), or None."""
    if Path(source).is_dir():
        return None
    if UTILITY_DATA[name].rwku_config:
        return None if is_hub_spec(source) else f"no folder {source!r} (nor a hub id)"
    if source.endswith(".json") and ("://" in source or Path(source).is_file()):
        return None
    if is_hub_spec(source) and split_spec(source)[0] in SCRIPT_DATASETS:
        return (
            f"{source!r} is a loading-script dataset, which current `datasets` refuses to run; "
            f"name its JSON file instead: {SCRIPT_DATASETS[split_spec(source)[0]]}"
        )
    if is_hub_spec(source):
        return None
    return f"no folder {source!r} (nor a hub id or a JSON file)"


# ----------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------


def _local_rows(name: str, folder: Path, split: str) -> list[dict]:
    path = folder / f"{split}.json"
    if not path.is_file():
        raise FileNotFoundError(f"utility benchmark {name}: {path} is missing")
    rows = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(rows, list):
        raise ValueError(f"{path}: expected a JSON list of rows")
    return rows


def _rwku_rows(data: UtilityData, source: str) -> list[dict]:
    """The rows of RWKU_UTILITY_TARGET in ``data.rwku_config``, from a local folder in RWKU's
    layout (a snapshot of the hub repository is one) or the hub id ``owner/name[@revision]``."""
    if Path(source).is_dir():
        target = rwku.target_name(source, RWKU_UTILITY_TARGET)
        return rwku.read_config(source, data.rwku_config, target)
    repo, revision = split_spec(source)
    targets = rwku.load_hub_config("forget_target", revision, repo)
    target = targets[RWKU_UTILITY_TARGET - 1]["target"]
    rows = rwku.load_hub_config(data.rwku_config, revision, repo)
    return [row for row in rows if row["subject"] == target]


def load_rows(name: str, source: str, split: str) -> list[dict]:
    """Rows of one split of one utility benchmark's source: a local folder of JSON files
    (``{source}/{split}.json``); a folder holding a hub dataset repo (its README.md: a snapshot
    fetched by the download step); a hub id ``owner/name[@revision]``; a JSON file."""
    data = UTILITY_DATA[name]
    if data.rwku_config:
        return _rwku_rows(data, source)
    local = Path(source)
    is_repo = local.is_dir() and (local / "README.md").is_file()
    if local.is_dir() and not is_repo:
        return _local_rows(name, local, split)
    import datasets  # late: heavy

    if source.endswith(".json"):  # one JSON file (AlpacaEval): the packaged json builder
        return list(datasets.load_dataset("json", data_files=source, split="train"))
    repo, revision = (source, None) if is_repo else split_spec(source)
    return list(datasets.load_dataset(repo, data.config, split=split, revision=revision))


def benchmark_rows(name: str, evaluation: dict) -> tuple[list[dict], list[dict]]:
    """The evaluated rows (at most ``evaluation.utility_limit``) and the few-shot rows of one
    utility benchmark, from ``evaluation.utility_data`` or the default source."""
    data = UTILITY_DATA[name]
    source = utility_sources(evaluation)[name]
    rows = load_rows(name, source, data.split)[: evaluation.get("utility_limit")]
    if not rows:
        raise ValueError(f"utility benchmark {name}: no rows in {source} ({data.describe()})")
    shots = load_rows(name, source, data.shot_split) if data.shot_split else []
    return rows, shots


def check_rows(name: str, rows: list, where: str) -> None:
    """Every row holds the metric's columns (RWKU rows: RWKU's exact schema)."""
    data = UTILITY_DATA[name]
    if data.rwku_config:
        rwku.validate_rows(rows, data.rwku_config, where)
    if not rows:
        raise UtilityDataError(f"utility benchmark {name}: no rows in {where}")
    for i, row in enumerate(rows):
        missing = [c for c in data.columns if not isinstance(row, dict) or c not in row]
        if missing:
            raise UtilityDataError(f"utility benchmark {name}: {where} row {i} lacks {missing}")


def check_utility_data(evaluation: dict) -> dict[str, Any]:
    """Load every utility benchmark that ``evaluation.utility`` names and check its rows; raise
    UtilityDataError naming the metric and its source at the first that fails. Returns the
    manifest {metric: {source, rows, shots}} (the workflow's first job writes it)."""
    sources = utility_sources(evaluation)
    manifest = {}
    for name in evaluation.get("utility") or []:
        data, source = UTILITY_DATA[name], sources[name]
        where = f"{source} ({data.describe()})"
        try:
            rows = load_rows(name, source, data.split)
            shots = load_rows(name, source, data.shot_split) if data.shot_split else []
        except Exception as err:
            raise UtilityDataError(
                f"config key evaluation.utility_data.{name}: cannot load {where}: {err}"
            ) from err
        check_rows(name, rows, where)
        if data.shot_split:
            check_rows(name, shots, f"{source} (split {data.shot_split})")
        manifest[name] = {"source": source, "rows": len(rows), "shots": len(shots)}
    return manifest


# ----------------------------------------------------------------------------------------------
# Tiny local files in the sources' schemas (for tests and offline dry runs)
# ----------------------------------------------------------------------------------------------


def _full_fixture_rows(n: int) -> dict[str, dict[str, list[dict]]]:
    """``n`` rows per split of each full benchmark, in its hub dataset's row schema."""
    subjects = ["astronomy", "world_history"]
    mmlu = [
        {
            "question": f"Which number is {k + 2}?",
            "subject": subjects[k % 2],
            "choices": [str(k + 1), str(k + 2), str(k + 3), str(k + 4)],
            "answer": 1,
        }
        for k in range(n)
    ]
    tq = [
        {
            "question": f"What happens if you drop glass number {k}?",
            "mc1_targets": {"choices": ["It may break.", "It sings."], "labels": [1, 0]},
            "mc2_targets": {"choices": ["It may break.", "It sings."], "labels": [1, 0]},
        }
        for k in range(n)
    ]
    return {
        "mmlu": {"test": mmlu, "dev": mmlu[::-1]},
        "truthfulqa_mc1": {"validation": tq},
        "triviaqa": {s: [_trivia_row(s, k) for k in range(n)] for s in ("validation", "train")},
        "fluency": {
            "eval": [
                {"instruction": f"Describe a walk through town number {k}.", "output": "",
                 "generator": "fixture", "dataset": "fixture"}
                for k in range(n)
            ]
        },
    }  # fmt: skip


def _trivia_row(split: str, k: int) -> dict:
    return {
        "question": f"Which town is number {k} in the list?",
        "question_id": f"tq_{split}_{k}",
        "question_source": "fixture",
        "entity_pages": {},
        "search_results": {},
        "answer": {
            "aliases": [f"Town {k}", f"T{k}"],
            "normalized_aliases": [f"town {k}", f"t{k}"],
            "matched_wiki_entity_name": "",
            "normalized_matched_wiki_entity_name": "",
            "normalized_value": f"town {k}",
            "type": "WikipediaEntity",
            "value": f"Town {k}",
        },
    }


def _rwku_fixture_rows(n: int, target: str = "Alice Moreau") -> dict[str, list[dict]]:
    """``n`` rows of RWKU's four utility configs for one target, in RWKU's exact schema."""
    shot = {"question": "Which number is 2?", "choices": ["1", "2", "3", "4"], "answer": 1,
            "subject": "astronomy"}  # fmt: skip
    mc = {"choices": ["It may break.", "It sings."], "labels": [1, 0]}
    return {
        "forget_target": [{"target": target, "intro": f"Please forget {target}."}],
        "utility_general": [
            {"subject": target, "task": "astronomy", "question": f"Which number is {k + 2}?",
             "choices": [str(k + 1), str(k + 2), str(k + 3), str(k + 4)], "answer": 1,
             "examples": [shot] * 5}
            for k in range(n)
        ],
        "utility_truthfulness": [
            {"subject": target, "question": f"What happens if you drop glass number {k}?",
             "mc1_targets": mc, "mc2_targets": {"choices": [*mc["choices"], "It flies."],
                                                "labels": [1, 0, 0]}}
            for k in range(n)
        ],
        "utility_factuality": [
            {"subject": target, "question": f"Which town is number {k}?",
             "answers": [f"Town {k}", f"T{k}"]}
            for k in range(n)
        ],
        "utility_fluency": [
            {"subject": target, "instruction": f"Describe a walk through town number {k}."}
            for k in range(n)
        ],
    }  # fmt: skip


def write_utility_fixture(out_dir: str | os.PathLike, n: int = 4) -> dict[str, str]:
    """Write ``n`` rows per split of each utility benchmark in its source's schema: a folder per
    full benchmark and one RWKU-layout folder for the seeds' protocol. Returns
    evaluation.utility_data pointing at them."""
    out = Path(out_dir)
    sources = {}
    for name, splits in _full_fixture_rows(n).items():
        for split, rows in splits.items():
            path = out / name / f"{split}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")
        sources[name] = str(out / name)
    rwku.write_layout(out / "rwku", _rwku_fixture_rows(n))
    for name, data in UTILITY_DATA.items():
        if data.rwku_config:
            sources[name] = str(out / "rwku")
    return sources
