from quantunlearn.jobs import logged

with logged(snakemake.log[0]):
    from quantunlearn.data.muse import prepare_benchmark
    from quantunlearn.data.provenance import Pins
    from quantunlearn.data.synthetic import generate_synthetic
    from quantunlearn.data.twitter import hub_spec, prepare_twitter

    bench = snakemake.params.benchmark
    if bench["source"] == "synthetic":
        generate_synthetic(snakemake.output[0], **bench["synthetic"])
    elif bench["source"] == "twitter":  # a hub dataset: the snapshot the download step pinned
        snapshot = Pins.read(snakemake.input.pins).folder(hub_spec(bench["twitter"]))
        prepare_twitter(bench["twitter"], snakemake.output[0], snapshot=snapshot)
    else:  # a hub dataset is read from the snapshot the download step pinned
        snapshot = Pins.read(snakemake.input.pins).folder(bench["source"])
        prepare_benchmark(bench["source"], snakemake.output[0], snapshot=snapshot)
