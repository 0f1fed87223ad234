"""Full MMLU (5-shot) and TruthfulQA MC1 through lm-evaluation-harness (EleutherAI's lm-eval,
pinned in pyproject.toml), on the model the evaluation job has already quantized in memory.

``HFLM(pretrained=<model object>)`` scores the in-memory model, so nothing is loaded twice. The
tasks are lm-eval's own (``mmlu/default/_default_template_yaml``: the subject line and the
subject's first 5 dev questions; ``truthfulqa/truthful_qa_mc1.yaml``: the 6-pair QA primer), each
included unchanged by a generated task file that only changes where the data come from: the rows
this package loaded (`quantunlearn.data.utility`, from the hub or a local folder, at most
``utility_limit``), written as JSON files that the task reads with ``dataset_path: json``. So the
tests run the harness on small local files, and a real run on the hub datasets, with one code
path. A doc's log-likelihoods are lm-eval's: it tokenizes context + continuation as one string
and scores the tokens beyond the context's.
"""

from __future__ import annotations

import json
import tempfile
from collections import defaultdict
from pathlib import Path

LETTERS = "ABCD"


def _tasks_dir() -> Path:
    import lm_eval

    return Path(lm_eval.__file__).parent / "tasks"


def _write_json(path: Path, rows: list[dict]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows), encoding="utf-8")
    return str(path)


def _task_file(folder: Path, name: str, include: Path, splits: dict[str, str], extra: str) -> str:
    files = "".join(f"    {split}: {json.dumps(path)}\n" for split, path in splits.items())
    (folder / f"{name}.yaml").write_text(
        f"include: {json.dumps(str(include))}\ntask: {name}\ntag: []\n"
        f"dataset_path: json\ndataset_name: null\ndataset_kwargs:\n  data_files:\n{files}{extra}",
        encoding="utf-8",
    )
    return name


def mmlu_tasks(folder: Path, test: list[dict], dev: list[dict]) -> list[str]:
    """One task per subject: lm-eval's MMLU template on that subject's rows, 5-shot from dev
    (fewer when the dev split has fewer rows of the subject: small test files)."""
    by_subject: dict[str, dict[str, list[dict]]] = defaultdict(lambda: {"test": [], "dev": []})
    for split, rows in (("test", test), ("dev", dev)):
        for row in rows:
            by_subject[row["subject"]][split].append(row)
    template = _tasks_dir() / "mmlu" / "default" / "_default_template_yaml"
    names = []
    for subject, splits in by_subject.items():
        if not splits["test"]:
            continue
        files = {
            s: _write_json(folder / "mmlu" / subject / f"{s}.json", r) for s, r in splits.items()
        }
        topic = subject.replace("_", " ")
        line = json.dumps(
            f"The following are multiple choice questions (with answers) about {topic}.\n\n"
        )
        shots = min(5, len(splits["dev"]))  # MMLU has 5 dev questions per subject
        names.append(_task_file(folder, f"qu_mmlu_{subject}", template, files,
                                f"num_fewshot: {shots}\ndescription: {line}\n"))  # fmt: skip
    return names


def truthfulqa_tasks(folder: Path, rows: list[dict]) -> list[str]:
    """lm-eval's TruthfulQA MC1 task on these rows (its validation split)."""
    template = _tasks_dir() / "truthfulqa" / "truthfulqa_mc1.yaml"
    files = {"validation": _write_json(folder / "truthfulqa" / "validation.json", rows)}
    return [_task_file(folder, "qu_truthfulqa_mc1", template, files, "")]


def run_tasks(model, tokenizer, folder: Path, tasks: list[str], batch_size: int, max_length: int):
    """lm-eval's per-doc samples of ``tasks`` on the in-memory model, task by task."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, max_length=max_length)
    result = lm_eval.simple_evaluate(
        model=lm,
        tasks=tasks,
        task_manager=TaskManager(include_path=str(folder)),
        log_samples=True,
        bootstrap_iters=0,
    )
    return {task: sorted(result["samples"][task], key=lambda s: s["doc_id"]) for task in tasks}


def _records(metric: str, samples: list[dict], choice_names) -> list[dict]:
    records = []
    for sample in samples:
        lls = [float(resp[0][0]) for resp in sample["resps"]]
        pick, gold = max(range(len(lls)), key=lls.__getitem__), int(sample["target"])
        names = choice_names(sample["doc"])
        records.append(
            {
                "metric": metric,
                "index": len(records),
                "prompt": sample["doc"]["question"],
                "reference": names[gold],
                "output": names[pick],
                "score": 100.0 * float(sample["acc"]),
            }
        )
    return records


def harness_mmlu(model, tokenizer, test, dev, batch_size: int, max_length: int):
    """Gen (full MMLU): accuracy x 100 over every test row, per-row records."""
    with tempfile.TemporaryDirectory(prefix="qu_lmeval_") as tmp:
        tasks = mmlu_tasks(Path(tmp), test, dev)
        samples = run_tasks(model, tokenizer, Path(tmp), tasks, batch_size, max_length)
    records = []
    for task in tasks:
        for r in _records("mmlu", samples[task], lambda doc: LETTERS):
            records.append({**r, "index": len(records)})
    return sum(r["score"] for r in records) / len(records), records


def harness_truthfulqa_mc1(model, tokenizer, rows, batch_size: int, max_length: int):
    """Tru (full TruthfulQA MC1): accuracy x 100, per-question records."""
    with tempfile.TemporaryDirectory(prefix="qu_lmeval_") as tmp:
        tasks = truthfulqa_tasks(Path(tmp), rows)
        samples = run_tasks(model, tokenizer, Path(tmp), tasks, batch_size, max_length)
    records = _records(
        "truthfulqa_mc1", samples[tasks[0]], lambda doc: doc["mc1_targets"]["choices"]
    )
    return sum(r["score"] for r in records) / len(records), records
