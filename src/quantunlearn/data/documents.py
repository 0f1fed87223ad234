"""Raw text corpora: documents separated by blank lines, tokenized and packed into sequences."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

from tqdm.auto import tqdm

_BLANK_LINES = re.compile(r"\n[ \t\r]*\n")
IGNORE = -100  # label of positions that carry no loss (transformers convention)


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
    """Each document as BOS + tokens + EOS: BOS added if the tokenizer does not prepend it, EOS
    appended unless the tokenizer already did (a tokenizer with ``add_eos_token``)."""
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
            token_lists.append(ids if ids and ids[-1] == eos else [*ids, eos])
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


class TextCorpus:
    """A raw text file as unlearning data (MUSE): its documents packed into sequences of at
    most ``max_len`` tokens, each document BOS + tokens + EOS, every token labelled."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"TextCorpus({str(self.path)!r})"

    def texts(self) -> list[str]:
        return read_documents(self.path)

    def document_examples(self, tokenizer, max_len: int) -> list[list[int]]:
        return pack_documents(self.texts(), tokenizer, max_len)

    def refusal_pairs(self) -> list[tuple[str, str]]:
        raise ValueError(
            f"{self.path} is a text corpus: it has no (question, refusal) pairs for rejection "
            "tuning (an RWKU-layout benchmark has them)"
        )
