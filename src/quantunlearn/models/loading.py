"""Loading models and tokenizers: a hub id or a local folder, in a weight dtype, on CPU or GPU."""

from __future__ import annotations

import re
import shutil
from os import PathLike
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

from quantunlearn.data.provenance import parse_source, split_spec

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def default_device() -> str:
    """The GPU when there is one (a cluster job that requested it), else the CPU."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_tokenizer(path_or_id: str) -> PreTrainedTokenizerFast:
    """The tokenizer of a folder or ``owner/name[@revision]``, ready for batched prompts: pad =
    EOS when it has no pad token (Llama-2), left padding. Only this in-memory object changes;
    a model's folder gets the source's own files (`copy_tokenizer`)."""
    name, revision = split_spec(str(path_or_id))
    tok = AutoTokenizer.from_pretrained(name, revision=revision)
    check_special_tokens(tok)
    if tok.pad_token is None:  # Llama-2's tokenizer has none
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return tok


def check_special_tokens(tok) -> None:
    """Refuse a tokenizer that would corrupt every prompt: one that appends EOS to each text
    (``add_eos_token: true``, seen on hub copies of Llama-2's tokenizer) would end every
    VerbMem, KnowMem and utility prompt in EOS, so the model is asked to continue after the end
    of a text."""
    probe = tok("x")["input_ids"]
    if tok.eos_token_id is not None and len(probe) > 1 and probe[-1] == tok.eos_token_id:
        raise ValueError(
            f"tokenizer {tok.name_or_path!r} appends EOS ({tok.eos_token!r}) to every text "
            "(add_eos_token: true in its tokenizer_config.json): every prompt would end in EOS. "
            "Use a copy with add_eos_token false, or name another tokenizer in the config "
            "(benchmarks.<name>.models.tokenizer)."
        )


#: What a tokenizer is saved as, in the formats transformers reads (SentencePiece and fast).
TOKENIZER_FILES = (
    "tokenizer.model",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
)


def copy_tokenizer(source: str, out_dir: str | PathLike) -> list[str]:
    """Store a tokenizer next to a model as its source's own files, not re-saved.

    transformers 5 re-saves a loaded tokenizer without tokenizer.model and without the
    ``legacy`` key (so it reloads with other settings) and with whatever was changed in memory
    (`load_tokenizer`'s pad token and padding side). Copying the files keeps the tokenizer of
    an unlearned model the target's. A hub source is read from the hub cache.
    """
    parsed = parse_source(str(source))
    if parsed.kind == "local":
        folder = Path(parsed.path)
    else:  # a hub id outside the workflow (jobs get pinned local folders)
        from huggingface_hub import snapshot_download

        folder = Path(
            snapshot_download(
                parsed.repo_id, revision=parsed.revision, allow_patterns=list(TOKENIZER_FILES)
            )
        )
    copied = [name for name in TOKENIZER_FILES if (folder / name).is_file()]
    if not copied:
        raise FileNotFoundError(f"{source} holds no tokenizer files ({', '.join(TOKENIZER_FILES)})")
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    for name in copied:
        shutil.copy2(folder / name, Path(out_dir) / name)
    return copied


def device_map(gpus: int = 1) -> str:
    """Where `load_model` puts a model's layers: the one device (``default_device``), or, for a
    job given ``gpus`` > 1 (the plan's request when one GPU does not hold it), ``"auto"``:
    accelerate spreads the decoder layers evenly over the visible GPUs, one model-parallel
    process (the seeds' unlearning on 4 GPUs). The layers then run one after another, each on
    its GPU, with the same operations as on one device."""
    if gpus <= 1:
        return default_device()
    if torch.cuda.is_available() and torch.cuda.device_count() < gpus:
        raise RuntimeError(
            f"the job asked for {gpus} GPUs but sees {torch.cuda.device_count()}: run it "
            "where its GPUs are visible (SLURM: --gpus, set by the plan's `gpu` resource)"
        )
    return "auto"


def load_model(path_or_id: str, dtype: str = "fp32", gpus: int = 1) -> torch.nn.Module:
    """Load a causal LM from a local folder or a hub id, in the given weight dtype, on CPU/GPU
    (across ``gpus`` GPUs: `device_map`)."""
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {sorted(DTYPES)}")
    name, revision = split_spec(str(path_or_id))
    model = AutoModelForCausalLM.from_pretrained(
        check_model_path(name), revision=revision, dtype=DTYPES[dtype], device_map=device_map(gpus)
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


def check_checkpoint(folder: str | PathLike) -> None:
    """A downloaded model folder the jobs can load offline: a config transformers reads and
    safetensors weights, every shard of its index present."""
    import json

    from transformers import AutoConfig

    folder = Path(folder)
    AutoConfig.from_pretrained(folder)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = set(json.loads(index.read_text())["weight_map"].values())
        missing = sorted(s for s in shards if not (folder / s).is_file())
        if missing:
            raise FileNotFoundError(f"{folder}: weight shards {missing} of its index are missing")
    elif not (folder / "model.safetensors").is_file():
        raise FileNotFoundError(
            f"{folder} holds no safetensors weights (model.safetensors or an index with shards); "
            "the download fetches safetensors only (quantunlearn.data.provenance.MODEL_PATTERNS)"
        )
