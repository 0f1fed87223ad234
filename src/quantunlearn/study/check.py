"""Check a config without Snakemake: ``python -m quantunlearn.study.check CONFIG.yaml``.

Prints what the workflow would say at parse time (errors naming the key, a YAML syntax error
as ``file:line:column``, the warnings) and the effective hyperparameters of every unlearning run
(the defaults, a method's own defaults, ``unlearn.common`` and its section, merged), then exits
1 on an error. Snakemake loads ``--configfile`` itself and reports a YAML syntax error only as
"Config file is not valid JSON or YAML": this says where.
"""

from __future__ import annotations

import sys

from quantunlearn.study.config import ConfigError
from quantunlearn.study.grid import Study, load_study_file
from quantunlearn.unlearning.methods import REFERENCES


def describe(study: Study) -> list[str]:
    """One line per unlearning run of the grid: its method and effective hyperparameters."""
    runs = study.runs[~study.runs.method.isin(list(REFERENCES))].drop_duplicates("run")
    return [run.replace("/", "  ").replace("~", " ") for run in runs.run]


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__.strip().splitlines()[0], file=sys.stderr)
        return 2
    failed = False
    for path in argv:
        try:
            study = load_study_file(path)
        except ConfigError as err:
            where = "" if str(err).startswith(path) else f"{path}: "  # YAML: file:line:column
            print(f"{where}{err}", file=sys.stderr)
            failed = True
            continue
        for warning in study.warnings:
            print(f"{path}: warning: {warning}", file=sys.stderr)
        print(f"{path}: valid; unlearning runs and their effective hyperparameters:")
        print("\n".join(f"  {line}" for line in describe(study)))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
