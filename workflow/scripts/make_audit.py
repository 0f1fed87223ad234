from pathlib import Path

from quantunlearn.jobs import logged

with logged(snakemake.log[0]):
    from quantunlearn.reports.audit import make_audit

    make_audit(
        snakemake.input.metrics,
        snakemake.input.diagnostics,
        Path(snakemake.output[0]).parent,
        snakemake.params.quantizers,
        snakemake.params.audit,
    )
