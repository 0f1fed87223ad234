from quantunlearn.jobs import logged

with logged(snakemake.log[0], snakemake.threads):
    from quantunlearn.data import benchmark_kind
    from quantunlearn.data.provenance import Pins
    from quantunlearn.data.utility import utility_sources
    from quantunlearn.evaluation.cell import evaluate_cell
    from quantunlearn.study.external import check_before_loading
    from quantunlearn.study.grid import is_external

    cell_config = snakemake.params.cell_config
    pins = Pins.read(snakemake.input.pins)  # hub models and datasets: their pinned folders
    model, tokenizer = snakemake.params.model, snakemake.params.tokenizer
    target = snakemake.params.target_model
    # the benchmark's data: its source (a Twitter benchmark's: its dataset at its revision)
    (source,) = (benchmark_kind(b).data_source(b) for b in cell_config["benchmark"].values())
    evaluation = dict(cell_config["evaluation"])
    named, utility = evaluation.get("utility") or [], utility_sources(evaluation)
    if named:  # hub datasets: their pinned snapshots
        evaluation["utility_data"] = {k: pins.local(utility[k]) for k in named}
    inputs = {
        "model": pins.record(model),
        "tokenizer": pins.record(tokenizer or model),
        "target": pins.record(target),
        "benchmark": pins.record(source),
        **{f"utility:{k}": pins.record(utility[k]) for k in named},
    }
    if is_external(snakemake.params.cell["method"]):  # audit mode: the files planned for
        content = cell_config.get("external_content")  # a local folder's, None for a hub id
        check_before_loading(model, pins.local(model), pins.local(target), content)
        inputs["model"]["content"] = content
    evaluate_cell(
        pins.local(model),
        snakemake.wildcards.quant,
        snakemake.input.data,
        snakemake.params.auc,
        snakemake.output.metrics,
        snakemake.output.records,
        cell=dict(snakemake.params.cell),
        cell_config=cell_config,
        evaluation=evaluation,
        bnb_compute_dtype=cell_config.get("bnb_compute_dtype", "fp32"),
        tokenizer=pins.local(tokenizer),
        quant_dir=snakemake.params.quant_dir,
        target_model=pins.local(target),
        kind=snakemake.params.kind,
        subjects=snakemake.params.subjects,
        inputs=inputs,
    )
