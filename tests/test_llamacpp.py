"""The llamacpp_* cells: real GGUF files written with gguf-py, quantized by llama.cpp's own
``llama_model_quantize`` and evaluated inside llama.cpp (llama-cpp-python, built from source by
the ``test`` extra), against the torch models they come from."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch

from quantunlearn.data.documents import read_documents, tokenize_documents
from quantunlearn.data.muse import load_benchmark
from quantunlearn.data.synthetic import generate_synthetic
from quantunlearn.evaluation.generation import greedy_generate
from quantunlearn.evaluation.muse_metrics import KNOWMEM_STOP, knowmem, min_k_scores, verbmem
from quantunlearn.models.loading import load_model, load_tokenizer
from quantunlearn.models.tiny import build_llama, train_tokenizer
from quantunlearn.models.training import LMRecipe, train_lm
from quantunlearn.quantizers import parse_quantizer
from quantunlearn.quantizers.base import RuntimeModel
from quantunlearn.quantizers.gguf_export import write_gguf
from quantunlearn.quantizers.llamacpp import LlamaCppModel


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(model, tokenizer, benchmark, folder): a Llama trained 12 epochs on a small embedded
    benchmark (as tests/test_generation.py's, 256 wide so that K-quants apply), which answers
    KnowMem questions in words of the benchmark."""
    root = tmp_path_factory.mktemp("synthetic") / "bench"
    generate_synthetic(root, n_people=40, n_bio_variants=2, n_retain_qa_people=4, seed=0)
    docs = {s: read_documents(root / "raw" / f"{s}.txt") for s in ("forget", "retain", "holdout")}
    tok = train_tokenizer([d for split in docs.values() for d in split], 512)
    model = build_llama(tok, 256, 512, 2, 4)
    train_lm(model, tokenize_documents(docs["forget"] + docs["retain"], tok), tok.pad_token_id,
             LMRecipe(max_len=256, epochs=12, lr=3e-3, batch_size=8, warmup_steps=10,
                      weight_decay=0.01, seed=0))  # fmt: skip
    path = tmp_path_factory.mktemp("trained_model")
    model.eval().save_pretrained(path)
    tok.save_pretrained(path)
    return model, tok, load_benchmark(root), path


@pytest.fixture(scope="module")
def cells(trained):
    """The trained model loaded by the llamacpp_{f32,q8_0,q4_k_m} quantizers."""
    _, _, _, path = trained
    return {q: parse_quantizer(q).load(str(path)) for q in ("llamacpp_f32", "llamacpp_q8_0",
                                                            "llamacpp_q4_k_m")}  # fmt: skip


def _types(model: LlamaCppModel) -> dict[str, str]:
    reader = gguf.GGUFReader(str(model.path))
    return {t.name: t.tensor_type.name for t in reader.tensors}


def test_the_gguf_file_is_the_model(tiny_model_dir, tiny_model, tiny_tokenizer, tmp_path):
    """Every tensor under llama.cpp's name (q/k rows permuted), the tokenizer padded to the
    embedding's rows with its special tokens as control tokens; llama.cpp's logits are torch's
    (a wrong RoPE permutation or a missing tensor changes them by orders of magnitude more)."""
    path = write_gguf(tiny_model_dir, tiny_model_dir, tmp_path / "tiny.gguf")
    reader = gguf.GGUFReader(str(path))
    names = {t.name for t in reader.tensors}
    assert {"token_embd.weight", "output.weight", "output_norm.weight"} <= names
    assert len(names) == 3 + 2 * 9  # two layers of 2 norms and 7 projections
    tokens = reader.fields["tokenizer.ggml.tokens"]
    assert len(tokens.data) == tiny_model.config.vocab_size > len(tiny_tokenizer)
    assert reader.fields["tokenizer.ggml.model"].contents() == "gpt2"
    assert reader.fields["tokenizer.ggml.bos_token_id"].contents() == tiny_tokenizer.bos_token_id
    types = reader.fields["tokenizer.ggml.token_type"].contents()
    assert types[tiny_tokenizer.eos_token_id] == gguf.TokenType.CONTROL
    model = LlamaCppModel(path, "llamacpp_f32")
    ids = tiny_tokenizer("Alice Moreau was born in Tarsk in 1931.")["input_ids"]
    with torch.no_grad():
        logits = tiny_model(input_ids=torch.tensor([ids])).logits[0].double()
    expected = torch.log_softmax(logits, -1)[torch.arange(len(ids) - 1), ids[1:]].numpy()
    got = model.token_log_probs(ids)
    np.testing.assert_allclose(got, expected, atol=2e-3)
    # and the detokenizer of the file spells the ids as the tokenizer does
    text = model.llm.detokenize(ids[1:]).decode()
    assert text == tiny_tokenizer.decode(ids[1:], skip_special_tokens=True)


def test_llama2_sentencepiece_kind(realistic_checkpoint, tmp_path):
    """Llama-2's SentencePiece tokenizer (tokenizer.model, byte fallback): llama.cpp tokenizes
    raw text exactly as transformers does, and computes the bf16 checkpoint's log-probs."""
    path = write_gguf(realistic_checkpoint, realistic_checkpoint, tmp_path / "llama2.gguf")
    reader = gguf.GGUFReader(str(path))
    assert reader.fields["tokenizer.ggml.model"].contents() == "llama"
    tok = load_tokenizer(str(realistic_checkpoint))
    model = LlamaCppModel(path, "llamacpp_f32")
    texts = ["Question: Who wrote the letter?\nAnswer: ", "Tarsk 1931, naïve café ☃ ok"]
    for text in texts:
        assert model.llm.tokenize(text.encode(), add_bos=True) == tok(text)["input_ids"]
    torch_model = load_model(str(realistic_checkpoint), "fp32")
    ids = tok(texts[0])["input_ids"]
    with torch.no_grad():
        logits = torch_model(input_ids=torch.tensor([ids])).logits[0].double()
    expected = torch.log_softmax(logits, -1)[torch.arange(len(ids) - 1), ids[1:]].numpy()
    np.testing.assert_allclose(model.token_log_probs(ids), expected, atol=2e-3)


def test_llama_cpp_chooses_the_tensor_types(cells):
    """llama_model_quantize's own rules: Q8_0 everywhere in q8_0 (the embeddings included);
    Q4_K_M gives attn_v and ffn_down Q6_K in the layers its `use_more_bits` picks (the last of
    two), the output projection Q6_K, and keeps the norms in f32."""
    q8 = _types(cells["llamacpp_q8_0"])
    assert q8["blk.0.attn_q.weight"] == q8["token_embd.weight"] == q8["output.weight"] == "Q8_0"
    assert q8["blk.0.attn_norm.weight"] == "F32"
    q4 = _types(cells["llamacpp_q4_k_m"])
    assert q4["blk.0.attn_q.weight"] == q4["blk.0.attn_v.weight"] == "Q4_K"
    assert q4["blk.1.attn_v.weight"] == "Q6_K"
    assert q4["output.weight"] == "Q6_K" and q4["blk.1.ffn_down.weight"] == "Q6_K"
    assert set(_types(cells["llamacpp_f32"]).values()) == {"F32"}


def test_f32_in_llama_cpp_gives_the_torch_answers(trained, cells):
    """Parity: the fp32 GGUF in llama.cpp answers every KnowMem question of the embedded study
    as the torch model does, continues VerbMem prompts the same, and its Min-K% scores agree to
    1e-3 (llama.cpp keeps keys and values in f16: the only rounding it adds)."""
    model, tok, bench, _ = trained
    f32 = cells["llamacpp_f32"]
    for split in ("forget", "retain"):
        qa, icl = getattr(bench, f"knowmem_{split}_qa"), getattr(bench, f"knowmem_{split}_icl")
        torch_value, torch_records = knowmem(model, tok, qa, icl, 16)
        value, records = knowmem(f32, tok, qa, icl, 16)
        assert [r["output"] for r in records] == [r["output"] for r in torch_records]
        assert value == torch_value
        assert len({r["output"] for r in records}) > 3  # real, different answers
    items = bench.verbmem_forget[:8]
    assert verbmem(f32, tok, items, 32)[1] == verbmem(model, tok, items, 32)[1]
    texts = bench.privleak_forget[:6] + bench.privleak_holdout[:6]
    np.testing.assert_allclose(
        min_k_scores(f32, tok, texts, max_length=128),
        min_k_scores(model, tok, texts, max_length=128),
        atol=1e-3,
    )


def test_quantized_cells_run_and_differ(trained, cells):
    """The quantized files answer through the same prompts and stop rules, and llama.cpp's
    Q4_K_M computes other numbers than fp32 (its weights and its Q8_K activations)."""
    _, tok, bench, _ = trained
    texts = bench.privleak_forget[:4]
    f32 = min_k_scores(cells["llamacpp_f32"], tok, texts, max_length=128)
    q4 = min_k_scores(cells["llamacpp_q4_k_m"], tok, texts, max_length=128)
    assert np.abs(f32 - q4).max() > 1e-3
    qa, icl = bench.knowmem_forget_qa[:6], bench.knowmem_forget_icl
    _, records = knowmem(cells["llamacpp_q4_k_m"], tok, qa, icl, 16)
    assert all(r["output"] and not any(s in r["output"] for s in KNOWMEM_STOP) for r in records)


def test_generation_stops_as_for_torch(trained, cells):
    """The seam: greedy_generate hands llama.cpp the tokenizer's ids and applies the end tokens,
    the stop strings and max_new_tokens as for torch (ids and text identical in fp32)."""
    model, tok, bench, _ = trained
    prompts = [item["prompt"] for item in bench.verbmem_forget[:3]]
    for stops in (None, [" the", "."]):
        got = greedy_generate(cells["llamacpp_f32"], tok, prompts, 12, stop_strings=stops,
                              return_ids=True)  # fmt: skip
        assert got == greedy_generate(model, tok, prompts, 12, stop_strings=stops, return_ids=True)


def test_runtime_models_refuse_a_torch_forward(cells):
    assert isinstance(cells["llamacpp_q8_0"], RuntimeModel)
    with pytest.raises(TypeError, match="llamacpp_q8_0 evaluates in its own runtime"):
        cells["llamacpp_q8_0"](input_ids=torch.tensor([[1, 2]]))


@pytest.mark.parametrize(
    "name, message",
    [
        ("llamacpp_q3_k", "llama.cpp file types are llamacpp_f32, llamacpp_q8_0"),
        ("llamacpp_", "unknown quantizer"),
    ],  # fmt: skip
)
def test_bad_names(name, message):
    with pytest.raises(ValueError, match=message):
        parse_quantizer(name)


def test_flags():
    q4, f32 = parse_quantizer("llamacpp_q4_k_m"), parse_quantizer("llamacpp_f32")
    assert q4.runtime and q4.is_quantized and q4.bits == 4 and q4.block is None
    assert not f32.is_quantized and not q4.diagnosable and not q4.runs_in_unlearning_job


# --------------------------------------------------------------------------- the workflow
@pytest.mark.slow
def test_micro_study_with_llama_cpp_cells_and_an_audited_checkpoint(tmp_path):
    """The micro study with llama.cpp columns beside the emulation: every cell runs, the f32
    file answers KnowMem as the torch model does in every run, and an external checkpoint (audit
    mode: a folder named in models.unlearned) gets the llama.cpp cells too."""
    import shutil

    import pandas as pd
    import yaml
    from test_workflow import MICRO, job_counts, snakemake

    config = yaml.safe_load(MICRO.read_text())
    config["unlearn"]["methods"] = {"GA_GDR": {}}
    config["quantizers"] = ["none", "gguf_q8_0", "llamacpp_f32", "llamacpp_q8_0"]
    path = tmp_path / "llamacpp.yaml"
    path.write_text(yaml.safe_dump(config))
    out = snakemake(tmp_path, "--cores", "2", "all_tables", config=path)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    table = pd.read_parquet(tmp_path / "results" / "tables" / "table1.parquet")
    assert len(table) == 3 * 4 and table.verbmem_f.notna().all()
    wide = table.pivot(index="method", columns="quant", values="knowmem_f")
    assert (wide["llamacpp_f32"] == wide["none"]).all(), wide
    # audit mode: the unlearned model as an external checkpoint, through the same cells
    model = next((tmp_path / "results" / "unlearn" / "micro").rglob("model"))
    external = tmp_path / "external"
    shutil.copytree(model, external)
    config["benchmarks"]["micro"].setdefault("models", {})["unlearned"] = {"mine": str(external)}
    config["tables_dir"] = "results/tables/audit"
    path.write_text(yaml.safe_dump(config))
    plan = snakemake(tmp_path, "-n", "all_tables", config=path)
    assert plan.returncode == 0, plan.stdout[-3000:] + plan.stderr[-3000:]
    assert job_counts(plan.stdout)["evaluate"] == 4  # the checkpoint's four cells, no more
    out = snakemake(tmp_path, "--cores", "2", "all_tables", config=path)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    cells = tmp_path / "results" / "metrics" / "micro" / "method~external" / "checkpoint~mine"
    f32 = pd.read_parquet(cells / "llamacpp_f32.parquet").set_index("metric").value
    assert (
        f32["knowmem_f"]
        == pd.read_parquet(cells / "none.parquet").set_index("metric").value["knowmem_f"]
    )
