"""Greedy generation for the evaluation: the outputs of transformers' ``generate``, faster.

Generation is greedy and decodes the continuation only (``skip_special_tokens=True``), as the
MUSE evaluation code does. MUSE also passed ``clean_up_tokenization_spaces=True``; transformers 5
ignores it for BPE tokenizers (with a warning) because it corrupts BPE text, so we decode without
it. It only joins " n't"-style splits and spaces before punctuation, which ROUGE's tokenizer
drops anyway.

`greedy_generate` returns what `_greedy_generate_hf` (``generate`` on left-padded batches of
whole prompts) returns, with three savings:

1. **The shared prefix once.** Every prompt is tokenized whole, as ``generate`` gets it; the
   longest common *token* prefix of all prompts (KnowMem's ten in-context examples, about 90 %
   of each prompt) runs through the model once, and its keys and values are copied into the
   cache of every batch. Splitting the token lists, never the strings, keeps the tokens
   identical: tokenizing shots and question apart can merge or split tokens at the boundary
   (BPE merges across it; SentencePiece prepends "▁" to the second part) and adds a second BOS.
2. **Batches by the length of each row's own part**, padded between the prefix and the suffix
   (masked; positions continue the prefix's), written in place into a preallocated cache.
3. **Rows leave when done**: at EOS, at a stop string, or after ``max_new_tokens``; a KnowMem
   answer of three tokens does not wait for the batch's slowest row.

Greedy decoding is a function of the logits; the cached, regrouped computation gives the same
logits up to floating-point summation order (which already differs between batch sizes of
``generate``), so every token is the same unless two logits tie within rounding
(tests/test_generation.py checks token identity with batch-1 ``generate`` and with the reference
path, on random, trained and quantized models).

A model whose outputs depend on which rows share its batch cannot be reproduced by any other
batching: LLM.int8 (Dettmers et al., "LLM.int8(): 8-bit Matrix Multiplication for Transformers
at Scale", NeurIPS 2022) keeps in 16 bits the input columns where *any* row of the batch has an
outlier. The cell passes its quantizer's ``batch_invariant`` flag, and such models take the
reference path.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm
from transformers import DynamicCache, GenerationConfig
from transformers.cache_utils import DynamicLayer

from quantunlearn.quantizers.base import RuntimeModel

MIN_PREFIX = 8
"""A common prefix shorter than this many tokens is not computed apart (nothing to save)."""


def cut_at_stop(text: str, stop_strings: Sequence[str]) -> str:
    """`text` up to (not including) the earliest occurrence of any of `stop_strings`."""
    cut = len(text)
    for stop in stop_strings:
        if not stop:
            raise ValueError("stop_strings must not contain the empty string")
        position = text.find(stop)
        if position != -1:
            cut = min(cut, position)
    return text[:cut]


def end_token_ids(tokenizer) -> list[int]:
    """The tokens that end an answer: EOS, and Llama-3's end of turn <|eot_id|> where the
    vocabulary has it (RWKU's evaluation stops at both: eval_forget.py's terminators)."""
    eot = tokenizer.convert_tokens_to_ids("<|eot_id|>")  # a token not in the vocabulary: unk
    ids = [tokenizer.eos_token_id, None if eot == tokenizer.unk_token_id else eot]
    return list(dict.fromkeys(i for i in ids if i is not None))


def _greedy_config(tokenizer, max_new_tokens: int) -> GenerationConfig:
    """Plain greedy decoding, whatever sampling defaults the checkpoint's generation_config has.

    transformers fills every field left None here from `model.generation_config` (Llama-2 ships
    do_sample=True, temperature 0.6, top_p 0.9), so each field that changes the argmax is explicit.
    """
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return GenerationConfig(
        max_new_tokens=max_new_tokens,
        min_new_tokens=0,
        do_sample=False,
        num_beams=1,
        repetition_penalty=1.0,
        no_repeat_ngram_size=0,
        use_cache=True,
        pad_token_id=pad,
        eos_token_id=_one_or_list(end_token_ids(tokenizer)),
        bos_token_id=tokenizer.bos_token_id,
    )


def check_positive(**values: float) -> None:
    for name, value in values.items():
        if value < 1:
            raise ValueError(f"{name}={value} must be a positive integer")


@dataclass(frozen=True)
class Execution:
    """How `greedy_generate` does its work and shows it, never what it generates."""

    desc: str | None = None  # the progress bar's label
    #: False for a model whose outputs depend on the other rows of a batch (the cell's
    #: `Quantizer.batch_invariant`: LLM.int8): the reference path
    batch_invariant: bool = True
    #: compute the prompts' common token prefix once (False: every prompt whole; tests)
    share_prefix: bool = True


DEFAULT_EXECUTION = Execution()


def greedy_generate(
    model,
    tokenizer,
    prompts: list[str],
    max_new_tokens: int,
    batch_size: int = 32,
    stop_strings: list[str] | None = None,
    *,
    execution: Execution = DEFAULT_EXECUTION,
    return_ids: bool = False,
):
    """Greedy continuations of `prompts` (decoded continuation only), in the input order.

    Each prompt is tokenized whole (the tokenizer adds BOS); the continuation is decoded up to
    EOS or `max_new_tokens` and, with `stop_strings`, cut at the earliest occurrence of any of
    them. The outputs are those of transformers' ``generate`` (`_greedy_generate_hf`); the work
    is not (module docstring): the prompts' common token prefix is computed once, rows are
    batched by the length of their own part and leave the batch when done.

    ``execution.batch_invariant=False`` (the cell's `Quantizer.batch_invariant`: LLM.int8, whose
    outputs depend on the other rows of a batch) takes the reference path itself; a
    `RuntimeModel` (llama.cpp) `_runtime_generate`. ``return_ids``: also each row's generated
    ids (up to the token that ended it), for token-level tests."""
    check_positive(max_new_tokens=max_new_tokens, batch_size=batch_size)
    stops = _stop_tuple(stop_strings)
    if not prompts:
        return ([], []) if return_ids else []
    if isinstance(model, RuntimeModel):
        return _runtime_generate(model, tokenizer, prompts, max_new_tokens, stops, return_ids)
    if not execution.batch_invariant:
        if return_ids:
            raise ValueError("return_ids: the reference path (batch_invariant=False) keeps no ids")
        return _greedy_generate_hf(
            model, tokenizer, prompts, max_new_tokens, batch_size, stop_strings, execution.desc
        )
    encoded = _encode(tokenizer, prompts)
    # a cache that is not all full-attention layers (sliding windows, linear attention): no
    # shared prefix, transformers' own cache layers
    preallocate = supports_preallocation(model)
    n_prefix = shared_prefix_length(encoded) if execution.share_prefix and preallocate else 0
    generated: list[list[int]] = [[] for _ in prompts]
    suffixes = [ids[n_prefix:] for ids in encoded]
    batches = length_batches([len(s) for s in suffixes], batch_size)
    with torch.inference_mode():
        prefix = prefix_cache(model, encoded[0][:n_prefix]) if n_prefix else None
        for batch in tqdm(batches, desc=execution.desc or "generate", unit="batch", leave=False):
            rows = _generate_batch(
                model,
                tokenizer,
                [suffixes[i] for i in batch],
                prefix,
                max_new_tokens,
                stops,
                preallocate,
            )
            for index, ids in zip(batch, rows, strict=True):
                generated[index] = ids
    return _finish(tokenizer, generated, stops, return_ids)


def _runtime_generate(
    model: RuntimeModel, tokenizer, prompts: list[str], max_new_tokens: int, stops, return_ids
):
    """`greedy_generate` in a runtime outside torch (llama.cpp): the same token ids in, the
    generated ids out, decoded and cut here exactly as on the torch path."""
    generated = model.greedy_ids(
        _encode(tokenizer, prompts),
        max_new_tokens,
        end_token_ids(tokenizer),
        lambda ids: bool(stops) and _has_stop(tokenizer, ids, stops),
    )
    return _finish(tokenizer, generated, stops, return_ids)


def _finish(tokenizer, generated: list[list[int]], stops, return_ids: bool):
    """Each row's continuation decoded up to its end token and cut at the first stop string."""
    outputs = [_decode_until_eos(tokenizer, ids) for ids in generated]
    if stops:
        outputs = [cut_at_stop(text, stops) for text in outputs]
    return (outputs, generated) if return_ids else outputs


def _stop_tuple(stop_strings: Sequence[str] | None) -> tuple[str, ...]:
    stops = tuple(stop_strings or ())
    if any(not stop for stop in stops):
        raise ValueError("stop_strings must not contain the empty string")
    return stops


def _encode(tokenizer, prompts: Sequence[str]) -> list[list[int]]:
    """Each prompt's ids, whole (the tokenizer adds BOS); an empty one is an error."""
    encoded = tokenizer(list(prompts))["input_ids"]
    for i, ids in enumerate(encoded):
        if not ids:
            raise ValueError(f"prompts[{i}] tokenizes to no tokens")
    return encoded


def common_prefix_length(sequences: Sequence[Sequence[int]]) -> int:
    """Length of the longest common prefix of token id lists (0 for no lists)."""
    if not sequences:
        return 0
    first, n = sequences[0], min(len(s) for s in sequences)
    for seq in sequences[1:]:
        i = 0
        while i < n and seq[i] == first[i]:
            i += 1
        n = i
    return n


def shared_prefix_length(encoded: Sequence[Sequence[int]], min_prefix: int = MIN_PREFIX) -> int:
    """Tokens computed once for all rows: the common prefix, leaving every row at least its last
    token (whose logits give the first generated token); 0 when that is shorter than
    `min_prefix` or there is a single prompt."""
    if len(encoded) < 2:
        return 0
    length = min(common_prefix_length(encoded), min(len(e) for e in encoded) - 1)
    return length if length >= min_prefix else 0


def length_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices sorted by length (longest first, ties in input order), chunked by batch_size."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def prefix_cache(model, prefix: Sequence[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(keys, values) of every layer for `prefix` (batch 1, positions 0..P-1).

    Causal attention: a prefix's keys and values depend on the prefix tokens only, so they are
    the same in every prompt that starts with these tokens."""
    ids = torch.tensor([list(prefix)], dtype=torch.long, device=model.device)
    out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
    return [(layer.keys, layer.values) for layer in out.past_key_values.layers]


class PreallocatedLayer(DynamicLayer):
    """A full-attention KV-cache layer that writes new positions in place.

    transformers' DynamicLayer concatenates on every update, copying the batch's whole cache
    once per step and layer (with a 170-token shared prefix over 64 rows, 44 % of KnowMem's time
    on the tiny model). Here the buffers hold `capacity` positions; `update` writes after the
    first `length` and returns views of the filled part: attention sees the same numbers.
    """

    def __init__(self, capacity: int, batch: int, prefix=None):
        super().__init__()
        self.capacity, self.batch, self.length = capacity, batch, 0
        if prefix is not None:
            keys, values = prefix
            self._allocate(keys, values)
            self.keys[:, :, : keys.shape[2]] = keys  # a batch-1 prefix, broadcast over the rows
            self.values[:, :, : values.shape[2]] = values
            self.length = keys.shape[2]

    def _allocate(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        self.dtype, self.device = keys.dtype, keys.device
        shape = (self.batch, keys.shape[1], self.capacity)
        self.keys = keys.new_empty((*shape, keys.shape[3]))
        self.values = values.new_empty((*shape, values.shape[3]))
        self.is_initialized = True

    def lazy_initialization(self, key_states, value_states) -> None:
        self._allocate(key_states, value_states)

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self._allocate(key_states, value_states)
        end = self.length + key_states.shape[-2]
        if end > self.capacity:
            raise RuntimeError(f"KV cache capacity {self.capacity} exceeded ({end} positions)")
        self.keys[:, :, self.length : end] = key_states
        self.values[:, :, self.length : end] = value_states
        self.length = end
        return self.keys[:, :, :end], self.values[:, :, :end]

    def get_seq_length(self) -> int:
        return self.length

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self.keys = self.keys.index_select(0, indices)
        self.values = self.values.index_select(0, indices)


def supports_preallocation(model) -> bool:
    """Whether every layer of the model's cache is a plain full-attention DynamicLayer."""
    return all(type(layer) is DynamicLayer for layer in DynamicCache(config=model.config).layers)


def batch_cache(model, prefix, batch: int, capacity: int) -> DynamicCache:
    """A cache of `batch` rows and `capacity` positions holding the batch-1 `prefix` (or none)."""
    cache = DynamicCache(config=model.config)
    if prefix is None:
        cache.layers = [PreallocatedLayer(capacity, batch) for _ in cache.layers]
    else:
        cache.layers = [PreallocatedLayer(capacity, batch, layer) for layer in prefix]
    return cache


def _generate_batch(
    model, tokenizer, suffixes: list[list[int]], prefix, max_new_tokens: int, stops, preallocate
) -> list[list[int]]:
    """Greedy tokens of one batch laid out as [shared prefix (cached) | left padding | suffix].

    Each step is one forward of the last tokens (logits of the last position only), argmax in
    fp32 (first index on ties), as `generate`'s greedy step; a row leaves the batch and its
    cache at EOS, at a stop string in its decoded continuation, or after `max_new_tokens`.
    """
    device = model.device
    n_prefix = prefix[0][0].shape[2] if prefix else 0
    batch, width = len(suffixes), max(len(s) for s in suffixes)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids = torch.full((batch, width), pad, dtype=torch.long)
    suffix_mask = torch.zeros((batch, width), dtype=torch.long)
    for row, suffix in enumerate(suffixes):
        ids[row, width - len(suffix) :] = torch.tensor(suffix, dtype=torch.long)
        suffix_mask[row, width - len(suffix) :] = 1
    # real tokens continue the prefix's positions; padding gets 0 as in generate (masked anyway)
    positions = (n_prefix + suffix_mask.cumsum(-1) - 1).masked_fill(suffix_mask == 0, 0)
    mask = torch.cat([torch.ones((batch, n_prefix), dtype=torch.long), suffix_mask], dim=1)
    step_ids, positions, mask = ids.to(device), positions.to(device), mask.to(device)
    if preallocate:
        cache = batch_cache(model, prefix, batch, n_prefix + width + max_new_tokens)
    else:
        cache = DynamicCache(config=model.config)
    alive = list(range(batch))  # batch row of each row still decoding
    out: list[list[int]] = [[] for _ in range(batch)]
    ends = end_token_ids(tokenizer)
    for step in range(max_new_tokens):
        logits = model(
            input_ids=step_ids,
            attention_mask=mask,
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        ).logits
        tokens = logits[:, -1, :].float().argmax(dim=-1).tolist()
        keep = []
        for j, token in enumerate(tokens):
            out[alive[j]].append(token)
            done = token in ends or step + 1 == max_new_tokens
            if not done and not (stops and _has_stop(tokenizer, out[alive[j]], stops)):
                keep.append(j)
        if not keep:
            break
        if len(keep) < len(alive):
            index = torch.tensor(keep, dtype=torch.long, device=device)
            cache.batch_select_indices(index)
            mask, positions = mask.index_select(0, index), positions.index_select(0, index)
            alive = [alive[j] for j in keep]
        step_ids = torch.tensor([[tokens[j]] for j in keep], dtype=torch.long, device=device)
        positions = positions[:, -1:] + 1
        mask = torch.cat([mask, mask.new_ones((len(alive), 1))], dim=1)
    return out


def _has_stop(tokenizer, ids: list[int], stops: Sequence[str]) -> bool:
    """The reference's stopping rule (`_StopOnStrings`): a stop string in the decoded text."""
    text = tokenizer.decode(ids, skip_special_tokens=True)
    return any(stop in text for stop in stops)


def _greedy_generate_hf(
    model,
    tokenizer,
    prompts: list[str],
    max_new_tokens: int,
    batch_size: int = 32,
    stop_strings: list[str] | None = None,
    desc: str | None = None,
) -> list[str]:
    """The reference path: transformers' ``generate`` on whole prompts, left-padded batches.

    Prompts are sorted by token length, batched with left padding and an attention mask, and
    decoded with the KV cache until EOS or `max_new_tokens` (a batch stops when all its rows hold
    a stop string). `greedy_generate` takes this path for models that are not batch-invariant;
    the tests use it as the reference of the fast path.
    """
    lengths = [len(ids) for ids in tokenizer(list(prompts))["input_ids"]]
    batches = length_batches(lengths, batch_size)
    config = _greedy_config(tokenizer, max_new_tokens)
    device = model.device
    outputs: list[str] = [""] * len(prompts)
    padding_side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # continuations must start at the same column in every row
    try:
        with torch.inference_mode():
            for batch in tqdm(batches, desc=desc or "generate", unit="batch", leave=False):
                enc = tokenizer([prompts[i] for i in batch], return_tensors="pt", padding=True).to(
                    device
                )
                stopping = None
                if stop_strings:
                    width = enc["input_ids"].shape[1]
                    stopping = [_StopOnStrings(tokenizer, stop_strings, width)]
                generated = model.generate(
                    input_ids=enc["input_ids"],
                    attention_mask=enc["attention_mask"],
                    generation_config=config,
                    stopping_criteria=stopping,
                )
                continuation = generated[:, enc["input_ids"].shape[1] :].tolist()
                for row, index in enumerate(batch):
                    outputs[index] = _decode_until_eos(tokenizer, continuation[row])
    finally:
        tokenizer.padding_side = padding_side
    if stop_strings:
        outputs = [cut_at_stop(text, stop_strings) for text in outputs]
    return outputs


class _StopOnStrings:
    """Stop a row once its continuation holds a stop string: only a time saving.

    The continuations are still cut at the first stop string afterwards, and with greedy causal
    decoding the tokens before the stop do not depend on whether generation goes on, so the
    outputs are the same as decoding all `max_new_tokens` and cutting (tested).
    """

    def __init__(self, tokenizer, stop_strings: Sequence[str], prompt_width: int):
        self.tokenizer, self.stops, self.width = tokenizer, tuple(stop_strings), prompt_width

    def __call__(self, input_ids: torch.Tensor, scores=None, **kwargs) -> torch.Tensor:
        texts = self.tokenizer.batch_decode(input_ids[:, self.width :], skip_special_tokens=True)
        done = [any(stop in text for stop in self.stops) for text in texts]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


def _one_or_list(ids: list[int]):
    """One id as an int (what the config held before Llama-3's end of turn was added)."""
    return ids[0] if len(ids) == 1 else (ids or None)


def _decode_until_eos(tokenizer, ids: list[int]) -> str:
    ends = [ids.index(end) for end in end_token_ids(tokenizer) if end in ids]
    if ends:
        ids = ids[: min(ends)]
    return tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
