from pathlib import Path

from quantunlearn.tables import make_table1
from quantunlearn.workflow_io import logged

with logged(snakemake.log[0]):
    make_table1(snakemake.input, Path(snakemake.output.md).parent, snakemake.params.quantizers)
