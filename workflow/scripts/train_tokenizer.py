from quantunlearn.models import build_tokenizer
from quantunlearn.workflow_io import logged

with logged(snakemake.log[0]):
    build_tokenizer(snakemake.input.data, snakemake.output[0], snakemake.params.vocab_size)
