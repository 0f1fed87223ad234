# quantunlearn: does LLM unlearning survive quantization?
# data -> target/retrain models -> unlearn -> quantize (GPTQ/AWQ stored, others at load) ->
# evaluate (+ weight diagnostics) -> Parquet -> tables
# Every (benchmark, method, hyperparameters, quantizer) cell is a target; `all_tables` builds all.
import os

from snakemake.utils import min_version

from quantunlearn.study import recovery
from quantunlearn.study.config import read_config_file

min_version("9.0")

# workflow/envs/quantunlearn.yaml installs this checkout with `pip install -e
# ${QUANTUNLEARN_ROOT}` (`--sdm conda`): the Snakefile's folder is the repository root.
os.environ.setdefault("QUANTUNLEARN_ROOT", workflow.basedir)


# The default study (the embedded miniature benchmark) unless --configfile names another one:
# Snakemake would otherwise merge a real study's benchmarks into the default's.
if not config:
    # a YAML syntax error says file:line:column (Snakemake's loader only says "not valid")
    read_config_file(os.path.join(workflow.basedir, "config", "config.yaml"))

    configfile: os.path.join(workflow.basedir, "config", "config.yaml")


# the update() outputs kept when a run starts (quantunlearn.study.recovery)
KEPT = []


include: "workflow/rules/common.smk"
include: "workflow/rules/download.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/models.smk"
include: "workflow/rules/unlearn.smk"
include: "workflow/rules/quantize.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/tables.smk"


rule all_tables:
    default_target: True
    input:
        # every report of the REPORTS table that this study makes (quantunlearn.reports)
        all_report_files(),
        # every cell's records: part of its output (a deleted one is rebuilt)
        STUDY.record_files(),


onstart:
    STUDY.claim_tables(TABLES_OWNER)  # this config writes TABLES (common.smk checks it)
    # the update() outputs about to be rebuilt, and Snakemake's records of them
    KEPT.extend(recovery.keep(workflow))


onerror:
    # a failed job's restored output gets its record back: the finished study has nothing to do
    for path in recovery.restore(workflow, KEPT):
        print(f"{path}: restored as it was, with its record (nothing to redo for it)")


onsuccess:
    print(
        f"The tables and figures are in {TABLES}/ (snakemake --report report.html: all in one page)"
    )
