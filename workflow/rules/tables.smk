# Aggregation: one rule per row of the REPORTS table (quantunlearn.reports.registry), named after
# it. Its inputs are the files the row needs (the metric files of the cells it reads, diagnostics,
# models), its outputs the files its module declares; the one script calls the row's `make`.
# Adding a report is a module and a row: nothing here changes.
for _report in REPORTS.values():

    rule:
        name:
            _report.name
        input:
            **_report.needs(STUDY),
        output:
            **report_outputs(_report.name),
        log:
            f"{RESULTS}/logs/tables/{TABLES_TAG}{_report.log_name}.log",
        benchmark:
            f"{RESULTS}/benchmarks/{TABLES_TAG}{_report.name}.tsv"
        localrule: True
        conda:
            CONDA_ENV
        params:
            report=_report.name,
        script:
            "../scripts/make_report.py"
