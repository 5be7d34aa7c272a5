"""Never silent: problems found while applying a policy that are not errors are Python warnings
(`freezepolicy.PolicyWarning`), shown once per policy and model, at the user's own line
(issue 11, item 6)."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

import freezepolicy as fp
from freezepolicy.lang.errors import CODES

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TYPO = "freeze *\nunfreeze classifer\n"


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Linear(3, 4)
        self.classifier = nn.Linear(4, 2)


def policy_warnings(record: list[warnings.WarningMessage]) -> list[warnings.WarningMessage]:
    return [w for w in record if issubclass(w.category, fp.PolicyWarning)]


def test_a_typo_in_a_selector_is_a_warning_with_its_place_and_a_suggestion() -> None:
    model = Net()
    policy = fp.parse(TYPO, "head.freeze")
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        report = fp.apply_policy(model, policy)
    (w,) = policy_warnings(record)
    assert isinstance(w.message, fp.PolicyWarning) and w.message.code == "FP201"
    text = str(w.message)
    assert text.startswith("head.freeze:2:10: warning: selector `classifer` matches no parameter")
    assert "did you mean `classifier`?" in text
    assert w.filename == __file__  # the line that called apply_policy
    assert report.warnings == (text,)  # still in the report too
    # Once per policy and model: later applies (every step) stay quiet.
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        fp.apply_policy(model, policy, epoch=3)
        fp.apply_policy(model, fp.parse(TYPO, "head.freeze"), epoch=4)  # the same policy
    assert policy_warnings(record) == []
    # Another model is told again.
    with pytest.warns(fp.PolicyWarning, match="classifer"):
        fp.apply_policy(Net(), policy)


def test_strict_stays_the_error_form() -> None:
    model = Net()
    with pytest.raises(fp.PolicyResolveError, match="FP201"):
        fp.apply_policy(model, fp.parse(TYPO), strict=True)
    assert all(p.requires_grad for p in model.parameters())


def test_dead_and_blocked_statements_are_warnings() -> None:
    policy = fp.parse("freeze encoder\nfreeze *\nunfreeze *\nlr 0 for classifier\n"
                      "unfreeze classifier at epoch 2\n")
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        fp.apply_policy(Net(), policy)
    codes = sorted(w.message.code for w in policy_warnings(record))
    assert codes == ["FP202", "FP202", "FP204"], [str(w.message) for w in record]


def test_param_groups_and_freeze_scheduler_warn_once_between_them() -> None:
    model = Net()
    policy = fp.parse(TYPO, "head.freeze")
    with pytest.warns(fp.PolicyWarning, match="classifer") as record:
        groups = fp.param_groups(model, policy, lr=0.1)
    assert [w.filename for w in record] == [__file__]
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        fs = fp.FreezeScheduler(model, policy, torch.optim.SGD(groups))
        fs.start_epoch(1)
    assert policy_warnings(record) == []
    with pytest.warns(fp.PolicyWarning, match="classifer") as record:
        fp.FreezeScheduler(Net(), policy)  # a new model: told, at this line
    assert [w.filename for w in record] == [__file__]


def test_optimizer_problems_are_warnings() -> None:
    model = Net()
    opt = torch.optim.Rprop([model.encoder.weight], lr=0.01)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        fp.apply_policy(model, fp.parse("unfreeze *\ndecay 0 for bias"), opt)
    codes = sorted(w.message.code for w in policy_warnings(record))
    assert codes == ["FP211", "FP212"]
    assert all(w.filename == __file__ for w in record)


def test_warnings_can_be_filtered_by_category() -> None:
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        warnings.filterwarnings("ignore", category=fp.PolicyWarning)
        fp.apply_policy(Net(), fp.parse(TYPO))
    assert record == []
    assert issubclass(fp.PolicyWarning, UserWarning)


def test_every_code_has_a_row_in_docs_errors_md() -> None:
    text = (Path(__file__).parent.parent / "docs" / "errors.md").read_text(encoding="utf-8")
    missing = [code for code, name in CODES.items() if f"| {code} | {name} |" not in text]
    assert missing == []
