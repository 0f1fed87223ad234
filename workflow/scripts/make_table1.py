from pathlib import Path

from quantunlearn.jobs import logged

with logged(snakemake.log[0]):
    from quantunlearn.reports.table1 import make_table1

    make_table1(snakemake.input, Path(snakemake.output[0]).parent, snakemake.params.quantizers)
