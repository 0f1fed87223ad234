"""Time the default study end to end and print the time of each stage.

    python benchmarks/study_timing.py [--workdir DIR] [--cores 2] [--configfile FILE]

Runs `snakemake all_tables` from scratch in DIR (a fresh temporary folder by default), then
sums the per-job `benchmark:` files that every rule writes. Prints a Markdown table: one row per
stage with its job count, the summed and the longest job time, and the peak memory of a job;
the last line is the wall-clock time of the whole study.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
STAGES = [
    "prepare_benchmark",
    "train_tokenizer",
    "train_reference",
    "unlearn",
    "reference_auc",
    "evaluate",
    "table1",
]


def stage_table(results: Path) -> pd.DataFrame:
    rows = []
    for stage in STAGES:
        files = sorted((results / "benchmarks" / stage).rglob("*.tsv"))
        files += [results / "benchmarks" / f"{stage}.tsv"] * (
            results / "benchmarks" / f"{stage}.tsv"
        ).exists()
        if not files:
            continue
        frame = pd.concat([pd.read_csv(f, sep="\t") for f in files])
        rows.append(
            {
                "stage": stage,
                "jobs": len(files),
                "job_seconds_sum": frame.s.sum(),
                "job_seconds_max": frame.s.max(),
                "max_rss_mb": frame.max_rss.max(),
            }
        )
    return pd.DataFrame(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--cores", default="2")
    parser.add_argument("--configfile", default=None)
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="quantunlearn-timing-"))
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(ROOT / "Snakefile"),
        "--directory",
        str(workdir),
        "--cores",
        args.cores,
        "all_tables",
    ]
    if args.configfile:
        cmd += ["--configfile", args.configfile]
    start = time.time()
    done = subprocess.run(cmd)
    wall = time.time() - start
    if done.returncode:
        print(f"snakemake failed (exit {done.returncode}); see {workdir}", file=sys.stderr)
        return done.returncode
    table = stage_table(workdir / "results")
    print(f"Study in {workdir} with --cores {args.cores}\n")
    print("| stage | jobs | job time, summed (s) | longest job (s) | peak RSS of a job (MB) |")
    print("|---|---:|---:|---:|---:|")
    for r in table.itertuples():
        print(
            f"| {r.stage} | {r.jobs} | {r.job_seconds_sum:.0f} | {r.job_seconds_max:.0f} | "
            f"{r.max_rss_mb:.0f} |"
        )
    print(
        f"\nWall clock of the whole study: {wall:.0f} s ({wall / 60:.1f} min); summed job time "
        f"{table.job_seconds_sum.sum():.0f} s on {args.cores} cores"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
