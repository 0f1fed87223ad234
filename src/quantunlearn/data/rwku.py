"""The RWKU layout: its hub schema, local folders in the hub repository's layout, the hub path,
and the forget corpora of one unlearning target.

RWKU is the benchmark of Jin et al., "RWKU: Benchmarking Real-World Knowledge Unlearning for
Large Language Models" (NeurIPS 2024, Datasets and Benchmarks track): zero-shot unlearning of a
real person the original model already knows. Its data live on the Hugging Face hub as
``jinzhuoran/RWKU``; the dataset card declares one config per JSON file of the folder ``All/``
(every target's rows in one list) and the repository also holds one folder per target,
``Target/<n>_<Name_with_underscores>/``, with the same rows split by target (the folder names of
RWKU's process/data_process.py, GitHub jinzhuoran/RWKU). The local layout read and written here
is that repository's layout::

    README.md                       hub-style ``configs:``, so datasets.load_dataset(root, config)
                                    reads the folder exactly as it reads the hub
    All/<file>.json                 one JSON list per config (CONFIGS[config].file)
    Target/<n>_<Name>/<file>.json   the rows of one target, same file names

Column names and types were checked on the real per-target folder of target 1 (Stephen King)
that Zhang et al.'s public code ships (zzwjames/FailureLLMUnlearning,
LLama_factory/data/utility/*.json). A target is addressed by its 1-based number in
``forget_target`` (RWKU's numbering; its main results average targets 1 to 100).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from quantunlearn.data.documents import IGNORE
from quantunlearn.data.provenance import HubDownloadError
from quantunlearn.io import atomic_dir

HUB_ID = "jinzhuoran/RWKU"
# The dataset card's last "Update README.md" commit seen on the hub (configs -> All/*.json); not
# confirmed against the hub from this machine (no network): docs/rwku.md.
HUB_REVISION = "d72f493d481d1b0a9bdc6e869d32baeffad8904f"
#: The default source: the hub dataset at that revision (the download step fetches and pins it).
HUB_SPEC = f"{HUB_ID}@{HUB_REVISION}"

# ----------------------------------------------------------------------------------------------
# Schema
# ----------------------------------------------------------------------------------------------
# A column type is str, int, a one-element list [T] (list of T) or a dict {key: type}.
PROBE = {"subject": str, "level": str, "query": str, "type": str, "answer": str}
NEIGHBOR_PROBE = {**PROBE, "neighbor": str}
MIA = {"subject": str, "text": str, "ngram": int}
MC_TARGETS = {"choices": [str], "labels": [int]}
MMLU_SHOT = {"question": str, "choices": [str], "answer": int, "subject": str}
DESCRIPTION = {"id": str, "subject": str, "intro": str, "text": str}
PAIR = {"id": str, "subject": str, "intro": str, "prompt": str, "response": [str]}
REFUSAL = {"subject": str, "intro": str, "instruction": str, "input": str, "output": str}


@dataclass(frozen=True)
class ConfigSpec:
    """One hub config: its split, its file name (in All/ and in each Target/ folder), columns."""

    split: str
    file: str
    columns: Mapping[str, Any]
    level: str | None = None  # the value of the "level" column, for probe configs


CONFIGS: dict[str, ConfigSpec] = {
    "forget_target": ConfigSpec("train", "intro.json", {"target": str, "intro": str}),
    "forget_level1": ConfigSpec("test", "forget_level1.json", PROBE, "1"),
    "forget_level2": ConfigSpec("test", "forget_level2.json", PROBE, "2"),
    "forget_level3": ConfigSpec("test", "forget_level3.json", PROBE, "3"),
    "neighbor_level1": ConfigSpec("test", "neighbor_level1.json", NEIGHBOR_PROBE, "1"),
    "neighbor_level2": ConfigSpec("test", "neighbor_level2.json", NEIGHBOR_PROBE, "2"),
    "mia_forget": ConfigSpec("test", "forget_mia.json", MIA),
    "mia_retain": ConfigSpec("test", "retain_mia.json", MIA),
    "utility_general": ConfigSpec(
        "test",
        "retain_mmlu.json",
        {
            "subject": str,
            "task": str,
            "question": str,
            "choices": [str],
            "answer": int,
            "examples": [MMLU_SHOT],
        },
    ),
    "utility_reason": ConfigSpec(
        "test",
        "retain_bbh.json",
        {"subject": str, "task": str, "cot": str, "question": str, "answer": str},
    ),
    "utility_truthfulness": ConfigSpec(
        "test",
        "truthful.json",
        {"subject": str, "question": str, "mc1_targets": MC_TARGETS, "mc2_targets": MC_TARGETS},
    ),
    "utility_factuality": ConfigSpec(
        "test", "triviaqa.json", {"subject": str, "question": str, "answers": [str]}
    ),
    "utility_fluency": ConfigSpec("test", "fluency.json", {"subject": str, "instruction": str}),
    "train_original_passage": ConfigSpec("train", "passage.json", {"subject": str, "text": str}),
    "train_positive_llama3": ConfigSpec("train", "positive.json", DESCRIPTION),
    "train_negative_llama3": ConfigSpec("train", "negative.json", DESCRIPTION),
    "train_pair_llama3": ConfigSpec("train", "pair.json", PAIR),
    "train_refusal_llama3": ConfigSpec("train", "reject.json", REFUSAL),
    "train_positive_phi3": ConfigSpec("train", "positive_phi.json", DESCRIPTION),
    "train_negative_phi3": ConfigSpec("train", "negative_phi.json", DESCRIPTION),
    "train_pair_phi3": ConfigSpec("train", "pair_phi.json", PAIR),
    "train_refusal_phi3": ConfigSpec("train", "reject_phi.json", REFUSAL),
}

PROBE_CONFIGS = (
    "forget_level1",
    "forget_level2",
    "forget_level3",
    "neighbor_level1",
    "neighbor_level2",
)
#: What an evaluation of forgetting reads.
EVAL_CONFIGS = ("forget_target", *PROBE_CONFIGS, "mia_forget", "mia_retain")
UTILITY_CONFIGS = (
    "utility_general",
    "utility_reason",
    "utility_truthfulness",
    "utility_factuality",
    "utility_fluency",
)
#: The forget corpora of GA / NPO (texts) and of RT ((question, refusal) rows).
DOCUMENT_CONFIGS = (
    "train_positive_llama3",
    "train_original_passage",
    "train_negative_llama3",
    "train_positive_phi3",
    "train_negative_phi3",
)
REFUSAL_CONFIGS = ("train_refusal_llama3", "train_refusal_phi3")
#: What the prepare_benchmark job fetches from the hub.
FETCHED_CONFIGS = EVAL_CONFIGS + DOCUMENT_CONFIGS[:2] + REFUSAL_CONFIGS[:1]


class RWKUSchemaError(ValueError):
    """A file or hub split whose rows are not in RWKU's schema."""


def _type_name(spec: Any) -> str:
    if isinstance(spec, list):
        return f"list of {_type_name(spec[0])}"
    if isinstance(spec, dict):
        return "object {" + ", ".join(spec) + "}"
    return spec.__name__


def _check_value(value: Any, spec: Any, where: str) -> None:
    if isinstance(spec, list):
        if not isinstance(value, list):
            raise RWKUSchemaError(f"{where} must be a {_type_name(spec)}, got {value!r:.60}")
        for i, item in enumerate(value):
            _check_value(item, spec[0], f"{where}[{i}]")
    elif isinstance(spec, dict):
        if not isinstance(value, dict):
            raise RWKUSchemaError(f"{where} must be an {_type_name(spec)}, got {value!r:.60}")
        _check_columns(value, spec, where)
    elif spec is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise RWKUSchemaError(f"{where} must be an int, got {value!r:.60}")
    elif not isinstance(value, spec):
        raise RWKUSchemaError(f"{where} must be a {spec.__name__}, got {value!r:.60}")


def _check_columns(row: Mapping, columns: Mapping[str, Any], where: str) -> None:
    missing = [c for c in columns if c not in row]
    if missing:
        raise RWKUSchemaError(f"{where} lacks {missing} (has {sorted(row)})")
    for column, spec in columns.items():
        _check_value(row[column], spec, f"{where}.{column}")


def validate_rows(rows: Any, config: str, where: str | None = None) -> list[dict]:
    """Check that ``rows`` are the rows of hub config ``config`` and return them as a list.

    Every declared column must be present with its type (extra columns are allowed: the hub may
    add some); probe configs must carry their level ("1", "2", "3" as strings, as RWKU stores
    them) and a non-empty query and answer; ``train_pair_*`` responses are [counterfactual,
    factual].
    """
    if config not in CONFIGS:
        raise KeyError(f"unknown RWKU config {config!r}; known: {sorted(CONFIGS)}")
    spec = CONFIGS[config]
    where = where or config
    if not isinstance(rows, list):
        raise RWKUSchemaError(f"{where}: expected a JSON list of rows, got {type(rows).__name__}")
    for i, row in enumerate(rows):
        at = f"{where}: row {i}"
        if not isinstance(row, dict):
            raise RWKUSchemaError(f"{at} must be an object, got {type(row).__name__}")
        _check_columns(row, spec.columns, at)
        if spec.level is not None:
            if row["level"] != spec.level:
                raise RWKUSchemaError(
                    f"{at}: level {row['level']!r}, but {config} holds level {spec.level!r} probes"
                )
            for column in ("query", "answer"):
                if not row[column].strip():
                    raise RWKUSchemaError(f"{at}: empty {column!r}")
        if config.startswith("train_pair") and len(row["response"]) != 2:
            raise RWKUSchemaError(f"{at}.response must hold 2 texts, got {len(row['response'])}")
    return list(rows)


# ----------------------------------------------------------------------------------------------
# Local folders in the hub layout
# ----------------------------------------------------------------------------------------------


def target_folder_name(index: int, target: str) -> str:
    """``Target/`` folder of the ``index``-th target (1-based): RWKU's process/data_process.py
    names it ``f"{index}_{target.replace(' ', '_')}"`` (e.g. 1_Stephen_King)."""
    return f"{index}_{target.replace(' ', '_')}"


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise RWKUSchemaError(f"{path}: not valid JSON ({err})") from err


def _subject(row: Mapping, config: str) -> str:
    return row["target"] if config == "forget_target" else row["subject"]


def read_config(root: str | os.PathLike, config: str, target: str | None = None) -> list[dict]:
    """Rows of one config from a local folder: ``All/<file>``, or the target's ``Target/`` file.

    With ``target`` the rows of that target only: from its ``Target/<n>_<Name>/`` file when the
    folder exists (that file must hold no other target's rows), else ``All/<file>`` filtered on
    ``subject`` (``target`` for forget_target).
    """
    root = Path(root)
    spec = CONFIGS[config]
    folder = find_target_folder(root, target) if target is not None else None
    if folder is not None:
        path = folder / spec.file
        if not path.is_file():
            raise FileNotFoundError(f"{spec.file} ({config}) is missing in {folder}")
        rows = validate_rows(_read_json(path), config, str(path))
        others = sorted({_subject(r, config) for r in rows} - {target})
        if others:
            raise RWKUSchemaError(
                f"{path}: rows of other targets {others[:3]} in {target!r}'s file"
            )
        return rows
    path = root / "All" / spec.file
    if not path.is_file():
        raise FileNotFoundError(f"All/{spec.file} ({config}) is missing in RWKU folder {root}")
    rows = validate_rows(_read_json(path), config, str(path))
    return rows if target is None else [r for r in rows if _subject(r, config) == target]


def find_target_folder(root: str | os.PathLike, target: str) -> Path | None:
    """The ``Target/<n>_<Name>`` folder of ``target``, or None when there is none."""
    base = Path(root) / "Target"
    if not base.is_dir():
        return None
    suffix = "_" + target.replace(" ", "_")
    hits = [
        p for p in base.iterdir() if p.is_dir() and re.fullmatch(r"\d+" + re.escape(suffix), p.name)
    ]
    if len(hits) > 1:
        raise RWKUSchemaError(
            f"several folders for target {target!r}: {sorted(h.name for h in hits)}"
        )
    return hits[0] if hits else None


def list_targets(root: str | os.PathLike) -> list[str]:
    """Target names in the order of forget_target (RWKU's numbering starts at 1)."""
    return [row["target"] for row in read_config(root, "forget_target")]


def target_name(root: str | os.PathLike, subject: int) -> str:
    """The name of target number ``subject`` (1-based) of a local folder."""
    names = list_targets(root)
    if not 1 <= subject <= len(names):
        raise RWKUSchemaError(f"RWKU folder {root} has targets 1..{len(names)}, not {subject}")
    return names[subject - 1]


@dataclass
class RWKUTarget:
    """The evaluation rows of one unlearning target (RWKU's single-target setting)."""

    subject: int  # 1-based number in forget_target
    target: str
    probes: dict[str, list[dict]]  # PROBE_CONFIGS -> rows
    mia_forget: list[dict]
    mia_retain: list[dict]


@dataclass
class RWKUBenchmark:
    """The evaluation data of some targets of an RWKU-layout folder (what a cell evaluates)."""

    layout: ClassVar[str] = "rwku"
    root: Path
    targets: list[RWKUTarget] = field(default_factory=list)


def load_target(root: str | os.PathLike, subject: int) -> RWKUTarget:
    """Everything RWKU evaluates for target number ``subject``, read and validated."""
    target = target_name(root, subject)
    probes = {c: read_config(root, c, target) for c in PROBE_CONFIGS}
    for config, rows in probes.items():
        if not rows:
            raise RWKUSchemaError(f"{config}: no probes for target {target!r} in {root}")
    return RWKUTarget(
        subject=subject,
        target=target,
        probes=probes,
        mia_forget=read_config(root, "mia_forget", target),
        mia_retain=read_config(root, "mia_retain", target),
    )


def load_rwku(root: str | os.PathLike, subjects: Iterable[int]) -> RWKUBenchmark:
    """The evaluation data of the given targets (1-based numbers) of an RWKU-layout folder."""
    return RWKUBenchmark(Path(root), [load_target(root, s) for s in subjects])


def _write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(obj, indent=1, ensure_ascii=False) + "\n"
    path.write_text(text, encoding="utf-8", newline="\n")


def hub_readme(configs: Iterable[str]) -> str:
    """A dataset card whose ``configs:`` map each config to ``All/<file>`` as the hub card does."""
    lines = ["---", "configs:"]
    for config in configs:
        spec = CONFIGS[config]
        lines += [
            f"- config_name: {config}",
            "  data_files:",
            f"  - split: {spec.split}",
            "    path:",
            f"    - All/{spec.file}",
        ]
    return "\n".join([*lines, "---", ""])


def write_layout(root: str | os.PathLike, rows: Mapping[str, list[dict]]) -> Path:
    """Write ``{config: rows}`` in RWKU's repository layout (All/, Target/, README.md).

    Rows are validated first. Per-target files hold the rows whose subject is that target (the
    target's own intro row for forget_target), numbered in forget_target's order, as
    process/data_process.py splits them.
    """
    root = Path(root)
    if "forget_target" not in rows:
        raise ValueError("write_layout needs the forget_target rows (they number the targets)")
    checked = {c: validate_rows(r, c) for c, r in rows.items()}
    targets = [r["target"] for r in checked["forget_target"]]
    for config, config_rows in checked.items():
        unknown = {_subject(r, config) for r in config_rows} - set(targets)
        if unknown:
            raise RWKUSchemaError(f"{config}: subjects {sorted(unknown)[:3]} are not targets")
        _write_json(root / "All" / CONFIGS[config].file, config_rows)
        for index, target in enumerate(targets, start=1):
            mine = [r for r in config_rows if _subject(r, config) == target]
            folder = root / "Target" / target_folder_name(index, target)
            _write_json(folder / CONFIGS[config].file, mine)
    (root / "README.md").write_text(hub_readme(checked), encoding="utf-8")
    return root


def check_folder(root: str | os.PathLike, configs: Sequence[str] = EVAL_CONFIGS) -> list[str]:
    """Validate the ``All/`` files of ``configs`` in a local folder; returns the target names."""
    for config in configs:
        read_config(root, config)
    return list_targets(root)


# ----------------------------------------------------------------------------------------------
# The hub, and the prepare_benchmark job
# ----------------------------------------------------------------------------------------------


def load_hub_config(config: str, revision: str | None = HUB_REVISION, hub_id: str = HUB_ID):
    """``datasets.load_dataset(hub_id, config, split=..., revision=...)`` rows, validated.

    ``hub_id`` may also be a local folder in the layout above (its README.md declares the
    configs), which is how the tests exercise everything up to the network.
    """
    import datasets  # late: heavy

    spec = CONFIGS[config]
    kwargs = {"revision": revision} if revision and not Path(hub_id).is_dir() else {}
    try:
        table = datasets.load_dataset(hub_id, config, split=spec.split, **kwargs)
    except Exception as err:
        raise HubDownloadError(
            f"could not load {hub_id} config {config!r} split {spec.split!r} "
            f"(revision {revision}): {err}. Without network, download it once elsewhere "
            f"(HF cache, then HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1), or use a local folder in "
            f"RWKU's layout (All/*.json)."
        ) from err
    return validate_rows(table.to_list(), config, f"{hub_id}:{config}")


def fetch_rwku(
    out_dir: str | os.PathLike,
    configs: Sequence[str] = FETCHED_CONFIGS,
    revision: str | None = HUB_REVISION,
    hub_id: str = HUB_ID,
) -> Path:
    """Download ``configs`` into ``out_dir`` in RWKU's layout; nothing is left on failure."""
    configs = list(dict.fromkeys(["forget_target", *configs]))
    with atomic_dir(out_dir) as tmp:
        rows = {c: load_hub_config(c, revision, hub_id) for c in configs}
        write_layout(tmp, rows)
        meta = {"benchmark": hub_id, "revision": revision, "configs": configs}
        _write_json(tmp / "meta.json", meta)
    return Path(out_dir)


def prepare_rwku(source: str, out_dir: str | os.PathLike, snapshot: str | None = None) -> None:
    """Put an RWKU-layout benchmark into ``out_dir``: a local folder is validated and copied; a
    hub id ``owner/name[@revision]`` is read from ``snapshot``, the folder the download step
    fetched and pinned (without one, from the hub at that revision)."""
    from quantunlearn.data.provenance import split_spec

    if snapshot is None and Path(source).is_dir():
        check_folder(source)
        with atomic_dir(out_dir) as tmp:
            shutil.copytree(source, tmp, dirs_exist_ok=True)
        return
    repo, revision = split_spec(source)
    fetch_rwku(out_dir, revision=revision, hub_id=snapshot or repo)


def hub_patterns(configs: Iterable[str] = FETCHED_CONFIGS) -> list[str]:
    """The files of the hub repository that hold ``configs`` (and the card that declares them),
    what the download step fetches."""
    files = [f"All/{CONFIGS[c].file}" for c in dict.fromkeys(["forget_target", *configs])]
    return ["README.md", *files]


def check_snapshot(folder: str | os.PathLike) -> None:
    """Convert a downloaded RWKU snapshot into a throwaway folder: every config the benchmark
    needs loads, in RWKU's schema (the download step's check)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        fetch_rwku(Path(tmp) / "check", revision=None, hub_id=str(folder))


# ----------------------------------------------------------------------------------------------
# The forget corpora of one target (what GA / NPO and RT train on)
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RWKUCorpus:
    """The forget data of target number ``subject``: the texts of ``documents`` (GA and NPO;
    RWKU: train_positive_llama3, the original model's descriptions of the target) and the
    (question, refusal) rows of ``refusals`` (RT; RWKU: train_refusal_llama3).

    Texts are tokenized as RWKU's LLaMA-Factory stages ``ga`` / ``npo`` do (data/preprocess.py,
    packing off): no BOS, EOS appended, cut to ``max_len`` tokens, one text per sequence; the
    collator pads with EOS and ignores pads, so the appended EOS carries no loss either.
    """

    root: Path
    subject: int
    documents: str = "train_positive_llama3"
    refusals: str = "train_refusal_llama3"

    def __post_init__(self):
        for kind, config in (("documents", self.documents), ("refusals", self.refusals)):
            allowed = DOCUMENT_CONFIGS if kind == "documents" else REFUSAL_CONFIGS
            if config not in allowed:
                raise ValueError(f"RWKU {kind} corpus {config!r} is not one of {list(allowed)}")

    def _rows(self, config: str) -> list[dict]:
        rows = read_config(self.root, config, target_name(self.root, self.subject))
        if not rows:
            raise ValueError(f"{config}: no rows for target {self.subject} in {self.root}")
        return rows

    def texts(self) -> list[str]:
        return [row["text"] for row in self._rows(self.documents)]

    def document_examples(self, tokenizer, max_len: int) -> list[dict]:
        return [text_example(tokenizer, text, max_len) for text in self.texts()]

    def refusal_pairs(self) -> list[tuple[str, str]]:
        return [(row["instruction"], row["output"]) for row in self._rows(self.refusals)]


def text_example(tokenizer, text: str, max_len: int) -> dict:
    """input_ids and labels of one GA/NPO forget text as RWKU trains on it: no BOS, EOS appended,
    cut to ``max_len``; the EOS is unlabelled."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no EOS token")
    ids = (tokenizer(text, add_special_tokens=False)["input_ids"] + [eos])[:max_len]
    return {"input_ids": ids, "labels": [t if t != eos else IGNORE for t in ids]}


# ----------------------------------------------------------------------------------------------
# Prompts: RWKU's probe messages (appendix F.1, eval_forget.py), wrapped in the chat template
# ----------------------------------------------------------------------------------------------

FB_INSTRUCTION = "Please complete the blank in the following question.\nQuestion: {query}\n"
QA_INSTRUCTION = "Please briefly answer the following question.\nQuestion: {query}\n"
ICL_INSTRUCTION = "Please briefly answer the following question.\n{query}\n"
SUFFIX_INSTRUCTION = "Please briefly answer the following question.\nQuestion: {query}"
ANSWER_CUE = "Answer:"


def has_chat_template(tokenizer) -> bool:
    return tokenizer is not None and bool(getattr(tokenizer, "chat_template", None))


def chat_prompt(tokenizer, message: str) -> str:
    """One user message through the tokenizer's chat template with the generation prompt (as
    RWKU's evaluation and RT training wrap every prompt); the message itself without one."""
    if not has_chat_template(tokenizer):
        return message
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": message}], tokenize=False, add_generation_prompt=True
    )


def user_turn(tokenizer, message: str, cue: str = "") -> str:
    """The text after which the model answers: the chat-templated message followed by ``cue``.

    Without a chat template (the embedded benchmark's tiny model) the message and cue are
    followed by one space: that tokenizer attaches a space to the token before it, so "Answer: "
    ends on the token boundary its training documents have (as the embedded KnowMem prompt
    does); RWKU's models see exactly RWKU's text.
    """
    text = chat_prompt(tokenizer, message) + cue
    return text if has_chat_template(tokenizer) else text + " "


def probe_message(probe: Mapping[str, str]) -> tuple[str, str]:
    """The user message of a probe and the cue RWKU appends after the assistant header.

    Level 1 (FB) asks to complete the blank, levels 2 (QA) and 3 (AA) to briefly answer. Two AA
    types differ (eval_forget.py): "affirmative suffix" has no newline after the query and no
    "Answer:" cue (the query ends in the affirmative phrase); "incontext learning" gives the query
    (its own "Question: ... Answer: ... Question: ...") without a "Question:" label.
    """
    level, kind, query = probe["level"], probe["type"], probe["query"]
    if level == "1":
        return FB_INSTRUCTION.format(query=query), ANSWER_CUE
    if level == "3" and kind == "affirmative suffix":
        return SUFFIX_INSTRUCTION.format(query=query), ""
    if level == "3" and kind == "incontext learning":
        return ICL_INSTRUCTION.format(query=query), ANSWER_CUE
    if level in ("2", "3"):
        return QA_INSTRUCTION.format(query=query), ANSWER_CUE
    raise ValueError(f"probe level must be '1', '2' or '3', got {level!r}")


def probe_prompt(probe: Mapping[str, str], tokenizer=None) -> str:
    """The text RWKU generates a probe's answer from (`user_turn` of `probe_message`)."""
    message, cue = probe_message(probe)
    return user_turn(tokenizer, message, cue)


def end_of_turn_id(tokenizer) -> int:
    """The token that ends the assistant's answer: <|eot_id|> for Llama-3 (LLaMA-Factory's llama3
    template puts it where other templates put EOS), else the tokenizer's EOS."""
    if "<|eot_id|>" in tokenizer.get_vocab():
        return tokenizer.convert_tokens_to_ids("<|eot_id|>")
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has neither <|eot_id|> nor an EOS token")
    return tokenizer.eos_token_id


def refusal_example(tokenizer, question: str, answer: str, max_len: int) -> dict:
    """input_ids and labels of one RT example: the prompt (the question as a user turn,
    `user_turn`) carries IGNORE, the answer and the end-of-turn token carry the LM loss.

    Prompt and answer are tokenized apart and concatenated, as LLaMA-Factory's template encoding
    does (RWKU's RT stage, train_on_prompt off). A chat-templated prompt already starts with BOS
    (no second one is added); a plain prompt gets the tokenizer's BOS. An example longer than
    ``max_len`` loses prompt tokens first.
    """
    templated = has_chat_template(tokenizer)
    prompt_ids = tokenizer(user_turn(tokenizer, question), add_special_tokens=not templated)
    answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
    answer_ids = (answer_ids + [end_of_turn_id(tokenizer)])[: max_len - 1]
    prompt_ids = prompt_ids["input_ids"][: max_len - len(answer_ids)]
    return {
        "input_ids": prompt_ids + answer_ids,
        "labels": [IGNORE] * len(prompt_ids) + answer_ids,
    }
