from quantunlearn.jobs import logged

with logged(snakemake.log[0], snakemake.threads):
    from quantunlearn.evaluation.quail_table import quail_table_run

    quail_table_run(
        snakemake.params.target,
        snakemake.params.model,
        snakemake.output[0],
        cell=dict(snakemake.params.cell),
        cell_config=snakemake.params.cell_config,
    )
