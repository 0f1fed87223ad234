from quantunlearn.data import generate_synthetic, prepare_benchmark
from quantunlearn.workflow_io import logged

with logged(snakemake.log[0]):
    bench = snakemake.params.benchmark
    if bench["source"] == "synthetic":
        generate_synthetic(snakemake.output[0], **bench["synthetic"])
    else:
        prepare_benchmark(bench["source"], snakemake.output[0])
