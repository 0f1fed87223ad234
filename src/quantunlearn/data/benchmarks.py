"""The BENCHMARKS table: one row per kind of benchmark source.

A config's ``benchmarks.<name>.source`` (and its optional ``kind``) selects one row
(`benchmark_kind`); the row says how the ``prepare_benchmark`` job makes the benchmark's
folder, what is checked at parse time (`BenchmarkKind.check`: the row's source, then the keys
its layout takes and the data its unlearning runs need), which layout the folder has (so which
metrics a cell measures and what unlearning trains on), and the defaults of the benchmark's
config entry. Nothing here imports torch.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar

from quantunlearn.data import muse, rwku, twitter
from quantunlearn.data.provenance import is_hub_spec, split_spec
from quantunlearn.data.synthetic import SyntheticError, check_synthetic, generate_synthetic
from quantunlearn.data.synthetic_rwku import (
    SYNTHETIC_RWKU_DEFAULTS,
    check_synthetic_rwku,
    generate_synthetic_rwku,
)

#: The defaults of a MUSE-layout benchmark's config entry (the first release's).
MUSE_ENTRY_DEFAULTS: dict[str, Any] = {
    "forget_corpus": "raw/forget.txt",
    "retain_corpus": "raw/retain.txt",
    "models": {"target": None, "retrain": None, "tokenizer": None},
}
#: The defaults of an RWKU-layout benchmark's entry: RWKU's GA/NPO corpus (the model's own
#: descriptions of the target, C^s_f) and RT's (question, refusal) rows; no retain corpus and no
#: retrain model (zero-shot unlearning, Jin et al. section 3.1).
RWKU_ENTRY_DEFAULTS: dict[str, Any] = {
    "forget_corpus": "train_positive_llama3",
    "refusal_corpus": "train_refusal_llama3",
    "retain_corpus": None,
    "models": {"target": None, "retrain": None, "tokenizer": None},
}
SYNTHETIC_DEFAULTS: dict[str, Any] = {
    "n_people": 120,
    "forget_frac": 0.1,
    "holdout_frac": 0.1,
    "n_bio_variants": 2,
    "n_retain_qa_people": 12,
    "n_icl": 10,
    "seed": 0,
}
#: The Twitter misinformation benchmark's section (source "twitter", `quantunlearn.data.twitter`):
#: its data (synthetic, a local folder in the hub's schema, or the hub id with a pinned revision)
#: and the size of the embedded stand-in.
TWITTER_DEFAULTS: dict[str, Any] = {
    "data": "synthetic",
    "revision": None,
    "n_forget": 40,
    "n_retain": 80,
    "seed": 0,
}
#: Keys of generator sections that are text even when they look like numbers (a commit sha).
TEXT_KEYS = ("data", "revision")
#: Targets of RWKU's main (single-target) results: 1 to 100 (Jin et al. section 4.2).
RWKU_TARGETS = 100


@dataclass(frozen=True)
class BenchmarkKind:
    """One kind of benchmark: how its folder is made and checked; its layout (the class)."""

    name: str
    #: what the source is, for messages and the docs
    describe: str
    #: ``prepare(entry, out_dir, snapshot)``: the prepare_benchmark job (generate, copy, or
    #: convert the hub dataset's snapshot folder that the download step pinned)
    prepare: Callable[[dict, Path, str | None], None]
    #: ``check_source(entry)``: parse-time problems of the row's source as (sub-key, message);
    #: no download (`check` adds the layout's)
    check_source: Callable[[dict], list[tuple[str, str]]]
    #: a benchmark named by a keyword (the embedded generators, the Twitter set): the
    #: ``source`` keyword, also the name of its config section
    generator: str | None = None
    generator_defaults: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    #: hub dataset ids of this kind
    hub_ids: tuple[str, ...] = ()
    #: ``recognise(source)``: whether a local source is this row's, for a row that the layout's
    #: marker file does not tell apart (e.g. a file of the row's own format); see `recognises`
    recognise: Callable[[str], bool] | None = None

    layout: ClassVar[str]
    #: a file that marks a local folder of this layout
    marker: ClassVar[str | None] = None
    #: the reference models the DAG evaluates (and trains for an embedded benchmark)
    references: ClassVar[tuple[str, ...]]
    #: the forget data its unlearning runs can train on (`Term.forget_data`)
    forget_data: ClassVar[frozenset[str]]
    #: whether it has a retain corpus (for retain terms: GDR, KLR, RMU)
    has_retain: ClassVar[bool]
    entry_defaults: ClassVar[Mapping[str, Any]]
    #: the files of a hub dataset of this layout that the download step fetches
    hub_patterns: ClassVar[tuple[str, ...]]
    #: labelled items scored by classification accuracy (acc_f, acc_r; the Twitter table)
    classification: ClassVar[bool] = False

    def recognises(self, source: str) -> bool:
        """Whether a local ``source`` is this row's: the row's ``recognise``, else a folder
        holding the layout's marker file (rows of a generator are named by their keyword)."""
        if self.recognise is not None:
            return self.recognise(source)
        marked = self.generator is None and self.marker is not None
        return marked and Path(source).is_dir() and (Path(source) / self.marker).is_file()

    def hub_dataset(self, entry: dict) -> str | None:
        """The hub dataset the benchmark's data are read from (``owner/name[@revision]``, what
        the download step pins); None for generated data and local folders."""
        return entry["source"] if is_hub_spec(entry["source"]) else None

    def data_source(self, entry: dict) -> str:
        """What the benchmark's data come from, as its metric rows record it."""
        return entry["source"]

    def subjects(self, entry: dict) -> list[int] | None:
        """The unlearning targets (one run each), or None: one run for the whole forget set."""
        return None

    def targets(self, entry: dict) -> list[int] | None:
        """The normalized ``targets`` key of a (defaults-merged) entry; None: the kind has none."""
        return None

    def check(self, entry: dict) -> list[tuple[str, str]]:
        """Every parse-time problem of a (defaults-merged) entry as (sub-key, message): the
        row's source's, then the keys its layout does not take or whose values it cannot use."""
        return self.check_source(entry) + self.entry_problems(entry)

    def entry_problems(self, entry: dict) -> list[tuple[str, str]]:
        """The layout's problems with the entry's keys (the layout classes say which)."""
        return []

    def training_problems(
        self, method: str, forget_data: str, retain: bool, bench: str
    ) -> list[str]:
        """Why unlearning ``method`` (training on ``forget_data``, with a retain term or not)
        cannot run on this kind's benchmark ``bench``: data the kind does not have."""
        problems = []
        if forget_data not in self.forget_data:
            problems.append(
                f"{method} trains on {forget_data}, which benchmark {bench} ({self.name}) does "
                f"not have (it has {sorted(self.forget_data)})"
            )
        if retain and not self.has_retain:
            problems.append(
                f"{method} has a retain term, but benchmark {bench} ({self.name}) has no retain "
                "corpus"
            )
        return problems

    def _what(self) -> str:
        """This kind in the words of a message about a key it does not take."""
        return f"this is a {self.name} benchmark ({self.describe})"


class MuseKind(BenchmarkKind):
    """The MUSE layout (`quantunlearn.data.muse`): a forget corpus, a retrain model, VerbMem,
    KnowMem and PrivLeak."""

    layout = "muse"
    references = ("target", "retrain")
    forget_data = frozenset({"documents"})
    has_retain = True
    entry_defaults = MUSE_ENTRY_DEFAULTS
    hub_patterns = tuple(muse.HUB_PATTERNS)

    def check_snapshot(self, folder: str) -> None:
        """The download step's check of a hub snapshot: every config and split loads."""
        muse.check_hub_folder(folder)

    def entry_problems(self, entry: dict) -> list[tuple[str, str]]:
        """RWKU's keys are not taken; target and retrain are given together or not at all."""
        problems = [
            (extra, f"only an RWKU-layout benchmark takes it; {self._what()}")
            for extra in ("targets", "refusal_corpus", "synthetic_rwku")
            if extra in entry
        ]
        given = [entry["models"]["target"] is not None, entry["models"]["retrain"] is not None]
        if any(given) and not all(given):
            problems.append(("models", "give both target and retrain, or neither"))
        return problems

    def load(self, bench_dir, subjects=None):
        return muse.load_benchmark(bench_dir)

    def corpora(self, bench_dir, entry: dict, subject=None):
        """The forget and retain text files, packed as the MUSE code packs them."""
        from quantunlearn.data.documents import TextCorpus

        root = Path(bench_dir)
        return TextCorpus(root / entry["forget_corpus"]), TextCorpus(root / entry["retain_corpus"])


class TwitterKind(MuseKind):
    """QUAIL's Twitter misinformation set (`quantunlearn.data.twitter`) converted to the MUSE
    layout, with its labelled tweets for the classification accuracy; its data are named by its
    ``twitter`` section (synthetic, a local folder in the hub's schema, the hub id at a
    revision)."""

    hub_patterns = tuple(twitter.HUB_PATTERNS)
    classification = True

    def hub_dataset(self, entry: dict) -> str | None:
        return twitter.hub_spec(entry["twitter"])

    def data_source(self, entry: dict) -> str:
        return twitter.data_source(entry["twitter"])

    def check_snapshot(self, folder: str) -> None:
        twitter.load_twitter(folder)


class RWKUKind(BenchmarkKind):
    """The RWKU layout (`quantunlearn.data.rwku`): targets the original model knows, one
    unlearning run per target, FB / QA / AA probes; no retain corpus, no retrain model."""

    layout = "rwku"
    marker = "All/intro.json"
    references = ("target",)
    forget_data = frozenset({"documents", "refusals"})
    has_retain = False
    entry_defaults = RWKU_ENTRY_DEFAULTS
    hub_patterns = tuple(rwku.hub_patterns())

    def check_snapshot(self, folder: str) -> None:
        """The download step's check of a hub snapshot: every config loads in RWKU's schema."""
        rwku.check_snapshot(folder)

    def subjects(self, entry: dict) -> list[int]:
        return list(entry["targets"])

    def entry_problems(self, entry: dict) -> list[tuple[str, str]]:
        """No retrain model, no retain corpus, RWKU's corpus configs, distinct targets that the
        generator (embedded benchmark) makes."""
        problems = []
        if "synthetic" in entry:
            problems.append(
                ("synthetic", f"only the embedded MUSE benchmark takes it; {self._what()}")
            )
        if entry["models"]["retrain"] is not None:
            problems.append(("models.retrain", "RWKU has no retrain model (zero-shot unlearning)"))
        if entry.get("retain_corpus") is not None:
            problems.append(("retain_corpus", "RWKU has no retain corpus: leave it null"))
        for sub, allowed in (
            ("forget_corpus", rwku.DOCUMENT_CONFIGS),
            ("refusal_corpus", rwku.REFUSAL_CONFIGS),
        ):
            if entry[sub] not in allowed:
                problems.append(
                    (sub, f"{entry[sub]!r} is not one of the RWKU configs {list(allowed)}")
                )
        targets = entry["targets"]
        if len(set(targets)) != len(targets):
            problems.append(("targets", f"repeats a target: {targets}"))
        if self.generator:
            n = entry[self.generator]["n_targets"]
            bad = [t for t in targets if t > n]
            if bad:
                problems.append(
                    ("targets", f"{bad} do not exist: {self.generator}.n_targets is {n}")
                )
        return problems

    def targets(self, entry: dict) -> list[int] | Any:
        """``targets: N`` means 1..N; not given: every generated target, every target of a local
        folder, or RWKU's 100 of the main results (Jin et al. section 4.2) for the hub."""
        given = entry.get("targets")
        if isinstance(given, int) and not isinstance(given, bool) and given >= 1:
            return list(range(1, given + 1))
        if given is not None:
            return given  # a list (or a wrong value such as 0, which the schema names)
        if self.generator:
            count = entry[self.generator].get("n_targets")
        else:
            count = local_targets(entry["source"]) if Path(entry["source"]).is_dir() else None
        return list(range(1, (count if isinstance(count, int) else RWKU_TARGETS) + 1))

    def load(self, bench_dir, subjects):
        return rwku.load_rwku(bench_dir, subjects)

    def corpora(self, bench_dir, entry: dict, subject: int):
        corpus = rwku.RWKUCorpus(
            Path(bench_dir), subject, entry["forget_corpus"], entry["refusal_corpus"]
        )
        return corpus, None


# ----------------------------------------------------------------------------------------------
# How each row prepares and checks its folder
# ----------------------------------------------------------------------------------------------


def _generator_problems(check: Callable[[dict], Any], section: str) -> Callable:
    """The parse-time check of an embedded benchmark: its generator's ``check`` on the settings
    of its config section, a `SyntheticError` reported under the setting's key."""

    def problems(entry: dict) -> list[tuple[str, str]]:
        settings = {k: v for k, v in entry[section].items() if k != "seed"}
        try:
            check(settings)
        except SyntheticError as err:
            return [(section + (f".{err.key}" if err.key else ""), str(err))]
        return []

    return problems


def _muse_problems(entry: dict) -> list[tuple[str, str]]:
    """A local folder must be a benchmark in the MUSE layout (what prepare_benchmark would
    reject, checked before it runs); anything else a hub id."""
    source = entry["source"]
    if Path(source).is_dir():
        try:
            muse.load_benchmark(source)
        except (OSError, ValueError) as err:
            return [("source", f"not a benchmark in the MUSE layout: {err}")]
        return []
    return _source_problems(entry)


def _source_problems(entry: dict) -> list[tuple[str, str]]:
    source = entry["source"]
    if not Path(source).is_dir() and not is_hub_spec(source):
        return [("source", f"no folder {source!r} (nor a hub id owner/name[@revision])")]
    return []


def _rwku_problems(entry: dict) -> list[tuple[str, str]]:
    """A local RWKU folder must hold the evaluation files and every configured target."""
    problems = _source_problems(entry)
    source = Path(entry["source"])
    if not problems and not source.is_dir():  # the hub dataset: RWKU's 100 targets
        beyond = [t for t in entry["targets"] if isinstance(t, int) and t > RWKU_TARGETS]
        if beyond:
            return [("targets", f"targets {beyond} do not exist: the hub dataset {source} has "
                     f"1..{RWKU_TARGETS}")]  # fmt: skip
    if problems or not source.is_dir():
        return problems
    try:
        names = rwku.list_targets(source)
    except (OSError, ValueError) as err:
        return [("source", f"not a readable RWKU folder: {err}")]
    missing = [t for t in entry["targets"] if t > len(names)]
    if missing:
        return [("targets", f"targets {missing} do not exist: {source} has 1..{len(names)}")]
    return []


def _twitter_problems(entry: dict) -> list[tuple[str, str]]:
    """The Twitter data: synthetic (sizes the generator can honour), a local folder in the hub's
    schema, or a hub id pinned to a revision."""
    spec, data = entry["twitter"], entry["twitter"]["data"]
    if data == "synthetic":
        try:
            twitter.check_synthetic_twitter(spec["n_forget"], spec["n_retain"])
        except SyntheticError as err:
            return [("twitter" + (f".{err.key}" if err.key else ""), str(err))]
        return []
    if Path(data).is_dir():
        try:
            twitter.split_files(data)
        except ValueError as err:
            return [("twitter.data", f"not the hub dataset's layout: {err}")]
        return []
    if not is_hub_spec(data):
        return [("twitter.data", f"no folder {data!r} (nor a hub id, nor synthetic)")]
    if not spec["revision"]:
        return [
            ("twitter.revision", f"the hub dataset {data} needs a revision: a 40-hex commit, "
             "or a branch such as main that the download step resolves once and pins (every "
             "metrics row records the commit), so that the study's data cannot change under it")
        ]  # fmt: skip
    return []


def _prepare_synthetic(entry: dict, out_dir: Path, snapshot: None = None) -> None:
    generate_synthetic(out_dir, **entry["synthetic"])


def _prepare_synthetic_rwku(entry: dict, out_dir: Path, snapshot: None = None) -> None:
    generate_synthetic_rwku(out_dir, **entry["synthetic_rwku"])


BENCHMARKS: tuple[BenchmarkKind, ...] = (
    # a MUSE-layout folder, or a hub dataset fetched into that layout (Shi et al., "MUSE")
    MuseKind(
        "muse",
        "a folder in the MUSE layout or a hub dataset such as muse-bench/MUSE-News",
        lambda entry, out, snapshot: muse.prepare_benchmark(entry["source"], out, snapshot),
        _muse_problems,
        hub_ids=muse.MUSE_HUB_IDS,
    ),
    # the embedded MUSE-layout benchmark of invented people (quantunlearn.data.synthetic)
    MuseKind(
        "synthetic",
        '"synthetic": the embedded benchmark, generated in the DAG',
        _prepare_synthetic,
        _generator_problems(lambda settings: check_synthetic(**settings), "synthetic"),
        generator="synthetic",
        generator_defaults=MappingProxyType(SYNTHETIC_DEFAULTS),
    ),
    # QUAIL's Twitter misinformation set (Mishra and Mehreen, section VII-A) in the MUSE layout
    TwitterKind(
        "twitter",
        '"twitter": the Twitter misinformation set (its section twitter: synthetic, a folder or '
        "the hub id at a revision)",
        lambda entry, out, snapshot: twitter.prepare_twitter(entry["twitter"], out, snapshot),
        _twitter_problems,
        generator="twitter",
        generator_defaults=MappingProxyType(TWITTER_DEFAULTS),
    ),
    # RWKU (Jin et al., NeurIPS 2024): the hub dataset at its pinned revision, or a local folder
    # in the hub repository's layout
    RWKUKind(
        "rwku",
        f"a folder in RWKU's layout or the hub dataset {rwku.HUB_ID}",
        lambda entry, out, snapshot: rwku.prepare_rwku(entry["source"], out, snapshot),
        _rwku_problems,
        hub_ids=(rwku.HUB_ID,),
    ),
    # the embedded RWKU-like benchmark on the synthetic people (quantunlearn.data.synthetic_rwku)
    RWKUKind(
        "synthetic_rwku",
        '"synthetic_rwku": the embedded RWKU-like benchmark, generated in the DAG',
        _prepare_synthetic_rwku,
        _generator_problems(check_synthetic_rwku, "synthetic_rwku"),
        generator="synthetic_rwku",
        generator_defaults=MappingProxyType(SYNTHETIC_RWKU_DEFAULTS),
    ),
)
BY_NAME: dict[str, BenchmarkKind] = {kind.name: kind for kind in BENCHMARKS}
#: The row a ``kind: muse`` / ``kind: rwku`` entry means: the first of its layout with no generator.
LAYOUTS: dict[str, BenchmarkKind] = {
    k.layout: k for k in reversed(BENCHMARKS) if k.generator is None
}


def benchmark_kind(entry: Mapping[str, Any]) -> BenchmarkKind:
    """The row of ``entry`` (a benchmark's config entry): ``kind`` when given ("muse" or
    "rwku": the layout of a folder or hub id); else the embedded benchmark whose keyword the
    source is; a hub id of a row; a local source a row recognises (a folder holding its marker
    file); otherwise MUSE (a folder or hub id in the MUSE layout, what a source meant before
    RWKU existed)."""
    source = str(entry.get("source"))
    if entry.get("kind") in LAYOUTS:
        return LAYOUTS[entry["kind"]]
    repo_id = split_spec(source)[0] if is_hub_spec(source) else source
    for kind in BENCHMARKS:
        if kind.generator == source or repo_id in kind.hub_ids:
            return kind
    for kind in BENCHMARKS:
        if kind.recognises(source):
            return kind
    return BY_NAME["muse"]


def local_targets(source: str) -> int | None:
    """How many targets a local RWKU folder has (None if it has no readable forget_target)."""
    path = Path(source) / "All" / rwku.CONFIGS["forget_target"].file
    try:
        return len(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return None
