# The embedded study trains its own tokenizer, target (forget + retain) and retrain (retain only).
# Real benchmarks name hub ids or local paths in the config instead, and these rules never run.
# update(): like the benchmark folder (data.smk), a tokenizer or reference model that every cell
# of the benchmark depends on is kept (backed up, restored if the new training fails) until the
# new one is complete.


rule train_tokenizer:
    input:
        data=lambda wc: benchmark_dir(wc.bench),
    output:
        update(directory(f"{RESULTS}/models/{{bench}}/tokenizer")),
    log:
        f"{RESULTS}/logs/train_tokenizer/{{bench}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/train_tokenizer/{{bench}}.tsv"
    conda:
        CONDA_ENV
    params:
        vocab_size=lambda wc: STUDY.tiny_model(wc.bench)["tokenizer_vocab"],
    script:
        "../scripts/train_tokenizer.py"


rule train_reference:
    input:
        data=lambda wc: benchmark_dir(wc.bench),
        tokenizer=f"{RESULTS}/models/{{bench}}/tokenizer",
    output:
        model=update(directory(f"{RESULTS}/models/{{bench}}/{{which}}")),
        log=update(f"{RESULTS}/models/{{bench}}/{{which}}_train_log.parquet"),
    log:
        f"{RESULTS}/logs/train_reference/{{bench}}/{{which}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/train_reference/{{bench}}/{{which}}.tsv"
    conda:
        CONDA_ENV
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
        gpu=1,
    params:
        tiny_model=lambda wc: STUDY.tiny_model(wc.bench),
    script:
        "../scripts/train_reference.py"
