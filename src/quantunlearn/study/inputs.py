"""The hub inputs of a study: what the ``download`` rule fetches, what it costs, where the pins go.

Every hub id of a config (a benchmark's dataset, its target, retrain, base model, tokenizer and
external checkpoints, the utility datasets) is one `HubInput`, downloaded once by a local rule
before any cluster job (``snakemake download_inputs``), which writes its pin to
``{results}/inputs/{pin}.json`` (`quantunlearn.data.provenance.download_input`). The jobs take
the pins as inputs and load the pinned snapshot folders with ``HF_HUB_OFFLINE=1``. The dry run
prints what would be fetched and the disk it needs (`download_summary`), from known parameter
counts and dataset sizes, so it works offline for the shipped configs.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from quantunlearn.data import BY_NAME
from quantunlearn.data.provenance import (  # the pins' names: re-exported for the workflow
    MODEL_PATTERNS,
    TOKENIZER_PATTERNS,
    is_hub_spec,
    parse_source,
    pin_file,
    pin_name,
)
from quantunlearn.data.utility import hub_patterns, utility_sources
from quantunlearn.study.storage import KNOWN_PARAMS

#: Bytes the download fetches, where the hub states them (lower-case repo ids: the hub's are
#: case-insensitive): a dataset card's ``download_size`` of the configs used, a model repo's
#: file listing. Others are estimated from `KNOWN_PARAMS` or print as unknown.
KNOWN_BYTES = {
    "cais/mmlu": 51_503_402,  # config "all" (dataset card, dataset_info.download_size)
    # muse-bench/MUSE-news_target at main: 6 safetensors shards, 4.84 + 4 x 4.86 + 2.68 GB
    # (fp32 weights: 4 bytes per parameter)
    "muse-bench/muse-news_target": 26_960_000_000,
    # OPTML-Group/SimNPO-MUSE-News-Llama-2-7b at main: 4.94 + 4.95 + 3.59 GB (bf16)
    "optml-group/simnpo-muse-news-llama-2-7b": 13_480_000_000,
}
#: A checkpoint whose listing is not known stores bf16/fp16 (2 bytes per parameter) or fp32
#: (4) weights: its estimate is that range.
HUB_BYTES_PER_PARAM = (2, 4)


@dataclass(frozen=True)
class HubInput:
    """One hub source of a study and what it is used as."""

    spec: str  # as configured: owner/name[@revision]
    repo_type: str  # model | dataset
    uses: tuple[str, ...]  # model, tokenizer, benchmark:<kind>, utility:<name>

    @property
    def pin(self) -> str:
        """The pin's path under ``{results}/inputs/`` without .json (one path part per repo)."""
        return pin_name(self.spec, self.repo_type)

    @property
    def patterns(self) -> list[str]:
        """The files to fetch: a model's weights and configs (no duplicate .bin/.pth weights), a
        tokenizer's files only, a dataset's configs that are read."""
        patterns: list[str] = []
        for use in self.uses:
            if use == "model":
                patterns += MODEL_PATTERNS
            elif use == "tokenizer":
                patterns += TOKENIZER_PATTERNS
            elif use.startswith("benchmark:"):
                patterns += BY_NAME[use.removeprefix("benchmark:")].hub_patterns
            else:
                patterns += hub_patterns(use.removeprefix("utility:"))
        return sorted(set(patterns))

    def estimated_bytes(self) -> tuple[int, int] | None:
        """What the download takes, offline, as (low, high) bytes: a known listing exactly; a
        model of known parameter count at 2 to 4 bytes each; a tokenizer's few MB as 0; None
        when unknown."""
        repo_id = parse_source(self.spec).repo_id
        if repo_id.lower() in KNOWN_BYTES:
            return (KNOWN_BYTES[repo_id.lower()],) * 2
        if self.repo_type == "model" and "model" not in self.uses:
            return (0, 0)
        params = KNOWN_PARAMS.get(repo_id) if self.repo_type == "model" else None
        if params is None:
            return None
        low, high = HUB_BYTES_PER_PARAM
        return params * low, params * high


def hub_inputs(study) -> dict[str, HubInput]:
    """Every hub source of the study, by pin name (the same source used twice is one input)."""
    uses: dict[tuple[str, str], list[str]] = {}

    def add(spec: str | None, repo_type: str, use: str) -> None:
        if spec is not None and is_hub_spec(spec):
            uses.setdefault((spec, repo_type), []).append(use)

    for bench in study.benchmarks:
        add(study.hub_dataset(bench), "dataset", f"benchmark:{study.kind(bench).name}")
        models = study.bench(bench).models
        for which in ("target", "retrain", "base"):
            add(models.get(which), "model", "model")
        add(models["tokenizer"], "model", "tokenizer")
        for spec in study.external_checkpoints(bench).values():
            add(spec, "model", "model")
    evaluation = study.config["evaluation"]
    sources = utility_sources(evaluation)
    for name in evaluation.get("utility") or []:
        add(sources[name], "dataset", f"utility:{name}")
    found = [HubInput(spec, kind, tuple(dict.fromkeys(u))) for (spec, kind), u in uses.items()]
    return {item.pin: item for item in found}


def hub_cache_dir() -> Path:
    """Where huggingface_hub puts downloads (its environment variables, without importing it)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "huggingface"
    )
    return Path(home) / "hub"


def _free_bytes(folder: Path) -> int:
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return shutil.disk_usage(folder).free


def download_summary(study, results: str | Path) -> str:
    """What the download step would fetch and the disk it needs ("" without hub inputs).

    Inputs whose pin exists are fetched already; sizes come from `estimated_bytes`.
    """
    inputs = hub_inputs(study)
    if not inputs:
        return ""
    todo = [i for i in inputs.values() if not Path(results, "inputs", f"{i.pin}.json").is_file()]
    lines = [
        f"hub inputs: {len(inputs)} ({len(inputs) - len(todo)} pinned already); "
        "`snakemake download_inputs` fetches them once where the hub is reachable, the jobs "
        "then run offline (HF_HUB_OFFLINE=1)"
    ]
    low, high, unknown = 0, 0, 0
    for item in todo:
        size = item.estimated_bytes()
        if size is None:
            unknown += 1
        else:
            low, high = low + size[0], high + size[1]
        text = "size unknown offline" if size is None else _size_text(item, size)
        lines.append(f"  fetch {item.repo_type} {item.spec} [{', '.join(item.uses)}]: {text}")
    if todo:
        cache = hub_cache_dir()
        more = f" + {unknown} of unknown size" if unknown else ""
        lines.append(
            f"  download: {_range(low, high)}{more} into {cache} ({_gb(_free_bytes(cache))} free)"
        )
    return "\n".join(lines)


def _gb(size: float) -> str:
    """Decimal GB, as the disk estimate of the checkpoints (storage.disk_summary) prints."""
    return f"{size / 1e9:.1f} GB" if size >= 1e8 else f"{size / 1e6:.1f} MB"


def _range(low: int, high: int) -> str:
    return f"about {_gb(low)}" if low == high else f"{_gb(low)} to {_gb(high)}"


def _size_text(item: HubInput, size: tuple[int, int]) -> str:
    if item.repo_type == "model" and "model" not in item.uses:
        return "tokenizer files only (a few MB)"
    repo_id = parse_source(item.spec).repo_id
    if repo_id.lower() in KNOWN_BYTES:
        return f"about {_gb(size[0])} (as the hub lists it)"
    params = KNOWN_PARAMS[repo_id]
    return f"{_range(*size)} ({params / 1e9:.3g}B parameters at 2 or 4 bytes)"


def validate_download(folder: str, uses: Iterable[str]) -> None:
    """Load what the jobs will load from a downloaded snapshot, so that a wrong tokenizer
    setting or a dataset that cannot load fails on the login node, not in the first GPU job."""
    from quantunlearn.models.loading import check_checkpoint, load_tokenizer

    for use in uses:
        if use == "model":
            check_checkpoint(folder)
        elif use == "tokenizer":
            load_tokenizer(folder)
        elif use.startswith("benchmark:"):
            BY_NAME[use.removeprefix("benchmark:")].check_snapshot(folder)
        else:
            from quantunlearn.data.utility import benchmark_rows

            name = use.removeprefix("utility:")
            benchmark_rows(name, {"utility_data": {name: folder}, "utility_limit": 2})


__all__ = ["HubInput", "download_summary", "hub_inputs", "pin_file", "pin_name"]
