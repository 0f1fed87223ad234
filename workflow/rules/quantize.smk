# Quantizers that need calibration (GPTQ, AWQ) write a checkpoint of their own: one job per
# (run, quantizer), re-used by every evaluation and diagnostic that needs it. RTN, GGUF and
# bitsandbytes are cheap and quantize inside the evaluation job instead.


rule quantize:
    input:
        model=lambda wc: model_input(wc.bench, wc.run),
        data=lambda wc: benchmark_dir(wc.bench),
        pins=lambda wc: input_pins(wc.bench, [wc.run]),
    output:
        directory(f"{RESULTS}/quantize/{{bench}}/{{run}}/{{quant}}"),
    log:
        f"{RESULTS}/logs/quantize/{{bench}}/{{run}}/{{quant}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/quantize/{{bench}}/{{run}}/{{quant}}.tsv"
    wildcard_constraints:
        quant=STORED_QUANTIZERS,
    conda:
        CONDA_ENV
    threads: 1
    resources:
        mem_mb=planned("quantize", "mem_mb"),
        runtime=planned("quantize", "runtime"),
        gpu=planned("quantize", "gpu"),
    params:
        model=lambda wc: model_path(wc.bench, wc.run),
        tokenizer=lambda wc: tokenizer_of(wc.bench),
        benchmark=lambda wc: STUDY.benchmark(wc.bench),
        calibration=STUDY.config["calibration"],
    script:
        "../scripts/quantize.py"


rule diagnose:
    input:
        target=lambda wc: model_input(wc.bench, TARGET_RUN),
        model=lambda wc: model_input(wc.bench, wc.run),
        quantized=lambda wc: quantized_input(wc.bench, wc.run, wc.quant),
        target_quantized=lambda wc: quantized_input(wc.bench, TARGET_RUN, wc.quant),
        pins=lambda wc: input_pins(wc.bench, [TARGET_RUN, wc.run], tokenizer=False),
    output:
        f"{RESULTS}/diagnostics/{{bench}}/{{run}}/{{quant}}.parquet",
    log:
        f"{RESULTS}/logs/diagnose/{{bench}}/{{run}}/{{quant}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/diagnose/{{bench}}/{{run}}/{{quant}}.tsv"
    conda:
        CONDA_ENV
    threads: 1
    resources:
        mem_mb=16000,
        runtime=60,
    params:
        # what the cell's config hash covers, compared by Snakemake (a change reruns it)
        cell=lambda wc: STUDY.run(wc.bench, wc.run).params,
        cell_config=lambda wc: STUDY.cell_config(wc.bench, wc.run, wc.quant),
        # the typed cell the script diagnoses (quantunlearn.evaluation.cell.CellJob): the run's
        # and the target's models and stored checkpoints, the same parameters and config
        job=lambda wc: diagnostic_job(STUDY, wc.bench, wc.run, wc.quant),
    script:
        "../scripts/diagnose.py"


# QUAIL's Table I (Mishra and Mehreen section V) of one diagnosed run: its own min-max quantizer
# over all parameters, at 16, 8 and 4 bits (config `diagnostics.quail_table`).
rule quail_table:
    input:
        target=lambda wc: model_input(wc.bench, TARGET_RUN),
        model=lambda wc: model_input(wc.bench, wc.run),
        pins=lambda wc: input_pins(wc.bench, [TARGET_RUN, wc.run], tokenizer=False),
    output:
        f"{RESULTS}/quail_table1/{{bench}}/{{run}}.parquet",
    log:
        f"{RESULTS}/logs/quail_table/{{bench}}/{{run}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/quail_table/{{bench}}/{{run}}.tsv"
    conda:
        CONDA_ENV
    threads: 1
    resources:
        mem_mb=16000,
        runtime=60,
    params:
        target=lambda wc: model_path(wc.bench, TARGET_RUN),
        model=lambda wc: model_path(wc.bench, wc.run),
        cell=lambda wc: STUDY.run(wc.bench, wc.run).params,
        cell_config=lambda wc: STUDY.cell_config(wc.bench, wc.run),
    script:
        "../scripts/quail_table.py"
