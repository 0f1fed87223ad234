# One unlearning job per (benchmark, method, hyperparameters): a GPU job on a cluster.


rule unlearn:
    input:
        target=lambda wc: model_input(wc.bench, TARGET_RUN),
        data=lambda wc: benchmark_dir(wc.bench),
        pins=lambda wc: input_pins(wc.bench, [TARGET_RUN]),
    output:
        model=unlearned_model(directory(f"{RESULTS}/unlearn/{{bench}}/{{run}}/model")),
        log=f"{RESULTS}/unlearn/{{bench}}/{{run}}/train_log.parquet",
    log:
        f"{RESULTS}/logs/unlearn/{{bench}}/{{run}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/unlearn/{{bench}}/{{run}}.tsv"
    conda:
        CONDA_ENV
    threads: 1
    resources:
        mem_mb=planned("unlearn", "mem_mb"),
        runtime=planned("unlearn", "runtime"),
        gpu=planned("unlearn", "gpu"),
    params:
        target=lambda wc: model_path(wc.bench, TARGET_RUN),
        tokenizer=lambda wc: tokenizer_of(wc.bench),
        benchmark=lambda wc: STUDY.benchmark(wc.bench),
        # the run's parameters and the study's settings it trains under, as its cell config
        # hashes them: Snakemake compares them with the last run's (a change reruns the job)
        run=lambda wc: STUDY.run(wc.bench, wc.run).params,
        fixed=lambda wc: STUDY.cell_config(wc.bench, wc.run)["unlearn"],
        # the typed run (quantunlearn.study.runs.Run): what the script trains
        typed_run=lambda wc: STUDY.run(wc.bench, wc.run),
    script:
        "../scripts/unlearn.py"
