"""The data of the utility benchmarks (Zhang et al. section 6.2): hub datasets, or local folders
holding one JSON list per split in the same row schema (what ``write_utility_fixture`` writes for
the tests and offline dry runs)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

UTILITY_HUB = {
    "mmlu": "cais/mmlu",
    "truthfulqa_mc1": "truthfulqa/truthful_qa",
    "triviaqa": "mandarjoshi/trivia_qa",
    "fluency": "tatsu-lab/alpaca_eval",
}
# name -> (hub config, evaluated split, few-shot split or None)
HUB_SPLITS = {
    "mmlu": ("all", "test", "dev"),
    "truthfulqa_mc1": ("multiple_choice", "validation", None),
    "triviaqa": ("rc.nocontext", "validation", "train"),
    "fluency": ("alpaca_eval", "eval", None),
}


def hub_patterns(name: str) -> list[str]:
    """The files of a utility benchmark's hub repo the download step fetches: the card (its
    YAML names each config's data files) and the folder of the config that is read."""
    return ["README.md", f"{HUB_SPLITS[name][0]}/*"]


def utility_sources(evaluation: dict) -> dict[str, str]:
    """Where each utility benchmark's data come from: evaluation.utility_data or the hub."""
    return {**UTILITY_HUB, **(evaluation.get("utility_data") or {})}


# ----------------------------------------------------------------------------------------------
# Data: hub datasets or local folders in the same row schema
# ----------------------------------------------------------------------------------------------


def load_rows(name: str, source: str, split: str) -> list[dict]:
    """Rows of one split: ``{source}/{split}.json`` for a local folder of JSON files; a folder
    holding a hub dataset repo (its README.md: a snapshot fetched by the download step) or a
    hub id ``owner/name[@revision]``: the hub dataset's config."""
    local = Path(source)
    is_repo = local.is_dir() and (local / "README.md").is_file()
    if local.is_dir() and not is_repo:
        path = local / f"{split}.json"
        if not path.is_file():
            raise FileNotFoundError(f"utility benchmark {name}: {path} is missing")
        rows = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(rows, list):
            raise ValueError(f"{path}: expected a JSON list of rows")
        return rows
    import datasets  # late: heavy

    from quantunlearn.data.provenance import split_spec

    repo, revision = (source, None) if is_repo else split_spec(source)
    config = HUB_SPLITS[name][0]
    return list(datasets.load_dataset(repo, config, split=split, revision=revision))


def benchmark_rows(name: str, evaluation: dict) -> tuple[list[dict], list[dict]]:
    """The evaluated rows (at most ``evaluation.utility_limit``) and the few-shot rows of one
    utility benchmark, from ``evaluation.utility_data`` or the hub."""
    source = utility_sources(evaluation)[name]
    _, split, shot_split = HUB_SPLITS[name]
    rows = load_rows(name, source, split)[: evaluation.get("utility_limit")]
    if not rows:
        raise ValueError(f"utility benchmark {name}: no rows in {source} ({split})")
    shots = load_rows(name, source, shot_split) if shot_split else []
    return rows, shots


# ----------------------------------------------------------------------------------------------
# Tiny local files in the hub schemas (for tests and offline dry runs)
# ----------------------------------------------------------------------------------------------


def write_utility_fixture(out_dir: str | os.PathLike, n: int = 4) -> dict[str, str]:
    """Write ``n`` rows per split of each utility benchmark, in the hub datasets' row schema.

    Returns evaluation.utility_data pointing at the four folders.
    """
    # long: one literal row per benchmark, in the shape of its hub dataset
    out = Path(out_dir)
    subjects = ["astronomy", "world_history"]
    mmlu_rows = [
        {
            "question": f"Which number is {k + 2}?",
            "subject": subjects[k % 2],
            "choices": [str(k + 1), str(k + 2), str(k + 3), str(k + 4)],
            "answer": 1,
        }
        for k in range(n)
    ]
    files: dict[str, dict[str, Any]] = {
        "mmlu": {"test": mmlu_rows, "dev": mmlu_rows[::-1]},
        "truthfulqa_mc1": {
            "validation": [
                {
                    "question": f"What happens if you drop glass number {k}?",
                    "mc1_targets": {"choices": ["It may break.", "It sings."], "labels": [1, 0]},
                    "mc2_targets": {"choices": ["It may break.", "It sings."], "labels": [1, 0]},
                }
                for k in range(n)
            ]
        },
        "triviaqa": {
            split: [
                {
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
                for k in range(n)
            ]
            for split in ("validation", "train")
        },
        "fluency": {
            "eval": [
                {
                    "instruction": f"Describe a walk through town number {k}.",
                    "output": "",
                    "generator": "fixture",
                    "dataset": "fixture",
                }
                for k in range(n)
            ]
        },
    }
    sources = {}
    for name, splits in files.items():
        for split, rows in splits.items():
            path = out / name / f"{split}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")
        sources[name] = str(out / name)
    return sources
