from quantunlearn.jobs import logged

with logged(snakemake.log[0], snakemake.threads):
    from quantunlearn.data import benchmark_kind
    from quantunlearn.data.provenance import Pins
    from quantunlearn.unlearning.hyperparameters import UnlearnSettings
    from quantunlearn.unlearning.loop import UnlearnJob, unlearn

    params = snakemake.params
    run = params.typed_run  # the run of the wildcards (quantunlearn.study.runs.Run)
    pins = Pins.read(snakemake.input.pins)  # hub models: their pinned snapshot folders
    # the benchmark's kind says where the forget (and retain) data come from: MUSE text files,
    # or one RWKU target's texts and refusals
    kind = benchmark_kind(params.benchmark)
    forget, retain = kind.corpora(snakemake.input.data, params.benchmark, run.subject)
    job = UnlearnJob(
        run.typed,
        UnlearnSettings(**params.fixed),
        tokenizer=pins.local(params.tokenizer),
        gpus=int(snakemake.resources.gpu),  # the plan's request: > 1 spreads the model
    )
    unlearn(
        pins.local(params.target),
        forget,
        retain,
        snakemake.output.model,
        snakemake.output.log,
        job,
        run=run.path,
        inputs={
            "target": pins.record(params.target),
            "tokenizer": pins.record(params.tokenizer or params.target),
        },  # fmt: skip
    )
