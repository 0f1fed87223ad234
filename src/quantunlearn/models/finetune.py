"""The target and retrain models of a benchmark that names a base model (``models.base``) but no
target: fine-tuned from the base in the DAG, as the Twitter study's authors made theirs.

Mishra and Mehreen (QUAIL, section VII-A; their public notebook, repository
himans-iitk/CS534L_Project) fine-tune Llama-2-7B on the forget and retain1 tweets (5 epochs,
batch 3, lr 1e-5, 2048-token sequences) and unlearn from that target; their fine-tuned model is not
public. The retrain model (retain only) is PrivLeak's reference. The benchmark's ``finetune``
section holds the settings (defaults: the notebook's, a Hugging Face Trainer run_clm recipe):
AdamW (0.9, 0.999) with weight decay 0, a cosine schedule with no warm-up, 5 epochs of batch 3 at
lr 1e-5, the forget and retain1 tweets joined into one token stream cut into 2,048-token chunks
(``packing: stream``). Training is the project's causal-LM loop
(`quantunlearn.models.training.train_lm`, gradient clipping at 1 as the Trainer's default) on the
benchmark's raw documents; ``packing: documents`` packs whole documents afresh every epoch
instead, as the tiny models are trained.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from quantunlearn.data.documents import read_documents, tokenize_documents
from quantunlearn.models.loading import load_model, load_tokenizer
from quantunlearn.models.tiny import REFERENCE_SPLITS, save_reference
from quantunlearn.models.training import LMRecipe, set_checkpointing, train_lm


def finetune_reference(
    which: str,
    bench_dir: str | Path,
    base: str,
    tokenizer: str | None,
    out_dir: str | Path,
    log_path: str | Path,
    spec: dict,
) -> dict:
    """Fine-tune ``base`` on the benchmark's forget + retain text (target) or retain text only
    (retrain) with the ``finetune`` settings; save the model, its tokenizer and train_info.json."""
    if which not in REFERENCE_SPLITS:
        raise ValueError(
            f"reference model must be one of {sorted(REFERENCE_SPLITS)}, got {which!r}"
        )
    tokenizer = tokenizer or base  # null: the base model's own
    tok = load_tokenizer(tokenizer)
    docs = [
        d
        for s in REFERENCE_SPLITS[which]
        for d in read_documents(Path(bench_dir) / "raw" / f"{s}.txt")
    ]
    model = load_model(base, spec["weight_dtype"])
    if spec["gradient_checkpointing"]:
        set_checkpointing(model, True)
    recipe = LMRecipe(**{f.name: spec[f.name] for f in dataclasses.fields(LMRecipe)})
    log = train_lm(model, tokenize_documents(docs, tok), tok.pad_token_id, recipe,
                   desc=f"fine-tune {which}")  # fmt: skip
    if spec["gradient_checkpointing"]:
        set_checkpointing(model, False)
    info = {"which": which, "splits": REFERENCE_SPLITS[which], "base": str(base),
            "n_documents": len(docs), "steps": len(log), "finetune": spec,
            "final_loss": float(log.loss.tail(20).mean())}  # fmt: skip
    return save_reference(model, tokenizer, info, out_dir, log, log_path)
