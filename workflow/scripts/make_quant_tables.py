from pathlib import Path

from quantunlearn.jobs import logged

with logged(snakemake.log[0]):
    from quantunlearn.reports.quantizers import make_quant_tables

    make_quant_tables(
        snakemake.input.metrics,
        snakemake.input.diagnostics,
        Path(snakemake.output[0]).parent,
        snakemake.params.quantizers,
        snakemake.input.quail_table,
    )
