# One report of the REPORTS table (its rule in workflow/rules/tables.smk): the study rebuilt from
# the config, the rule's named inputs, the row's `make` into the study's tables folder.
from quantunlearn.jobs import logged

with logged(snakemake.log[0]):
    from quantunlearn.reports import BY_NAME
    from quantunlearn.study import load_study

    study = load_study(snakemake.config)
    inputs = {name: list(files) for name, files in snakemake.input.items()}
    BY_NAME[snakemake.params.report].make(study, inputs, study.tables)
