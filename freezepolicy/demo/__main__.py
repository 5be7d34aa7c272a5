"""`python -m freezepolicy.demo`: the main demo (reviews.py); `python -m freezepolicy.demo.digits`
runs the smaller digits demo."""

import os

# Set before torch is imported (reviews.py imports it): with the default, OpenMP threads spin
# while they wait, and on cores shared with other work that makes torch several times slower.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .reviews import main  # noqa: E402

raise SystemExit(main())
