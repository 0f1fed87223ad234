from quantunlearn.jobs import logged

with logged(snakemake.log[0], snakemake.threads):
    from quantunlearn.models.tiny import train_reference

    train_reference(
        snakemake.wildcards.which,
        snakemake.input.data,
        snakemake.input.tokenizer,
        snakemake.output.model,
        snakemake.output.log,
        snakemake.params.tiny_model,
    )
