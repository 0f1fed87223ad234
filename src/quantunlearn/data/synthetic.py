"""The embedded benchmark `synthetic`: fictitious people and their attributes, in the MUSE layout.

A corpus of fictitious people (invented names, towns and organisations, so the facts exist nowhere
else) that a tiny model can memorise in minutes on a CPU, written by a seeded generator in the
MUSE layout (`quantunlearn.data.muse`). Same arguments give byte-identical files.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quantunlearn.data.muse import LAYOUT_VERSION, write_documents, write_json_file
from quantunlearn.io import atomic_dir

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


class SyntheticError(ValueError):
    """An impossible setting of the generator; ``key`` is the setting (config key) to change,
    None where several settings together are impossible."""

    def __init__(self, key: str | None, message: str):
        super().__init__(message)
        self.key = key


def check_synthetic(
    n_people: int,
    forget_frac: float,
    holdout_frac: float,
    n_bio_variants: int,
    n_retain_qa_people: int,
    n_icl: int,
) -> tuple[int, int]:
    """(forget, holdout) people of these settings; `SyntheticError` naming the setting when the
    generator could not honour them (called at config parse time too, before anything runs)."""
    n_names = min(len(FIRST_NAMES), len(LAST_NAMES))
    if not 1 <= n_people <= n_names:
        raise SyntheticError(
            "n_people", f"n_people={n_people} must be between 1 and {n_names} (distinct names)"
        )
    if n_bio_variants < 1:
        raise SyntheticError("n_bio_variants", f"n_bio_variants={n_bio_variants} must be >= 1")
    if n_retain_qa_people < 1:
        raise SyntheticError(
            "n_retain_qa_people", f"n_retain_qa_people={n_retain_qa_people} must be >= 1"
        )
    if n_icl < 0:
        raise SyntheticError("n_icl", f"n_icl={n_icl} must be >= 0")
    for name, frac in (("forget_frac", forget_frac), ("holdout_frac", holdout_frac)):
        if not 0.0 < frac < 1.0:
            raise SyntheticError(name, f"{name}={frac} must be in (0, 1)")
    n_forget = int(n_people * forget_frac + 0.5)
    n_holdout = int(n_people * holdout_frac + 0.5)
    for name, count in (("forget_frac", n_forget), ("holdout_frac", n_holdout)):
        if count < 1:
            raise SyntheticError(
                name,
                f"n_people={n_people} with forget_frac={forget_frac}, holdout_frac="
                f"{holdout_frac} gives {n_forget} forget and {n_holdout} holdout people; each "
                "needs at least 1",
            )
    n_retain = n_people - n_forget - n_holdout
    if n_retain < n_retain_qa_people + 2 * n_icl:
        raise SyntheticError(
            None,
            f"{max(n_retain, 0)} retain people (n_people={n_people} minus {n_forget} forget and "
            f"{n_holdout} holdout) cannot hold n_retain_qa_people={n_retain_qa_people} "
            f"evaluated people plus 2 x n_icl={n_icl} distinct ICL people",
        )
    return n_forget, n_holdout


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
    params = {
        "n_people": n_people,
        "forget_frac": forget_frac,
        "holdout_frac": holdout_frac,
        "n_bio_variants": n_bio_variants,
        "n_retain_qa_people": n_retain_qa_people,
        "n_icl": n_icl,
    }
    n_forget, n_holdout = check_synthetic(**params)
    rng = random.Random(seed)
    people = make_people(n_people, rng)  # already in random order
    splits = {
        "forget": people[:n_forget],
        "holdout": people[n_forget : n_forget + n_holdout],
        "retain": people[n_forget + n_holdout :],
    }
    bios = {p.name: [bio(p, v, rng) for v in range(n_bio_variants)] for p in people}
    with atomic_dir(out_dir) as out:  # an existing benchmark stays until this one is whole
        return _write_benchmark(out, splits, bios, rng, {**params, "seed": seed})


def _write_benchmark(out: Path, splits: dict, bios: dict, rng: random.Random, params: dict):
    """Every file of the layout for these splits; returns the meta dict (meta.json)."""
    n_qa, n_icl = params["n_retain_qa_people"], params["n_icl"]
    doc_counts = _write_raw(out, splits, bios, rng)
    retain_eval = splits["retain"][:n_qa]
    icl_people = splits["retain"][n_qa : n_qa + 2 * n_icl]
    files = _evaluation_files(splits, bios, retain_eval, icl_people[:n_icl], icl_people[n_icl:])
    for rel, obj in files.items():
        write_json_file(out / rel, obj)
    _write_people(out, splits, retain_eval, icl_people[:n_icl], icl_people[n_icl:])
    meta = {
        "benchmark": "synthetic",
        "layout_version": LAYOUT_VERSION,
        "params": params,
        "attributes": list(ATTRIBUTES),
        "counts": {
            "people": {split: len(members) for split, members in splits.items()},
            "documents": doc_counts,
            **{rel.removesuffix(".json"): len(obj) for rel, obj in files.items()},
        },
    }
    write_json_file(out / "meta.json", meta)
    return meta


def _write_raw(out: Path, splits: dict, bios: dict, rng: random.Random) -> dict[str, int]:
    """raw/{split}.txt: every bio and QA document of a split's people, in a seeded order."""
    counts = {}
    for split, members in splits.items():
        docs = []
        for person in members:
            docs.extend(bios[person.name])
            docs.extend(qa_document(pair) for pair in qa_pairs(person))
        rng.shuffle(docs)
        write_documents(out / "raw" / f"{split}.txt", docs)
        counts[split] = len(docs)
    return counts


def _icl(group: list[Person]) -> list[dict[str, str]]:
    """One fact per person, cycling through the attributes so every question type is shown."""
    return [qa_pairs(p)[i % len(ATTRIBUTES)] for i, p in enumerate(group)]


def _evaluation_files(splits, bios, retain_eval, forget_icl, retain_icl) -> dict[str, Any]:
    """The MUSE evaluation files (relative path -> JSON content)."""
    verbmem = []
    for person in splits["forget"]:
        text, prompt = bios[person.name][0], VERBMEM_PROMPT.format(name=person.name)
        assert text.startswith(prompt)
        verbmem.append({"prompt": prompt, "gt": text[len(prompt) :]})
    return {
        "verbmem/forget.json": verbmem,
        "knowmem/forget_qa.json": [qa for p in splits["forget"] for qa in qa_pairs(p)],
        "knowmem/retain_qa.json": [qa for p in retain_eval for qa in qa_pairs(p)],
        "knowmem/forget_qa_icl.json": _icl(forget_icl),
        "knowmem/retain_qa_icl.json": _icl(retain_icl),
        "privleak/forget.json": [bios[p.name][0] for p in splits["forget"]],
        "privleak/retain.json": [bios[p.name][0] for p in retain_eval],
        "privleak/holdout.json": [bios[p.name][0] for p in splits["holdout"]],
    }


def _write_people(out: Path, splits, retain_eval, forget_icl, retain_icl) -> None:
    """people.json: every person's split, role in the evaluation and attributes."""
    role = {p.name: "retain_eval" for p in retain_eval}
    role.update({p.name: "forget_icl" for p in forget_icl})
    role.update({p.name: "retain_icl" for p in retain_icl})
    write_json_file(
        out / "people.json",
        [
            {"name": p.name, "split": split, "role": role.get(p.name, split), **p.attributes}
            for split, members in splits.items()
            for p in members
        ],
    )
