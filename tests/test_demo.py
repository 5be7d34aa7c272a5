"""The digits demo (freezepolicy/demo/digits.py) on a reduced setting: what it claims holds, and it
produces its table and figure. The two-phase runs keep the epochs of the real policy (they take
about a second); the transfer runs are shortened."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")

from freezepolicy import load, parse  # noqa: E402
from freezepolicy.demo.digits import phases_table, results_table, run_demo  # noqa: E402
from freezepolicy.demo.digits_runs import (  # noqa: E402
    HEAD_ONLY,
    POLICY_DIR,
    TWO_PHASE,
    Phase,
    Settings,
    build_mlp,
    load_tasks,
    new_head,
    train,
    unfreeze_epoch,
)

SETTINGS = Settings(pretrain_epochs=3, head_epochs=3)
HIDDEN = ("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias")


@pytest.fixture(scope="module", autouse=True)
def demo_threads():
    """The demo's thread count (as `main` sets it): with a model this small, more threads only
    add overhead, and a lot of it on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(SETTINGS.threads)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tasks():
    return load_tasks(SETTINGS.seed)


def quiet(_: str) -> None:
    pass


def snapshot(model) -> dict:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def metrics(epochs) -> list[tuple[float, float, float]]:
    """What must be reproducible about epochs (their seconds are measured, so they vary)."""
    return [(e.loss, e.train_acc, e.test_acc) for e in epochs]


def numel(model, names) -> int:
    params = dict(model.named_parameters())
    return sum(params[n].numel() for n in names)


def test_tasks_split_the_digits(tasks):
    everything = tasks["all"]
    assert len(everything.train_y) + len(everything.test_y) == 1797
    assert everything.classes == 10 and tasks["0-4"].classes == tasks["5-9"].classes == 5
    # 0-4 and 5-9 partition the same split; 5-9 is relabelled 0-4.
    for split in ("train_y", "test_y"):
        low, high = getattr(tasks["0-4"], split), getattr(tasks["5-9"], split)
        assert len(low) + len(high) == len(getattr(everything, split))
        assert set(low.tolist()) == set(high.tolist()) == {0, 1, 2, 3, 4}


def test_unfreeze_epoch_is_read_from_the_policy():
    assert unfreeze_epoch(parse("freeze *\nunfreeze out\nunfreeze * at epoch 3")) == 3
    assert unfreeze_epoch(load(POLICY_DIR / TWO_PHASE)) == 5
    with pytest.raises(ValueError, match="one `at epoch N` change"):
        unfreeze_epoch(parse("freeze *\nunfreeze out"))
    with pytest.raises(ValueError):
        unfreeze_epoch(parse("freeze *\nunfreeze * at step 40"))


def test_frozen_phase_leaves_fc1_fc2_unchanged_then_they_train(tasks):
    policy = load(POLICY_DIR / TWO_PHASE)
    frozen_epochs = unfreeze_epoch(policy)
    task = tasks["all"]

    # Through the frozen phase only: out moves, the hidden layers are bit-for-bit the initial ones.
    model = build_mlp(SETTINGS.seed, task.classes, SETTINGS.hidden)
    initial = snapshot(model)
    frozen_run = train("two-phase", model, task, frozen_epochs, policy, SETTINGS, quiet)
    after = snapshot(model)
    for name in HIDDEN:
        assert torch.equal(after[name], initial[name]), name
    for name in ("out.weight", "out.bias"):
        assert not torch.equal(after[name], initial[name]), name

    # One epoch past the unfreeze: the same run up to there (same weights, same batches), and
    # now every layer has moved.
    model = build_mlp(SETTINGS.seed, task.classes, SETTINGS.hidden)
    longer = train("two-phase", model, task, frozen_epochs + 1, policy, SETTINGS, quiet)
    assert metrics(longer.epochs[:frozen_epochs]) == metrics(frozen_run.epochs)
    moved = snapshot(model)
    for name in initial:
        assert not torch.equal(moved[name], initial[name]), name

    # The phases come from the scheduler's history: out alone, then everything.
    out_elements = numel(model, ("out.weight", "out.bias"))
    hidden_elements = numel(model, HIDDEN)
    assert longer.phases == [
        Phase(0, frozen_epochs - 1, 2, out_elements, 4, hidden_elements),
        Phase(frozen_epochs, frozen_epochs, 6, out_elements + hidden_elements, 0, 0),
    ]


def test_new_head_trains_alone_on_pretrained_features(tasks):
    policy = load(POLICY_DIR / HEAD_ONLY)
    source, target = tasks["0-4"], tasks["5-9"]
    model = build_mlp(SETTINGS.seed, source.classes, SETTINGS.hidden)
    initial = snapshot(model)
    train("pretrain", model, source, 2, None, SETTINGS, quiet)
    pretrained = snapshot(model)
    assert all(not torch.equal(pretrained[n], initial[n]) for n in HIDDEN)

    new_head(model, target.classes, SETTINGS.seed + 1)
    fresh_head = snapshot(model)
    assert fresh_head["out.weight"].shape == (target.classes, SETTINGS.hidden)
    # The same seed gives the same head: both transfer runs start from one point.
    other = new_head(
        build_mlp(SETTINGS.seed, source.classes, SETTINGS.hidden), 5, SETTINGS.seed + 1
    )
    assert torch.equal(other.out.weight, model.out.weight)

    run = train("head", model, target, 2, policy, SETTINGS, quiet)
    after = snapshot(model)
    for name in HIDDEN:
        assert torch.equal(after[name], pretrained[name]), name
    assert not torch.equal(after["out.weight"], fresh_head["out.weight"])
    assert [(p.trainable_tensors, p.frozen_tensors) for p in run.phases] == [(2, 4)]


def test_demo_on_a_reduced_setting(tasks, tmp_path):
    lines: list[str] = []
    figure = tmp_path / "figs" / "demo.png"  # the folder does not exist yet
    runs = run_demo(SETTINGS, figure, log=lines.append)
    printed = "\n".join(lines)

    names = [r.name for r in runs]
    assert names == [
        "no freezing",
        "two-phase",
        "pretrain",
        "head on pretrained features",
        "head on random features",
    ]
    two_phase_epochs = 2 * unfreeze_epoch(load(POLICY_DIR / TWO_PHASE))
    assert [len(r.epochs) for r in runs] == [two_phase_epochs] * 2 + [3, 3, 3]

    # A progress line per epoch, then the tables and the figure's path.
    progress = [line for line in lines if " epoch " in line and "/" in line and "loss" in line]
    assert len(progress) == sum(len(r.epochs) for r in runs)
    assert results_table(runs) in printed
    assert phases_table(runs) in printed
    for name in names:
        assert f"\n{name} " in printed
    assert f"Figure: {figure}" in printed
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert figure.stat().st_size > 20_000  # two panels of curves, not an empty canvas

    # Same initial weights for the two runs of each comparison.
    assert runs[0].start == runs[1].start
    # The random-features head sits on the untouched initial weights of the pretraining.
    fresh = build_mlp(SETTINGS.seed, 5, SETTINGS.hidden)
    for name in HIDDEN:
        assert torch.equal(dict(runs[4].model.named_parameters())[name], snapshot(fresh)[name])

    # Clearly better than chance (0.1 for ten classes, 0.2 for five).
    for run in runs:
        chance = 1 / run.task.classes
        assert run.test_acc > chance + 0.3, (run.name, run.test_acc)
    assert runs[0].test_acc > 0.9 and runs[1].test_acc > 0.9


def test_same_numbers_every_run(tasks):
    policy = load(POLICY_DIR / TWO_PHASE)
    task = tasks["all"]

    def once():
        model = build_mlp(SETTINGS.seed, task.classes, SETTINGS.hidden)
        return metrics(train("two-phase", model, task, 2, policy, SETTINGS, quiet).epochs)

    first = once()
    assert first == once()
    assert len(set(first)) == 2  # the two epochs differ: the check compares real numbers
