# One evaluation job per (run, quantizer). bitsandbytes, RTN and GGUF quantize at load time,
# inside the job; GPTQ/AWQ read their stored checkpoint (quantize.smk). PrivLeak's reference
# AUC (full-precision retrain) is computed once per MUSE benchmark (RWKU has no retrain model).


rule reference_auc:
    input:
        model=lambda wc: model_input(wc.bench, RETRAIN_RUN),
        data=lambda wc: benchmark_dir(wc.bench),
        pins=lambda wc: input_pins(wc.bench, [RETRAIN_RUN]),
    output:
        f"{RESULTS}/metrics/{{bench}}/retrain_auc.json",
    log:
        f"{RESULTS}/logs/reference_auc/{{bench}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/reference_auc/{{bench}}.tsv"
    conda:
        CONDA_ENV
    threads: 1
    resources:
        mem_mb=planned("reference_auc", "mem_mb"),
        runtime=planned("reference_auc", "runtime"),
        gpu=planned("reference_auc", "gpu"),
    params:
        model=lambda wc: model_path(wc.bench, RETRAIN_RUN),
        tokenizer=lambda wc: tokenizer_of(wc.bench),
        evaluation=STUDY.config["evaluation"],
    script:
        "../scripts/reference_auc.py"


rule evaluate:
    input:
        model=lambda wc: model_input(wc.bench, wc.run),
        data=lambda wc: benchmark_dir(wc.bench),
        auc=lambda wc: reference_auc_input(wc.bench),
        quantized=lambda wc: quantized_input(wc.bench, wc.run, wc.quant),
        target=lambda wc: noflip_target_input(wc.bench, wc.quant),
        # the hub inputs' pins: this cell's model, the target, the benchmark and utility data
        pins=lambda wc: input_pins(wc.bench, [wc.run, TARGET_RUN], data=True, utility=True),
    output:
        metrics=f"{RESULTS}/metrics/{{bench}}/{{run}}/{{quant}}.parquet",
        records=f"{RESULTS}/records/{{bench}}/{{run}}/{{quant}}.parquet",
    log:
        f"{RESULTS}/logs/evaluate/{{bench}}/{{run}}/{{quant}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/evaluate/{{bench}}/{{run}}/{{quant}}.tsv"
    conda:
        CONDA_ENV
    threads: 1
    resources:
        mem_mb=planned("evaluate", "mem_mb"),
        runtime=planned("evaluate", "runtime"),
        gpu=planned("evaluate", "gpu"),
    params:
        # the run's parameters and the cell's config, which its config hash covers: Snakemake
        # compares them with the last run's (a change reruns the cell)
        cell=lambda wc: STUDY.run(wc.bench, wc.run).params,
        cell_config=lambda wc: STUDY.cell_config(wc.bench, wc.run, wc.quant),
        auc=lambda wc: (reference_auc_input(wc.bench) or [None])[0],
        # the typed cell the script evaluates (quantunlearn.evaluation.cell.CellJob): the same
        # parameters and config, its models, quantizer, benchmark kind and targets
        job=lambda wc: cell_job(STUDY, wc.bench, wc.run, wc.quant),
    script:
        "../scripts/evaluate.py"
