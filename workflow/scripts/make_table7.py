from pathlib import Path

from quantunlearn.jobs import logged

with logged(snakemake.log[0]):
    from quantunlearn.reports.table7 import make_table7

    make_table7(snakemake.input, Path(snakemake.output[0]).parent, snakemake.params.quantizers)
