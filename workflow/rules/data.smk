# The benchmark in the MUSE layout: generated (synthetic), copied (local folder) or fetched (hub).


rule prepare_benchmark:
    input:
        pins=lambda wc: input_pins(wc.bench, tokenizer=False, data=True),
    output:
        directory(f"{RESULTS}/data/{{bench}}"),
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
