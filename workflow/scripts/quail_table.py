from quantunlearn.jobs import logged

with logged(snakemake.log[0], snakemake.threads):
    from quantunlearn.data.provenance import Pins
    from quantunlearn.evaluation.quail_table import quail_table_run

    pins = Pins.read(snakemake.input.pins)  # hub models: their pinned snapshot folders
    target, model = snakemake.params.target, snakemake.params.model
    quail_table_run(
        pins.local(target),
        pins.local(model),
        snakemake.output[0],
        cell=dict(snakemake.params.cell),
        cell_config=snakemake.params.cell_config,
        inputs={"model": pins.record(model), "target": pins.record(target)},
    )
