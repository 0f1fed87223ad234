# The embedded study trains its own tokenizer, target (forget + retain) and retrain (retain only);
# a benchmark with models.base fine-tunes them from that model (with its tokenizer). Real
# benchmarks name hub ids or local paths in the config instead, and these rules never run.
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
        tokenizer=lambda wc: [] if STUDY.base_model(wc.bench) else tiny_tokenizer(wc.bench),
        pins=lambda wc: input_pins(wc.bench, base=True) if STUDY.base_model(wc.bench) else [],
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
        tiny_model=lambda wc: STUDY.tiny_model(wc.bench),  # None: fine-tuned from models.base
        base=lambda wc: STUDY.base_model(wc.bench),
        tokenizer=lambda wc: tokenizer_of(wc.bench),
        finetune=lambda wc: STUDY.benchmark(wc.bench).get("finetune"),
    script:
        "../scripts/train_reference.py"
