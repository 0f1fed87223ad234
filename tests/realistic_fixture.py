"""Hub-shaped fixtures built offline: a Llama-2-like checkpoint, a MUSE dataset repo, a hub cache.

The real-model path (a 7B Llama-2 fine-tune, Llama-2's SentencePiece tokenizer, MUSE on the
hub) cannot run here, so the tests run the project on look-alikes that transformers, datasets
and huggingface_hub read exactly as they read the real ones.

`build_checkpoint(out_dir, texts)` writes, in one folder, what a MUSE target / an unlearned
Llama-2-7B repo on the Hugging Face hub holds, at toy scale:

- config.json of a randomly initialised `LlamaForCausalLM` (Llama-2's ids: <unk> 0, <s> 1,
  </s> 2; no pad_token_id; untied embeddings; RMSNorm eps 1e-5), saved by `save_pretrained`;
- the weights as several safetensors shards plus model.safetensors.index.json
  (`max_shard_size`), in bf16 by default;
- generation_config.json with Llama-2-7b-hf's sampling defaults (do_sample true, temperature
  0.6, top_p 0.9, max_length 4096, pad_token_id 0), so greedy decoding must be asked for;
- the tokenizer as the hub repo ships it: a SentencePiece BPE model (`tokenizer.model`) trained
  here with Llama-2's trainer options (byte fallback, split digits, identity normalisation, a
  dummy prefix, whitespace kept), tokenizer_config.json with `LlamaTokenizer`,
  add_bos_token true, add_eos_token false, no pad token, `legacy` as asked, and
  special_tokens_map.json. No tokenizer.json: transformers converts tokenizer.model itself,
  which needs the `sentencepiece` package (and protobuf).

Llama-2-7b-hf's tokenizer_config.json today says `"legacy": false`; its first revision had no
`legacy` key, which transformers 4.x read as legacy=True. In transformers 5.23 `legacy` only
changes how text after a special token is prefixed (Metaspace prepend "always" vs "first");
"Answer: " tokenizes the same either way.

Every Linear dimension and the vocabulary are multiples of 128 (bitsandbytes' CPU kernels and
the GPTQ/AWQ group size need that; Llama-2's 32000 is one too).
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable
from pathlib import Path

# Llama-2-7b-hf's generation_config.json (hub revision of 2023, unchanged since).
LLAMA2_GENERATION_CONFIG = {
    "bos_token_id": 1,
    "do_sample": True,
    "eos_token_id": 2,
    "pad_token_id": 0,
    "temperature": 0.6,
    "max_length": 4096,
    "top_p": 0.9,
}


def _added_token(content: str) -> dict:
    return {
        "__type": "AddedToken",
        "content": content,
        "lstrip": False,
        "normalized": False,
        "rstrip": False,
        "single_word": False,
    }


def llama2_tokenizer_config(legacy: bool = True) -> dict:
    """tokenizer_config.json in the shape of meta-llama/Llama-2-7b-hf's (slow-tokenizer era)."""
    return {
        "add_bos_token": True,
        "add_eos_token": False,
        "bos_token": _added_token("<s>"),
        "clean_up_tokenization_spaces": False,
        "eos_token": _added_token("</s>"),
        "legacy": legacy,
        "model_max_length": 1000000000000000019884624838656,
        "pad_token": None,
        "padding_side": "right",
        "sp_model_kwargs": {},
        "tokenizer_class": "LlamaTokenizer",
        "unk_token": _added_token("<unk>"),
    }


def llama2_special_tokens_map() -> dict:
    """special_tokens_map.json as Llama-2-7b-hf ships it: BOS, EOS, UNK and no pad token."""
    plain = {k: v for k, v in _added_token("").items() if k not in ("__type", "content")}
    return {
        key: {"content": content, **plain}
        for key, content in (("bos_token", "<s>"), ("eos_token", "</s>"), ("unk_token", "<unk>"))
    }


def train_sentencepiece(texts: Iterable[str], vocab_size: int = 512) -> bytes:
    """A SentencePiece BPE model with Llama-2's trainer options, as the bytes of tokenizer.model.

    Lines are fed one by one, so "\\n" is never a learnt piece and, as in Llama-2, a newline
    becomes the byte-fallback token <0x0A>. ``vocab_size`` is an upper bound (a small corpus
    yields fewer merges); it must leave room for the 256 byte pieces, the three specials and
    every character of ``texts``. BPE training is deterministic: same texts, same bytes.
    """
    import sentencepiece as spm

    lines = [line for text in texts for line in text.split("\n") if line.strip()]
    if not lines:
        raise ValueError("train_sentencepiece needs some non-empty text")
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=model,
        model_type="bpe",
        vocab_size=vocab_size,
        byte_fallback=True,
        split_digits=True,
        allow_whitespace_only_pieces=True,
        normalization_rule_name="identity",
        add_dummy_prefix=True,
        remove_extra_whitespaces=False,
        character_coverage=1.0,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        unk_piece="<unk>",
        bos_piece="<s>",
        eos_piece="</s>",
        hard_vocab_limit=False,
        num_threads=1,
        minloglevel=2,
    )
    return model.getvalue()


def write_tokenizer(out_dir: str | Path, sp_model: bytes, legacy: bool = True) -> Path:
    """tokenizer.model + tokenizer_config.json + special_tokens_map.json, as on the hub."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "tokenizer.model").write_bytes(sp_model)
    (out / "tokenizer_config.json").write_text(
        json.dumps(llama2_tokenizer_config(legacy), indent=2) + "\n", encoding="utf-8"
    )
    (out / "special_tokens_map.json").write_text(
        json.dumps(llama2_special_tokens_map(), indent=2) + "\n", encoding="utf-8"
    )
    return out


def build_checkpoint(
    out_dir: str | Path,
    texts: Iterable[str],
    *,
    vocab_size: int = 512,
    hidden_size: int = 128,
    intermediate_size: int = 384,
    num_layers: int = 2,
    num_heads: int = 4,
    dtype: str = "bf16",
    max_shard_size: str | int = "400KB",
    legacy: bool = True,
    tokenizer_json: bool = False,
    seed: int = 0,
) -> dict:
    """Write a hub-like Llama-2 checkpoint (random weights, local tokenizer) into ``out_dir``.

    ``tokenizer_json`` also writes the converted fast tokenizer (tokenizer.json, as the
    Llama-2 hub repo also ships one), so that an environment without sentencepiece can load
    it. Returns a summary: the files written, the number of weight shards and parameters.
    """
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    for name, value in (
        ("vocab_size", vocab_size),
        ("hidden_size", hidden_size),
        ("intermediate_size", intermediate_size),
    ):
        if value % 128:
            raise ValueError(f"{name}={value} must be a multiple of 128 (quantizer kernels)")
    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    if dtype not in dtypes:
        raise ValueError(f"dtype {dtype!r} is not one of {sorted(dtypes)}")
    out = Path(out_dir)
    sp_model = train_sentencepiece(texts, vocab_size)
    n_pieces = _piece_count(sp_model)
    config = LlamaConfig(
        vocab_size=-(-n_pieces // 128) * 128,  # rows beyond the pieces are never produced
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=None,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(dtypes[dtype])
    model.generation_config = GenerationConfig(**LLAMA2_GENERATION_CONFIG)
    model.save_pretrained(out, max_shard_size=max_shard_size)
    write_tokenizer(out, sp_model, legacy=legacy)
    if tokenizer_json:
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(out).backend_tokenizer.save(str(out / "tokenizer.json"))
    shards = sorted(p.name for p in out.glob("model-*.safetensors"))
    return {
        "path": str(out),
        "files": sorted(p.name for p in out.iterdir()),
        "shards": shards,
        "n_parameters": sum(p.numel() for p in model.parameters()),
        "n_pieces": n_pieces,
    }


def _piece_count(sp_model: bytes) -> int:
    import sentencepiece as spm

    return spm.SentencePieceProcessor(model_proto=sp_model).get_piece_size()


# A few lines in MUSE's shapes (news prose, a KnowMem QA pair) for tests that need no data.
SAMPLE_TEXTS = [
    "The council said the new bridge over the river would open in 2027, two years late.",
    "Mr Musk's riches are up 8% from last year but down on his net worth in November 2021.",
    "Question: What year did the Orkney Islands become part of Scotland?\nAnswer: 1472",
    "Question: Where was the bridge built?\nAnswer: Tarsk",
    "Question: Who opened the library?\nAnswer: The mayor of Tarsk",
    "Answer: the answer is yes. A question was asked, and an answer was given.",
    "Officials in Scotland and England met on Tuesday; they agreed on a plan.",
]


def install_in_hub_cache(
    folder: str | Path,
    repo_id: str,
    cache_dir: str | Path,
    *,
    revision: str = "main",
    repo_type: str = "model",
) -> str:
    """Lay ``folder`` out in a Hugging Face hub cache as if ``repo_id@revision`` were downloaded.

    The layout is huggingface_hub's documented cache: ``{type}s--{org}--{name}/blobs/<hash>``,
    ``snapshots/<commit>/<file>`` as relative symlinks to the blobs, ``refs/<revision>`` holding
    the commit. The commit is a sha1 of the files' names and contents (deterministic); it is
    returned. With HF_HUB_OFFLINE=1 and HF_HUB_CACHE=cache_dir, ``from_pretrained(repo_id)``,
    ``snapshot_download(repo_id)`` and ``HfApi().resolve_revision`` then work without network.
    """
    import hashlib
    import os

    src = Path(folder)
    files = sorted(p for p in src.rglob("*") if p.is_file())
    if not files:
        raise ValueError(f"{folder} holds no files to put in the cache")
    commit = hashlib.sha1()
    for path in files:
        commit.update(path.relative_to(src).as_posix().encode() + b"\0" + path.read_bytes())
    commit = commit.hexdigest()
    repo = Path(cache_dir) / f"{repo_type}s--{repo_id.replace('/', '--')}"
    snap = repo / "snapshots" / commit
    for path in files:
        blob_id = hashlib.sha256(path.read_bytes()).hexdigest()
        blob = repo / "blobs" / blob_id
        blob.parent.mkdir(parents=True, exist_ok=True)
        if not blob.exists():
            blob.write_bytes(path.read_bytes())
        link = snap / path.relative_to(src)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / revision).write_text(commit)
    return commit


def write_muse_hub_dataset(bench_dir: str | Path, out_dir: str | Path) -> Path:
    """A MUSE benchmark folder (the MUSE layout) written as its hub dataset repo is laid out.

    muse-bench/MUSE-News holds one folder per config with one parquet file per split
    (``knowmem/forget_qa-00000-of-00001.parquet``, ...), and a README.md whose YAML
    ``configs`` section names each config's data files; the raw texts are one row per document.
    ``datasets.load_dataset(folder, config, split=...)`` reads this folder as it reads the hub.
    """
    import pandas as pd

    from quantunlearn.data.documents import read_documents
    from quantunlearn.data.muse import MUSE_HUB_FILES

    bench, out = Path(bench_dir), Path(out_dir)
    configs: dict[str, list[str]] = {}
    for (config, split), rel in MUSE_HUB_FILES.items():
        if not (bench / rel).is_file():
            continue
        if config == "raw":
            rows = [{"text": doc} for doc in read_documents(bench / rel)]
        elif config == "privleak":
            rows = [{"text": t} for t in json.loads((bench / rel).read_text(encoding="utf-8"))]
        else:
            rows = json.loads((bench / rel).read_text(encoding="utf-8"))
        path = out / config / f"{split}-00000-of-00001.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame(rows).to_parquet(path, index=False)
        configs.setdefault(config, []).append(split)
    card = ["---", "license: cc-by-4.0", "configs:"]
    for config, splits in configs.items():
        card += [f"- config_name: {config}", "  data_files:"]
        card += [f"  - split: {s}\n    path: {config}/{s}-*" for s in splits]
    (out / "README.md").write_text("\n".join([*card, "---", "# MUSE (fixture)", ""]))
    return out
