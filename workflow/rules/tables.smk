# Aggregation: a plain concatenation of the per-cell Parquet files into the paper's tables.


rule table1:
    input:
        STUDY.metric_files(),
    output:
        md=report(f"{RESULTS}/tables/table1.md", category="Tables"),
        csv=f"{RESULTS}/tables/table1.csv",
        parquet=f"{RESULTS}/tables/table1.parquet",
        png=report(f"{RESULTS}/tables/retention.png", category="Figures"),
        svg=f"{RESULTS}/tables/retention.svg",
    log:
        f"{RESULTS}/logs/tables/table1.log",
    benchmark:
        f"{RESULTS}/benchmarks/table1.tsv"
    localrule: True
    conda:
        CONDA_ENV
    params:
        quantizers=STUDY.quantizers,
    script:
        "../scripts/make_table1.py"
