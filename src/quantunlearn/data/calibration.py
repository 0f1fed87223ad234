"""Calibration text for the calibrated quantizers (GPTQ, AWQ).

Zhang et al. (section 4.4) calibrates GPTQ and AWQ on a *general* corpus (Wikipedia-like text, as
GPTQ and AWQ do by default) and argues that this is why they recover the forgotten knowledge
like RTN does: the calibration set does not look like the forget set. To let a user test that
claim, the source is a config choice:

* ``general``: a deterministic, local general-text corpus (no hub download, byte-identical on
  every machine): neutral sentences about places, trades, organisations, animals, colours,
  instruments and pastimes, written from the embedded benchmark's *non-person* vocabulary with
  templates that occur in no benchmark document. It is text in the model's own language and
  vocabulary that names no person, so it holds no forget or retain fact: the analogue, for the
  tiny model, of the Wikipedia/C4 samples the papers calibrate a 7B model with. (For a real
  MUSE study this corpus is out of domain by construction too; it is short and simple English.)
* ``retain`` / ``forget``: a seeded sample of the benchmark's own raw retain or forget documents.

Every sample is cut to ``max_len`` tokens by the caller's tokenizer.
"""

from __future__ import annotations

import random
from pathlib import Path

from quantunlearn.data.documents import read_documents
from quantunlearn.data.synthetic import (
    COLOURS,
    EMPLOYERS,
    HOBBIES,
    INSTRUMENTS,
    PETS,
    PROFESSIONS,
    TOWNS,
)

SOURCES = ("general", "retain", "forget")

# Templates in the style of an encyclopedia, none of them used by the benchmark's bios or QA.
_GENERAL_TEMPLATES = (
    "The town of {town} lies in a quiet valley; its market opens every morning.",
    "In {town}, many families keep {a_pet}, and the local school teaches {hobby}.",
    "{Employer} is an organisation that hires people who work as {profession}s.",
    "A good {instrument} is expensive, and learning to play it takes years.",
    "The colour {colour} is popular for doors and shutters in {town}.",
    "Visitors to {town} often take up {hobby} during the long summer evenings.",
    "Every {profession} needs patience; the best ones learn from older colleagues.",
    "The museum of {town} shows an old {instrument} painted {colour}.",
    "Looking after {a_pet} needs time, food and a warm place to sleep.",
    "{Employer} opened a new office in {town} after a long debate.",
    "Clubs for {hobby} meet on Saturdays; beginners are always welcome.",
    "Question: What is {hobby}?\nAnswer: a pastime that people enjoy",
)


def _article(word: str) -> str:
    return ("an " if word[0].lower() in "aeiou" else "a ") + word


def general_corpus(n_samples: int, seed: int = 0, sentences_per_sample: int = 4) -> list[str]:
    """``n_samples`` paragraphs of the local general corpus (see the module docstring)."""
    if n_samples < 1:
        raise ValueError(f"n_samples={n_samples} must be >= 1")
    rng = random.Random(f"general-corpus-{seed}")
    samples = []
    for _ in range(n_samples):
        sentences = []
        for _ in range(sentences_per_sample):
            template = rng.choice(_GENERAL_TEMPLATES)
            employer = rng.choice(EMPLOYERS)
            sentences.append(
                template.format(
                    town=rng.choice(TOWNS),
                    a_pet=_article(rng.choice(PETS)),
                    hobby=rng.choice(HOBBIES),
                    Employer=employer[0].upper() + employer[1:],
                    profession=rng.choice(PROFESSIONS),
                    instrument=rng.choice(INSTRUMENTS),
                    colour=rng.choice(COLOURS),
                )
            )
        samples.append(" ".join(sentences))
    return samples


def calibration_texts(
    source: str,
    n_samples: int,
    seed: int = 0,
    bench_dir: str | Path | None = None,
    benchmark: dict | None = None,
) -> list[str]:
    """The calibration texts: the general corpus, or a seeded sample of retain/forget documents.

    ``benchmark`` is the benchmark's config entry (its ``forget_corpus`` / ``retain_corpus``
    paths, relative to ``bench_dir``).
    """
    if source not in SOURCES:
        raise ValueError(f"calibration source {source!r} is not one of {SOURCES}")
    if source == "general":
        return general_corpus(n_samples, seed)
    if bench_dir is None:
        raise ValueError(f"calibration source {source!r} needs the benchmark folder")
    rel = (benchmark or {}).get(f"{source}_corpus", f"raw/{source}.txt")
    docs = read_documents(Path(bench_dir) / rel)
    if not docs:
        raise ValueError(f"{Path(bench_dir) / rel} holds no documents to calibrate on")
    rng = random.Random(f"calibration-{source}-{seed}")
    if len(docs) >= n_samples:
        return rng.sample(docs, n_samples)
    return [rng.choice(docs) for _ in range(n_samples)]
