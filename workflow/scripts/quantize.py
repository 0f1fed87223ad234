from quantunlearn.jobs import logged

with logged(snakemake.log[0], snakemake.threads):
    from quantunlearn.quantizers import parse_quantizer
    from quantunlearn.quantizers.gptq_awq import quantize_run

    quantize_run(
        snakemake.params.model,
        parse_quantizer(snakemake.wildcards.quant),
        snakemake.input.data,
        snakemake.output[0],
        calibration=snakemake.params.calibration,
        benchmark=snakemake.params.benchmark,
        tokenizer=snakemake.params.tokenizer,
    )
