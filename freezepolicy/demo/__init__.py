"""The demos (`make demo`, `make demo-digits`): applications of the public API, as a user would
write them.

They import `freezepolicy` like any user and nothing else of the package is allowed to import them.
`python -m freezepolicy.demo` runs the main one (reviews.py); docs/demo.md describes both.
"""

from pathlib import Path

#: The policies/ folder of the checkout the demos live in: each run's policy is a file there.
POLICY_DIR = Path(__file__).resolve().parents[2] / "policies"
