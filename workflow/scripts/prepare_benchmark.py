from pathlib import Path

from quantunlearn.jobs import logged

with logged(snakemake.log[0]):
    from quantunlearn.data import benchmark_kind

    bench = snakemake.params.benchmark
    # the benchmark kind's row: generate (embedded), copy (local folder) or fetch (hub)
    benchmark_kind(bench).prepare(bench, Path(snakemake.output[0]))
