import os
from pathlib import Path

import pytest

os.environ.setdefault("SYNERGOS_TORCH_THREADS", "1")

TESTS = Path(__file__).resolve().parent
# Markers by directory (declared in pyproject.toml): `pytest -m "not integration"` runs tests/unit only.
MARKERS_BY_DIR = {
    "integration": ("integration",),
    "rehearsal": ("integration",),
    "e2e": ("e2e", "integration"),
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        try:
            top = item.path.resolve().relative_to(TESTS).parts[0]
        except (ValueError, IndexError):
            continue
        for name in MARKERS_BY_DIR.get(top, ()):
            item.add_marker(getattr(pytest.mark, name))
