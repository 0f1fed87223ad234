# The utility data check (when the study measures utility metrics): every configured utility
# source is loaded and its rows checked before any benchmark is prepared, so a source that cannot
# be loaded fails in seconds, before any model is loaded or GPU job submitted (hub datasets: from
# the snapshots the download step pinned).


rule check_utility_data:
    input:
        pins=sorted({pin for spec in UTILITY_SOURCES for pin in pin_file(RESULTS, spec, "dataset")}),
    output:
        STUDY.utility_check_file,
    log:
        f"{RESULTS}/logs/check_utility_data/{os.path.basename(STUDY.utility_check_file)}.log",
    localrule: True
    conda:
        CONDA_ENV
    params:
        evaluation=STUDY.config["evaluation"],
    script:
        "../scripts/check_utility_data.py"


# The benchmark's folder: generated (embedded), copied (local folder) or fetched (hub), by its
# kind's row of quantunlearn.data.benchmarks.BENCHMARKS.
# update(): Snakemake does not delete an existing folder before the job (every finished cell
# depends on it) but backs it up and restores it if the job fails; the job builds the new one
# beside it and swaps it in only when complete (quantunlearn.io.atomic_dir). The row's checks
# (the generator's settings, the local folder's layout) run at parse time, before any job.
rule prepare_benchmark:
    input:
        utility_check_input(),
        pins=lambda wc: input_pins(wc.bench, tokenizer=False, data=True),
    output:
        update(directory(f"{RESULTS}/data/{{bench}}")),
    log:
        f"{RESULTS}/logs/prepare_benchmark/{{bench}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/prepare_benchmark/{{bench}}.tsv"
    conda:
        CONDA_ENV
    params:
        benchmark=lambda wc: STUDY.data_spec(wc.bench),
    script:
        "../scripts/prepare_benchmark.py"
