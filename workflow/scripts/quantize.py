from quantunlearn.jobs import logged

with logged(snakemake.log[0], snakemake.threads):
    from quantunlearn.data.provenance import Pins
    from quantunlearn.quantizers import parse_quantizer
    from quantunlearn.quantizers.gptq_awq import quantize_run

    pins = Pins.read(snakemake.input.pins)  # hub models: their pinned snapshot folders
    quantize_run(
        pins.local(snakemake.params.model),
        parse_quantizer(snakemake.wildcards.quant),
        snakemake.input.data,
        snakemake.output[0],
        calibration=snakemake.params.calibration,
        benchmark=snakemake.params.benchmark,
        tokenizer=pins.local(snakemake.params.tokenizer),
    )
