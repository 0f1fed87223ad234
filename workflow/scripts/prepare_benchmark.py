from quantunlearn.jobs import logged

with logged(snakemake.log[0]):
    from quantunlearn.data.muse import prepare_benchmark
    from quantunlearn.data.synthetic import generate_synthetic
    from quantunlearn.data.twitter import prepare_twitter

    bench = snakemake.params.benchmark
    if bench["source"] == "synthetic":
        generate_synthetic(snakemake.output[0], **bench["synthetic"])
    elif bench["source"] == "twitter":
        prepare_twitter(bench["twitter"], snakemake.output[0])
    else:
        prepare_benchmark(bench["source"], snakemake.output[0])
