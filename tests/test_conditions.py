"""Metric-driven statements (`unfreeze layer4 then layer3 when val_loss stops decreasing for 2
evaluations`): the syntax, what a plateau is, resolution with the moments groups fired at, the
loop helper's `observe` / `finish` / state, the optimizer layout, lint's and show's account.
(Lightning, the Trainer and a SIGKILL resume: test_lightning.py, test_hf.py, test_resume.py.)"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import warnings

import pytest
import torch
from torch import nn

import freezepolicy
from freezepolicy.cli import main
from freezepolicy.lang.conditions import MetricWatch
from freezepolicy.lang.nodes import Condition, NamePattern, Selection, Statement

NAMES = ["layer2.w", "layer3.w", "layer4.w", "fc.w"]
POLICY = """\
freeze *
unfreeze fc
unfreeze layer4 then layer3 then layer2 when val_loss stops decreasing for 2 evaluations
"""


def test_the_statement_parses_and_prints_in_one_form() -> None:
    (st,) = freezepolicy.parse(
        "unfreeze  layer4 then layer3  when val_loss stops  decreasing for 1 evaluation"
    ).statements
    groups = ((NamePattern("layer4"),), (NamePattern("layer3"),))
    assert st == Statement(
        "unfreeze",
        Selection(groups[0], (), groups[1:]),
        condition=Condition("val_loss", "decreasing", 1),
    )
    assert str(st) == "unfreeze layer4 then layer3 when val_loss stops decreasing for 1 evaluation"
    text = "lr 0.1x for fc when val/acc stops increasing for 3 evaluations warmup 2 steps\n"
    assert freezepolicy.parse(text).format() == text


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("unfreeze a at epoch 1 when m stops decreasing for 2 evaluations", "FP144"),
        ("unfreeze a then b when m stops decreasing for 2 evaluations every 2 epochs", "FP144"),
        ("unfreeze a when m stops decreasing for 0 evaluations", "FP105"),
        ("unfreeze a when m stops decreasing for 1.5 evaluations", "FP105"),
        ("unfreeze a when 3m stops decreasing for 2 evaluations", "FP103"),
        ("unfreeze a when m stops falling for 2 evaluations", "FP103"),
        ("freeze when m stops decreasing for 2 evaluations", "FP102"),
    ],
)
def test_condition_errors(text: str, code: str) -> None:
    with pytest.raises(freezepolicy.PolicySyntaxError) as info:
        freezepolicy.parse(text)
    assert info.value.code == code


def watch(text: str) -> MetricWatch:
    return MetricWatch(freezepolicy.parse(text).statements)


def plateaus(text: str, values: list[float], metric: str = "m") -> list[int]:
    """The observations (0-based) at which the statement's groups fire."""
    w = watch(text)
    return [i for i, v in enumerate(values) if w.observe({metric: v}, "test")]


def test_a_plateau_is_n_observations_in_a_row_not_better_than_the_best() -> None:
    text = "unfreeze a then b then c when m stops decreasing for 2 evaluations"
    # 1.0 best, 0.9 best, 0.95 and 0.9 (equal: not better) -> 1st; the best restarts: 0.99 best,
    # 0.98 best, 1.5, 0.97 best, 0.98, 0.98 -> 2nd; nothing more than 3 groups fire.
    values = [1.0, 0.9, 0.95, 0.9, 0.99, 0.98, 1.5, 0.97, 0.98, 0.98]
    assert plateaus(text, values) == [3, 9]
    assert plateaus(text, values + [2.0, 2.0, 2.0, 2.0, 2.0, 2.0]) == [3, 9, 12]


def test_stops_increasing_and_nan() -> None:
    text = "unfreeze a then b when acc stops increasing for 1 evaluation"
    assert plateaus(text, [0.5, 0.6, 0.6, 0.7, 0.65], "acc") == [2, 4]
    # A NaN is never better, and does not become the best after a transition either.
    assert plateaus(text, [0.5, math.nan, math.nan], "acc") == [1, 2]


def test_metrics_are_checked_before_anything_is_counted() -> None:
    w = watch("unfreeze a when m stops decreasing for 1 evaluation")
    with pytest.raises(TypeError, match="metrics must map metric names to numbers"):
        w.observe([("m", 1.0)], "test")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"metrics\['m'\] must be a number, got 'low'"):
        w.observe({"m": "low"}, "test")
    with pytest.raises(TypeError, match="must be a number"):
        w.observe({"m": True}, "test")
    assert w.state == {0: [0, None, 0]} and not w.observed
    assert w.observe({"m": torch.tensor(2.0), "other": "ignored"}, "test") == []
    assert w.state == {0: [0, 2.0, 0]}


def test_resolve_with_the_moments_groups_fired_at() -> None:
    policy = freezepolicy.parse(POLICY)

    def trainable(**moment) -> list[str]:
        return [n for n, d in policy.resolve(NAMES, **moment).items() if d.trainable]

    assert trainable(epoch=9, step=90) == ["fc.w"]
    fired = {2: [(3, 30), (5, 50)]}
    assert trainable(epoch=2, step=29, fired=fired) == ["fc.w"]
    assert trainable(epoch=3, step=30, fired=fired) == ["layer4.w", "fc.w"]
    assert trainable(epoch=9, step=90, fired=fired) == ["layer3.w", "layer4.w", "fc.w"]


@pytest.mark.parametrize(
    ("fired", "error", "message"),
    [
        ([(2, [(1, 1)])], TypeError, "fired must map the index of a conditional statement"),
        ({0: [(1, 1)]}, ValueError, "statement 0 of the policy is not a `when` statement"),
        ({2: [(1, 1)] * 4}, ValueError, "has 4 moments, but statement 2 has 3 groups"),
        ({2: [(3, 3), (1, 1)]}, ValueError, "must be in order"),
        ({2: [(1.0, 1)]}, TypeError, "not an .epoch, step. pair of whole numbers"),
        ({2: [(-1, 1)]}, ValueError, "not a moment"),
        ({"2": [(1, 1)]}, TypeError, "fired keys are statement indices"),
    ],
)
def test_fired_is_checked(fired, error, message) -> None:
    with pytest.raises(error, match=message):
        freezepolicy.parse(POLICY).resolve(NAMES, fired=fired)


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.ModuleDict({n: nn.Linear(2, 2) for n in ("layer2", "layer3", "layer4", "fc")})


def trains(m: nn.Module) -> list[str]:
    return sorted({n.split(".")[0] for n, p in m.named_parameters() if p.requires_grad})


def test_the_loop_helper_observes_and_the_change_takes_effect_at_the_next_call() -> None:
    m = model()
    fs = freezepolicy.FreezeScheduler(m, freezepolicy.parse(POLICY), steps_per_epoch=2)
    for value in (1.0, 1.1):
        fs.observe({"val_loss": value})
    assert trains(m) == ["fc"]
    fs.observe({"val_loss": 1.2})  # the 2nd in a row not better than 1.0: a plateau
    assert trains(m) == ["fc"] and fs.fired == {}  # not yet: at the next call
    fs.step()
    assert trains(m) == ["fc", "layer4"] and fs.fired == {2: [(0, 1)]}
    # The state of an interrupted run, and a fresh helper made from it: the same from there on.
    for value in (0.5, 0.6):
        fs.observe({"val_loss": value})
    saved = json.loads(json.dumps(fs.state_dict()))  # plain data
    again = freezepolicy.FreezeScheduler(model(), freezepolicy.parse(POLICY), steps_per_epoch=2)
    again.load_state_dict(saved)
    for helper in (fs, again):
        helper.observe({"val_loss": 0.7})
        helper.step()
    assert trains(fs.model) == trains(again.model) == ["fc", "layer3", "layer4"]
    assert fs.fired == again.fired == {2: [(0, 1), (1, 2)]}


def test_a_bad_state_leaves_the_helper_as_it_was() -> None:
    fs = freezepolicy.FreezeScheduler(model(), freezepolicy.parse(POLICY))
    fs.observe({"val_loss": 1.0})
    state = fs.state_dict()
    state["metrics"] = {"conditions": [[7, 0, None, 0]]}
    with pytest.raises(ValueError, match="not the state of this policy's `when` statements"):
        fs.load_state_dict(state)
    assert fs.watch.state == {2: [0, 1.0, 0]}


def test_a_metric_never_observed_is_a_warning_at_the_end() -> None:
    fs = freezepolicy.FreezeScheduler(model(), freezepolicy.parse(POLICY, "p.freeze"))
    fs.observe({"eval_loss": 0.3, "epoch": 1})
    with pytest.warns(freezepolicy.PolicyWarning) as caught:
        (found,) = fs.finish()
    assert found.code == "FP231" and (found.line, found.column) == (3, 46)
    assert "`val_loss` was never observed" in str(caught[0].message)
    assert "did you mean `eval_loss`?" in found.message
    # Observed (even without ever reaching a plateau): nothing to say.
    fs.observe({"val_loss": 0.3})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert fs.finish() == []


def test_param_groups_are_laid_out_for_rates_that_change_at_a_condition() -> None:
    policy = freezepolicy.parse(
        "lr 0.1x for layer2 when val_loss stops decreasing for 1 evaluation"
    )
    m = model()
    optimizer = torch.optim.SGD(freezepolicy.param_groups(m, policy, lr=1.0), lr=1.0)
    layout = [list(map(id, g["params"])) for g in optimizer.param_groups]
    assert len(layout) == 2  # layer2 apart from the start, though its rate is 1x until then
    fs = freezepolicy.FreezeScheduler(m, policy, optimizer)
    fs.observe({"val_loss": 1.0})
    fs.observe({"val_loss": 1.0})
    fs.step()
    assert [list(map(id, g["params"])) for g in optimizer.param_groups] == layout
    assert sorted(g["lr"] for g in optimizer.param_groups) == [0.1, 1.0]


def test_lint_notes_each_conditional_event_and_checks_them(tmp_path, capsys) -> None:
    path = tmp_path / "p.freeze"
    path.write_text(POLICY + "freeze layer2 when val_loss stops decreasing for 1 evaluation\n")
    names = tmp_path / "names.txt"
    names.write_text("\n".join(NAMES))
    assert main(["lint", "--names", str(names), str(path)]) == 0
    out = capsys.readouterr().out
    assert out.count("[FP232]") == 2
    assert (
        "p.freeze:3:46: note: conditional event: unfreeze `layer4` when val_loss stops decreasing"
        " for 2 evaluations (1st time), `layer3` the 2nd time, `layer2` the 3rd time" in out
    )


def test_show_lists_conditional_events(tmp_path, capsys) -> None:
    path = tmp_path / "p.freeze"
    path.write_text(POLICY)
    spec = "tests.model_factories:mlp"
    policy = tmp_path / "mlp.freeze"
    policy.write_text(
        "freeze *\nunfreeze out then fc2 when val_loss stops decreasing for 1 evaluation\n"
    )
    assert main(["show", str(policy), "--model", spec]) == 0
    out = capsys.readouterr().out
    assert "conditional events" in out
    assert (
        "  when val_loss stops decreasing for 1 evaluation (1st time): unfreeze out (line 2)" in out
    )
    assert (
        "  when val_loss stops decreasing for 1 evaluation (2nd time): unfreeze fc2 (line 2)" in out
    )
    assert main(["show", str(policy), "--model", spec, "--format", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    first, second = report["conditional_events"]
    assert first["condition"] == {
        "metric": "val_loss",
        "trend": "decreasing",
        "evaluations": 1,
        "time": 1,
    }
    assert [c["paths"] for c in first["changes"]] == [["out"]]
    assert second["counts"]["trainable"]["tensors"] == 4


#: Generous: the child takes a fraction of a second; enumerating every combination of fired
#: groups of 30 `when` statements (2**30 of them) would not finish.
LIMIT_S = 120

_MANY_CONDITIONS = """
import warnings
import torch.nn as nn
import freezepolicy
k = 30
model = nn.Sequential(*[nn.Linear(2, 2) for _ in range(k)])
text = "freeze *\\n" + "\\n".join(
    f"lr {0.01 * (i + 1):g}x for {i} when m{i} stops decreasing for 1 evaluation" for i in range(k)
)
policy = freezepolicy.parse(text)
with warnings.catch_warnings():
    warnings.simplefilter("ignore", freezepolicy.PolicyWarning)
    groups = freezepolicy.param_groups(model, policy, lr=1e-3)
    freezepolicy.apply_policy(model, policy)
print(sum(len(g["params"]) for g in groups))
"""


def test_many_when_statements_bind_without_trying_every_combination() -> None:
    """The moments a binding checks grow with the number of `when` statements, not with the
    number of their combinations (2**30 here), in param_groups and apply_policy alike."""
    try:
        done = subprocess.run(
            [sys.executable, "-c", _MANY_CONDITIONS],
            capture_output=True,
            text=True,
            timeout=LIMIT_S,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"binding 30 `when` statements still running after {LIMIT_S} s")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["60"]
