from pathlib import Path

from quantunlearn.jobs import logged

with logged(snakemake.log[0]):
    from quantunlearn.reports.provenance_report import make_provenance

    make_provenance(snakemake.input, Path(snakemake.output[0]).parent)
