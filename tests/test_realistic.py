"""The project on a Llama-2-style checkpoint and tokenizer (tests/realistic_fixture.py).

What the embedded study's own tokenizer hides: Llama-2's SentencePiece tokenizer has no pad
token, adds BOS and not EOS, writes a newline as the byte token <0x0A> and the space that ends
MUSE's "Answer: " prompt as a lone "▁"; hub checkpoints come sharded, in bf16, with sampling
defaults in their generation config. ``guard`` tests pin behaviour that is right and must stay
so; ``fixed`` tests are the regression tests of the bugs this fixture found (F1-F4 of the
issue-15 notes).
"""

from __future__ import annotations

import json
import shutil
import tomllib
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from quantunlearn.data.documents import tokenize_documents
from quantunlearn.evaluation.generation import cut_at_stop, greedy_generate
from quantunlearn.evaluation.muse_metrics import KNOWMEM_STOP, knowmem_prompt
from quantunlearn.evaluation.utility_metrics import mmlu_rwku_message
from quantunlearn.models.loading import copy_tokenizer, load_tokenizer
from quantunlearn.models.training import collate
from quantunlearn.unlearning.loop import UnlearnJob, unlearn

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tok(realistic_checkpoint):
    return AutoTokenizer.from_pretrained(realistic_checkpoint)


# ------------------------------------------------------------------ the fixture is the real shape
def test_layout_is_a_sharded_hub_checkpoint(realistic_checkpoint):
    ckpt = realistic_checkpoint
    names = {p.name for p in ckpt.iterdir()}
    assert {
        "config.json",
        "generation_config.json",
        "model.safetensors.index.json",
        "tokenizer.model",
        "tokenizer_config.json",
        "special_tokens_map.json",
    } <= names
    shards = set(
        json.loads((ckpt / "model.safetensors.index.json").read_text())["weight_map"].values()
    )
    assert len(shards) > 1 and shards <= names  # really sharded, every shard present
    config = json.loads((ckpt / "config.json").read_text())
    assert (config["bos_token_id"], config["eos_token_id"], config["pad_token_id"]) == (1, 2, None)
    assert config["dtype"] == "bfloat16" and config["tie_word_embeddings"] is False
    gen = json.loads((ckpt / "generation_config.json").read_text())
    assert (gen["do_sample"], gen["temperature"], gen["top_p"]) == (True, 0.6, 0.9)
    tok_config = json.loads((ckpt / "tokenizer_config.json").read_text())
    assert tok_config["tokenizer_class"] == "LlamaTokenizer" and tok_config["pad_token"] is None
    assert (tok_config["add_bos_token"], tok_config["add_eos_token"]) == (True, False)
    assert "tokenizer.json" not in names  # transformers converts tokenizer.model itself


def test_tokenizer_is_llama2_like(tok):
    assert type(tok).__name__ == "LlamaTokenizer" and tok.pad_token is None
    assert (tok.unk_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    ids = tok("Answer: 1472")["input_ids"]
    # BOS added, EOS not; a dummy-prefix space, digits split, the space before them a lone ▁
    assert tok.convert_ids_to_tokens(ids) == ["<s>", "▁Answer", ":", "▁", "1", "4", "7", "2"]
    assert "<0x0A>" in tok.convert_ids_to_tokens(tok("a\nb")["input_ids"])  # byte fallback


def test_same_texts_same_tokenizer_bytes():
    from realistic_fixture import SAMPLE_TEXTS, train_sentencepiece

    assert train_sentencepiece(SAMPLE_TEXTS, 400) == train_sentencepiece(SAMPLE_TEXTS, 400)


@pytest.mark.parametrize("legacy", [True, False])
def test_legacy_only_matters_after_special_tokens(tmp_path, realistic_checkpoint, tok, legacy):
    from realistic_fixture import write_tokenizer

    model = (realistic_checkpoint / "tokenizer.model").read_bytes()
    other = AutoTokenizer.from_pretrained(write_tokenizer(tmp_path, model, legacy))
    assert other.legacy is legacy
    prompt = "Question: x\nAnswer: "
    assert other(prompt)["input_ids"] == tok(prompt)["input_ids"]
    after_special = other.convert_ids_to_tokens(other("</s>the")["input_ids"])
    assert (after_special[2] == "▁the") is legacy


# ------------------------------------------------------------------ guards
def test_guard_collate_keeps_real_eos_in_the_loss(realistic_checkpoint):
    """pad = EOS after load_tokenizer, but collate masks by attention: real EOS still count."""
    tok = load_tokenizer(str(realistic_checkpoint))
    assert tok.pad_token_id == tok.eos_token_id == 2
    docs = tokenize_documents(["the bridge would open.", "Answer: Tarsk"], tok)
    assert all(d[0] == 1 and d[-1] == 2 and d.count(2) == 1 for d in docs)  # BOS ... EOS
    batch = collate(docs, tok.pad_token_id)
    short = min(range(2), key=lambda i: len(docs[i]))
    n = len(docs[short])
    assert batch["labels"][short, n - 1].item() == tok.eos_token_id  # the real EOS: a label
    assert (batch["labels"][short, n:] == -100).all()  # the padding EOS: ignored


def test_guard_greedy_generate_ignores_llama2_sampling_defaults(realistic_checkpoint):
    """generation_config.json says do_sample, temperature 0.6, top_p 0.9: outputs are argmax."""
    tok = load_tokenizer(str(realistic_checkpoint))
    model = AutoModelForCausalLM.from_pretrained(realistic_checkpoint, dtype=torch.float32)
    prompts = ["Question: Where was the bridge built?\nAnswer: ", "The council"]
    outputs = greedy_generate(model, tok, prompts, 6)
    for prompt, output in zip(prompts, outputs, strict=True):
        ids = tok(prompt, return_tensors="pt")["input_ids"]
        with torch.inference_mode():
            for _ in range(6):  # argmax by hand, one prompt at a time (no padding)
                nxt = model(ids).logits[0, -1].argmax()
                ids = torch.cat([ids, nxt.view(1, 1)], dim=1)
                if nxt.item() == tok.eos_token_id:
                    break
        cont = ids[0, len(tok(prompt)["input_ids"]) :].tolist()
        cont = cont[: cont.index(tok.eos_token_id)] if tok.eos_token_id in cont else cont
        assert output == tok.decode(cont, skip_special_tokens=True)


def test_guard_utility_continuations_match_joint_tokenization(tok):
    """Utility scoring tokenizes context and " A" apart; with Llama-2's tokenizer under
    transformers 5 that equals tokenizing them together."""
    question = {"question": "Which?", "choices": ["a", "b", "c", "d"], "answer": 1}
    prompt = mmlu_rwku_message({**question, "task": "astronomy", "examples": []}) + "Answer:"
    for cont in [" A", " It may break.", " 1472"]:
        apart = tok(prompt)["input_ids"] + tok(cont, add_special_tokens=False)["input_ids"]
        assert apart == tok(prompt + cont)["input_ids"], cont


def test_guard_batched_prompts_get_one_bos_after_left_padding(realistic_checkpoint):
    """VerbMem/KnowMem prompts: BOS once, from the tokenizer; the left padding (pad = EOS,
    masked) goes before it, as in MUSE's code."""
    tok = load_tokenizer(str(realistic_checkpoint))
    enc = tok(["Question: x\nAnswer: ", "The council said"], padding=True)
    for ids, mask in zip(enc["input_ids"], enc["attention_mask"], strict=True):
        first = mask.index(1)
        assert ids[first] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1
        assert set(ids[:first]) <= {tok.eos_token_id}


def test_protocol_knowmem_prompt_ends_in_a_lone_space_token(tok):
    """MUSE's "Answer: " ends in a lone '▁': the prompt is not a token prefix of prompt + a word
    answer ('▁Tarsk'), it is of prompt + a number. MUSE's and open-unlearning's code build the
    same prompt; kept for fidelity (docs/protocol.md)."""
    prompt = knowmem_prompt([{"question": "q?", "answer": "a"}], "Where?")
    p_ids = tok(prompt)["input_ids"]
    assert tok.convert_ids_to_tokens(p_ids[-1:]) == ["▁"]
    assert tok(prompt + "Tarsk")["input_ids"][: len(p_ids)] != p_ids
    assert tok(prompt + "1472")["input_ids"][: len(p_ids)] == p_ids


def test_protocol_stop_strings_survive_byte_fallback_newlines(tok):
    ids = tok("Tarsk\n\nQuestion: next", add_special_tokens=False)["input_ids"]
    assert tok.convert_ids_to_tokens(ids).count("<0x0A>") == 2
    assert cut_at_stop(tok.decode(ids, skip_special_tokens=True), KNOWMEM_STOP) == "Tarsk"


# ------------------------------------------------------------------ the bugs it found, fixed
def _with_config(src: Path, dst: Path, **changes) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.safetensors*"))
    config = json.loads((dst / "tokenizer_config.json").read_text())
    (dst / "tokenizer_config.json").write_text(json.dumps({**config, **changes}))
    return dst


def test_fixed_f1_a_tokenizer_that_appends_eos_is_refused(tmp_path, realistic_checkpoint):
    """F1: a tokenizer with add_eos_token (hub copies of Llama-2's have it) ended every prompt
    in EOS and doubled the EOS of every training document."""
    folder = _with_config(realistic_checkpoint, tmp_path / "tok", add_eos_token=True)
    with pytest.raises(ValueError, match="appends EOS .* add_eos_token"):
        load_tokenizer(str(folder))
    adds_eos = AutoTokenizer.from_pretrained(folder)
    doc = tokenize_documents(["Answer: Tarsk"], adds_eos)[0]
    assert doc[0] == 1 and doc[-1] == 2 and doc.count(2) == 1  # one EOS, not two


def test_fixed_f2_models_carry_the_source_tokenizer_files(tmp_path, realistic_checkpoint, tok):
    """F2: unlearn saved the tokenizer object load_tokenizer had changed (pad '</s>', left
    padding, no tokenizer.model, no legacy key), which reloads with other settings; it now
    copies its source's files."""
    forget, retain = tmp_path / "forget.txt", tmp_path / "retain.txt"
    forget.write_text("The council said the bridge would open.\n\nAnswer: Tarsk\n")
    retain.write_text("Officials in Scotland and England met on Tuesday.\n")
    out = tmp_path / "model"
    info = unlearn(
        str(realistic_checkpoint),
        forget,
        retain,
        out,
        tmp_path / "log.parquet",
        job=UnlearnJob.of(
            "GA",
            {"weight_dtype": "bf16", "lr": 1e-4, "epochs": 1},
            {"batch_size": 2, "max_len": 32, "gradient_checkpointing": True},
        ),
    )
    assert info["gradient_checkpointing"] is True and info["git_commit"]
    for name in ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"):
        assert (out / name).read_bytes() == (realistic_checkpoint / name).read_bytes()
    again = AutoTokenizer.from_pretrained(out)
    text = "the bridge</s>the council"
    assert (again.pad_token, again.legacy) == (None, True)
    assert again(text)["input_ids"] == tok(text)["input_ids"]
    assert copy_tokenizer(str(out), tmp_path / "copy") == [
        "tokenizer.model",
        "tokenizer_config.json",
        "special_tokens_map.json",
    ]
    with pytest.raises(FileNotFoundError, match="holds no tokenizer files"):
        copy_tokenizer(str(tmp_path), tmp_path / "none")


def test_fixed_f3_sentencepiece_and_protobuf_are_dependencies(realistic_checkpoint):
    """F3: a tokenizer.model-only checkpoint (Llama-2's format, as 4.x saved it) needs
    sentencepiece and protobuf; without them transformers asked for tiktoken instead."""
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert {"sentencepiece==0.2.3", "protobuf==7.36.2"} <= set(deps)
    assert type(load_tokenizer(str(realistic_checkpoint))).__name__ == "LlamaTokenizer"
