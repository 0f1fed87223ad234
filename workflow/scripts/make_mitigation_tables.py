from pathlib import Path

from quantunlearn.jobs import logged

with logged(snakemake.log[0]):
    from quantunlearn.reports.mitigations import make_mitigation_tables

    make_mitigation_tables(
        snakemake.input,
        Path(snakemake.output[0]).parent,
        snakemake.params.quantizers,
        snakemake.params.selection,
        snakemake.params.low_bit,
    )
