from quantunlearn.jobs import logged

with logged(snakemake.log[0], snakemake.threads):
    from quantunlearn.evaluation.cell import evaluate_cell

    cell_config = snakemake.params.cell_config
    evaluate_cell(
        snakemake.params.model,
        snakemake.wildcards.quant,
        snakemake.input.data,
        snakemake.params.auc,
        snakemake.output.metrics,
        snakemake.output.records,
        cell=dict(snakemake.params.cell),
        cell_config=cell_config,
        evaluation=cell_config["evaluation"],
        bnb_compute_dtype=cell_config.get("bnb_compute_dtype", "fp32"),
        tokenizer=snakemake.params.tokenizer,
        quant_dir=snakemake.params.quant_dir,
        target_model=snakemake.params.target_model,
        kind=snakemake.params.kind,
        subjects=snakemake.params.subjects,
    )
