"""Greedy generation for the evaluation: batched, left-padded, with the KV cache and stop strings.

Generation is greedy and decodes the continuation only (``skip_special_tokens=True``), as the
MUSE evaluation code does. MUSE also passed ``clean_up_tokenization_spaces=True``; transformers 5
ignores it for BPE tokenizers (with a warning) because it corrupts BPE text, so we decode without
it. It only joins " n't"-style splits and spaces before punctuation, which ROUGE's tokenizer
drops anyway.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm.auto import tqdm
from transformers import GenerationConfig


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
    ids = [tokenizer.eos_token_id]
    if "<|eot_id|>" in tokenizer.get_vocab():
        ids.append(tokenizer.convert_tokens_to_ids("<|eot_id|>"))
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


def greedy_generate(
    model,
    tokenizer,
    prompts: list[str],
    max_new_tokens: int,
    batch_size: int = 32,
    stop_strings: list[str] | None = None,
    desc: str | None = None,
) -> list[str]:
    """Greedy continuations of `prompts` (decoded continuation only), in the input order.

    Prompts are sorted by token length, batched with left padding and an attention mask, and
    decoded with the KV cache until EOS or `max_new_tokens`. The tokenizer adds BOS itself. With
    `stop_strings`, each continuation is cut at the earliest occurrence of any of them.
    """
    check_positive(max_new_tokens=max_new_tokens, batch_size=batch_size)
    if not prompts:
        return []
    lengths = [len(ids) for ids in tokenizer(list(prompts))["input_ids"]]
    order = sorted(range(len(prompts)), key=lambda i: -lengths[i])
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
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
