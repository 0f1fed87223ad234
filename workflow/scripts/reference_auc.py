from quantunlearn.jobs import logged

with logged(snakemake.log[0], snakemake.threads):
    from quantunlearn.evaluation.cell import reference_auc

    reference_auc(
        snakemake.params.model,
        snakemake.input.data,
        snakemake.output[0],
        snakemake.params.evaluation,
        tokenizer=snakemake.params.tokenizer,
    )
