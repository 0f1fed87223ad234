"""Time the default study end to end and print the time of each stage.

    python benchmarks/study_timing.py [--workdir DIR] [--cores 2] [--configfile FILE]
    python benchmarks/study_timing.py --summarize results [--per-benchmark]

Runs `snakemake all_tables` from scratch in DIR (a fresh temporary folder by default), then
sums the per-job `benchmark:` files that every rule writes. Prints a Markdown table: one row per
stage with its job count, the summed and the longest job time, and the peak memory of a job;
the last line is the wall-clock time of the whole study. `--summarize RESULTS` only reads the
benchmark files of an existing results folder; `--per-benchmark` splits every stage by
benchmark (the scale study's time per model size).

A second table says where a job's seconds go: the work each job measures itself (the training
loop's `seconds` in `train_info.json` / `unlearn_info.json`; an evaluation cell's
`eval_seconds`, from loading the model to the last metric) against the job's wall time; the
rest is the job's fixed cost: starting Python, importing torch and transformers, reading the
benchmark and tokenizer, writing the result files.
"""

from __future__ import annotations

import argparse
import json
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
]


def stage_table(results: Path, per_benchmark: bool = False) -> pd.DataFrame:
    """Sum the `benchmark:` files of each stage: results/benchmarks/{stage}/{bench}[/...].tsv."""
    rows = []
    for stage in STAGES:
        folder = results / "benchmarks" / stage
        files = sorted(folder.rglob("*.tsv"))
        if not files:
            continue
        frame = pd.concat(
            [
                pd.read_csv(f, sep="\t").assign(
                    benchmark=f.relative_to(folder).parts[0].removesuffix(".tsv")
                )
                for f in files
            ]
        )
        for bench, part in frame.groupby("benchmark") if per_benchmark else [("all", frame)]:
            rows.append(
                {
                    "benchmark": bench,
                    "stage": stage,
                    "jobs": len(part),
                    "job_seconds_sum": part.s.sum(),
                    "job_seconds_max": part.s.max(),
                    # CPU seconds: what the jobs computed, much less sensitive than wall time to
                    # other work sharing the machine
                    "cpu_seconds_sum": part.cpu_time.sum(),
                    "max_rss_mb": part.max_rss.max(),
                }
            )
    return pd.DataFrame(rows)


def work_seconds(results: Path) -> dict[str, float]:
    """stage -> seconds of work the jobs of that stage measured themselves (see the docstring);
    a stage whose files are gone (temp storage) is left out."""
    work = {}
    infos = {
        "train_reference": results.glob("models/*/*/train_info.json"),
        "unlearn": results.glob("unlearn/**/unlearn_info.json"),
    }
    for stage, files in infos.items():
        seconds = [json.loads(f.read_text())["seconds"] for f in files]
        if seconds:
            work[stage] = float(sum(seconds))
    cells = list(results.glob("metrics/*/**/*.parquet"))
    if cells:
        frames = [pd.read_parquet(f, columns=["eval_seconds"]).iloc[:1] for f in cells]
        work["evaluate"] = float(pd.concat(frames)["eval_seconds"].sum())
    return work


def print_overhead(table: pd.DataFrame, work: dict[str, float]) -> None:
    print("\n| stage | jobs | job time (s) | measured work (s) | rest: start, imports, I/O (s) "
          "| rest per job (s) |\n|---|---:|---:|---:|---:|---:|")  # fmt: skip
    for stage, part in table.groupby("stage", sort=False):
        if stage in work:
            jobs, total = part.jobs.sum(), part.job_seconds_sum.sum()
            rest = total - work[stage]
            print(f"| {stage} | {jobs} | {total:.0f} | {work[stage]:.0f} | {rest:.0f} | "
                  f"{rest / jobs:.1f} |")  # fmt: skip


def print_table(table: pd.DataFrame) -> None:
    print(
        "| benchmark | stage | jobs | job time, summed (s) | job CPU time, summed (s) | "
        "longest job (s) | peak RSS (MB) |"
    )
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in table.itertuples():
        print(
            f"| {r.benchmark} | {r.stage} | {r.jobs} | {r.job_seconds_sum:.0f} | "
            f"{r.cpu_seconds_sum:.0f} | {r.job_seconds_max:.0f} | {r.max_rss_mb:.0f} |"
        )
    if table.benchmark.nunique() > 1:
        print("\n| benchmark | jobs | job time, summed (s) |\n|---|---:|---:|")
        for bench, part in table.groupby("benchmark", sort=False):
            print(f"| {bench} | {part.jobs.sum()} | {part.job_seconds_sum.sum():.0f} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--cores", default="2")
    parser.add_argument("--configfile", default=None)
    parser.add_argument("--summarize", type=Path, default=None, metavar="RESULTS")
    parser.add_argument("--per-benchmark", action="store_true")
    args = parser.parse_args()
    if args.summarize:
        table = stage_table(args.summarize, args.per_benchmark)
        print_table(table)
        print_overhead(table, work_seconds(args.summarize))
        return 0
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
    table = stage_table(workdir / "results", args.per_benchmark)
    print(f"Study in {workdir} with --cores {args.cores}\n")
    print_table(table)
    print_overhead(table, work_seconds(workdir / "results"))
    print(
        f"\nWall clock of the whole study: {wall:.0f} s ({wall / 60:.1f} min); summed job time "
        f"{table.job_seconds_sum.sum():.0f} s on {args.cores} cores"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
