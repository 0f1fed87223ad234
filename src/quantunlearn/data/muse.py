"""The MUSE layout: loading and validating a benchmark folder, and fetching it from the hub.

The MUSE benchmark (Shi et al., "MUSE: Machine Unlearning Six-Way Evaluation for Language
Models") ships, per corpus, a raw text corpus plus JSON evaluation files:

    raw/forget.txt, raw/retain*.txt, raw/holdout.txt   documents separated by blank lines
    verbmem/forget.json                                [{"prompt", "gt"}]
    knowmem/{forget_qa,forget_qa_icl,retain_qa,retain_qa_icl}.json   [{"question", "answer"}]
    privleak/{forget,retain,holdout}.json              ["text", ...]

The embedded benchmark (`quantunlearn.data.synthetic`) is written in the same layout; the real
corpora come from the Hugging Face hub (``fetch_muse``) or a local folder (``prepare_benchmark``).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from tqdm.auto import tqdm

from quantunlearn.data.provenance import HubDownloadError
from quantunlearn.io import atomic_dir

LAYOUT_VERSION = 1


def write_json_file(path: Path, obj: Any) -> None:
    """Pretty JSON with a final newline (the layout's files are human-readable)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(obj, indent=1, ensure_ascii=False) + "\n"
    path.write_text(text, encoding="utf-8", newline="\n")


def write_documents(path: Path, docs: Sequence[str]) -> None:
    """A raw corpus file: documents separated by one blank line."""
    for i, doc in enumerate(docs):
        if "\n\n" in doc or not doc.strip():
            raise ValueError(f"{path.name}: document {i} is empty or contains a blank line")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n\n".join(docs) + "\n", encoding="utf-8", newline="\n")


# Benchmark field -> (relative path, item kind)
BENCHMARK_FILES: dict[str, tuple[str, str]] = {
    "verbmem_forget": ("verbmem/forget.json", "verbmem"),
    "knowmem_forget_qa": ("knowmem/forget_qa.json", "qa"),
    "knowmem_forget_icl": ("knowmem/forget_qa_icl.json", "qa"),
    "knowmem_retain_qa": ("knowmem/retain_qa.json", "qa"),
    "knowmem_retain_icl": ("knowmem/retain_qa_icl.json", "qa"),
    "privleak_forget": ("privleak/forget.json", "text"),
    "privleak_retain": ("privleak/retain.json", "text"),
    "privleak_holdout": ("privleak/holdout.json", "text"),
}
ITEM_KEYS = {"verbmem": ("prompt", "gt"), "qa": ("question", "answer")}
#: Optional files of labelled benchmarks (the Twitter misinformation study,
#: `quantunlearn.data.twitter`): [{"text", "label"}], label 0 or 1; absent: [].
OPTIONAL_FILES: dict[str, tuple[str, str]] = {
    "classification_forget": ("classification/forget.json", "labelled"),
    "classification_retain": ("classification/retain.json", "labelled"),
}


@dataclass
class Benchmark:
    """The evaluation files of one MUSE-layout folder (raw corpora are read with read_documents)."""

    layout: ClassVar[str] = "muse"
    root: Path
    verbmem_forget: list[dict]
    knowmem_forget_qa: list[dict]
    knowmem_forget_icl: list[dict]
    knowmem_retain_qa: list[dict]
    knowmem_retain_icl: list[dict]
    privleak_forget: list[str]
    privleak_retain: list[str]
    privleak_holdout: list[str]
    classification_forget: list[dict] = field(default_factory=list)
    classification_retain: list[dict] = field(default_factory=list)


def _check_items(items: Any, kind: str, path: Path) -> list:
    if not isinstance(items, list):
        raise ValueError(f"{path}: expected a JSON list, got {type(items).__name__}")
    for i, item in enumerate(items):
        if kind == "text":
            if not isinstance(item, str):
                raise ValueError(f"{path}: item {i} must be a string, got {type(item).__name__}")
            continue
        if kind == "labelled":
            ok = isinstance(item, dict) and isinstance(item.get("text"), str)
            if not ok or item.get("label") not in (0, 1) or isinstance(item.get("label"), bool):
                raise ValueError(f"{path}: item {i} needs a string 'text' and a label 0 or 1")
            continue
        keys = ITEM_KEYS[kind]
        if not isinstance(item, dict):
            raise ValueError(f"{path}: item {i} must be an object with keys {keys}")
        for key in keys:
            if not isinstance(item.get(key), str):
                raise ValueError(
                    f"{path}: item {i} needs a string {key!r} (keys {keys}); got {item.get(key)!r}"
                )
    return items


def load_benchmark(root: str | os.PathLike) -> Benchmark:
    """Read and validate the evaluation JSON files of a MUSE-layout folder."""
    root = Path(root)
    fields = {}
    for name, (rel, kind) in {**BENCHMARK_FILES, **OPTIONAL_FILES}.items():
        path = root / rel
        if not path.is_file():
            if name in OPTIONAL_FILES:
                continue
            raise FileNotFoundError(f"{rel} is missing in benchmark folder {root}")
        try:
            items = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON ({err})") from err
        fields[name] = _check_items(items, kind, path)
    return Benchmark(root=root, **fields)


# ----------------------------------------------------------------------------------------------
# The hub path: muse-bench/MUSE-News and muse-bench/MUSE-Books
# ----------------------------------------------------------------------------------------------

MUSE_HUB_IDS = ("muse-bench/MUSE-News", "muse-bench/MUSE-Books")

# (hub config, split) -> path in the local layout. Config and split names are those of the
# datasets' cards on the hub (same for News and Books; Books' raw splits are whole books).
MUSE_HUB_FILES: dict[tuple[str, str], str] = {
    ("raw", "forget"): "raw/forget.txt",
    ("raw", "retain1"): "raw/retain1.txt",
    ("raw", "retain2"): "raw/retain2.txt",
    ("raw", "holdout"): "raw/holdout.txt",
    ("verbmem", "forget"): "verbmem/forget.json",
    ("knowmem", "forget_qa"): "knowmem/forget_qa.json",
    ("knowmem", "forget_qa_icl"): "knowmem/forget_qa_icl.json",
    ("knowmem", "retain_qa"): "knowmem/retain_qa.json",
    ("knowmem", "retain_qa_icl"): "knowmem/retain_qa_icl.json",
    ("privleak", "forget"): "privleak/forget.json",
    ("privleak", "retain"): "privleak/retain.json",
    ("privleak", "holdout"): "privleak/holdout.json",
}
HUB_COLUMNS = {"raw": ("text",), "verbmem": ITEM_KEYS["verbmem"], "knowmem": ITEM_KEYS["qa"]}
HUB_COLUMNS["privleak"] = ("text",)
#: The files of a MUSE dataset repo that the download step fetches: the card (its YAML names
#: each config's data files) and the folders of the configs read (not scal, sust, train).
HUB_PATTERNS = ["README.md", *sorted({f"{config}/*" for config, _ in MUSE_HUB_FILES})]


def _rows_to_local(rows, config: str, where: str) -> Any:
    columns = HUB_COLUMNS[config]
    missing = [c for c in columns if c not in rows.column_names]
    if missing:
        raise ValueError(f"{where}: columns {missing} missing (has {rows.column_names})")
    if config in ("raw", "privleak"):
        texts = list(rows["text"])
        return "\n\n".join(texts) + "\n" if config == "raw" else texts
    return [{c: row[c] for c in columns} for row in rows]


def fetch_muse(hub_id: str, out_dir: str | os.PathLike, folder: str | None = None) -> None:
    """Convert one MUSE corpus into ``out_dir`` in the local layout: from ``folder``, its
    snapshot downloaded by the workflow's download step, or else from the hub.

    ``hub_id`` is ``owner/name`` or ``owner/name@revision``. Everything is written into a
    temporary sibling folder (`quantunlearn.io.atomic_dir`), validated with load_benchmark and
    renamed at the end, so a failure leaves no ``out_dir`` behind, and an existing ``out_dir``
    is replaced only by a complete, valid one. meta.json records the source and its commit.
    """
    import datasets  # late: heavy, and tests replace datasets.load_dataset

    from quantunlearn.data.provenance import snapshot_commit, split_spec

    repo_id, revision = split_spec(hub_id)
    where_from = folder or repo_id
    pinned = {"revision": revision} if revision and folder is None else {}
    with atomic_dir(out_dir) as tmp:
        for (config, split), rel in tqdm(MUSE_HUB_FILES.items(), desc=f"fetch {hub_id}"):
            where = f"{hub_id} config {config!r} split {split!r}"
            try:
                rows = datasets.load_dataset(where_from, config, split=split, **pinned)
            except Exception as err:
                raise HubDownloadError(
                    f"could not load {where}: {err}. Without network access, download it once on "
                    f"a machine that has it (into the Hugging Face cache, then run with "
                    f"HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1), or point the benchmark source at a "
                    f"local folder in the MUSE layout."
                ) from err
            local = _rows_to_local(rows, config, where)
            if isinstance(local, str):
                (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                (tmp / rel).write_text(local, encoding="utf-8", newline="\n")
            else:
                write_json_file(tmp / rel, local)
        meta = {"benchmark": hub_id, "layout_version": LAYOUT_VERSION, "source": "hub"}
        write_json_file(tmp / "meta.json", {**meta, "commit": snapshot_commit(folder)})
        load_benchmark(tmp)


def check_hub_folder(folder: str | os.PathLike) -> None:
    """Convert a downloaded MUSE snapshot into a throwaway folder: every config and split the
    benchmark needs loads, with the columns it needs (the download step's check)."""
    with tempfile.TemporaryDirectory() as tmp:
        fetch_muse(str(folder), Path(tmp) / "check", folder=str(folder))


def prepare_benchmark(source: str, out_dir: str | os.PathLike, snapshot: str | None = None) -> None:
    """Put a MUSE-layout benchmark into ``out_dir`` from a local folder or a hub dataset id
    (``owner/name[@revision]``; ``snapshot``: its folder, fetched by the download step); an
    existing ``out_dir`` stays until the new one is complete."""
    from quantunlearn.data.provenance import is_hub_spec

    local = Path(source)
    if local.is_dir():
        load_benchmark(local)
        with atomic_dir(out_dir) as tmp:
            shutil.copytree(local, tmp, dirs_exist_ok=True)
        return
    if is_hub_spec(source):
        fetch_muse(source, out_dir, folder=snapshot)
        return
    raise FileNotFoundError(
        f"benchmark source {source!r} is neither a folder in the MUSE layout nor a hub dataset id "
        f"like {MUSE_HUB_IDS[0]!r}"
    )
