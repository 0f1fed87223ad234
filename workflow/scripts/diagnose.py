from quantunlearn.jobs import logged

with logged(snakemake.log[0], snakemake.threads):
    from quantunlearn.data.provenance import Pins
    from quantunlearn.evaluation.diagnostics import diagnose_run
    from quantunlearn.study.external import check_before_loading
    from quantunlearn.study.runs import is_external

    planned = snakemake.params.job  # the typed cell (quantunlearn.evaluation.cell.CellJob)
    cell = planned.pinned(Pins.read(snakemake.input.pins))  # hub models: their pinned folders
    if is_external(cell.params["method"]):  # audit mode: the files planned for
        content = cell.cell_config.get("external_content")  # a local folder's, None for a hub id
        check_before_loading(planned.model, cell.model, cell.target, content)
        cell.inputs["model"]["content"] = content
    diagnose_run(cell, snakemake.output[0])
