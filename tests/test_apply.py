"""apply_policy on real torchvision and transformers models: requires_grad, gradients, optimizer
state, tied tensors, wrappers, strictness, the report, and errors that leave everything unchanged.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

torchvision = pytest.importorskip("torchvision")

import model_factories  # noqa: E402

import freezepolicy as fp  # noqa: E402
from freezepolicy.runtime import norm  # noqa: E402
from freezepolicy.runtime.modelinfo import normalize_name  # noqa: E402

X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
Y = torch.tensor([1, 7])


# Tiny models train faster on one thread than on two contending for a busy machine.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def resnet18_base() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None, num_classes=10)


@pytest.fixture
def resnet18(resnet18_base) -> nn.Module:
    return copy.deepcopy(resnet18_base)


def tiny_bert_config():
    return model_factories.tiny_bert_config(max_position_embeddings=32)


def train(model: nn.Module, opt: torch.optim.Optimizer, steps: int = 2) -> None:
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(X), Y).backward()
        opt.step()


def clones(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def snapshot(model: nn.Module, opt: torch.optim.Optimizer | None = None) -> dict:
    """Everything apply may change, in comparable form."""
    snap = {
        "requires_grad": {n: p.requires_grad for n, p in model.named_parameters()},
        "grads": {
            n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()
        },
        "training": {n: m.training for n, m in model.named_modules()},
        "hooks": {n: list(m._forward_pre_hooks.values()) for n, m in model.named_modules()},
    }
    if opt is not None:
        snap["groups"] = [
            ({k: v for k, v in g.items() if k != "params"}, [id(p) for p in g["params"]])
            for g in opt.param_groups
        ]
        snap["state"] = {
            id(p): {k: v.clone() if torch.is_tensor(v) else v for k, v in s.items()}
            for p, s in opt.state.items()
        }
    return snap


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if key in ("grads", "state"):
            assert a[key].keys() == b[key].keys(), key
            for k in a[key]:
                x, y = a[key][k], b[key][k]
                if isinstance(x, dict):
                    assert x.keys() == y.keys()
                    for kk in x:
                        assert _eq(x[kk], y[kk]), (key, k, kk)
                else:
                    assert _eq(x, y), (key, k)
        else:
            assert a[key] == b[key], key


def _eq(x, y) -> bool:
    if torch.is_tensor(x) or torch.is_tensor(y):
        return torch.is_tensor(x) and torch.is_tensor(y) and torch.equal(x, y)
    return x == y


# --- requires_grad and the report ---------------------------------------------------------------


def test_head_only_on_resnet18(resnet18):
    report = fp.apply_policy(resnet18, fp.parse("freeze *\nunfreeze fc"))
    trainable = {n for n, p in resnet18.named_parameters() if p.requires_grad}
    assert trainable == {"fc.weight", "fc.bias"}
    assert set(report.trainable) == trainable
    assert len(report.frozen) == 60
    assert report.trainable_elements == 512 * 10 + 10
    assert report.frozen_elements == sum(p.numel() for p in resnet18.parameters()) - 5130
    assert [s.tensors for s in report.statements] == [62, 2]
    assert report.untouched == ()


def test_type_selector_resolves_against_the_model(resnet18):
    fp.apply_policy(resnet18, fp.parse("freeze type:BatchNorm2d"))
    bn = {
        f"{mn}.{pn}"
        for mn, m in resnet18.named_modules()
        if isinstance(m, nn.BatchNorm2d)
        for pn, _ in m.named_parameters(recurse=False)
    }
    frozen = {n for n, p in resnet18.named_parameters() if not p.requires_grad}
    assert frozen == bn and len(bn) == 40


def test_lr_zero_is_a_real_freeze(resnet18):
    opt = torch.optim.AdamW(fp.param_groups(resnet18, fp.parse("lr 0 for layer1..3"), lr=1e-3))
    fp.apply_policy(resnet18, fp.parse("lr 0 for layer1..3"), opt)
    train(resnet18, opt)
    for name, p in resnet18.named_parameters():
        frozen = name.startswith(("layer1", "layer2", "layer3"))
        assert p.requires_grad is not frozen
        assert (p.grad is None) is frozen
        assert (p in opt.state) is not frozen


@pytest.mark.parametrize(
    "make_opt",
    [
        lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.5),
        lambda ps: torch.optim.SGD(ps, lr=1e-2, momentum=0.9, weight_decay=0.5),
    ],
    ids=["adamw", "sgd-momentum"],
)
def test_frozen_parameters_do_not_move_even_with_earlier_state(resnet18, make_opt):
    policy = fp.parse("freeze layer4, fc at epoch 1")
    opt = make_opt(resnet18.parameters())
    fp.apply_policy(resnet18, policy, opt, epoch=0)
    train(resnet18, opt, 1)  # every parameter now has momentum / Adam moments
    assert resnet18.fc.weight in opt.state
    report = fp.apply_policy(resnet18, policy, opt, epoch=1)
    frozen = set(report.frozen)
    assert frozen == {n for n, _ in resnet18.named_parameters() if n.startswith(("layer4", "fc"))}
    before = clones(resnet18)
    train(resnet18, opt, 2)
    after = clones(resnet18)
    for name in before:
        if name in frozen:
            assert torch.equal(before[name], after[name]), name
    assert not torch.equal(before["layer3.0.conv1.weight"], after["layer3.0.conv1.weight"])
    # Dropped, not kept: a frozen tensor holds no optimizer memory.
    params = dict(resnet18.named_parameters())
    assert all(params[n] not in opt.state for n in frozen)


def test_frozen_parameter_loses_its_gradient(resnet18):
    opt = torch.optim.SGD(resnet18.parameters(), lr=0.1)
    resnet18.train()
    nn.functional.cross_entropy(resnet18(X), Y).backward()
    assert resnet18.fc.weight.grad is not None
    fp.apply_policy(resnet18, fp.parse("freeze fc"), opt)
    assert resnet18.fc.weight.grad is None and resnet18.fc.bias.grad is None
    assert resnet18.conv1.weight.grad is not None  # untouched keeps its gradient


def test_untouched_means_as_the_model_had_it(resnet18):
    resnet18.fc.bias.requires_grad_(False)  # the user's own choice, before any policy
    policy = fp.parse("freeze *\nunfreeze fc at epoch 2\nunfreeze layer4 at epoch 3")
    early = fp.apply_policy(resnet18, policy, epoch=0)
    assert not resnet18.fc.weight.requires_grad
    fp.apply_policy(resnet18, policy, epoch=3)
    assert resnet18.fc.bias.requires_grad
    # A policy that leaves fc alone gives it back as the model had it.
    fp.apply_policy(resnet18, fp.parse("freeze layer1"))
    assert resnet18.fc.weight.requires_grad and not resnet18.fc.bias.requires_grad
    assert "fc.bias" in fp.apply_policy(resnet18, fp.parse("freeze layer1")).frozen
    assert "fc.bias" not in early.untouched


def test_untouched_survives_a_new_head_and_covers_it(resnet18):
    """The originals are kept per model: a new head (the model looked at again) keeps those of
    the tensors that stayed, and the head's own is recorded at the next apply."""
    fp.apply_policy(resnet18, fp.parse("freeze *"))
    assert not resnet18.layer1[0].conv1.weight.requires_grad
    resnet18.fc = nn.Linear(512, 3)
    resnet18.fc.bias.requires_grad_(False)  # the user's choice for the new head
    fp.apply_policy(resnet18, fp.parse("freeze layer4"))
    assert resnet18.layer1[0].conv1.weight.requires_grad  # as before the first policy
    assert resnet18.fc.weight.requires_grad and not resnet18.fc.bias.requires_grad
    fp.apply_policy(resnet18, fp.parse("freeze fc"))
    fp.apply_policy(resnet18, fp.parse("freeze layer4"))
    assert resnet18.fc.weight.requires_grad and not resnet18.fc.bias.requires_grad


def test_state_is_a_function_of_the_moment(resnet18, resnet18_base):
    policy = fp.parse(
        "freeze *\nunfreeze fc\nunfreeze layer4 at epoch 2\nunfreeze layer3 at epoch 5"
    )
    fresh = copy.deepcopy(resnet18_base)
    fp.apply_policy(fresh, policy, epoch=0)
    expected0 = snapshot(fresh)
    for epoch in (5, 2, 0):
        fp.apply_policy(resnet18, policy, epoch=epoch)
    assert_same(snapshot(resnet18), expected0)
    # After a "resume" on a fresh model, the same call gives the same state as the long way.
    for epoch in range(6):
        fp.apply_policy(resnet18, policy, epoch=epoch)
    resumed = copy.deepcopy(resnet18_base)
    fp.apply_policy(resumed, policy, epoch=5)
    assert_same(snapshot(resumed), snapshot(resnet18))


def test_applying_twice_equals_applying_once(resnet18):
    policy = fp.parse("freeze * except layer4\nlr 0.1x for layer4\ndecay 0 for bias")
    opt = torch.optim.SGD(resnet18.parameters(), lr=0.1, momentum=0.9)
    first = fp.apply_policy(resnet18, policy, opt, epoch=1)
    once = snapshot(resnet18, opt)
    second = fp.apply_policy(resnet18, policy, opt, epoch=1)
    assert first.changed and not second.changed
    assert_same(snapshot(resnet18, opt), once)
    assert second.trainable == first.trainable and second.groups == first.groups
    # A later moment with the same active statements is the same state, and as cheap.
    third = fp.apply_policy(resnet18, policy, opt, epoch=7)
    assert not third.changed and third.epoch == 7
    assert_same(snapshot(resnet18, opt), once)


def test_policy_from_a_path(tmp_path, resnet18):
    path = tmp_path / "head.freeze"
    path.write_text("# head only\nfreeze *\nunfreeze fc\n", encoding="utf-8")
    report = fp.apply_policy(resnet18, str(path))
    assert report.source == str(path) and set(report.trainable) == {"fc.weight", "fc.bias"}
    assert not fp.apply_policy(resnet18, path).changed  # same file: cached, nothing to do
    with pytest.raises(fp.PolicySourceError):
        fp.apply_policy(resnet18, tmp_path / "missing.freeze")


def test_bad_moments_are_rejected(resnet18):
    policy = fp.parse("freeze fc")
    for kwargs in ({"epoch": -1}, {"step": 1.5}, {"epoch": True}, {"steps_per_epoch": 0}):
        with pytest.raises(ValueError):
            fp.apply_policy(resnet18, policy, **kwargs)


def test_report_text_and_data(resnet18):
    policy = fp.parse("freeze *\nunfreeze fc\nunfreeze layer4 at epoch 3\nfreeze head", "p.freeze")
    with pytest.warns(fp.PolicyWarning, match=r"selector `head` matches no parameter \[FP201\]"):
        report = fp.apply_policy(resnet18, policy)
    text = str(report)
    assert text.startswith("p.freeze at epoch 0, step 0:")
    assert "trainable:     2 tensors" in text and "frozen:       60 tensors" in text
    assert "line 2    unfreeze fc" in text
    assert "(not yet active)" in text
    assert "held in eval (statistics fixed): 20 (bn1, layer1.0.bn1" in text
    assert "  p.freeze:4:8: warning: selector `head` matches no parameter [FP201]" in text
    data = json.loads(json.dumps(report.to_dict()))
    assert data["held_norm"][0] == "bn1" and len(data["held_norm"]) == 20
    assert [s["tensors"] for s in data["statements"]] == [62, 2, 15, 0]
    assert data["diagnostics"][0]["code"] == "FP201"
    assert report.decisions["fc.weight"].trainable is True
    assert report.decisions["fc.weight"].trainable_by.line == 2


# --- strictness and errors ------------------------------------------------------------------------


def test_strict_makes_an_empty_selection_an_error(resnet18):
    policy = fp.parse("freeze *\nunfreeze classifier", "p.freeze")
    with pytest.warns(fp.PolicyWarning, match=r"p\.freeze:2:10: .*`classifier` .*\[FP201\]"):
        report = fp.apply_policy(resnet18, policy)
    assert [d.code for d in report.diagnostics] == ["FP201"]
    with pytest.raises(fp.PolicyResolveError) as info:
        fp.apply_policy(resnet18, policy, strict=True)
    assert info.value.code == "FP201" and info.value.line == 2


def test_errors_leave_model_and_optimizer_unchanged(resnet18):
    opt = torch.optim.SGD(resnet18.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    fp.apply_policy(resnet18, fp.parse("freeze layer1"), opt)
    train(resnet18, opt, 1)
    resnet18.eval()
    nn.functional.cross_entropy(resnet18(X), Y).backward()  # gradients present
    before = snapshot(resnet18, opt)
    strict_bad = fp.parse("freeze *\nunfreeze classifier")
    with pytest.raises(fp.PolicyResolveError):
        fp.apply_policy(resnet18, strict_bad, opt, strict=True)
    assert_same(snapshot(resnet18, opt), before)
    # A reshape the attached scheduler could not follow: refused before anything changes.
    torch.optim.lr_scheduler.StepLR(opt, step_size=1)
    before = snapshot(resnet18, opt)
    with pytest.raises(ValueError, match="scheduler"):
        fp.apply_policy(resnet18, fp.parse("freeze *\nunfreeze fc\nlr 0.1x for fc"), opt)
    assert_same(snapshot(resnet18, opt), before)
    with pytest.raises(fp.PolicySyntaxError):
        fp.apply_policy(resnet18, fp.parse("frezee *"), opt)
    assert_same(snapshot(resnet18, opt), before)


def test_tied_conflict_names_both_names_and_lines():
    from transformers import BertForMaskedLM

    model = BertForMaskedLM(tiny_bert_config())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    before = snapshot(model, opt)
    policy = fp.parse("freeze bert.embeddings\nunfreeze cls", "mlm.freeze")
    with pytest.raises(fp.PolicyResolveError) as info:
        fp.apply_policy(model, policy, opt)
    err = info.value
    assert err.code == "FP205"
    text = str(err)
    assert "`bert.embeddings.word_embeddings.weight`" in text
    assert "`cls.predictions.decoder.weight`" in text
    assert "frozen (line 1)" in text and "trainable (line 2)" in text
    assert_same(snapshot(model, opt), before)
    # Also when the split only comes later on the timeline: reported at the start of training.
    with pytest.raises(fp.PolicyResolveError, match=r"\(from epoch 4\) \[FP205\]"):
        fp.apply_policy(model, fp.parse("freeze bert.embeddings\nunfreeze cls at epoch 4"))
    assert_same(snapshot(model, opt), before)


def test_tied_tensor_decided_under_one_name_or_agreeing():
    from transformers import BertForMaskedLM

    model = BertForMaskedLM(tiny_bert_config())
    decoder = model.cls.predictions.decoder.weight
    assert decoder is model.bert.embeddings.word_embeddings.weight
    report = fp.apply_policy(model, fp.parse("freeze cls.predictions.decoder"))
    assert not decoder.requires_grad and not model.cls.predictions.bias.requires_grad
    # Counted once, under its first name.
    assert "bert.embeddings.word_embeddings.weight" in report.frozen
    assert "cls.predictions.decoder.weight" not in report.frozen + report.trainable
    assert len(report.frozen) + len(report.trainable) == len(list(model.parameters()))
    fp.apply_policy(model, fp.parse("freeze *\nunfreeze bert.embeddings, cls"))
    assert decoder.requires_grad


# --- transformers and big models -------------------------------------------------------------


def test_bert_last_blocks_for_both_heads():
    from transformers import BertForSequenceClassification, BertModel

    policy = fp.parse("freeze *\nunfreeze encoder.layer.1, pooler, classifier")
    bare = BertModel(tiny_bert_config())
    # The bare model has no head: the policy's `classifier` is for the other one.
    with pytest.warns(fp.PolicyWarning, match=r"`classifier` matches no parameter \[FP201\]"):
        report = fp.apply_policy(bare, policy)
    trainable = {n for n, p in bare.named_parameters() if p.requires_grad}
    assert trainable == set(report.trainable)
    assert trainable and all(n.startswith(("encoder.layer.1.", "pooler.")) for n in trainable)
    cls = BertForSequenceClassification(tiny_bert_config())
    fp.apply_policy(cls, policy, strict=False)
    trainable_cls = {n for n, p in cls.named_parameters() if p.requires_grad}
    assert trainable_cls == {"bert." + n for n in trainable} | {
        "classifier.weight",
        "classifier.bias",
    }


def test_resnet50_on_the_meta_device():
    with torch.device("meta"):
        model = torchvision.models.resnet50(weights=None)
    report = fp.apply_policy(model, fp.parse("freeze *\nunfreeze layer4, fc"))
    names = [n for n, _ in model.named_parameters()]
    assert set(report.trainable) == {n for n in names if n.startswith(("layer4.", "fc."))}
    assert report.trainable_elements == sum(
        p.numel() for n, p in model.named_parameters() if n.startswith(("layer4.", "fc."))
    )
    # Every BatchNorm outside layer4 is frozen, so held; layer4's are not.
    assert report.held_norm and not any(h.startswith("layer4") for h in report.held_norm)
    assert len(report.held_norm) == sum(
        1 for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)
    ) - sum(1 for n, m in model.layer4.named_modules() if isinstance(m, nn.BatchNorm2d))


# --- wrappers ------------------------------------------------------------------------------------


def test_names_are_normalized_under_wrappers(resnet18):
    assert normalize_name("_orig_mod.layer1.0.conv1.weight") == "layer1.0.conv1.weight"
    assert normalize_name("_fsdp_wrapped_module.fc._checkpoint_wrapped_module.bias") == "fc.bias"
    policy = fp.parse("freeze ^conv1, ^bn1")  # anchored: a leftover prefix would not match
    compiled = torch.compile(resnet18)  # constructed only; compiling waits for the first call
    report = fp.apply_policy(compiled, policy, strict=True)
    assert set(report.frozen) == {"conv1.weight", "bn1.weight", "bn1.bias"}
    assert not resnet18.conv1.weight.requires_grad
    parallel = nn.DataParallel(resnet18)  # CPU: no devices, still a wrapper with `module.`
    report = fp.apply_policy(parallel, fp.parse("freeze ^fc"), strict=True)
    assert set(report.frozen) == {"fc.weight", "fc.bias"}
    assert resnet18.conv1.weight.requires_grad  # untouched again: as the model had it
    assert "bn1" not in report.held_norm


def test_apply_through_a_wrapper_holds_the_inner_norm_layers(resnet18):
    parallel = nn.DataParallel(resnet18)
    fp.apply_policy(parallel, fp.parse("freeze *"))
    parallel.train()
    assert norm.is_held(resnet18.bn1)
    before = resnet18.bn1.running_mean.clone()
    with torch.no_grad():
        parallel(X)
    assert torch.equal(resnet18.bn1.running_mean, before)


def test_a_wrapped_submodule_is_selected_by_its_own_type_and_its_norm_is_held(resnet18):
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    resnet18.fc = torch.compile(resnet18.fc)  # OptimizedModule holding the Linear
    resnet18.bn1 = checkpoint_wrapper(resnet18.bn1)  # CheckpointWrapper holding the BatchNorm2d
    report = fp.apply_policy(resnet18, fp.parse("freeze *\nunfreeze type:Linear"), strict=True)
    assert set(report.trainable) == {"fc.weight", "fc.bias"}
    assert "bn1" in report.held_norm  # the BatchNorm inside the wrapper, all of it frozen
    bn = resnet18.bn1._checkpoint_wrapped_module
    before = bn.running_mean.clone()
    resnet18.train()
    with torch.no_grad():
        resnet18.bn1(torch.randn(2, 64, 4, 4))  # not the model: its compiled fc would compile
    assert torch.equal(bn.running_mean, before)


def test_steps_per_epoch_puts_both_clocks_on_one_timeline():
    model = nn.Sequential()
    model.add_module("body", nn.Linear(3, 3))
    model.add_module("fc", nn.Linear(3, 1))
    policy = fp.parse("freeze * at epoch 1\nunfreeze fc at step 5")
    # Epoch 1 is step 10: `freeze *` comes after `unfreeze fc`, so it wins.
    report = fp.apply_policy(model, policy, epoch=1, step=10, steps_per_epoch=10)
    assert set(report.frozen) == {"body.weight", "body.bias", "fc.weight", "fc.bias"}
    # Without steps_per_epoch, epoch-timed statements apply before step-timed ones.
    report = fp.apply_policy(model, policy, epoch=1, step=10)
    assert set(report.trainable) == {"fc.weight", "fc.bias"}
    # With 2 steps per epoch, epoch 1 is step 2, before step 5: fc trains again from step 5.
    report = fp.apply_policy(model, policy, epoch=2, step=5, steps_per_epoch=2)
    assert set(report.trainable) == {"fc.weight", "fc.bias"}
