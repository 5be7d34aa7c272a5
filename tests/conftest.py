"""Shared fixtures: parameter-name lists of real architectures, read from text files.

The lists were dumped once from torchvision's resnet18 and transformers' BertModel /
BertForSequenceClassification (bert-base config). Keeping them as text keeps these fixtures
torch-free, so the core tests run without torch.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

HERE = Path(__file__).parent

# The model layout cache (freezepolicy.cli.layout_cache) of the whole run goes to a fresh temporary
# directory, never the user's ~/.cache. Set here, at import, rather than in a fixture: test
# modules copy os.environ at import for the subprocesses they start (test_resume's ENV), and
# those must see it too.
_LAYOUT_CACHE = tempfile.mkdtemp(prefix="freezepolicy-test-cache-")
os.environ["FREEZEPOLICY_CACHE_DIR"] = _LAYOUT_CACHE
atexit.register(shutil.rmtree, _LAYOUT_CACHE, ignore_errors=True)


def read_names(filename: str) -> list[str]:
    """The non-empty lines of a name list in tests/, in file order."""
    text = (HERE / filename).read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


@pytest.fixture(scope="session")
def resnet18_names() -> list[str]:
    """Parameter names of torchvision's resnet18 (62 tensors)."""
    return read_names("resnet18_names.txt")


@pytest.fixture(scope="session")
def bert_names() -> list[str]:
    """Parameter names of BertModel with the bert-base config (12 encoder blocks)."""
    return read_names("bert_base_names.txt")


@pytest.fixture(scope="session")
def bert_cls_names() -> list[str]:
    """Parameter names of BertForSequenceClassification (bert-base): `bert.` prefix + classifier."""
    return read_names("bert_base_seqcls_names.txt")


@pytest.fixture(scope="module")
def one_torch_thread():
    """Run a test module's torch work on one thread, and restore the setting after it.

    The models in the tests are tiny: on two threads that contend for a busy 2-core machine a
    step can be 10-30x slower than on one. Modules opt in with
    `pytestmark = pytest.mark.usefixtures("one_torch_thread")`; torch is imported here only
    then, so this conftest stays torch-free for the tests that must run without it.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
