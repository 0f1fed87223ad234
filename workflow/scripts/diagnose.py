from quantunlearn.jobs import logged

with logged(snakemake.log[0], snakemake.threads):
    from quantunlearn.data.provenance import Pins
    from quantunlearn.evaluation.diagnostics import diagnose_run
    from quantunlearn.study.external import check_before_loading
    from quantunlearn.study.grid import is_external

    cell_config = snakemake.params.cell_config
    pins = Pins.read(snakemake.input.pins)  # hub models: their pinned snapshot folders
    target, model = snakemake.params.target, snakemake.params.model
    inputs = {"model": pins.record(model), "target": pins.record(target)}
    if is_external(snakemake.params.cell["method"]):  # audit mode: the files planned for
        content = cell_config.get("external_content")  # a local folder's, None for a hub id
        check_before_loading(model, pins.local(model), pins.local(target), content)
        inputs["model"]["content"] = content
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
        inputs=inputs,
    )
