from quantunlearn.evaluate import reference_auc
from quantunlearn.workflow_io import logged

with logged(snakemake.log[0], snakemake.threads):
    reference_auc(
        snakemake.params.model,
        snakemake.input.data,
        snakemake.output[0],
        snakemake.params.evaluation,
        tokenizer=snakemake.params.tokenizer,
    )
