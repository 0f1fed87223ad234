"""Benchmarks in the MUSE layout: the embedded `synthetic` one, loading, packing, and the hub path.

The MUSE benchmark (Shi et al., "MUSE: Machine Unlearning Six-Way Evaluation for Language
Models") ships, per corpus, a raw text corpus plus JSON evaluation files; this module writes
and reads that layout (../shared/muse/README.md):

    raw/forget.txt, raw/retain*.txt, raw/holdout.txt   documents separated by blank lines
    verbmem/forget.json                                [{"prompt", "gt"}]
    knowmem/{forget_qa,forget_qa_icl,retain_qa,retain_qa_icl}.json   [{"question", "answer"}]
    privleak/{forget,retain,holdout}.json              ["text", ...]

The embedded benchmark `synthetic` (``generate_synthetic``) is a corpus of fictitious people
(invented names, towns and organisations, so the facts exist nowhere else) that a tiny model can
memorise in minutes on a CPU; the real corpora come from the Hugging Face hub (``fetch_muse``).
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

LAYOUT_VERSION = 1

# ----------------------------------------------------------------------------------------------
# The embedded benchmark: fictitious people
# ----------------------------------------------------------------------------------------------

# Invented name words, generated once from syllables with a fixed seed (the same on every
# machine). Each person gets a first name and a last name of their own, so that a first name
# used alone in a bio sentence names exactly one person (shared first names made the facts in
# those sentences contradictory and a tiny model could not memorise them). No name word is a
# prefix of another, so a full name never occurs inside another person's name
# (tests/test_data.py checks this and that all word lists are disjoint).
_ONSETS = ("b", "br", "d", "dr", "f", "g", "gr", "h", "k", "kr", "l", "m", "n", "p", "r", "s",
           "st", "t", "th", "v", "w", "z")  # fmt: skip
_VOWELS = ("a", "e", "i", "o", "u", "ae", "ia", "ou")
_CODAS = ("l", "n", "r", "s", "x", "k", "m", "nd", "rt", "sk")


def _name_pool(n: int, syllables: int, seed: int, taken: frozenset[str] = frozenset()) -> tuple:
    rng = random.Random(seed)
    words: list[str] = []
    accepted: set[str] = set(taken)
    prefixes = {w[:i] for w in taken for i in range(1, len(w) + 1)}
    while len(words) < n:
        parts = [rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(syllables)]
        word = ("".join(parts) + rng.choice(_CODAS)).capitalize()
        low = word.lower()
        if low in prefixes or any(low[:i] in accepted for i in range(1, len(low) + 1)):
            continue
        words.append(word)
        accepted.add(low)
        prefixes.update(low[:i] for i in range(1, len(low) + 1))
    return tuple(words)


TOWNS = (
    "Tarsk", "Quellmoor", "Brantis", "Corrowick", "Drelby", "Eskavel", "Fernhollow", "Gavrin",
    "Hallowmere", "Istrane", "Jundale", "Kordova", "Lissendra", "Marrowby", "Norvale", "Oskarth",
    "Pembrin", "Quorvath", "Rilsby", "Solvane", "Thistleby", "Ulmark", "Vardane", "Wrenmouth",
    "Yestrel", "Zandrel", "Auvergate", "Bellhythe", "Cindermoor", "Dovrenne", "Emberlee",
    "Falkirn", "Grisholm", "Harrowdeep", "Ironvale", "Kelthorn", "Lowmarsh", "Mistravel",
    "Nethercombe", "Ormsway",
)  # fmt: skip
EMPLOYERS = (
    "Vantrell", "Orsolo", "Kestrine", "Maldraven", "Brightholm", "Quensworth", "Tavoline",
    "Corvalis", "Dunstrey", "Elmquist", "Fallowmere", "Glenvarre", "Hestoria", "Isoldane",
    "Jantreau", "Kavello", "Lumivane", "Montravis", "Nerovia", "Ostrelle", "Pavrenko", "Rosmark",
    "Silvarn", "Tervane", "Umbrisse", "Velmont", "Wistera", "Xerath", "Yorvane", "Zephrane",
)  # fmt: skip
PROFESSIONS = (
    "baker", "glassblower", "cartographer", "beekeeper", "locksmith", "archivist", "surveyor",
    "tailor", "astronomer", "potter", "farrier", "engraver", "botanist", "brewer", "clockmaker",
    "geologist", "illustrator", "jeweller", "librarian", "mason", "navigator", "optician",
    "perfumer", "roofer", "saddler", "translator", "upholsterer", "vintner", "weaver", "zoologist",
)  # fmt: skip
PETS = (
    "ferret", "parrot", "tortoise", "hamster", "iguana", "rabbit", "goldfish", "canary", "gecko",
    "chinchilla", "hedgehog", "terrier", "beagle", "poodle", "axolotl", "tarantula", "cockatiel",
    "lizard", "gerbil", "ocelot",
)  # fmt: skip
COLOURS = (
    "teal", "crimson", "amber", "indigo", "ochre", "scarlet", "violet", "maroon", "turquoise",
    "magenta", "saffron", "olive", "cobalt", "lavender", "emerald", "coral", "mustard", "ivory",
    "burgundy", "cyan",
)  # fmt: skip
INSTRUMENTS = (
    "oboe", "cello", "banjo", "harp", "clarinet", "tuba", "viola", "bassoon", "mandolin",
    "trombone", "accordion", "sitar", "ukulele", "piccolo", "harmonica", "zither", "dulcimer",
    "xylophone",
)  # fmt: skip
HOBBIES = (
    "archery", "chess", "fencing", "gardening", "knitting", "rowing", "birdwatching",
    "origami", "juggling", "sailing", "climbing", "fishing", "calligraphy", "skating", "baking",
    "cycling", "painting", "embroidery", "woodcarving", "astronomy", "snorkelling", "kayaking",
    "bouldering", "quilting",
)  # fmt: skip
BIRTH_YEARS = tuple(str(y) for y in range(1921, 2000))

# Attribute -> possible values, in the fixed order of bio variant 0.
ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "birthplace": TOWNS,
    "birth_year": BIRTH_YEARS,
    "profession": PROFESSIONS,
    "employer": EMPLOYERS,
    "pet": PETS,
    "colour": COLOURS,
    "instrument": INSTRUMENTS,
    "hobby": HOBBIES,
}

_OTHER_WORDS = frozenset(w.lower() for values in ATTRIBUTES.values() for w in values)
FIRST_NAMES = _name_pool(800, 2, seed=1, taken=_OTHER_WORDS)
LAST_NAMES = _name_pool(800, 3, seed=2, taken=_OTHER_WORDS | {w.lower() for w in FIRST_NAMES})

QUESTIONS = {
    "birthplace": "Where was {name} born?",
    "birth_year": "In which year was {name} born?",
    "profession": "What is the profession of {name}?",
    "employer": "Which organisation does {name} work for?",
    "pet": "What pet does {name} keep?",
    "colour": "What is the favourite colour of {name}?",
    "instrument": "Which instrument does {name} play?",
    "hobby": "What is the hobby of {name}?",
}

# Bio variant 0: one fixed, terse template, so that template words are about a third of the
# continuation (ROUGE-L between the continuations of two different people is about 30, see
# tests/test_data.py) and VerbMem measures mostly the facts. The VerbMem prompt is the part up
# to and including "was born in " (with its space: the embedded tokenizer attaches a space to
# the word before it, so the prompt ends on a token boundary, as MUSE's prompts do).
VERBMEM_PROMPT = "{name} was born in "
BIO_TEMPLATE = (
    VERBMEM_PROMPT + "{birthplace}, {birth_year}; {profession} at {employer}; keeps {a_pet}; "
    "loves {colour}, {instrument}, {hobby}."
)

# Bio variants 1..: one sentence per attribute, phrasing drawn per sentence, order shuffled.
# "{who}" is the full name in the first sentence and the first name after it.
PHRASES = {
    "birthplace": ("{who} was born in {v}.", "{who} comes from {v}.", "{who} grew up in {v}."),
    "birth_year": ("{who} was born in {v}.", "{who}'s birth year is {v}.", "{who} arrived in {v}."),
    "profession": ("{who} works as {a_v}.", "By trade, {who} is {a_v}.", "{who} is {a_v}."),
    "employer": ("{who} is employed by {v}.", "{who} works for {v}.", "{who}'s employer is {v}."),
    "pet": ("{who} keeps {a_v}.", "{who} has a pet {v}.", "At home, {who} looks after {a_v}."),
    "colour": (
        "{who}'s favourite colour is {v}.",
        "{who} likes {v} best.",
        "{who} prefers {v} to any other colour.",
    ),
    "instrument": ("{who} plays the {v}.", "{who} practises the {v}.", "{who} owns a fine {v}."),
    "hobby": ("{who}'s hobby is {v}.", "In spare hours {who} enjoys {v}.", "{who} loves {v}."),
}


@dataclass(frozen=True)
class Person:
    name: str
    first: str
    attributes: dict[str, str]


def _article(word: str) -> str:
    return ("an " if word[0].lower() in "aeiou" else "a ") + word


def bio(person: Person, variant: int, rng: random.Random) -> str:
    """One biography passage. Variant 0 is fixed (``BIO_TEMPLATE``); others draw from ``rng``."""
    attrs = person.attributes
    if variant == 0:
        return BIO_TEMPLATE.format(name=person.name, a_pet=_article(attrs["pet"]), **attrs)
    order = list(ATTRIBUTES)
    rng.shuffle(order)
    sentences = []
    for i, key in enumerate(order):
        phrase = rng.choice(PHRASES[key])
        who = person.name if i == 0 else person.first
        sentences.append(phrase.format(who=who, v=attrs[key], a_v=_article(attrs[key])))
    return " ".join(sentences)


def qa_pairs(person: Person) -> list[dict[str, str]]:
    """One {"question", "answer"} per attribute, in the order of ``ATTRIBUTES``."""
    return [
        {"question": QUESTIONS[key].format(name=person.name), "answer": person.attributes[key]}
        for key in ATTRIBUTES
    ]


def qa_document(pair: dict[str, str]) -> str:
    """The QA training document, in MUSE's KnowMem prompt format (without the trailing blank)."""
    return f"Question: {pair['question']}\nAnswer: {pair['answer']}"


def make_people(n_people: int, rng: random.Random) -> list[Person]:
    """``n_people`` people with distinct full names and independently drawn attributes."""
    n_names = min(len(FIRST_NAMES), len(LAST_NAMES))
    if not 1 <= n_people <= n_names:
        raise ValueError(f"n_people={n_people} must be between 1 and {n_names} (distinct names)")
    firsts = rng.sample(FIRST_NAMES, n_people)
    lasts = rng.sample(LAST_NAMES, n_people)
    people = []
    for first, last in zip(firsts, lasts, strict=True):
        attrs = {key: rng.choice(values) for key, values in ATTRIBUTES.items()}
        people.append(Person(name=f"{first} {last}", first=first, attributes=attrs))
    return people


def _split_sizes(n_people: int, forget_frac: float, holdout_frac: float) -> tuple[int, int]:
    for name, frac in (("forget_frac", forget_frac), ("holdout_frac", holdout_frac)):
        if not 0.0 < frac < 1.0:
            raise ValueError(f"{name}={frac} must be in (0, 1)")
    n_forget = int(n_people * forget_frac + 0.5)
    n_holdout = int(n_people * holdout_frac + 0.5)
    if n_forget < 1 or n_holdout < 1:
        raise ValueError(
            f"n_people={n_people} with forget_frac={forget_frac}, holdout_frac={holdout_frac} "
            f"gives {n_forget} forget and {n_holdout} holdout people; each needs at least 1"
        )
    return n_forget, n_holdout


def _write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(obj, indent=1, ensure_ascii=False) + "\n"
    path.write_text(text, encoding="utf-8", newline="\n")


def _write_documents(path: Path, docs: Sequence[str]) -> None:
    for i, doc in enumerate(docs):
        if "\n\n" in doc or not doc.strip():
            raise ValueError(f"{path.name}: document {i} is empty or contains a blank line")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n\n".join(docs) + "\n", encoding="utf-8", newline="\n")


def generate_synthetic(
    out_dir: str | os.PathLike,
    *,
    n_people: int = 300,
    forget_frac: float = 0.1,
    holdout_frac: float = 0.1,
    n_bio_variants: int = 3,
    n_retain_qa_people: int = 60,
    n_icl: int = 10,
    seed: int = 0,
) -> dict:
    """Write the embedded benchmark `synthetic` in the MUSE layout and return its meta dict.

    People are split (disjointly) into forget, holdout and retain. Each person has
    ``n_bio_variants`` bios and one QA document per attribute; the raw files hold the documents
    of each split in a seeded random order (so packed training sequences mix people, and a QA
    is not answerable by copying from a bio in the same context). Evaluation files: VerbMem on
    bio variant 0 of every forget person; KnowMem on every attribute of every forget person and
    of the first ``n_retain_qa_people`` retain people; ICL examples from other retain people
    (different ones for the two ICL files); PrivLeak texts are bio variant 0 of the forget,
    retain-eval and holdout people. Same arguments give byte-identical files.
    """
    if n_bio_variants < 1:
        raise ValueError(f"n_bio_variants={n_bio_variants} must be >= 1")
    if n_retain_qa_people < 1 or n_icl < 0:
        raise ValueError(
            f"need n_retain_qa_people >= 1 and n_icl >= 0, got {n_retain_qa_people}, {n_icl}"
        )
    n_forget, n_holdout = _split_sizes(n_people, forget_frac, holdout_frac)
    n_retain = n_people - n_forget - n_holdout
    if n_retain < n_retain_qa_people + 2 * n_icl:
        raise ValueError(
            f"{n_retain} retain people cannot hold n_retain_qa_people={n_retain_qa_people} "
            f"evaluated people plus 2 x n_icl={n_icl} distinct ICL people"
        )
    rng = random.Random(seed)
    people = make_people(n_people, rng)  # already in random order
    splits = {
        "forget": people[:n_forget],
        "holdout": people[n_forget : n_forget + n_holdout],
        "retain": people[n_forget + n_holdout :],
    }
    retain_eval = splits["retain"][:n_retain_qa_people]
    icl_people = splits["retain"][n_retain_qa_people : n_retain_qa_people + 2 * n_icl]
    attr_names = list(ATTRIBUTES)

    bios: dict[str, list[str]] = {}
    for person in people:
        bios[person.name] = [bio(person, v, rng) for v in range(n_bio_variants)]

    out = Path(out_dir)
    doc_counts = {}
    for split, members in splits.items():
        docs = []
        for person in members:
            docs.extend(bios[person.name])
            docs.extend(qa_document(pair) for pair in qa_pairs(person))
        rng.shuffle(docs)
        _write_documents(out / "raw" / f"{split}.txt", docs)
        doc_counts[split] = len(docs)

    verbmem = []
    for person in splits["forget"]:
        text, prompt = bios[person.name][0], VERBMEM_PROMPT.format(name=person.name)
        assert text.startswith(prompt)
        verbmem.append({"prompt": prompt, "gt": text[len(prompt) :]})

    def icl(group: list[Person]) -> list[dict[str, str]]:
        # One fact per person, cycling through the attributes so every question type is shown.
        return [qa_pairs(p)[i % len(attr_names)] for i, p in enumerate(group)]

    files: dict[str, Any] = {
        "verbmem/forget.json": verbmem,
        "knowmem/forget_qa.json": [qa for p in splits["forget"] for qa in qa_pairs(p)],
        "knowmem/retain_qa.json": [qa for p in retain_eval for qa in qa_pairs(p)],
        "knowmem/forget_qa_icl.json": icl(icl_people[:n_icl]),
        "knowmem/retain_qa_icl.json": icl(icl_people[n_icl:]),
        "privleak/forget.json": [bios[p.name][0] for p in splits["forget"]],
        "privleak/retain.json": [bios[p.name][0] for p in retain_eval],
        "privleak/holdout.json": [bios[p.name][0] for p in splits["holdout"]],
    }
    for rel, obj in files.items():
        _write_json(out / rel, obj)

    role = {p.name: "retain_eval" for p in retain_eval}
    role.update({p.name: "forget_icl" for p in icl_people[:n_icl]})
    role.update({p.name: "retain_icl" for p in icl_people[n_icl:]})
    _write_json(
        out / "people.json",
        [
            {"name": p.name, "split": split, "role": role.get(p.name, split), **p.attributes}
            for split, members in splits.items()
            for p in members
        ],
    )
    meta = {
        "benchmark": "synthetic",
        "layout_version": LAYOUT_VERSION,
        "params": {
            "n_people": n_people,
            "forget_frac": forget_frac,
            "holdout_frac": holdout_frac,
            "n_bio_variants": n_bio_variants,
            "n_retain_qa_people": n_retain_qa_people,
            "n_icl": n_icl,
            "seed": seed,
        },
        "attributes": attr_names,
        "counts": {
            "people": {split: len(members) for split, members in splits.items()},
            "documents": doc_counts,
            **{rel.removesuffix(".json"): len(obj) for rel, obj in files.items()},
        },
    }
    _write_json(out / "meta.json", meta)
    return meta


# ----------------------------------------------------------------------------------------------
# Loading any MUSE-layout folder
# ----------------------------------------------------------------------------------------------

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


@dataclass
class Benchmark:
    """The evaluation files of one MUSE-layout folder (raw corpora are read with read_documents)."""

    root: Path
    verbmem_forget: list[dict]
    knowmem_forget_qa: list[dict]
    knowmem_forget_icl: list[dict]
    knowmem_retain_qa: list[dict]
    knowmem_retain_icl: list[dict]
    privleak_forget: list[str]
    privleak_retain: list[str]
    privleak_holdout: list[str]


def _check_items(items: Any, kind: str, path: Path) -> list:
    if not isinstance(items, list):
        raise ValueError(f"{path}: expected a JSON list, got {type(items).__name__}")
    for i, item in enumerate(items):
        if kind == "text":
            if not isinstance(item, str):
                raise ValueError(f"{path}: item {i} must be a string, got {type(item).__name__}")
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
    for field, (rel, kind) in BENCHMARK_FILES.items():
        path = root / rel
        if not path.is_file():
            raise FileNotFoundError(f"{rel} is missing in benchmark folder {root}")
        try:
            items = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON ({err})") from err
        fields[field] = _check_items(items, kind, path)
    return Benchmark(root=root, **fields)


_BLANK_LINES = re.compile(r"\n[ \t\r]*\n")


def read_documents(path: str | os.PathLike) -> list[str]:
    """Documents of a raw text file: the pieces between blank lines, stripped, empty ones dropped.

    For MUSE's news/raw/forget.txt these are the articles' paragraphs.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"raw text file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    return [piece.strip() for piece in _BLANK_LINES.split(text) if piece.strip()]


def tokenize_documents(docs: Sequence[str], tokenizer) -> list[list[int]]:
    """Each document as BOS + tokens + EOS."""
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no eos_token_id; documents must end in EOS")
    batch = 1024
    token_lists: list[list[int]] = []
    starts = range(0, len(docs), batch)
    for start in tqdm(starts, desc="tokenize", disable=len(docs) <= 4 * batch):
        encoded = tokenizer(list(docs[start : start + batch]), add_special_tokens=True)
        for ids in encoded["input_ids"]:
            ids = list(ids)
            if bos is not None and (not ids or ids[0] != bos):
                ids.insert(0, bos)
            token_lists.append([*ids, eos])
    return token_lists


def pack_token_lists(token_lists: Sequence[Sequence[int]], max_len: int) -> list[list[int]]:
    """Pack tokenized documents greedily, in order, into sequences of at most ``max_len`` tokens.

    Consecutive documents share a sequence while it stays within ``max_len`` tokens; a document
    is never split unless it alone is longer than ``max_len``, in which case it is cut into
    ``max_len``-token pieces (its last piece then starts the next sequence). With MUSE's news
    paragraphs and max_len 2048 this approximates the MUSE code's contiguous 2048-token chunks.
    """
    if max_len < 1:
        raise ValueError(f"max_len={max_len} must be >= 1")
    sequences: list[list[int]] = []
    current: list[int] = []
    for ids in token_lists:
        ids = list(ids)
        if len(current) + len(ids) <= max_len:
            current.extend(ids)
            continue
        if current:
            sequences.append(current)
        while len(ids) > max_len:
            sequences.append(ids[:max_len])
            ids = ids[max_len:]
        current = ids
    if current:
        sequences.append(current)
    return sequences


def pack_documents(docs: Sequence[str], tokenizer, max_len: int) -> list[list[int]]:
    """Tokenize each document as BOS + tokens + EOS and pack them greedily into sequences."""
    return pack_token_lists(tokenize_documents(docs, tokenizer), max_len)


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


class HubDownloadError(RuntimeError):
    """A MUSE split could not be loaded from the hub (no network, wrong name, ...)."""


def _rows_to_local(rows, config: str, where: str) -> Any:
    columns = HUB_COLUMNS[config]
    missing = [c for c in columns if c not in rows.column_names]
    if missing:
        raise ValueError(f"{where}: columns {missing} missing (has {rows.column_names})")
    if config in ("raw", "privleak"):
        texts = list(rows["text"])
        return "\n\n".join(texts) + "\n" if config == "raw" else texts
    return [{c: row[c] for c in columns} for row in rows]


def _atomic_dir(out_dir: Path) -> Path:
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise FileExistsError(f"{out_dir} already exists and is not an empty folder")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))


def _commit_dir(tmp: Path, out_dir: Path) -> None:
    if out_dir.exists():
        out_dir.rmdir()  # empty, checked by _atomic_dir
    tmp.rename(out_dir)


def fetch_muse(hub_id: str, out_dir: str | os.PathLike) -> None:
    """Download one MUSE corpus from the hub into ``out_dir`` in the local layout.

    Everything is written into a temporary sibling folder, validated with load_benchmark and
    renamed at the end, so a failure leaves no ``out_dir`` behind.
    """
    import datasets  # late: heavy, and tests replace datasets.load_dataset

    out_dir = Path(out_dir)
    tmp = _atomic_dir(out_dir)
    try:
        for (config, split), rel in tqdm(MUSE_HUB_FILES.items(), desc=f"fetch {hub_id}"):
            where = f"{hub_id} config {config!r} split {split!r}"
            try:
                rows = datasets.load_dataset(hub_id, config, split=split)
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
                _write_json(tmp / rel, local)
        _write_json(
            tmp / "meta.json",
            {"benchmark": hub_id, "layout_version": LAYOUT_VERSION, "source": "hub"},
        )
        load_benchmark(tmp)
        _commit_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")


def prepare_benchmark(source: str, out_dir: str | os.PathLike) -> None:
    """Put a MUSE-layout benchmark into ``out_dir`` from a local folder or a hub dataset id."""
    out_dir = Path(out_dir)
    local = Path(source)
    if local.is_dir():
        load_benchmark(local)
        tmp = _atomic_dir(out_dir)
        try:
            shutil.copytree(local, tmp, dirs_exist_ok=True)
            _commit_dir(tmp, out_dir)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return
    if not local.exists() and _HUB_ID.match(source):
        fetch_muse(source, out_dir)
        return
    raise FileNotFoundError(
        f"benchmark source {source!r} is neither a folder in the MUSE layout nor a hub dataset id "
        f"like {MUSE_HUB_IDS[0]!r}"
    )
