"""The embedded benchmark, the MUSE-layout loader, document packing and the hub path."""

from __future__ import annotations

import json
import re
import statistics
import time
from pathlib import Path

import datasets
import pytest
from rouge_score import rouge_scorer

from quantunlearn.data import muse, synthetic
from quantunlearn.data.documents import pack_documents, read_documents
from quantunlearn.data.muse import MUSE_HUB_FILES, fetch_muse, load_benchmark, prepare_benchmark
from quantunlearn.data.synthetic import generate_synthetic

SMALL = dict(n_people=60, n_retain_qa_people=10, n_icl=4)


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> tuple[Path, dict]:
    """The default-size benchmark (as the workflow generates it), written once."""
    root = tmp_path_factory.mktemp("synthetic") / "bench"
    start = time.perf_counter()
    meta = generate_synthetic(root)
    meta["_seconds"] = time.perf_counter() - start
    return root, meta


def _people(root: Path) -> list[dict]:
    return json.loads((root / "people.json").read_text(encoding="utf-8"))


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


# ---------------------------------------------------------------------------- synthetic benchmark


def test_generation_is_fast(synth):
    assert synth[1]["_seconds"] < 1.0


def test_same_arguments_byte_identical_other_seed_differs(tmp_path):
    generate_synthetic(tmp_path / "a", **SMALL, seed=3)
    generate_synthetic(tmp_path / "b", **SMALL, seed=3)
    generate_synthetic(tmp_path / "c", **SMALL, seed=4)
    a, b, c = (_files(tmp_path / x) for x in "abc")
    assert len(a) == 13 and a == b
    assert a.keys() == c.keys()
    assert all(a[k] != c[k] for k in a)


def test_files_are_utf8_json_with_indent_1(synth):
    root, _ = synth
    text = (root / "knowmem" / "forget_qa.json").read_text(encoding="utf-8")
    assert text.startswith('[\n {\n  "question": ')
    assert text == json.dumps(json.loads(text), indent=1, ensure_ascii=False) + "\n"


def test_counts_match_parameters(synth):
    root, meta = synth
    counts, n_attr = meta["counts"], len(synthetic.ATTRIBUTES)
    assert n_attr == 8
    assert counts["people"] == {"forget": 30, "holdout": 30, "retain": 240}
    per_person = 3 + n_attr  # 3 bio variants + one QA document per attribute
    for split, n in counts["people"].items():
        docs = read_documents(root / "raw" / f"{split}.txt")
        assert len(docs) == counts["documents"][split] == n * per_person
        assert len(set(docs)) == len(docs)  # bio variants differ from each other
    bench = load_benchmark(root)
    assert len(bench.verbmem_forget) == 30
    assert len(bench.knowmem_forget_qa) == 30 * n_attr
    assert len(bench.knowmem_retain_qa) == 60 * n_attr
    assert len(bench.knowmem_forget_icl) == len(bench.knowmem_retain_icl) == 10
    assert (len(bench.privleak_forget), len(bench.privleak_retain)) == (30, 60)
    assert len(bench.privleak_holdout) == 30
    written = json.loads((root / "meta.json").read_text(encoding="utf-8"))
    assert written == {k: v for k, v in meta.items() if k != "_seconds"}
    assert meta["layout_version"] == muse.LAYOUT_VERSION
    assert meta["params"]["n_people"] == 300 and meta["params"]["seed"] == 0


def test_splits_are_disjoint_by_person(synth):
    root, _ = synth
    people = _people(root)
    names = {
        s: {p["name"] for p in people if p["split"] == s} for s in ("forget", "retain", "holdout")
    }
    assert len({p["name"] for p in people}) == 300  # unique full names
    assert not (names["forget"] & names["retain"] or names["forget"] & names["holdout"])
    assert not names["retain"] & names["holdout"]
    raw = {s: (root / "raw" / f"{s}.txt").read_text(encoding="utf-8") for s in names}
    for name in names["forget"]:
        assert name in raw["forget"]
        assert name not in raw["retain"] and name not in raw["holdout"]
    for name in names["holdout"]:
        assert name not in raw["retain"] and name not in raw["forget"]


def test_name_words_prefix_free_and_vocabularies_disjoint():
    """Guarantees the substring checks above: no full name can occur inside another name."""
    name_words = [w.lower() for w in synthetic.FIRST_NAMES + synthetic.LAST_NAMES]
    for a in name_words:
        assert not [b for b in name_words if b != a and b.startswith(a)], a
    lists = [synthetic.FIRST_NAMES, synthetic.LAST_NAMES, *synthetic.ATTRIBUTES.values()]
    words = [w.lower() for values in lists for w in values]
    assert len(words) == len(set(words))
    assert all(re.fullmatch(r"[A-Za-z0-9]+", w) for w in words)  # single ASCII words


def test_forget_answers_in_forget_text_and_docs_have_no_blank_line(synth):
    root, _ = synth
    bench = load_benchmark(root)
    raw = (root / "raw" / "forget.txt").read_text(encoding="utf-8")
    for qa in bench.knowmem_forget_qa:
        assert qa["question"].endswith("?")
        assert f"Question: {qa['question']}\nAnswer: {qa['answer']}" in raw
        assert qa["answer"] in raw
    for split in ("forget", "retain", "holdout"):
        text = (root / "raw" / f"{split}.txt").read_text(encoding="utf-8")
        docs = text.rstrip("\n").split("\n\n")
        assert docs == read_documents(root / "raw" / f"{split}.txt")
        assert all(d and "\n\n" not in d and d == d.strip() for d in docs)


def test_every_person_attribute_is_stated_in_each_bio(synth):
    root, _ = synth
    people = {p["name"]: p for p in _people(root)}
    docs = read_documents(root / "raw" / "forget.txt")
    for name in {p["name"] for p in people.values() if p["split"] == "forget"}:
        bios = [d for d in docs if name in d and not d.startswith("Question:")]
        assert len(bios) == 3
        for key in synthetic.ATTRIBUTES:
            assert all(re.search(rf"\b{people[name][key]}\b", b) for b in bios), (name, key)


def test_verbmem_prompt_plus_gt_is_bio_variant_0(synth):
    root, _ = synth
    bench = load_benchmark(root)
    forget_docs = set(read_documents(root / "raw" / "forget.txt"))
    forget_names = [p["name"] for p in _people(root) if p["split"] == "forget"]
    for item, text, name in zip(
        bench.verbmem_forget, bench.privleak_forget, forget_names, strict=True
    ):
        assert item["prompt"] + item["gt"] == text
        assert text in forget_docs
        assert item["prompt"] == f"{name} was born in "
        assert not item["gt"].startswith(" ") and len(item["gt"].split()) >= 8


def test_template_words_do_not_dominate_verbmem(synth):
    """ROUGE-L F1 (as VerbMem computes it) between one person's continuation and another
    person's bio continuation: what a model that knows the template but not the facts scores."""
    root, _ = synth
    bench = load_benchmark(root)
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    prompt_end = " was born in"
    others = [t[t.index(prompt_end) + len(prompt_end) :] for t in bench.privleak_holdout]
    scores = [
        scorer.score(item["gt"], other)["rougeL"].fmeasure
        for item in bench.verbmem_forget
        for other in others
    ]
    floor = 100 * statistics.mean(scores)
    assert 20 < floor < 40, floor


def test_icl_people_disjoint_from_evaluated_people(synth):
    root, _ = synth
    bench = load_benchmark(root)
    people = _people(root)

    def names_in(items):
        return {n for qa in items for n in (p["name"] for p in people) if n in qa["question"]}

    forget_icl, retain_icl = names_in(bench.knowmem_forget_icl), names_in(bench.knowmem_retain_icl)
    assert len(forget_icl) == len(retain_icl) == 10 and not forget_icl & retain_icl
    evaluated = names_in(bench.knowmem_forget_qa) | names_in(bench.knowmem_retain_qa)
    assert len(evaluated) == 90
    assert not (forget_icl | retain_icl) & evaluated
    retain_names = {p["name"] for p in people if p["split"] == "retain"}
    assert forget_icl | retain_icl <= retain_names  # facts the target model was trained on
    retain_raw = (root / "raw" / "retain.txt").read_text(encoding="utf-8")
    assert all(
        f"Question: {qa['question']}\nAnswer: {qa['answer']}" in retain_raw
        for qa in bench.knowmem_forget_icl + bench.knowmem_retain_icl
    )
    # Cycling through the attributes shows all 8 question types.
    for items in (bench.knowmem_forget_icl, bench.knowmem_retain_icl):
        kinds = {re.sub(r"[A-Z][a-z]+ [A-Z][a-z]+", "{name}", qa["question"]) for qa in items}
        assert kinds == set(synthetic.QUESTIONS.values())
    privleak_retain = set(bench.privleak_retain)
    retain_eval = [p["name"] for p in people if p.get("role") == "retain_eval"]
    assert len(retain_eval) == 60
    assert all(any(t.startswith(n + " ") for t in privleak_retain) for n in retain_eval)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(n_people=5000),
        dict(forget_frac=0.0),
        dict(holdout_frac=1.0),
        dict(n_bio_variants=0),
        dict(n_people=100, n_retain_qa_people=70),  # 80 retain < 70 + 2 x 10 ICL people
    ],
)
def test_bad_parameters_raise(tmp_path, kwargs):
    with pytest.raises(ValueError):
        generate_synthetic(tmp_path / "x", **kwargs)


# ------------------------------------------------------------------------------------- loading


def test_load_benchmark_round_trip(synth):
    root, _ = synth
    bench = load_benchmark(root)
    assert bench.root == root
    for field, (rel, _kind) in muse.BENCHMARK_FILES.items():
        assert getattr(bench, field) == json.loads((root / rel).read_text(encoding="utf-8"))
    assert bench.knowmem_forget_qa[0].keys() == {"question", "answer"}
    assert isinstance(bench.privleak_holdout[0], str)


def test_load_benchmark_missing_file_names_file_and_root(tmp_path):
    generate_synthetic(tmp_path / "b", **SMALL)
    (tmp_path / "b" / "knowmem" / "retain_qa_icl.json").unlink()
    with pytest.raises(
        FileNotFoundError, match=r"knowmem/retain_qa_icl\.json.*" + re.escape(str(tmp_path))
    ):
        load_benchmark(tmp_path / "b")


@pytest.mark.parametrize(
    ("rel", "bad_item", "pattern"),
    [
        ("knowmem/forget_qa.json", {"question": "q?"}, r"forget_qa\.json: item 2 .*'answer'"),
        ("verbmem/forget.json", {"prompt": "a", "gt": 3}, r"verbmem/forget\.json: item 2 .*'gt'"),
        ("privleak/holdout.json", {"text": "x"}, r"holdout\.json: item 2 must be a string"),
    ],
)
def test_load_benchmark_bad_item_names_file_and_index(tmp_path, rel, bad_item, pattern):
    generate_synthetic(tmp_path / "b", **SMALL)
    path = tmp_path / "b" / rel
    items = json.loads(path.read_text(encoding="utf-8"))
    items[2] = bad_item
    path.write_text(json.dumps(items), encoding="utf-8")
    with pytest.raises(ValueError, match=pattern):
        load_benchmark(tmp_path / "b")


def test_read_documents_tolerates_extra_blank_lines(tmp_path):
    path = tmp_path / "raw.txt"
    path.write_text("\n\nFirst paragraph.\nstill first\n\n\nSecond.\n \nThird.\n\n\n\n", "utf-8")
    assert read_documents(path) == ["First paragraph.\nstill first", "Second.", "Third."]
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        read_documents(tmp_path / "nope.txt")


# ------------------------------------------------------------------------------------- packing


def _encoded(tokenizer, docs):
    return [tokenizer(d)["input_ids"] + [tokenizer.eos_token_id] for d in docs]


def test_pack_documents_invariants(tiny_tokenizer, synth):
    root, _ = synth
    docs = read_documents(root / "raw" / "forget.txt")[:60]
    bos, eos = tiny_tokenizer.bos_token_id, tiny_tokenizer.eos_token_id
    encoded = _encoded(tiny_tokenizer, docs)
    assert all(e[0] == bos and bos not in e[1:] for e in encoded)  # the tokenizer prepends BOS
    longest = max(len(e) for e in encoded)
    for max_len in (longest, longest + 7, 4 * longest):
        packed = pack_documents(docs, tiny_tokenizer, max_len)
        assert all(len(s) <= max_len for s in packed)
        assert all(s[0] == bos and s[-1] == eos for s in packed)  # only whole docs
        assert [t for s in packed for t in s] == [t for e in encoded for t in e]
        assert sum(s.count(eos) for s in packed) == len(docs)
        # Greedy: the next sequence's first doc would not have fitted into this one.
        for s, nxt in zip(packed, packed[1:], strict=False):
            first_doc = nxt[: nxt.index(eos) + 1]
            assert len(s) + len(first_doc) > max_len
    assert len(pack_documents(docs, tiny_tokenizer, longest)) < len(docs)
    assert len(pack_documents(docs, tiny_tokenizer, 4 * longest)) < len(docs) // 3


def test_pack_documents_one_doc_per_sequence_when_max_len_is_small(tiny_tokenizer):
    docs = ["Alice Moreau was born in Tarsk.", "Question: Where?\nAnswer: Tarsk", "A parrot."]
    encoded = _encoded(tiny_tokenizer, docs)
    max_len = max(len(e) for e in encoded)
    assert (
        len(encoded[0]) + len(encoded[1]) > max_len and len(encoded[1]) + len(encoded[2]) > max_len
    )
    assert pack_documents(docs, tiny_tokenizer, max_len) == encoded


def test_pack_documents_splits_long_doc(tiny_tokenizer):
    long_doc = " ".join(["Bruno Okafor keeps a parrot named Sol."] * 12)
    docs = ["Tarsk.", long_doc, "Sol."]
    encoded = _encoded(tiny_tokenizer, docs)
    max_len = 16
    assert len(encoded[1]) > 3 * max_len
    packed = pack_documents(docs, tiny_tokenizer, max_len)
    assert all(len(s) <= max_len for s in packed)
    assert [t for s in packed for t in s] == [t for e in encoded for t in e]
    assert packed[0] == encoded[0]  # the long doc does not share the short doc's sequence
    assert packed[1] == encoded[1][:max_len] and len(packed[2]) == max_len
    assert packed[-1][-len(encoded[2]) :] == encoded[2]
    with pytest.raises(ValueError, match="max_len"):
        pack_documents(docs, tiny_tokenizer, 0)


# ------------------------------------------------------------------------------ the real MUSE files


@pytest.mark.muse
@pytest.mark.parametrize("corpus", ["news", "books"])
def test_load_real_muse(shared_muse, corpus):
    bench = load_benchmark(shared_muse / corpus)
    assert len(bench.verbmem_forget) == len(bench.knowmem_forget_qa) == 100
    assert len(bench.knowmem_retain_qa) == 100
    assert len(bench.knowmem_forget_icl) == len(bench.knowmem_retain_icl) == 10
    for texts in (bench.privleak_forget, bench.privleak_retain, bench.privleak_holdout):
        assert len(texts) == 100 and all(len(t) > 1000 for t in texts)


@pytest.mark.muse
def test_read_real_news_forget_paragraphs(shared_muse, tiny_tokenizer):
    path = shared_muse / "news" / "raw" / "forget.txt"
    docs = read_documents(path)
    assert len(docs) > 10_000
    assert all("\n\n" not in d and d.strip() == d for d in docs)
    assert sum(map(len, docs)) > 0.97 * len(path.read_text(encoding="utf-8"))  # only separators go
    packed = pack_documents(docs[:400], tiny_tokenizer, 2048)
    assert all(len(s) <= 2048 for s in packed) and len(packed) < 400


# ------------------------------------------------------------------------------------ hub path


def _fake_hub(calls: list, fail_on: tuple[str, str] | None = None):
    """Stands in for the network: small datasets in the real hub schema."""

    def load_dataset(path, name=None, split=None, **kwargs):
        calls.append((path, name, split))
        if (name, split) == fail_on:
            raise ConnectionError("offline")
        if name == "raw":
            rows = [{"text": f"{split} article one.\n\nSecond paragraph."}, {"text": "Two."}]
        elif name == "verbmem":
            rows = [{"prompt": "The train", "gt": " left at noon."}]
        elif name == "knowmem":
            n = 10 if split.endswith("icl") else 3
            rows = [{"question": f"{split} q{i}?", "answer": f"a{i}"} for i in range(n)]
        else:
            rows = [{"text": f"{split} text {i}"} for i in range(4)]
        return datasets.Dataset.from_list(rows)

    return load_dataset


def test_hub_files_cover_the_muse_configs():
    configs = {c for c, _ in MUSE_HUB_FILES}
    assert configs == {"raw", "verbmem", "knowmem", "privleak"}
    assert {s for c, s in MUSE_HUB_FILES if c == "raw"} == {
        "forget",
        "retain1",
        "retain2",
        "holdout",
    }
    fields = {rel for rel, _ in muse.BENCHMARK_FILES.values()}
    assert fields <= set(MUSE_HUB_FILES.values())


def test_fetch_muse_writes_a_loadable_layout(tmp_path, monkeypatch):
    calls: list = []
    monkeypatch.setattr(datasets, "load_dataset", _fake_hub(calls))
    out = tmp_path / "muse" / "news"
    fetch_muse("muse-bench/MUSE-News", out)
    assert calls == [("muse-bench/MUSE-News", c, s) for c, s in MUSE_HUB_FILES]
    bench = load_benchmark(out)
    assert bench.verbmem_forget == [{"prompt": "The train", "gt": " left at noon."}]
    assert len(bench.knowmem_retain_icl) == 10 and bench.knowmem_forget_qa[1]["answer"] == "a1"
    assert bench.privleak_retain == [f"retain text {i}" for i in range(4)]
    assert read_documents(out / "raw" / "retain2.txt") == [
        "retain2 article one.",
        "Second paragraph.",
        "Two.",
    ]
    assert sorted(p.name for p in out.parent.iterdir()) == ["news"]  # no temporary left


def test_fetch_muse_failure_leaves_nothing(tmp_path, monkeypatch):
    calls: list = []
    monkeypatch.setattr(
        datasets, "load_dataset", _fake_hub(calls, fail_on=("knowmem", "retain_qa"))
    )
    out = tmp_path / "muse" / "books"
    with pytest.raises(muse.HubDownloadError) as info:
        fetch_muse("muse-bench/MUSE-Books", out)
    message = str(info.value)
    for part in (
        "muse-bench/MUSE-Books",
        "'knowmem'",
        "'retain_qa'",
        "HF_HUB_OFFLINE",
        "local folder",
    ):
        assert part in message
    assert isinstance(info.value.__cause__, ConnectionError)
    assert not out.exists() and list(out.parent.iterdir()) == []
    assert len(calls) == list(MUSE_HUB_FILES).index(("knowmem", "retain_qa")) + 1


def test_prepare_benchmark_from_folder_hub_id_or_nothing(tmp_path, monkeypatch):
    src = tmp_path / "src"
    generate_synthetic(src, **SMALL)
    prepare_benchmark(str(src), tmp_path / "copy")
    assert _files(tmp_path / "copy") == _files(src)

    calls: list = []
    monkeypatch.setattr(datasets, "load_dataset", _fake_hub(calls))
    prepare_benchmark("muse-bench/MUSE-News", tmp_path / "hub")
    assert load_benchmark(tmp_path / "hub").privleak_holdout[0] == "holdout text 0"
    assert calls[0] == ("muse-bench/MUSE-News", "raw", "forget")

    with pytest.raises(FileNotFoundError, match="not/a/folder/here"):
        prepare_benchmark("not/a/folder/here", tmp_path / "x")
    (src / "verbmem" / "forget.json").unlink()  # a folder that is not a valid benchmark
    with pytest.raises(FileNotFoundError, match="verbmem/forget.json"):
        prepare_benchmark(str(src), tmp_path / "y")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_prepare_benchmark_replaces_a_folder_only_when_the_new_one_is_whole(tmp_path, monkeypatch):
    """The `prepare_benchmark` job runs on an existing folder (the rule's output is update()d):
    a failing fetch or copy leaves it as it was; a successful one replaces it."""
    out = tmp_path / "data" / "news"
    monkeypatch.setattr(datasets, "load_dataset", _fake_hub([]))
    prepare_benchmark("muse-bench/MUSE-News", out)
    before = _files(out)
    failing = _fake_hub([], fail_on=("privleak", "holdout"))
    monkeypatch.setattr(datasets, "load_dataset", failing)
    with pytest.raises(muse.HubDownloadError):
        prepare_benchmark("muse-bench/MUSE-News", out)
    assert _files(out) == before
    src = tmp_path / "src"
    generate_synthetic(src, **SMALL)
    (src / "privleak" / "holdout.json").unlink()
    with pytest.raises(FileNotFoundError, match="holdout.json"):
        prepare_benchmark(str(src), out)
    assert _files(out) == before
    generate_synthetic(src, **SMALL)
    prepare_benchmark(str(src), out)
    assert _files(out) == _files(src)
    assert sorted(p.name for p in out.parent.iterdir()) == ["news"]  # no temporary left
