from quantunlearn.jobs import logged

with logged(snakemake.log[0], snakemake.threads):
    from quantunlearn.data import benchmark_kind
    from quantunlearn.data.provenance import Pins
    from quantunlearn.unlearning.loop import unlearn

    bench, run = snakemake.params.benchmark, dict(snakemake.params.run)
    pins = Pins.read(snakemake.input.pins)  # hub models: their pinned snapshot folders
    target, tokenizer = snakemake.params.target, snakemake.params.tokenizer
    # the benchmark's kind says where the forget (and retain) data come from: MUSE text files,
    # or one RWKU target's texts and refusals
    forget, retain = benchmark_kind(bench).corpora(snakemake.input.data, bench, run.get("subject"))
    unlearn(
        pins.local(target),
        forget,
        retain,
        snakemake.output.model,
        snakemake.output.log,
        method=run["method"],
        hyperparameters={k: v for k, v in run.items() if v is not None},
        settings=snakemake.params.fixed,
        tokenizer=pins.local(tokenizer),
        gpus=int(snakemake.resources.gpu),  # the plan's request: > 1 spreads the model
        run=run["run"],
        inputs={"target": pins.record(target), "tokenizer": pins.record(tokenizer or target)},
    )
