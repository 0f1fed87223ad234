from pathlib import Path

from quantunlearn.jobs import logged

with logged(snakemake.log[0], snakemake.threads):
    from quantunlearn.unlearning.loop import unlearn

    bench, run = snakemake.params.benchmark, dict(snakemake.params.run)
    unlearn(
        snakemake.params.target,
        Path(snakemake.input.data) / bench["forget_corpus"],
        Path(snakemake.input.data) / bench["retain_corpus"],
        snakemake.output.model,
        snakemake.output.log,
        method=run["method"],
        hyperparameters={k: v for k, v in run.items() if v is not None},
        settings=snakemake.params.fixed,
        tokenizer=snakemake.params.tokenizer,
        run=run["run"],
    )
