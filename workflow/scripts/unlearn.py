from pathlib import Path

from quantunlearn.jobs import logged

with logged(snakemake.log[0], snakemake.threads):
    from quantunlearn.data.provenance import Pins
    from quantunlearn.unlearning.loop import unlearn

    bench, run = snakemake.params.benchmark, dict(snakemake.params.run)
    pins = Pins.read(snakemake.input.pins)  # hub models: their pinned snapshot folders
    target, tokenizer = snakemake.params.target, snakemake.params.tokenizer
    unlearn(
        pins.local(target),
        Path(snakemake.input.data) / bench["forget_corpus"],
        Path(snakemake.input.data) / bench["retain_corpus"],
        snakemake.output.model,
        snakemake.output.log,
        method=run["method"],
        hyperparameters={k: v for k, v in run.items() if v is not None},
        settings=snakemake.params.fixed,
        tokenizer=pins.local(tokenizer),
        run=run["run"],
        inputs={"target": pins.record(target), "tokenizer": pins.record(tokenizer or target)},
    )
