from quantunlearn.jobs import logged

with logged(snakemake.log[0], snakemake.threads):
    from quantunlearn.data.provenance import Pins
    from quantunlearn.evaluation.cell import evaluate_cell
    from quantunlearn.study.jobs import pinned_cell

    # the typed cell (quantunlearn.evaluation.cell.CellJob) with its hub models and datasets
    # read from their pinned folders, and every input's provenance
    cell = pinned_cell(snakemake.params.job, Pins.read(snakemake.input.pins))
    evaluate_cell(
        cell,
        snakemake.input.data,
        snakemake.params.auc,
        snakemake.output.metrics,
        snakemake.output.records,
    )
