"""The predictor of frozen codes against the measured codes, per tensor, for every unlearned run
of a results folder (`quantunlearn.evaluation.frozen_codes`: the derivation).

It writes ``frozen_codes.{md,csv,parquet,png,svg}``: one row per (run, quantizable Linear)
with the predicted shares (weights that can move, codes that can change) and the measured ones
(weights the run changed, codes that differ from the target's), and a two-panel figure of
prediction against measurement.

A REPORTS row (rule ``frozen_codes``): a study makes it when it has weight diagnostics, keeps its
unlearned models (``storage.unlearned_models: keep``), trains its targets in the DAG, and its
low-bit quantizer (``selection.low_bit_quantizer``) is RTN (config/quantizers.yaml: every
diagnosed run at rtn_w4). On any results folder, every saved run against its target:

    python -m quantunlearn.reports.frozen_codes_report results/ results/tables --quant rtn_w4g128
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import NamedTuple

import pandas as pd

from quantunlearn.quantizers import parse_quantizer
from quantunlearn.quantizers.rtn import RTN
from quantunlearn.reports.cell_files import low_bit
from quantunlearn.reports.render import pyplot, save_figure, to_markdown, write_frames, write_text

FILES = tuple(f"frozen_codes.{ext}" for ext in ("md", "csv", "parquet", "png", "svg"))


class SavedRun(NamedTuple):
    """One unlearned run on disk and the target it is compared with."""

    benchmark: str
    run: str  # its run path
    target: str  # the target model's folder
    model: str  # the unlearned model's folder (with its unlearn_info.json)


def unlearned_runs(results: Path) -> list[SavedRun]:
    """Every saved run under results/unlearn, against results/models/<benchmark>/target."""
    found = sorted((results / "unlearn").glob("*/**/model/unlearn_info.json"))
    runs = []
    for path in found:
        bench = path.relative_to(results / "unlearn").parts[0]
        run = str(path.parent.parent.relative_to(results / "unlearn" / bench))
        target = str(results / "models" / bench / "target")
        runs.append(SavedRun(bench, run, target, str(path.parent)))
    return runs


def frozen_codes_frame(runs: list[SavedRun], quant: str) -> pd.DataFrame:
    """`compare_saved_run` of every run against its target under the RTN quantizer ``quant``."""
    from quantunlearn.evaluation.frozen_codes import compare_saved_run

    spec = parse_quantizer(quant)
    if not hasattr(spec, "bits") or not spec.shares_codes:
        raise ValueError(f"{quant}: the predictor needs an RTN quantizer (rtn_w<N>[g<G>])")
    frames = []
    for saved in runs:
        frame = compare_saved_run(saved.target, saved.model, spec.bits, spec.group_size)
        frame.insert(0, "run", saved.run)
        frame.insert(0, "benchmark", saved.benchmark)
        frame.insert(0, "quant", quant)
        frames.append(frame)
    if not frames:
        raise ValueError("no unlearned model to compare")
    return pd.concat(frames, ignore_index=True)


def pooled(frame: pd.DataFrame) -> pd.DataFrame:
    """Per run: the shares weighted by each tensor's number of weights."""
    cols = [c for c in frame.columns if c.startswith(("predicted_", "measured_", "flipped_"))]
    keys = ["benchmark", "run", "method", "weight_dtype", "lr", "steps"]
    weighted = frame[cols].mul(frame["n_weights"], axis=0).assign(n_weights=frame["n_weights"])
    sums = weighted.join(frame[keys]).groupby(keys, sort=False).sum(numeric_only=True)
    return sums[cols].div(sums["n_weights"], axis=0).reset_index()


def plot(frame: pd.DataFrame, png: Path, svg: Path) -> None:
    """Left: predicted share of weights that can move against the share the run changed;
    right: predicted share of codes that can change against the share that did; one point per
    tensor and run, by weight dtype and steps, with the diagonal."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.4))
    panels = (
        ("predicted_movable", "measured_changed", "weights that move"),
        ("predicted_can_flip", "measured_flipped", "4-bit codes that change"),
    )
    for ax, (px, my, title) in zip(axes, panels, strict=True):
        for (dtype, steps), part in frame.groupby(["weight_dtype", "steps"], sort=True):
            marker = "o" if dtype == "bf16" else "^"
            ax.scatter(100 * part[px], 100 * part[my], s=14, marker=marker,
                       label=f"{dtype}, {steps} steps", alpha=0.7)  # fmt: skip
        ax.plot([0, 100], [0, 100], "k--", linewidth=1)
        ax.set_xscale("symlog", linthresh=0.1)
        ax.set_yscale("symlog", linthresh=0.1)
        ax.set_xlabel(f"predicted % of {title}")
        ax.set_ylabel(f"measured % of {title}")
        ax.set_title(title)
        ax.legend(fontsize=7)
    fig.suptitle("Frozen codes: prediction (dtype, lr, steps, Δ) against each run, per tensor")
    fig.tight_layout()
    save_figure(fig, png, svg)


def make_frozen_codes(runs: list[SavedRun], out_dir: str | Path, quant: str) -> pd.DataFrame:
    """The runs -> out_dir/frozen_codes.{md,csv,parquet,png,svg} (module docstring)."""
    out = Path(out_dir)
    frame = frozen_codes_frame(runs, quant)
    write_frames(frame, out / "frozen_codes")
    runs = pooled(frame)
    headers = {
        "benchmark": "Benchmark",
        "method": "Method",
        "weight_dtype": "Weights",
        "steps": "Steps",
        "predicted_movable": "Movable (pred.)",
        "measured_changed": "Changed (meas.)",
        "predicted_load_flip": "Load flips (pred.)",
        "predicted_can_flip": "Codes that can change (pred.)",
        "measured_flipped": "Codes changed (meas.)",
        "flipped_outside_prediction": "Changed outside pred.",
    }
    text = [
        f"# Frozen codes under {quant}: prediction against measurement",
        "",
        "Shares of the quantizable Linears' weights, pooled per run (per tensor: "
        "frozen_codes.csv). Predicted from the weight dtype, lr, steps and the target's "
        "quantization step alone; measured against the target (codes) and the target as "
        "stored in the run's dtype (changed weights).",
        "",
        to_markdown(runs, headers, ".4g"),
    ]
    write_text(out / "frozen_codes.md", "\n".join(text))
    plot(frame, out / "frozen_codes.png", out / "frozen_codes.svg")
    return frame


def main(argv: list[str] | None = None) -> None:
    """The command (module docstring): every saved run of a results folder."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", help="a study's results folder (results_dir)")
    parser.add_argument("out_dir", help="where frozen_codes.* are written")
    parser.add_argument("--quant", default="rtn_w4g128", help="an RTN quantizer")
    args = parser.parse_args(argv)
    make_frozen_codes(unlearned_runs(Path(args.results)), args.out_dir, args.quant)


# --------------------------------------------------------------------------- its REPORTS row


def rtn_quantizer(study) -> str | None:
    """The study's low-bit quantizer when it is RTN (codes the predictor can compare), else
    None."""
    quant = low_bit(study)
    spec = parse_quantizer(quant) if quant else None
    ok = isinstance(spec, RTN) and spec.shares_codes and not spec.counterfactual
    return quant if ok else None


def saved_runs(study) -> list[SavedRun]:
    """The diagnosed runs whose unlearned model the study keeps, on benchmarks whose target the
    DAG trains (results/models/<benchmark>/target); none without an RTN low-bit quantizer."""
    if rtn_quantizer(study) is None or study.config["storage"]["unlearned_models"] != "keep":
        return []
    trained = {
        b for b in study.benchmarks if study.config["benchmarks"][b]["models"]["target"] is None
    }
    return [
        SavedRun(
            r.benchmark,
            r.run,
            f"{study.results}/models/{r.benchmark}/target",
            f"{study.results}/unlearn/{r.benchmark}/{r.run}/model",
        )
        for r in study.diagnosed_runs().itertuples()
        if r.benchmark in trained
    ]


def applies(study) -> bool:
    """A diagnosed study that keeps its unlearned models (`saved_runs`)."""
    return bool(saved_runs(study))


def needs(study) -> dict[str, list[str]]:
    """Each saved run's unlearned model and its target, in `saved_runs` order."""
    runs = saved_runs(study)
    return {"models": [r.model for r in runs], "targets": [r.target for r in runs]}


def make(study, inputs: dict[str, list[str]], out_dir: Path) -> None:
    """The frozen-codes table and figure of ``inputs`` (`needs`) into ``out_dir``."""
    runs = [
        saved._replace(model=model, target=target)
        for saved, model, target in zip(
            saved_runs(study), inputs["models"], inputs["targets"], strict=True
        )
    ]
    make_frozen_codes(runs, out_dir, rtn_quantizer(study))


if __name__ == "__main__":
    main()
