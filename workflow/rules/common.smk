# Validation of the config (first thing, so a typo fails in a second) and the path helpers.
# All logic lives in the quantunlearn package; this file only maps the grid onto paths.
import functools
import os
import sys

from quantunlearn.data.utility import utility_sources
from quantunlearn.quantizers import FULL_PRECISION, QUANTIZERS, family_pattern, parse_quantizer
from quantunlearn.reports import BY_NAME as REPORTS
from quantunlearn.study import ConfigError, load_study
from quantunlearn.study.grid import config_owner, steps_summary
from quantunlearn.study.inputs import download_summary, hub_inputs, pin_file
from quantunlearn.study.plan import plan_summary
from quantunlearn.study.plan import request as plan_request
from quantunlearn.study.jobs import cell_job, diagnostic_job, stored_quant_dir
from quantunlearn.study.runs import is_external, run_path
from quantunlearn.study.storage import disk_summary
from quantunlearn.unlearning.methods import RETRAIN, TARGET

STUDY = load_study(config)
# the config file(s) that write this study's tables: the tables folder records it (onstart), and
# another config that would write the same table files is stopped here
TABLES_OWNER = config_owner(workflow.configfiles)
RESULTS = str(STUDY.results)
# every hub model and dataset of the study, by pin name: the download rule fetches each once
HUB_INPUTS = hub_inputs(STUDY)
# the one cluster setting of the plan: the GPU memory of the nodes (GB), the profile's
# default-resources `gpu_memory_gb` (profiles/slurm); 80 where no profile sets it
_DEFAULTS = workflow.resource_settings.default_resources
_NODE = _DEFAULTS.get("gpu_memory_gb") if _DEFAULTS is not None else None
GPU_MEMORY_GB = float(_NODE.value) if _NODE is not None else 80.0
if workflow.is_main_process:  # the dry run (and the main run): once, not in every cluster job
    if STUDY.tables_owner_error(TABLES_OWNER):
        raise ConfigError(STUDY.tables_owner_error(TABLES_OWNER))
    for warning in STUDY.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(disk_summary(STUDY), file=sys.stderr)  # what the checkpoints take
    print(steps_summary(STUDY), file=sys.stderr)  # the unlearning runs' optimizer steps
    print(plan_summary(STUDY, GPU_MEMORY_GB), file=sys.stderr)  # GPU memory and hours per rule
    if HUB_INPUTS:  # and what the download step fetches
        print(download_summary(STUDY, RESULTS), file=sys.stderr)
# tables of a second study on the same results (config/quantizers.yaml) go to their own folder
TABLES = str(STUDY.tables)
TABLES_TAG = "" if TABLES == f"{RESULTS}/tables" else os.path.basename(TABLES) + "_"
# one software environment for every rule (environment.yml at the top level)
CONDA_ENV = "../envs/quantunlearn.yaml"


wildcard_constraints:
    bench=r"[A-Za-z0-9_]+",
    run=r"method~[A-Za-z0-9_]+(/[a-z_]+~[^/]+)*",
    quant=r"[a-z0-9_]+",
    which=r"target|retrain",


# the {run} wildcard of the reference models (their runs' paths)
TARGET_RUN, RETRAIN_RUN = run_path(TARGET, {}), run_path(RETRAIN, {})


def model_path(bench, run):
    """Where the model of a run lives: a DAG output, or an external hub id / local path."""
    return STUDY.model_path(bench, run)


def model_input(bench, run):
    """The model as a DAG input: a DAG output, or an audited checkpoint's local folder (its
    content is also in its cells' config); nothing for a hub id or a named reference model."""
    path = STUDY.model_path(bench, run)
    local_external = is_external(STUDY.run(bench, run).method) and os.path.isdir(path)
    return [path] if path.startswith(f"{RESULTS}/") or local_external else []


def tokenizer_of(bench):
    """The tokenizer named for the benchmark's models (None: each model folder's own)."""
    return STUDY.bench(bench).models["tokenizer"]


def tiny_tokenizer(bench):
    """The tokenizer the DAG trains for a tiny model (train_tokenizer)."""
    return f"{RESULTS}/models/{bench}/tokenizer"


UTILITY_SOURCES = [
    utility_sources(STUDY.config["evaluation"])[name]
    for name in STUDY.config["evaluation"].get("utility") or []
]


def input_pins(bench, runs=(), tokenizer=True, data=False, utility=False, base=False):
    """The pins of a job's hub inputs (written by the download step): the models of `runs`,
    the tokenizer, the benchmark's dataset, the utility datasets, the base model. A job loads
    their folders."""
    entries = [(model_path(bench, run), "model") for run in runs]
    if tokenizer:
        entries.append((tokenizer_of(bench), "model"))
    if data:
        entries.append((STUDY.hub_dataset(bench), "dataset"))
    if base:
        entries.append((STUDY.base_model(bench), "model"))
    if utility:
        entries += [(source, "dataset") for source in UTILITY_SOURCES]
    return sorted({pin for spec, kind in entries for pin in pin_file(RESULTS, spec, kind)})


def unlearned_model(path):
    """storage.unlearned_models: temp = deleted once every evaluation that reads it is done."""
    return temp(path) if STUDY.config["storage"]["unlearned_models"] == "temp" else path


def reference_auc_input(bench):
    """PrivLeak's reference AUC, from a MUSE benchmark's retrain model; RWKU has none."""
    if RETRAIN not in STUDY.kind(bench).references:
        return []
    return [f"{RESULTS}/metrics/{bench}/retrain_auc.json"]


def utility_check_input():
    """The utility data check (check_utility_data) when the study measures utility metrics."""
    return [STUDY.utility_check_file] if STUDY.config["evaluation"].get("utility") else []


def benchmark_dir(bench):
    return f"{RESULTS}/data/{bench}"


def quantized_dir(bench, run, quant):
    """The stored checkpoint of a GPTQ/AWQ quantizer (quantize.smk), else None."""
    return stored_quant_dir(STUDY, bench, run, quant)


def quantized_input(bench, run, quant):
    path = quantized_dir(bench, run, quant)
    return [path] if path else []


def noflip_target_input(bench, quant):
    """The noflip counterfactual forces the target's codes back: it needs the target."""
    if not parse_quantizer(quant).needs_target:
        return []
    return model_input(bench, TARGET_RUN)


# GPTQ/AWQ: the quantizers whose checkpoint the `quantize` rule writes (from the QUANTIZERS table)
STORED_QUANTIZERS = family_pattern([family for family in QUANTIZERS if family.stored])


def report_outputs(name):
    """The files a report writes, as its module declares them; its Markdown tables and PNG
    figures also go into the HTML report (snakemake --report), captioned by workflow/report/."""
    files = REPORTS[name].all_files(STUDY)
    items = REPORTS[name].report_items(files)
    outputs = {}
    for file in files:
        path = f"{TABLES}/{file}"
        if file in items:
            caption = os.path.join(
                workflow.basedir, "workflow", "report", REPORTS[name].caption(file) + ".rst"
            )
            kwargs = {"caption": caption} if os.path.exists(caption) else {}
            path = report(path, category=items[file], **kwargs)
        # update(): the tables of the last run stay until the new ones are written (a job that
        # fails, on a damaged metric file say, leaves them as they were)
        outputs[file.replace(".", "_")] = update(path)
    return outputs


def all_report_files():
    """Every file of every report this study makes (the `all_tables` target)."""
    return [
        f"{TABLES}/{file}"
        for name, spec in REPORTS.items()
        if spec.applies(STUDY)
        for file in spec.all_files(STUDY)
    ]


@functools.cache
def _planned(rule, bench, run, quant):
    return plan_request(STUDY, rule, bench, run, quant, GPU_MEMORY_GB)


def planned(rule, key):
    """A GPU rule's resource ``key`` (gpu, mem_mb, runtime) per job, from the study's plan
    (quantunlearn.study.plan.request); memory and time grow with the attempt (retries)."""

    def resource(wildcards, attempt):
        run = getattr(wildcards, "run", RETRAIN_RUN)
        quant = getattr(wildcards, "quant", FULL_PRECISION)
        return _planned(rule, wildcards.bench, run, quant).at(attempt)[key]

    return resource
