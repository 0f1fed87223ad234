# Aggregation: a plain concatenation of the per-cell Parquet files into the paper's tables. Each
# rule's outputs are the files its report module declares (quantunlearn.reports.registry.REPORTS).


rule table1:
    input:
        STUDY.metric_files(layout="muse"),
    output:
        **report_outputs("table1"),
    log:
        f"{RESULTS}/logs/tables/{TABLES_TAG}table1.log",
    benchmark:
        f"{RESULTS}/benchmarks/{TABLES_TAG}table1.tsv"
    localrule: True
    conda:
        CONDA_ENV
    params:
        quantizers=STUDY.quantizers,
    script:
        "../scripts/make_table1.py"


rule quant_tables:
    input:
        metrics=STUDY.metric_files(layout="muse"),
        diagnostics=STUDY.diagnostic_files(),
        quail_table=STUDY.quail_table_files(),
    output:
        **report_outputs("quant_tables"),
    log:
        f"{RESULTS}/logs/tables/{TABLES_TAG}quant_tables.log",
    benchmark:
        f"{RESULTS}/benchmarks/{TABLES_TAG}quant_tables.tsv"
    localrule: True
    conda:
        CONDA_ENV
    params:
        quantizers=STUDY.quantizers,
    script:
        "../scripts/make_quant_tables.py"


# The quantization-robust methods (SURE, QUAIL, LoRA, RMU): the papers' tables, the selected cell
# of every grid (config `selection`), the full grid, and the summary table + scatter figure.
rule mitigation_tables:
    input:
        STUDY.metric_files(layout="muse"),
    output:
        **report_outputs("mitigation_tables"),
    log:
        f"{RESULTS}/logs/tables/{TABLES_TAG}mitigation_tables.log",
    benchmark:
        f"{RESULTS}/benchmarks/{TABLES_TAG}mitigation_tables.tsv"
    localrule: True
    conda:
        CONDA_ENV
    params:
        quantizers=STUDY.quantizers,
        selection=STUDY.config["selection"],
        low_bit=STUDY.low_bit_quantizer,
    script:
        "../scripts/make_mitigation_tables.py"


# The scale study (config/scale.yaml): one benchmark per model size, recovery against size.
rule scale_table:
    input:
        metrics=STUDY.metric_files(),
        targets=[f"{RESULTS}/models/{bench}/target" for bench in STUDY.benchmarks],
        diagnostics=STUDY.scale_diagnostic_files(),
    output:
        **report_outputs("scale_table"),
    log:
        f"{RESULTS}/logs/tables/{TABLES_TAG}scale.log",
    benchmark:
        f"{RESULTS}/benchmarks/{TABLES_TAG}scale_table.tsv"
    localrule: True
    conda:
        CONDA_ENV
    params:
        scale=STUDY.config.get("scale"),
        quantizers=STUDY.quantizers,
        benchmarks=STUDY.benchmarks,
    script:
        "../scripts/make_scale_table.py"


# The Twitter misinformation study (Mishra and Mehreen Table III): its benchmarks' cells.
rule twitter_table:
    input:
        STUDY.metric_files(),
    output:
        **report_outputs("twitter_table"),
    log:
        f"{RESULTS}/logs/tables/{TABLES_TAG}twitter_table.log",
    benchmark:
        f"{RESULTS}/benchmarks/{TABLES_TAG}twitter_table.tsv"
    localrule: True
    conda:
        CONDA_ENV
    params:
        quantizers=STUDY.quantizers,
        benchmarks=STUDY.twitter_benchmarks,
        low_bit=STUDY.low_bit_quantizer,
    script:
        "../scripts/make_twitter_table.py"


# Zhang et al. Table 7: GA, NPO and RT on RWKU (config/rwku.yaml, config/rwku_synthetic.yaml).
rule table7:
    input:
        STUDY.metric_files(layout="rwku"),
    output:
        **report_outputs("table7"),
    log:
        f"{RESULTS}/logs/tables/{TABLES_TAG}table7.log",
    benchmark:
        f"{RESULTS}/benchmarks/{TABLES_TAG}table7.tsv"
    localrule: True
    conda:
        CONDA_ENV
    params:
        quantizers=STUDY.quantizers,
    script:
        "../scripts/make_table7.py"


# Audit mode: one report per external checkpoint (benchmarks.<b>.models.unlearned), from its
# cells, the target's and the weight diagnostics against the target.
rule audit:
    input:
        metrics=STUDY.audit_metric_files(),
        diagnostics=STUDY.audit_diagnostic_files(),
    output:
        **report_outputs("audit"),
    log:
        f"{RESULTS}/logs/tables/{TABLES_TAG}audit.log",
    localrule: True
    conda:
        CONDA_ENV
    params:
        quantizers=STUDY.quantizers,
        audit=STUDY.config["audit"],
    script:
        "../scripts/make_audit.py"


# The code commit, the input revisions and the package versions behind every metric file.
rule provenance:
    input:
        STUDY.metric_files(),
    output:
        **report_outputs("provenance"),
    log:
        f"{RESULTS}/logs/tables/{TABLES_TAG}provenance.log",
    localrule: True
    conda:
        CONDA_ENV
    script:
        "../scripts/make_provenance.py"
