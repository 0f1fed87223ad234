"""A saved transformers Llama as an fp32 GGUF file, written with the `gguf` package's writer.

What llama.cpp's own converter (``convert_hf_to_gguf.py``) writes for a Llama, at the scale of
this project's models: the architecture's hyperparameters, every tensor under llama.cpp's name
(gguf-py's ``TensorNameMap``), and the tokenizer, so that the file runs on its own in llama.cpp
and the tools built on it.

* **Q and K are permuted.** transformers' Llama rotates the two halves of each head
  (``rotate_half``); llama.cpp's ``llama`` architecture rotates interleaved pairs. The converter
  reorders the rows of ``q_proj`` and ``k_proj`` so that both compute the same attention.
* **The tokenizer** is either kind this project meets: the embedded study's byte-level BPE
  (``tokenizer.json``: ``tokenizer.ggml.model = gpt2`` with its merges) or Llama-2's
  SentencePiece model (``tokenizer.model``: ``llama``, with its scores and byte tokens). The
  special tokens the transformers tokenizer declares are control tokens; the token list is padded
  with unused ``[PAD{i}]`` entries up to the embedding's rows (the tiny models round the
  vocabulary up to a multiple of 128), as the converter does.
* **Tied embeddings** write no ``output.weight``: llama.cpp then computes the logits with
  ``token_embd.weight``, as the model does.

The embedded tokenizer splits words with its own regex (``\\w+ ?|[^\\w\\s] ?|\\s``), which is none
of llama.cpp's pre-tokenizers; the file names GPT-2's (``tokenizer.ggml.pre = gpt-2``), so
llama.cpp's *own* tokenization of raw text can differ from the tokenizer's. The evaluation never
relies on it: it feeds llama.cpp the token ids of the transformers tokenizer, the same ids the
torch cells see (`quantunlearn.quantizers.llamacpp`). Llama-2's SentencePiece kind has no
pre-tokenizer, and llama.cpp tokenizes it as transformers does (tests/test_llamacpp.py).
"""

from __future__ import annotations

import json
from pathlib import Path

#: `LlamaConfig` fields the llama architecture of llama.cpp cannot express: refused, not dropped
_UNSUPPORTED = {"attention_bias": False, "mlp_bias": False}


def write_gguf(model_path: str | Path, tokenizer_path: str | Path, out: str | Path) -> Path:
    """The model at ``model_path`` (a saved `LlamaForCausalLM`) with the tokenizer at
    ``tokenizer_path`` as an all-fp32 GGUF file ``out``; ValueError for what llama.cpp's
    ``llama`` architecture would compute differently."""
    import gguf

    from quantunlearn.models.loading import load_model

    model = load_model(str(model_path), "fp32")
    config = model.config
    _check_config(config)
    writer = gguf.GGUFWriter(str(out), "llama")
    _add_hyperparameters(writer, config)
    n_vocab = model.get_input_embeddings().weight.shape[0]
    _add_tokenizer(writer, Path(tokenizer_path), n_vocab)
    for name, array in _tensors(model):
        writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return Path(out)


def _check_config(config) -> None:
    if config.model_type != "llama":
        raise ValueError(f"GGUF export supports Llama models; this one is {config.model_type!r}")
    for key, allowed in _UNSUPPORTED.items():
        if getattr(config, key, allowed) != allowed:
            raise ValueError(f"GGUF export: {key}={getattr(config, key)} is not supported")
    rope_type = _rope(config).get("rope_type", "default")
    if rope_type != "default":
        raise ValueError(f"GGUF export: RoPE scaling {rope_type!r} is not supported")


def _rope(config) -> dict:
    """The RoPE parameters (transformers 5: ``rope_parameters``; 4.x: ``rope_theta``)."""
    parameters = dict(getattr(config, "rope_parameters", None) or {})
    if "rope_theta" not in parameters:
        parameters["rope_theta"] = getattr(config, "rope_theta", 10000.0)
    return parameters


def head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def _add_hyperparameters(writer, config) -> None:
    import gguf

    n_kv = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(n_kv)
    writer.add_rope_dimension_count(head_dim(config))
    writer.add_key_length(head_dim(config))
    writer.add_value_length(head_dim(config))
    writer.add_rope_freq_base(float(_rope(config)["rope_theta"]))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)


def permute_rows(weight, n_head: int):
    """The rows of a q/k projection reordered from transformers' half-split RoPE layout to
    llama.cpp's interleaved one (``convert_hf_to_gguf.py``'s ``LlamaModel.permute``)."""
    out = weight.shape[0]
    return (
        weight.reshape(n_head, 2, out // n_head // 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def _tensors(model):
    """(llama.cpp name, fp32 numpy array) of every tensor; no output.weight when tied."""
    import gguf

    config = model.config
    n_kv = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    for hf_name, tensor in model.state_dict().items():
        if hf_name.endswith("rotary_emb.inv_freq") or (tied and hf_name == "lm_head.weight"):
            continue
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise ValueError(f"GGUF export: no llama.cpp name for {hf_name}")
        array = tensor.detach().float().cpu().numpy()
        if hf_name.endswith("q_proj.weight"):
            array = permute_rows(array, config.num_attention_heads)
        elif hf_name.endswith("k_proj.weight"):
            array = permute_rows(array, n_kv)
        yield name, array.copy()


def _add_tokenizer(writer, path: Path, n_vocab: int) -> None:
    """The tokenizer at ``path`` (SentencePiece ``tokenizer.model`` or byte-level BPE
    ``tokenizer.json``) with its special tokens, padded to ``n_vocab`` entries."""
    import gguf

    from quantunlearn.models.loading import load_tokenizer

    tok = load_tokenizer(str(path))
    if (path / "tokenizer.model").is_file():
        vocab, pre, merges = gguf.vocab.SentencePieceVocab(path), "default", []
    else:
        vocab, pre, merges = gguf.vocab.BpeVocab(path), "gpt-2", _merges(path)
    tokens, scores, types = [], [], []
    for text, score, kind in vocab.all_tokens():
        tokens.append(text)
        scores.append(score)
        types.append(kind)
    if len(tokens) > n_vocab:
        raise ValueError(f"the tokenizer has {len(tokens)} tokens, the model {n_vocab} rows")
    for token_id in tok.all_special_ids:
        if types[token_id] != gguf.TokenType.BYTE:
            types[token_id] = gguf.TokenType.CONTROL
    for i in range(len(tokens), n_vocab):
        tokens.append(f"[PAD{i}]".encode())
        scores.append(-1000.0)
        types.append(gguf.TokenType.UNUSED)
    writer.add_tokenizer_model(vocab.tokenizer_model)
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    if merges:
        writer.add_token_merges(merges)
    _add_special_ids(writer, tok)


def _merges(path: Path) -> list[str]:
    """The BPE merges of ``tokenizer.json`` as "a b" strings (either serialization)."""
    merges = json.loads((path / "tokenizer.json").read_text(encoding="utf-8"))["model"]["merges"]
    return [m if isinstance(m, str) else " ".join(m) for m in merges]


def _add_special_ids(writer, tok) -> None:
    for kind in ("bos", "eos", "unk", "pad"):
        token_id = getattr(tok, f"{kind}_token_id", None)
        if token_id is not None:
            getattr(writer, f"add_{kind}_token_id")(token_id)
    with_special = tok("a")["input_ids"]
    writer.add_add_bos_token(tok.bos_token_id is not None and with_special[0] == tok.bos_token_id)
    writer.add_add_eos_token(tok.eos_token_id is not None and with_special[-1] == tok.eos_token_id)
