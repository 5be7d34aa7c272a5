"""`freezepolicy show` and `freezepolicy lint --model`: the module tree, counts, schedule, JSON,
and the CLI's exit codes.

Expected counts are computed here from layer sizes (resnet18 and BERT base arithmetic), not read
from the output of the code under test.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchvision")
pytest.importorskip("transformers")

from freezepolicy import parse  # noqa: E402
from freezepolicy.cli import main  # noqa: E402
from freezepolicy.cli.layout import ModelLayout, layout_from_model  # noqa: E402
from freezepolicy.cli.models import build_model  # noqa: E402
from freezepolicy.cli.show_json import to_json  # noqa: E402
from freezepolicy.cli.show_text import format_text  # noqa: E402
from freezepolicy.cli.view import PolicyView  # noqa: E402
from freezepolicy.lang.checks import ModelNames, check_model  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
POLICIES = ROOT / "policies"


# --- sizes, from the architectures' definitions -------------------------------------------


def conv(cin: int, cout: int, k: int) -> int:
    return cin * cout * k * k


def bn(c: int) -> int:
    return 2 * c


def basic_block(cin: int, cout: int, downsample: bool) -> int:
    n = conv(cin, cout, 3) + bn(cout) + conv(cout, cout, 3) + bn(cout)
    return n + (conv(cin, cout, 1) + bn(cout) if downsample else 0)


RESNET18_LAYER4 = basic_block(256, 512, True) + basic_block(512, 512, False)
RESNET18_FC = 512 * 1000 + 1000
RESNET18_TOTAL = 11_689_512  # torchvision's published count


def linear(i: int, o: int) -> int:
    return i * o + o


H = 768
BERT_LAYER = 4 * linear(H, H) + 2 * H + linear(H, 4 * H) + linear(4 * H, H) + 2 * H
BERT_LAYER_TENSORS = 16  # q, k, v, attention output, intermediate, output: w+b; two LayerNorms


# --- fixtures -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def resnet18() -> ModelLayout:
    return layout_from_model(build_model("torchvision:resnet18"))


@pytest.fixture(scope="module")
def bert() -> ModelLayout:
    return layout_from_model(build_model("transformers:bert-base-uncased"))


@pytest.fixture(scope="module")
def mlp() -> ModelLayout:
    return layout_from_model(build_model("tests.model_factories:mlp"))


def policy_file(name: str):
    from freezepolicy import load

    return load(POLICIES / name)


TREE = re.compile(r"^[│├└─|`\s-]+")


def cells(text: str, label: str) -> list[str]:
    """The cells of the table row for `label` (tree drawing stripped)."""
    for line in text.splitlines():
        parts = re.split(r"\s{2,}", TREE.sub("", line))
        if parts[0] == label:
            return parts
    raise AssertionError(f"no row {label!r} in:\n{text}")


def tree_labels(text: str) -> list[str]:
    table = text.split("\n\n")[1]
    return [re.split(r"\s{2,}", TREE.sub("", ln))[0] for ln in table.splitlines()[1:]]


# --- the tree -----------------------------------------------------------------------------


def test_resnet_head_only_states_and_counts(resnet18):
    view = PolicyView(policy_file("resnet_head_only.freeze"), resnet18)
    text = format_text(view, view.moment())
    assert cells(text, "fc")[1:5] == ["Linear", "trainable", "2", f"{RESNET18_FC:,}"]
    assert cells(text, "layer4")[1:5] == ["Sequential", "frozen", "15", f"{RESNET18_LAYER4:,}"]
    assert cells(text, "(model)")[1:5] == ["ResNet", "mixed", "62", f"{RESNET18_TOTAL:,}"]
    assert cells(text, "fc")[-1] == "5: unfreeze fc"
    assert cells(text, "layer4")[-1] == "4: freeze *"
    # Uniform modules are not expanded: nothing below layer4 is listed.
    assert tree_labels(text) == [
        "(model)",
        "conv1",
        "bn1",
        "layer1",
        "layer2",
        "layer3",
        "layer4",
        "fc",
    ]
    share = f"{100 * RESNET18_FC / RESNET18_TOTAL:.1f}%"
    assert cells(text, "trainable") == ["trainable", "2 tensors", f"{RESNET18_FC:,} params", share]
    frozen = RESNET18_TOTAL - RESNET18_FC
    assert cells(text, "frozen")[:3] == ["frozen", "60 tensors", f"{frozen:,} params"]


def test_bert_last2_collapses_identical_blocks(bert):
    view = PolicyView(policy_file("bert_last2.freeze"), bert)
    text = format_text(view, view.moment())
    frozen = cells(text, "0..9")
    assert frozen[1:5] == [
        "10 x BertLayer",
        "frozen",
        str(10 * BERT_LAYER_TENSORS),
        f"{10 * BERT_LAYER:,}",
    ]
    trained = cells(text, "10..11")
    assert trained[1:5] == [
        "2 x BertLayer",
        "trainable",
        str(2 * BERT_LAYER_TENSORS),
        f"{2 * BERT_LAYER:,}",
    ]
    assert cells(text, "pooler")[2] == "trainable"
    assert cells(text, "embeddings")[2] == "frozen"
    # Blocks 9 and 10 differ, so they are never folded into one run.
    labels = tree_labels(text)
    assert "0..11" not in labels and "9..10" not in labels
    assert labels.count("0..9") == 1 and labels.count("10..11") == 1


def test_all_and_depth(bert):
    view = PolicyView(policy_file("bert_last2.freeze"), bert)
    moment = view.moment()
    shallow = tree_labels(format_text(view, moment, depth=1))
    assert shallow == ["(model)", "embeddings", "encoder", "pooler"]
    expanded = tree_labels(format_text(view, moment, expand_all=True, depth=2))
    assert "word_embeddings" in expanded and "layer" in expanded
    assert "0..9" not in expanded  # depth 3
    full = tree_labels(format_text(view, moment, expand_all=True))
    assert "weight" in full and "query" in full


def test_ascii_tree(resnet18):
    view = PolicyView(policy_file("resnet_head_only.freeze"), resnet18)
    text = format_text(view, view.moment(), ascii=True)
    assert text.isascii()
    assert "`- fc" in text and "|- layer4" in text


def test_lr_and_decay_columns_and_mixed(mlp):
    policy = parse("freeze *\nunfreeze fc2, out\nlr 0.1x for fc2\ndecay 0 for bias\n", "p.freeze")
    view = PolicyView(policy, mlp)
    text = format_text(view, view.moment())
    header = text.split("\n\n")[1].splitlines()[0].split()
    assert header == [
        "module",
        "class",
        "state",
        "tensors",
        "params",
        "lr",
        "decay",
        "decided",
        "by",
    ]
    fc2 = cells(text, "fc2")
    assert fc2[2] == "trainable" and fc2[5] == "0.1x" and fc2[6] == "mixed"
    # fc2's weight and bias differ in decay, so fc2 is expanded into its parameters.
    bias_rows = [ln for ln in text.splitlines() if re.search(r"─ bias\s", ln)]
    assert len(bias_rows) == 3
    assert all(re.split(r"\s{2,}", TREE.sub("", r))[6] == "0" for r in bias_rows)


def test_schedule_of_mlp_two_phase(mlp):
    view = PolicyView(policy_file("mlp_two_phase.freeze"), mlp)
    start, later = view.moment(0, 0), view.moment(5, 0)
    assert cells(format_text(view, start), "out")[2] == "trainable"
    assert cells(format_text(view, start), "fc1")[2] == "frozen"
    assert cells(format_text(view, view.moment(4, 0)), "fc2")[2] == "frozen"
    assert cells(format_text(view, later), "(model)")[2] == "trainable"

    events = view.events()
    assert [(e.times, e.moment, e.before) for e in events] == [([("epoch", 5)], (5, 0), (0, 0))]
    text = format_text(view, start)
    schedule = text.split("schedule\n")[1]
    assert "epoch 5: unfreeze * at epoch 5 (line 6)" in schedule
    assert re.search(r"fc1, fc2\s+frozen -> trainable\s+4 tensors, 3,136 params", schedule)
    assert (64 * 32 + 32) + (32 * 32 + 32) == 3136

    data = to_json(view, start)
    (event,) = data["events"]
    assert event["times"] == [{"clock": "epoch", "at": 5}]
    (change,) = event["changes"]
    assert change["paths"] == ["fc1", "fc2"]
    assert change["parameters"] == ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]
    assert change["from"]["state"] == "frozen" and change["to"]["state"] == "trainable"
    assert event["counts"]["trainable"] == {"tensors": 6, "elements": 3466}


def test_schedule_with_steps_per_epoch_merges_the_clocks(mlp):
    policy = parse(
        "freeze *\nunfreeze out at step 250\nunfreeze fc2 at epoch 2\nunfreeze * at epoch 5\n"
    )
    separate = PolicyView(policy, mlp).events()
    # Without steps per epoch each clock is its own timeline from the start.
    assert [(e.label, e.before) for e in separate] == [
        ("epoch 2", (0, 0)),
        ("epoch 5", (2, 0)),
        ("step 250", (0, 0)),
    ]
    view = PolicyView(policy, mlp, steps_per_epoch=100)
    merged = view.events()
    assert [(e.label, e.moment) for e in merged] == [
        ("epoch 2 (step 200)", (2, 200)),
        ("step 250 (epoch 2)", (2, 250)),
        ("epoch 5 (step 500)", (5, 500)),
    ]
    text = format_text(view, view.moment(2, 260))
    assert cells(text, "fc2")[2] == "trainable" and cells(text, "out")[2] == "trainable"
    assert cells(text, "fc1")[2] == "frozen"


def test_tied_conflict_shows_as_conflict():
    layout = ModelLayout(
        names=("emb.weight", "head.weight", "body.weight"),
        shapes={"emb.weight": (10, 4), "head.weight": (10, 4), "body.weight": (4, 4)},
        module_types={},
        module_classes={"": "Toy", "emb": "Embedding", "head": "Linear", "body": "Linear"},
        tied=[["emb.weight", "head.weight"]],
    )
    agree = PolicyView(parse("freeze emb"), layout)
    text = format_text(agree, agree.moment())
    # An untouched name defers to the decided one: one frozen tensor, counted once.
    assert cells(text, "(model)")[3:5] == ["2", "56"]
    assert re.search(r"frozen\s+1 tensor\s+40 params", text)

    split = PolicyView(parse("freeze *\nunfreeze head at epoch 1", "t.freeze"), layout)
    later = split.moment(1, 0)
    assert cells(format_text(split, later), "head")[2] == "conflict"
    names = ModelNames("toy", layout.names, layout.module_types, layout.tied)
    (diag,) = check_model(split.policy, names)
    assert diag.code == "FP205" and diag.line == 2 and "from epoch 1" in diag.message


def test_json_report(resnet18):
    view = PolicyView(policy_file("resnet_head_only.freeze"), resnet18, model_label="r18")
    data = to_json(view, view.moment(), depth=1)
    assert data["version"] == 1
    assert data["model"] == {
        "spec": "r18",
        "class": "ResNet",
        "tensors": 62,
        "elements": RESNET18_TOTAL,
    }
    assert data["counts"]["trainable"] == {"tensors": 2, "elements": RESNET18_FC}
    assert max(m["depth"] for m in data["modules"]) == 1
    fc = next(m for m in data["modules"] if m["path"] == "fc")
    assert fc["state"] == "trainable" and fc["lines"] == [5]
    params = {p["name"]: p for p in data["parameters"]}
    assert len(params) == 62
    assert params["fc.bias"]["state"] == "trainable"
    assert params["fc.bias"]["decided_by"]["trainable"]["statement"] == "unfreeze fc"
    assert params["layer4.1.conv2.weight"]["shape"] == [512, 512, 3, 3]
    assert params["layer4.1.conv2.weight"]["state"] == "frozen"
    assert sum(p["elements"] for p in data["parameters"]) == RESNET18_TOTAL
    assert [s["tensors"] for s in data["statements"]] == [62, 2]
    assert data["events"] == [] and data["problems"] == []
    json.dumps(data)  # serializable as is


# --- the CLI, in process ------------------------------------------------------------------


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_show_json(capsys):
    code, out, _ = run(
        capsys,
        "show",
        str(POLICIES / "mlp_two_phase.freeze"),
        "--model",
        "tests.model_factories:mlp",
        "--epoch",
        "5",
        "--format",
        "json",
    )
    assert code == 0
    data = json.loads(out)
    assert data["moment"] == {"epoch": 5, "step": 0, "steps_per_epoch": None}
    assert data["counts"]["frozen"]["tensors"] == 0


def test_cli_show_steps_per_epoch_fills_in_the_other_clock(capsys):
    args = [
        "show",
        str(POLICIES / "mlp_two_phase.freeze"),
        "--model",
        "tests.model_factories:mlp",
        "--format",
        "json",
        "--steps-per-epoch",
        "10",
    ]
    code, out, _ = run(capsys, *args, "--step", "57")
    assert code == 0 and json.loads(out)["moment"]["epoch"] == 5
    code, out, _ = run(capsys, *args, "--epoch", "3")
    assert code == 0 and json.loads(out)["moment"]["step"] == 30
    code, _, err = run(capsys, *args, "--epoch", "3", "--step", "57")
    assert code == 2 and "is in epoch 5" in err


def test_cli_show_errors(capsys, tmp_path):
    bad = tmp_path / "bad.freeze"
    bad.write_text("frezee *\n")
    code, _, err = run(capsys, "show", str(bad), "--model", "tests.model_factories:mlp")
    assert code == 1 and "FP101" in err
    code, _, err = run(
        capsys, "show", str(tmp_path / "missing.freeze"), "--model", "tests.model_factories:mlp"
    )
    assert code == 2 and "FP001" in err
    good = str(POLICIES / "resnet_head_only.freeze")
    code, _, err = run(capsys, "show", good, "--model", "torchvision:resnet81")
    assert code == 2
    assert len(err.strip().splitlines()) == 1
    assert "did you mean `resnet18`" in err and "Traceback" not in err


def test_cli_lint_model(capsys):
    bert_last2 = str(POLICIES / "bert_last2.freeze")
    code, out, _ = run(capsys, "lint", "--model", "transformers:bert-base-uncased", bert_last2)
    assert code == 1 and "FP201" in out and "classifier" in out
    code, out, _ = run(
        capsys,
        "lint",
        "--model",
        "transformers:bert-base-uncased",
        "--model",
        "transformers:bert-base-uncased-cls",
        bert_last2,
    )
    assert code == 0 and out == ""
    # `show` reports what lint would, below the tree, and still succeeds.
    code, out, _ = run(capsys, "show", bert_last2, "--model", "transformers:bert-base-uncased")
    assert code == 0
    assert "warning: selector `classifier` matches no parameter [FP201]" in out


def test_cli_lint_model_resolves_type_selectors(capsys, tmp_path):
    policy = tmp_path / "types.freeze"
    policy.write_text("decay 0 for type:BatchNorm2d\nfreeze type:LayerNorm\n")
    code, out, _ = run(
        capsys, "lint", "--format", "json", "--model", "torchvision:resnet18", str(policy)
    )
    data = json.loads(out)
    assert code == 1
    # BatchNorm2d is found in resnet18 (no FP203 note), LayerNorm is not.
    assert [(d["code"], d["line"]) for d in data["diagnostics"]] == [("FP201", 2)]


def test_cli_lint_model_tied_conflict(capsys, tmp_path):
    policy = tmp_path / "tied.freeze"
    policy.write_text("freeze *\nunfreeze lm_head at epoch 2\n")
    code, out, _ = run(capsys, "lint", "--model", "transformers:gpt2", str(policy))
    assert code == 1
    assert "FP205" in out and "`transformer.wte.weight` and `lm_head.weight`" in out
    policy.write_text("freeze *\nunfreeze lm_head, transformer.wte at epoch 2\n")
    code, out, _ = run(capsys, "lint", "--model", "transformers:gpt2", str(policy))
    assert code == 0, out


def test_cli_lint_names_and_model_are_exclusive(capsys):
    with pytest.raises(SystemExit) as info:
        main(["lint", "--names", "x.txt", "--model", "torchvision:resnet18", "p.freeze"])
    assert info.value.code == 2
    assert "not allowed with" in capsys.readouterr().err


# --- the CLI as a real subprocess ---------------------------------------------------------


def cli(*argv: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("FREEZEPOLICY_DEBUG", None)
    return subprocess.run(
        [sys.executable, "-m", "freezepolicy", *argv],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_subprocess_show():
    done = cli("show", "policies/resnet_head_only.freeze", "--model", "torchvision:resnet18")
    assert done.returncode == 0, done.stderr
    assert re.search(r"fc\s+Linear\s+trainable\s+2\s+513,000", done.stdout)
    assert done.stderr == ""


@pytest.mark.parametrize("command", ["show", "lint"])
def test_subprocess_spec_typo_is_one_line_and_exit_2(command):
    # A typo is one line naming the closest model types and named specs.
    spec = "transformers:bert-base-uncasd"
    args = ["--model", spec]
    argv = (
        [command, "policies/bert_last2.freeze", *args]
        if command == "show"
        else [command, *args, "policies/bert_last2.freeze"]
    )
    done = cli(*argv)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert done.stderr.strip() == (
        f"freezepolicy {command}: error: transformers knows no model type or architecture "
        "`bert-base-uncasd` (model types such as bert, t5, mistral, vit, whisper; named specs "
        "such as bert-base-uncased, llama-3-70b; `package.module:factory` for any other model); "
        "did you mean `transformers:bert-base-uncased`, `transformers:bert-base-cased`, "
        "`transformers:bert-base-uncased-cls`?"
    )
