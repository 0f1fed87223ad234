from quantunlearn.models import train_reference
from quantunlearn.workflow_io import logged

with logged(snakemake.log[0], snakemake.threads):
    train_reference(
        snakemake.wildcards.which,
        snakemake.input.data,
        snakemake.input.tokenizer,
        snakemake.output.model,
        snakemake.output.log,
        snakemake.params.tiny_model,
    )
