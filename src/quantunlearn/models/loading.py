"""Loading models and tokenizers: a hub id or a local folder, in a weight dtype, on CPU or GPU."""

from __future__ import annotations

import re
from os import PathLike
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def default_device() -> str:
    """The GPU when there is one (a cluster job that requested it), else the CPU."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_tokenizer(path_or_id: str) -> PreTrainedTokenizerFast:
    tok = AutoTokenizer.from_pretrained(path_or_id)
    if tok.pad_token is None:  # Llama-2's tokenizer has none
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return tok


def load_model(path_or_id: str, dtype: str = "fp32") -> torch.nn.Module:
    """Load a causal LM from a local folder or a hub id, in the given weight dtype, on CPU/GPU."""
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {sorted(DTYPES)}")
    model = AutoModelForCausalLM.from_pretrained(
        check_model_path(path_or_id), dtype=DTYPES[dtype], device_map=default_device()
    )
    model.eval()
    return model


_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)?")


def check_model_path(model_path: str | PathLike) -> str:
    """Raise FileNotFoundError for a missing local model folder; hub ids pass through."""
    text = str(model_path)
    path = Path(text).expanduser()
    looks_local = (
        isinstance(model_path, PathLike)
        or path.is_absolute()
        or text.startswith((".", "~"))
        or not _HUB_ID.fullmatch(text)
    )
    if path.exists():
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"{text} exists but holds no config.json: not a saved model")
    elif looks_local:
        raise FileNotFoundError(f"model path {text} does not exist")
    return str(path) if path.exists() else text


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The decoder blocks of a causal LM (``model.model.layers`` for Llama-style models), which
    RMU steers and RMU_LAT's adversary perturbs."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    layers = getattr(decoder, "layers", None)
    if not isinstance(layers, torch.nn.ModuleList):
        raise ValueError(
            f"RMU needs a decoder with a `layers` list; {type(model).__name__} has none"
        )
    return layers
