from pathlib import Path

from quantunlearn.jobs import logged

with logged(snakemake.log[0]):
    from quantunlearn.reports.scale import make_scale_table

    make_scale_table(
        snakemake.input.metrics,
        dict(zip(snakemake.params.benchmarks, snakemake.input.targets, strict=True)),
        Path(snakemake.output[0]).parent,
        snakemake.params.scale,
        snakemake.params.quantizers,
        diagnostic_files=snakemake.input.diagnostics,
    )
