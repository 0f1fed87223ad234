from quantunlearn.jobs import logged

with logged(snakemake.log[0], snakemake.threads):
    from quantunlearn.data.provenance import Pins
    from quantunlearn.evaluation.diagnostics import diagnose_run

    cell_config = snakemake.params.cell_config
    pins = Pins.read(snakemake.input.pins)  # hub models: their pinned snapshot folders
    target, model = snakemake.params.target, snakemake.params.model
    diagnose_run(
        pins.local(target),
        pins.local(model),
        snakemake.wildcards.quant,
        snakemake.output[0],
        cell=dict(snakemake.params.cell),
        cell_config=cell_config,
        target_quant_dir=snakemake.params.target_quant_dir,
        unlearned_quant_dir=snakemake.params.quant_dir,
        compute_dtype=cell_config.get("bnb_compute_dtype", "fp32"),
        inputs={"model": pins.record(model), "target": pins.record(target)},
    )
