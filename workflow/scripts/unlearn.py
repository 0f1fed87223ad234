from pathlib import Path

from quantunlearn.unlearn import unlearn
from quantunlearn.workflow_io import logged

with logged(snakemake.log[0], snakemake.threads):
    bench, run = snakemake.params.benchmark, dict(snakemake.params.run)
    hyper = {k: v for k, v in run.items() if k not in ("benchmark", "run") and v is not None}
    unlearn(
        snakemake.params.target,
        Path(snakemake.input.data) / bench["forget_corpus"],
        Path(snakemake.input.data) / bench["retain_corpus"],
        snakemake.output.model,
        snakemake.output.log,
        tokenizer=snakemake.params.tokenizer,
        run=run["run"],
        **hyper,
        **snakemake.params.fixed,
    )
