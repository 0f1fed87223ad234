from pathlib import Path

from quantunlearn.jobs import logged

with logged(snakemake.log[0]):
    from quantunlearn.data import benchmark_kind
    from quantunlearn.data.provenance import Pins

    bench = snakemake.params.benchmark
    # the benchmark kind's row: generate (embedded), copy (local folder) or convert the hub
    # dataset's snapshot that the download step pinned
    kind = benchmark_kind(bench)
    snapshot = Pins.read(snakemake.input.pins).folder(kind.hub_dataset(bench))
    kind.prepare(bench, Path(snakemake.output[0]), snapshot)
