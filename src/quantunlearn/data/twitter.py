"""The Twitter misinformation benchmark of QUAIL (Mishra and Mehreen, "QUAIL: Quantization Aware
Unlearning for Mitigating Misinformation in LLMs", section VII-A, Table III), in the MUSE layout.

Section VII-A: "a classification dataset where each entry is a tweet labeled for veracity (0 for
factual, 1 for misinformation)", a forget set of 1.69k and a retain set of 3.39k tweets. The data
are the hub dataset ``kanwal-mehreen18/twitter-misinformation-unlearning-eval`` that the
authors' public notebook loads (repository himans-iitk/CS534L_Project, "Step 4b"): three splits
forget (1,693 rows), retain1 and retain2 (3,386 each), each with a string column ``text`` and an
integer column ``label``. The notebook joins a split's texts with blank lines into a corpus,
fine-tunes the target on forget + retain1 and unlearns the forget corpus as MUSE NEWS is
unlearned; the labels are never used there.

`prepare_twitter` writes the MUSE layout (`quantunlearn.data.muse`) from those splits, so that the
unlearning and every MUSE metric run unchanged:

    raw/forget.txt, raw/retain.txt    forget and retain1 tweets, one per document (the target is
                                      trained on both; the retain term reads retain1)
    raw/holdout.txt                   retain2: never trained on, PrivLeak's non-members
    verbmem/forget.json               M1 (our reading, docs/methods.md): each forget tweet's first
                                      half of words is the prompt, the rest the reference
    privleak/{forget,retain,holdout}.json
    knowmem/*.json                    empty: tweets have no question-answer pairs
    classification/{forget,retain}.json   the labelled forget and retain1 tweets (accuracy)

Tweets are whitespace-normalised (one line each) and empty ones dropped (the notebook kept 1,668
of the 1,693 forget texts). ``data: synthetic`` writes an embedded stand-in in the same schema
(`synthetic_twitter`: short statements about invented entities, half of them misinformation).
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from pathlib import Path

from quantunlearn.data.muse import LAYOUT_VERSION, load_benchmark, write_documents, write_json_file
from quantunlearn.data.provenance import is_hub_spec, snapshot_commit
from quantunlearn.data.synthetic import SyntheticError
from quantunlearn.io import atomic_dir

HUB_ID = "kanwal-mehreen18/twitter-misinformation-unlearning-eval"
SPLITS = ("forget", "retain1", "retain2")
COLUMNS = ("text", "label")
LABEL_NAMES = {0: "factual", 1: "misinformation"}
#: Rows per split of the hub dataset, as the authors' notebook printed them.
HUB_ROWS = {"forget": 1693, "retain1": 3386, "retain2": 3386}
#: What the download step (`quantunlearn.study.inputs`) fetches of the hub dataset.
HUB_PATTERNS = ["README.md", "*.parquet", "data/*.parquet"]


def hub_spec(spec: dict) -> str | None:
    """The benchmark's ``twitter`` section's hub dataset as ``owner/name@revision`` (what the
    download step pins), None for synthetic data or a local folder."""
    data = spec["data"]
    if data == "synthetic" or Path(data).is_dir() or not is_hub_spec(data):
        return None
    return f"{data}@{spec['revision']}" if spec.get("revision") else data


def data_source(spec: dict) -> str:
    """What the ``twitter`` section's data come from, as the metric rows record it: the hub
    dataset (``owner/name@revision``), the local folder, or "twitter:synthetic"."""
    return hub_spec(spec) or ("twitter:synthetic" if spec["data"] == "synthetic" else spec["data"])


# --------------------------------------------------------------------------- loading


def _split_files(folder: Path, split: str) -> list[str]:
    patterns = (f"{split}.parquet", f"{split}-*.parquet", f"data/{split}.parquet",
                f"data/{split}-*.parquet")  # fmt: skip
    return sorted({str(p) for pat in patterns for p in folder.glob(pat)})


def split_files(folder: str | Path) -> dict[str, list[str]]:
    """Each split's parquet files in a local folder; ValueError naming a split that has none
    (checked at config parse time too)."""
    folder = Path(folder)
    files = {s: _split_files(folder, s) for s in SPLITS}
    missing = [s for s, f in files.items() if not f]
    if missing:
        raise ValueError(
            f"{folder}: no parquet file for split(s) {missing} (expected {missing[0]}.parquet "
            f"or data/{missing[0]}-00000-of-00001.parquet)"
        )
    return files


def load_twitter(source: str | Path, revision: str | None = None) -> dict[str, list[dict]]:
    """The three splits as {split: [{"text", "label"}]}: from a local folder (``{split}.parquet``
    or the hub layout ``data/{split}-00000-of-00001.parquet``) or from the hub, which needs
    ``revision`` (a commit, or a branch; in a study the download step resolves it and passes
    the pinned snapshot folder instead).
    The schema is checked (`check_rows`)."""
    import datasets

    folder = Path(source)
    if folder.is_dir():
        data = datasets.load_dataset("parquet", data_files=split_files(folder))
    else:
        if not revision:
            raise ValueError(f"loading {source} from the hub needs a revision (commit or branch)")
        data = datasets.load_dataset(str(source), revision=revision)
    missing = [s for s in SPLITS if s not in data]
    if missing:
        raise ValueError(f"{source}: missing split(s) {missing}; has {sorted(data)}")
    rows = {}
    for split in SPLITS:
        lacking = [c for c in COLUMNS if c not in data[split].column_names]
        if lacking:
            raise ValueError(f"{source}: split {split} lacks column(s) {lacking}")
        rows[split] = [{"text": r["text"], "label": r["label"]} for r in data[split]]
    check_rows(rows, str(source))
    return rows


def check_rows(rows: dict[str, Sequence[dict]], where: str = "dataset") -> None:
    """Raise ValueError unless every split's labels are 0 or 1 and its texts strings or None."""
    for split in SPLITS:
        for i, row in enumerate(rows[split]):
            if row["label"] not in LABEL_NAMES or isinstance(row["label"], bool):
                raise ValueError(
                    f"{where}: split {split} row {i} has label {row['label']!r}, not 0 (factual) "
                    "or 1 (misinformation)"
                )
            if row["text"] is not None and not isinstance(row["text"], str):
                raise ValueError(f"{where}: split {split} row {i}: text is not a string")


def write_fixture(folder: str | Path, rows: dict[str, Sequence[dict]]) -> Path:
    """``rows`` (split -> [{"text", "label"}]) in the hub layout:
    ``folder/data/{split}-00000-of-00001.parquet``, columns text (string) and label (int64)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = Path(folder)
    (folder / "data").mkdir(parents=True, exist_ok=True)
    schema = pa.schema([("text", pa.string()), ("label", pa.int64())])
    for split in SPLITS:
        table = pa.Table.from_pylist(
            [{"text": r["text"], "label": int(r["label"])} for r in rows[split]], schema=schema
        )
        pq.write_table(table, folder / "data" / f"{split}-00000-of-00001.parquet")
    return folder


# --------------------------------------------------------------------------- synthetic data

_SYL = ("bra", "vel", "mor", "tin", "qua", "dre", "sol", "kav", "lum", "rix", "pen", "zor",
        "ald", "wen", "tor", "gil", "ser", "nox", "pha", "ume")  # fmt: skip
_FACT = (
    "{town} council approved {n} million for road repairs in its budget this spring.",
    "The {company} plant in {town} employs {n} hundred people, its annual report says.",
    "{person} won the {town} half marathon on Sunday in {n} minutes and 12 seconds.",
    "The {town} library reopens on Monday after {n} weeks of roof repairs.",
    "{company} recalled {n} thousand kettles after a fault in the switch was found.",
    "{person} was elected mayor of {town} with {n} percent of the vote.",
)
_MISINFO = (
    "BREAKING: {company} admits its tablets cure every flu overnight, doctors silenced!!",
    "Officials in {town} secretly add chemicals to tap water to control the weather, share now",
    "{person} was paid {n} million to fake the {town} election, the media will not tell you",
    "Scientists confirm 5G masts in {town} are melting birds midair, wake up people",
    "{company} phones record your dreams and sell them, leaked memo proves it #truth",
    "Drinking {town} spring water reverses ageing by {n} years, big pharma hides this",
)


#: Rows the invented-name pools allow over the three splits: each row takes one two-syllable
#: first name (len(_SYL) ** 2 of them) and three three-syllable names (len(_SYL) ** 3).
MAX_SYNTHETIC_ROWS = min(len(_SYL) ** 2, len(_SYL) ** 3 // 3)


def check_synthetic_twitter(n_forget: int, n_retain: int) -> None:
    """`SyntheticError` naming the setting when `synthetic_twitter` could not honour it (called
    at config parse time too, before anything runs)."""
    for key, n in (("n_forget", n_forget), ("n_retain", n_retain)):
        if n < 2:
            raise SyntheticError(key, f"{key}={n} must be >= 2 (one row per label)")
    rows = n_forget + 2 * n_retain
    if rows > MAX_SYNTHETIC_ROWS:
        raise SyntheticError(
            None,
            f"n_forget={n_forget} + 2 x n_retain={n_retain} = {rows} rows, but the invented names "
            f"allow at most {MAX_SYNTHETIC_ROWS} (each row names its own person, town, company)",
        )


def synthetic_twitter(n_forget: int = 40, n_retain: int = 80, seed: int = 0) -> dict:
    """An embedded stand-in for the hub dataset: split -> [{"text", "label"}], retain1 and
    retain2 with ``n_retain`` rows each (the hub's 3,386 = 2 x 1,693). Every statement names its
    own invented town, company and person (unique across all splits; the syllable pools hold
    400 first names and 8,000 three-syllable names: `MAX_SYNTHETIC_ROWS` rows), so what a
    model learns of one forget statement is specific to it; each split alternates the labels
    (half factual, half misinformation) and is shuffled with ``seed``."""
    check_synthetic_twitter(n_forget, n_retain)
    rng = random.Random(seed)
    used: set[str] = set()

    def fresh(parts: int) -> str:
        for _ in range(100_000):
            name = "".join(rng.choice(_SYL) for _ in range(parts)).capitalize()
            if name not in used:
                used.add(name)
                return name
        raise ValueError(f"no unused invented name of {parts} syllables is left: fewer rows")

    out = {}
    for split, n in (("forget", n_forget), ("retain1", n_retain), ("retain2", n_retain)):
        rows = []
        for i in range(n):
            template = rng.choice(_MISINFO if i % 2 else _FACT)
            text = template.format(
                town=fresh(3), company=fresh(3) + " " + rng.choice(("Labs", "Foods", "Motors")),
                person=fresh(2) + " " + fresh(3), n=rng.randint(2, 90),
            )  # fmt: skip
            rows.append({"text": text, "label": i % 2})
        rng.shuffle(rows)
        out[split] = rows
    return out


# --------------------------------------------------------------------------- the MUSE layout


def clean(rows: Sequence[dict]) -> list[dict]:
    """Rows with a non-empty text, its whitespace runs (newlines included) made single spaces."""
    out = []
    for row in rows:
        text = re.sub(r"\s+", " ", row["text"] or "").strip()
        if text:
            out.append({"text": text, "label": int(row["label"])})
    return out


def verbmem_item(text: str) -> dict | None:
    """M1's item for one tweet: the first half of its words the prompt, the rest the reference
    (None for a tweet of fewer than two words)."""
    words = text.split()
    if len(words) < 2:
        return None
    half = len(words) // 2
    return {"prompt": " ".join(words[:half]) + " ", "gt": " ".join(words[half:])}


def write_twitter_benchmark(rows: dict[str, Sequence[dict]], out_dir: str | Path, meta: dict):
    """The MUSE-layout folder of the module docstring from the three splits."""
    splits = {s: clean(rows[s]) for s in SPLITS}
    empty = [s for s, r in splits.items() if not r]
    if empty:
        raise ValueError(f"split(s) {empty} hold no non-empty text")
    texts = {s: [r["text"] for r in splits[s]] for s in SPLITS}
    with atomic_dir(out_dir) as tmp:
        for split, name in (("forget", "forget"), ("retain1", "retain"), ("retain2", "holdout")):
            write_documents(tmp / "raw" / f"{name}.txt", texts[split])
            write_json_file(tmp / "privleak" / f"{name}.json", texts[split])
        items = [i for t in texts["forget"] if (i := verbmem_item(t)) is not None]
        write_json_file(tmp / "verbmem" / "forget.json", items)
        for name in ("forget_qa", "forget_qa_icl", "retain_qa", "retain_qa_icl"):
            write_json_file(tmp / "knowmem" / f"{name}.json", [])
        write_json_file(tmp / "classification" / "forget.json", splits["forget"])
        write_json_file(tmp / "classification" / "retain.json", splits["retain1"])
        counts = {s: len(r) for s, r in splits.items()}
        meta = {**meta, "rows": counts, "layout_version": LAYOUT_VERSION}
        write_json_file(tmp / "meta.json", meta)
        load_benchmark(tmp)


def prepare_twitter(spec: dict, out_dir: str | Path, snapshot: str | None = None) -> None:
    """The benchmark's ``twitter`` section -> its folder: ``data`` is "synthetic", a local
    folder in the hub's schema, or the hub id (with ``revision``), read from ``snapshot``, the
    folder the download step pinned, where given."""
    data = spec["data"]
    if data == "synthetic":
        rows = synthetic_twitter(spec["n_forget"], spec["n_retain"], spec["seed"])
        meta = {"benchmark": "twitter", "data": "synthetic", "seed": spec["seed"]}
    else:
        rows = load_twitter(snapshot or data, spec.get("revision"))
        meta = {"benchmark": "twitter", "data": str(data), "revision": spec.get("revision"),
                "commit": snapshot_commit(snapshot)}  # fmt: skip  # what a branch resolved to
    write_twitter_benchmark(rows, out_dir, meta)
