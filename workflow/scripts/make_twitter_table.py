from pathlib import Path

from quantunlearn.jobs import logged

with logged(snakemake.log[0]):
    from quantunlearn.reports.twitter_table import make_twitter_table

    make_twitter_table(
        snakemake.input,
        Path(snakemake.output[0]).parent,
        snakemake.params.quantizers,
        snakemake.params.benchmarks,
        snakemake.params.low_bit,
    )
