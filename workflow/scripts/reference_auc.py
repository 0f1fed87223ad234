from quantunlearn.jobs import logged

with logged(snakemake.log[0], snakemake.threads):
    from quantunlearn.data.provenance import Pins
    from quantunlearn.evaluation.cell import reference_auc

    pins = Pins.read(snakemake.input.pins)  # hub models: their pinned snapshot folders
    model, tokenizer = snakemake.params.model, snakemake.params.tokenizer
    reference_auc(
        pins.local(model),
        snakemake.input.data,
        snakemake.output[0],
        snakemake.params.evaluation,
        tokenizer=pins.local(tokenizer),
        inputs={"retrain": pins.record(model), "tokenizer": pins.record(tokenizer or model)},
    )
