# The hub inputs (models, tokenizers, datasets named as owner/name[@revision]) are fetched once,
# on the machine that runs Snakemake, before any cluster job: each `download` job writes a pin
# (the commit the revision resolved to and the snapshot folder) that the jobs load offline.
# `snakemake -n download_inputs` lists what would be fetched and the disk it needs.


rule download:
    output:
        f"{RESULTS}/inputs/{{pin}}.json",
    log:
        f"{RESULTS}/logs/download/{{pin}}.log",
    wildcard_constraints:
        pin=r"(models|datasets)/[^/]+",
    localrule: True
    conda:
        CONDA_ENV
    params:
        spec=lambda wc: HUB_INPUTS[wc.pin].spec,
        repo_type=lambda wc: HUB_INPUTS[wc.pin].repo_type,
        uses=lambda wc: list(HUB_INPUTS[wc.pin].uses),
        patterns=lambda wc: HUB_INPUTS[wc.pin].patterns,
    script:
        "../scripts/download.py"


rule download_inputs:
    input:
        [f"{RESULTS}/inputs/{pin}.json" for pin in HUB_INPUTS],
    localrule: True
