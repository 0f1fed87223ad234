from quantunlearn.jobs import logged

with logged(snakemake.log[0], hub=True):
    from quantunlearn.data.provenance import download_input
    from quantunlearn.study.inputs import validate_download

    download_input(
        snakemake.params.spec,
        snakemake.params.repo_type,
        snakemake.output[0],
        allow_patterns=snakemake.params.patterns,
        check=lambda folder: validate_download(folder, snakemake.params.uses),
    )
