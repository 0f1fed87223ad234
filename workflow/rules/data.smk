# The benchmark in the MUSE layout: generated (synthetic), copied (local folder) or fetched (hub).
# update(): Snakemake does not delete an existing folder before the job (every finished cell
# depends on it) but backs it up and restores it if the job fails; the job builds the new one
# beside it and swaps it in only when complete (quantunlearn.io.atomic_dir). The config's checks
# (check_synthetic, the local folder's layout) run at parse time, before any job.


rule prepare_benchmark:
    input:
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
