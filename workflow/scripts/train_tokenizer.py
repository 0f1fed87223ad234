from quantunlearn.jobs import logged

with logged(snakemake.log[0]):
    from quantunlearn.models.tiny import build_tokenizer

    build_tokenizer(snakemake.input.data, snakemake.output[0], snakemake.params.vocab_size)
