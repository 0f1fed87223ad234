"""What a job of the workflow gets from the Study: its typed description, built from its
wildcards. The rules pass these as params; the job's script swaps hub ids for the pinned
snapshot folders (`quantunlearn.evaluation.cell.CellJob.pinned`) and calls one function."""

from __future__ import annotations

from dataclasses import replace

from quantunlearn.data.provenance import Pins
from quantunlearn.evaluation.cell import CellJob
from quantunlearn.quantizers import parse_quantizer
from quantunlearn.study.external import check_before_loading
from quantunlearn.study.grid import Study
from quantunlearn.study.runs import is_external, run_path
from quantunlearn.unlearning.methods import TARGET


def stored_quant_dir(study: Study, bench: str, run: str, quant: str) -> str | None:
    """The stored checkpoint of a GPTQ/AWQ quantizer of a run (the quantize rule's output);
    None for a quantizer that quantizes at load time."""
    return study.quant_dir(bench, run, quant) if parse_quantizer(quant).stored else None


def cell_job(study: Study, bench: str, run: str, quant: str) -> CellJob:
    """The evaluation cell of the wildcards ``{bench}``, ``{run}`` and ``{quant}``."""
    spec, target = study.bench(bench), run_path(TARGET, {})
    return CellJob(
        params=study.run(bench, run).params,
        quant=quant,
        cell_config=study.cell_config(bench, run, quant),
        model=study.model_path(bench, run),
        tokenizer=spec.models["tokenizer"],
        target=study.model_path(bench, target),
        quant_dir=stored_quant_dir(study, bench, run, quant),
        target_quant_dir=stored_quant_dir(study, bench, target, quant),
        kind=spec.kind.name,
        data_source=spec.kind.data_source(spec.entry),
        subjects=study.eval_subjects(bench, run),
    )


def diagnostic_job(study: Study, bench: str, run: str, quant: str) -> CellJob:
    """The weight diagnostic of the same wildcards: the run's weights against the target's,
    under the quantizer; it reads no tokenizer and no benchmark data."""
    return replace(cell_job(study, bench, run, quant), tokenizer=None, data_source=None)


def pinned_cell(planned: CellJob, pins: Pins) -> CellJob:
    """What an evaluate or diagnose job runs: ``planned`` with its hub inputs read from their
    pinned folders (`CellJob.pinned`); an audited checkpoint is first checked against the
    files planned for (a local folder's content, recorded in the cell's provenance)."""
    cell = planned.pinned(pins)
    if is_external(cell.params["method"]):
        content = cell.cell_config.get("external_content")  # a local folder's, None for a hub id
        check_before_loading(planned.model, cell.model, cell.target, content)
        cell.inputs["model"]["content"] = content
    return cell
