from quantunlearn.jobs import logged

with logged(snakemake.log[0], snakemake.threads):
    from quantunlearn.data.provenance import Pins
    from quantunlearn.evaluation.diagnostics import diagnose_run
    from quantunlearn.study.jobs import pinned_cell

    # the typed cell (quantunlearn.evaluation.cell.CellJob), its hub models pinned
    cell = pinned_cell(snakemake.params.job, Pins.read(snakemake.input.pins))
    diagnose_run(cell, snakemake.output[0])
