from quantunlearn.jobs import logged

with logged(snakemake.log[0], snakemake.threads):
    params = snakemake.params
    if params.base:  # fine-tuned from the benchmark's base model (models.base)
        from quantunlearn.data.provenance import Pins
        from quantunlearn.models.finetune import finetune_reference

        pins = Pins.read(snakemake.input.pins)  # hub models: their pinned snapshot folders
        finetune_reference(
            snakemake.wildcards.which,
            snakemake.input.data,
            pins.local(params.base),
            pins.local(params.tokenizer),
            snakemake.output.model,
            snakemake.output.log,
            params.finetune,
        )
    else:
        from quantunlearn.models.tiny import train_reference

        train_reference(
            snakemake.wildcards.which,
            snakemake.input.data,
            snakemake.input.tokenizer,
            snakemake.output.model,
            snakemake.output.log,
            params.tiny_model,
        )
