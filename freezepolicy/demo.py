"""`make demo`: the main job. The training experiment arrives with the schedules issue."""

from __future__ import annotations


def main() -> int:
    print("no demo yet: the training experiment on scikit-learn digits is still to come.")
    print("Try: .venv/bin/freezepolicy lint policies/*.freeze")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
