"""The benchmarks (bench/) run, and the speed-ups they led to decide exactly as before.

Smoke tests only: tiny sizes, no timing assertions (speed targets live in `make bench`, never in
tests). The second half checks the fast paths against the plain definitions they replaced:
name matching one part at a time against each selector's regex, decisions per signature against
statement-by-statement resolution, and the one-walk `inspect_model` against the
`named_modules` / `named_parameters` definition.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from reference_matcher import matches as reference_matches
from torch import nn

import freezepolicy
from bench import cache, common, lint_time, parse, report, run, scaling, step_time
from freezepolicy.lang.lint import lint_text
from freezepolicy.lang.matcher import PartMatcher
from freezepolicy.lang.patterns import PatternError, parse_name_pattern
from freezepolicy.lang.rules import Decision, Rule
from freezepolicy.runtime import modelinfo

ROOT = Path(__file__).resolve().parent.parent
RESNET18 = (ROOT / "tests/resnet18_names.txt").read_text().split()


# --- the benchmarks run --------------------------------------------------------------------


def test_quick_scaling_and_parse_write_results_docs_and_plot(tmp_path: Path) -> None:
    results = run.run_all(only=("scaling", "parse"), quick=True)
    rows = results["scaling"]["rows"]
    assert [r["tensors"] for r in rows] == [
        sum(1 for _ in scaling.build(scaling.layers_for(n, 4), 4).parameters()) for n in (60, 300)
    ]
    for r in rows:
        for key in ("first_apply", "apply_new_moment", "apply_same_moment", "resolve"):
            assert len(r[key]["wall_s"]) == 2 and r[key]["median_cpu_s"] >= 0
    assert [r["statements"] for r in results["parse"]["rows"]] == [10, 40]
    text = report.table_text(results)
    assert "first apply" in text and "parse and compile 40 statements" in text

    docs, image = tmp_path / "performance.md", tmp_path / "images/bench_scaling.png"
    report.plot(results, image)
    assert image.read_bytes().startswith(b"\x89PNG")
    report.write_docs(results, docs, image)
    page = docs.read_text()
    assert "## Targets" in page and "](images/bench_scaling.png)" in page
    # The hand-written discussion survives the next run; the measured part is rewritten.
    hand = "## Discussion\n\nWritten by hand.\n"
    docs.write_text(
        page.split(report.DISCUSSION_MARKER)[0] + report.DISCUSSION_MARKER + "\n\n" + hand
    )
    report.write_docs(results, docs, image)
    again = docs.read_text()
    assert again.endswith(hand) and again.count(report.DISCUSSION_MARKER) == 1


def test_quick_step_time_and_lr_zero(monkeypatch: pytest.MonkeyPatch) -> None:
    # Memory is measured in this process here (the benchmark starts one process per variant).
    monkeypatch.setattr(step_time, "memory_in_subprocess_with", step_time.memory_of)
    torch.set_num_threads(1)
    results = run.run_all(only=("step_time", "lr_zero"), quick=True)
    r = results["step_time"]["resnet18"]
    assert r["check"] == {"trainable_tensors": 2, "identical_update": True}
    assert r["optimizer_state_bytes"]["freezepolicy"] == r["optimizer_state_bytes"]["hand"]
    assert r["optimizer_state_bytes"]["freezepolicy_frozen"] == 0
    m = r["memory"]
    assert m["freezepolicy"]["peak_tensor_bytes"] == m["hand"]["peak_tensor_bytes"] > 0
    lr0 = results["lr_zero"]
    state = lr0["optimizer_state_bytes"]
    assert state["policy"]["lr0_tensors"] == state["hand"]["lr0_tensors"] == 0
    # The naive way keeps Adam's two moments (and its float32 step count) for every lr-0 tensor.
    frozen = [p for n, p in step_time._resnet18().named_parameters() if not n.startswith("fc")]
    assert state["naive"]["lr0_tensors"] == sum(2 * 4 * p.numel() + 4 for p in frozen)
    memory = lr0["memory"]
    assert memory["naive"]["peak_tensor_bytes"] > memory["policy"]["peak_tensor_bytes"]
    assert "lr 0" in report.table_text(results)


def test_quick_cache_benchmark_compares_cached_and_hand_written_epochs() -> None:
    torch.set_num_threads(1)
    work = cache.workloads(quick=True)[0]  # resnet18, head only
    r = cache.run_workload(work)
    assert r["exact"]["within_tolerance"] and r["exact"]["steps"] == 4
    first, second = r["epochs"]
    assert (first["misses"], first["hits"], second["misses"], second["hits"]) == (16, 0, 0, 16)
    assert first["capture_s"] > 0 and second["capture_s"] == 0
    rows = report.targets({"cache": {work.name: r}})
    assert [row.target for row in rows] == ["<= 0.15", "<= 1.10", "equal (rtol 1e-05, atol 1e-06)"]
    assert "cache" in run.BENCHMARKS


def test_memory_is_measured_in_a_fresh_process() -> None:
    out = step_time.memory_in_subprocess_with("resnet18", "hand", None, quick=True)
    assert out["peak_tensor_bytes"] >= out["tensor_bytes_before_step"] > 0


def test_same_step_check_catches_a_different_freeze() -> None:
    work = step_time.workloads(quick=True)["resnet18"]
    base, batch = work.build(), work.batch()
    fp = step_time.with_policy(work, step_time.copy.deepcopy(base), batch)
    other = step_time.by_hand(work, step_time.copy.deepcopy(base), batch)
    for name, p in other.model.named_parameters():
        if name.startswith("layer4.1.conv2"):
            p.requires_grad_(True)
    with pytest.raises(AssertionError, match="trainable sets differ"):
        step_time.check_same_step(fp, other)


def test_processes_are_timed_alone_and_interleaved() -> None:
    samples, last = common.interleaved_processes(
        {"a": [sys.executable, "-c", "print(1)"], "b": [sys.executable, "-c", "pass"]},
        repeats=2,
        warmup=0,
    )
    assert len(samples["a"].wall) == len(samples["b"].cpu) == 2
    assert last["a"].returncode == 0 and last["a"].stdout.strip() == "1"
    assert last["a"].cpu > 0 and last["b"].returncode == 0
    assert lint_time.console_script().endswith("freezepolicy")


def test_generated_policies_are_valid_and_as_long_as_asked() -> None:
    text = parse.generate(200, seed=7)
    policy = freezepolicy.parse(text)
    assert len(policy.statements) == 200
    assert {st.action for st in policy.statements} == {"freeze", "unfreeze", "lr", "decay", "stats"}
    assert not lint_text(text).problems


def test_scaling_policy_selects_at_every_size() -> None:
    policy = freezepolicy.parse(scaling.POLICY)
    assert len(policy.statements) == 20
    model = scaling.build(scaling.layers_for(1_000))
    report_ = freezepolicy.apply_policy(model, policy)
    assert not report_.warnings  # no selector matches nothing, no statement is useless
    names = {n for n, _ in model.named_parameters()}
    assert "model.layers.4.mlp.experts.63.w3.weight" in names
    scaling.forget(model)
    assert all(p.requires_grad for p in model.parameters())
    assert freezepolicy.apply_policy(model, policy).changed  # a first apply again


def test_results_json_of_the_committed_run_matches_the_docs() -> None:
    results_file = ROOT / "bench/results.json"
    if not results_file.exists():
        pytest.skip("no committed benchmark run")
    results = json.loads(results_file.read_text())
    page = (ROOT / "docs/performance.md").read_text()
    assert report.table_markdown(results) in page


# --- the fast paths decide as the definitions do --------------------------------------------

PART = st.sampled_from(
    ["a", "b", "ab", "1", "10", "2", "x", "*", "?", "[ab]", "[!a]", "{a,b1}", "1..3", "0..12"]
    + ["*1..2", "a*b", "**", "a?", "[0-9]", "layer*"]
)
NAME_PART = st.sampled_from(["a", "b", "ab", "1", "10", "2", "12", "x", "a1", "b2", "01", "3"])
NAMES = st.lists(st.lists(NAME_PART, min_size=1, max_size=5).map(".".join), min_size=1, max_size=30)


def _pattern(parts: list[str]) -> str | None:
    text = ".".join(parts)
    try:
        parse_name_pattern(text)
    except PatternError:
        return None
    return text


PATTERNS = st.lists(
    st.tuples(st.lists(PART, min_size=1, max_size=4).map(_pattern), st.booleans()).filter(
        lambda t: t[0] is not None
    ),
    min_size=1,
    max_size=6,
)


@settings(max_examples=300, deadline=None)
@given(PATTERNS, NAMES)
def test_part_matcher_agrees_with_the_reference_for_many_selectors_at_once(
    patterns: list[tuple[str, bool]], names: list[str]
) -> None:
    matcher = PartMatcher(patterns)
    for name, bits in zip(names, matcher.bits_of(names), strict=True):
        for p, (text, anchored) in enumerate(patterns):
            expected = reference_matches(text, name, anchored)
            assert bool(bits >> p & 1) == expected, (text, anchored, name)


def _reference_decisions(
    policy: freezepolicy.Policy,
    names: Sequence[str],
    module_types: Mapping[str, Collection[str]] | None,
    epoch: int,
    step: int,
) -> dict[str, tuple]:
    """Resolution as the language defines it: rules in order, regexes over every name, the last
    statement selecting a name decides each setting (no warm-ups in these policies)."""
    bound = policy.bind(names, module_types)
    out: dict[str, dict[str, Rule | None]] = {
        n: {"t": None, "lr": None, "wd": None, "stats": None} for n in names
    }
    for rule in bound.order(epoch, step):
        key = {"freeze": "t", "unfreeze": "t", "lr": "lr", "decay": "wd", "stats": "stats"}
        for i in rule.selected(names, module_types):
            out[names[i]][key[rule.statement.action]] = rule

    def value(rule: Rule | None) -> float | None:
        return None if rule is None or rule.statement.value is None else rule.statement.value.number

    result = {}
    for n, by in out.items():
        lr = value(by["lr"])
        trainable = (
            False
            if lr == 0
            else (None if by["t"] is None else by["t"].statement.action == "unfreeze")
        )
        result[n] = (trainable, lr, value(by["wd"]), by["stats"] and by["stats"].statement.mode)
    return result


def _summary(d: Decision) -> tuple:
    return (
        d.trainable,
        None if d.lr is None else d.lr.value,
        None if d.weight_decay is None else d.weight_decay.value,
        d.stats_by.mode if d.stats_by is not None else None,
    )


RESNET_SELECTORS = st.sampled_from(
    ["*", "fc", "bias", "layer1..3", "layer4.1", "^conv1", "**.bn2", "layer[24].0.downsample"]
    + ["bn?", "layer*.1.conv{1,2}", "type:BatchNorm2d", "type:*Norm*", "type:Conv2d", "nothing"]
)
STATEMENT = st.tuples(
    st.sampled_from(["freeze", "unfreeze", "lr 0 for", "lr 1e-3 for", "decay 0 for"]),
    st.lists(RESNET_SELECTORS, min_size=1, max_size=3),
    st.one_of(st.none(), st.lists(RESNET_SELECTORS, min_size=1, max_size=2)),
    st.sampled_from(["", " at epoch 2", " at step 7"]),
).map(lambda t: f"{t[0]} {', '.join(t[1])}" + (f" except {', '.join(t[2])}" if t[2] else "") + t[3])


@settings(max_examples=60, deadline=None)
@given(st.lists(STATEMENT, min_size=1, max_size=6), st.sampled_from([(0, 0), (2, 0), (3, 9)]))
def test_decisions_per_signature_agree_with_statement_by_statement(
    statements: list[str], moment: tuple[int, int]
) -> None:
    policy = freezepolicy.parse("\n".join(statements))
    types = {n: frozenset({"ResNet", "Module", *_resnet_types(n)}) for n in RESNET18}
    for module_types in (None, types):
        got = policy.resolve(RESNET18, epoch=moment[0], step=moment[1], module_types=module_types)
        want = _reference_decisions(policy, RESNET18, module_types, *moment)
        assert {n: _summary(d) for n, d in got.items()} == want
        assert all(d.name == n for n, d in got.items())
        bound = policy.bind(RESNET18, module_types)
        for rule in policy.rules:
            assert bound.selected(rule) == rule.selected(RESNET18, module_types)
        view = bound.decisions(epoch=moment[0], step=moment[1])
        assert dict(view) == got and len(view) == len(got)


def _resnet_types(name: str) -> set[str]:
    """Class names of the module holding `name` in resnet18 (enough for type selectors)."""
    module = name.rsplit(".", 1)[0]
    if module.split(".")[-1].startswith("bn") or module.endswith("downsample.1"):
        return {"BatchNorm2d", "_BatchNorm", "_NormBase"}
    if module == "fc":
        return {"Linear"}
    return {"Conv2d", "_ConvNd"}


def _reference_inspect(model: nn.Module) -> tuple[list[str], list[list[str]], dict]:
    """inspect_model's definition: named_modules / named_parameters with wrappers removed. The
    classes at a path are those of every module there: a wrapper's and the module it holds."""
    root = modelinfo.unwrap(model)
    types_at: dict[str, frozenset[str]] = {}
    for path, module in root.named_modules(remove_duplicate=False):
        at = modelinfo.normalize_name(path)
        types_at[at] = types_at.get(at, frozenset()) | modelinfo._class_names(module)
    names: list[str] = []
    by_tensor: dict[int, list[str]] = {}
    for raw, p in root.named_parameters(remove_duplicate=False):
        name = modelinfo.normalize_name(raw)
        if name not in names:
            names.append(name)
            by_tensor.setdefault(id(p), []).append(name)
    types = {}
    for name in names:
        parts = name.split(".")
        classes = set(types_at.get("", ()))
        for i in range(1, len(parts)):
            classes |= types_at.get(".".join(parts[:i]), frozenset())
        types[name] = frozenset(classes)
    return names, [g for g in by_tensor.values() if len(g) > 1], types


class _Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        shared = nn.Linear(2, 2)
        self.a = shared
        self.b = nn.Sequential(nn.Linear(2, 2), shared, nn.BatchNorm1d(2))
        self.c = torch.compile(nn.Sequential(nn.Linear(2, 2)))
        self.head = nn.Linear(2, 2)
        self.head.weight = self.b[0].weight  # tied across modules
        self.scale = nn.Parameter(torch.ones(1))
        self.empty = None


@pytest.mark.parametrize(
    "make",
    [
        lambda: _Tied(),
        lambda: nn.DataParallel(_Tied()),
        lambda: scaling.build(3, 5),
        lambda: __import__("torchvision").models.resnet18(weights=None),
    ],
)
def test_inspect_model_is_named_parameters_with_wrappers_removed(make) -> None:
    model = make()
    info = modelinfo.inspect_model(model)
    names, tied, types = _reference_inspect(model)
    assert info.names == names
    assert info.tied == tied
    assert info.module_types == types
    assert info.fingerprint == modelinfo.parameter_ids(modelinfo.unwrap(model))
    # At each path, the innermost module: the user's, not a wrapper around it.
    inner: dict[str, nn.Module] = {}
    for path, module in modelinfo.unwrap(model).named_modules(remove_duplicate=False):
        inner[modelinfo.normalize_name(path)] = module
    assert {p: type(m) for p, m in info.modules.items()} == {p: type(m) for p, m in inner.items()}
    assert info.classes == {type(m) for m in inner.values()} | {
        type(m) for m in modelinfo.unwrap(model).modules()
    }
