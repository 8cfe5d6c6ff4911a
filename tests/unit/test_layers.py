"""The layers show in the imports: the core carries no web framework and no database."""

from __future__ import annotations

import subprocess
import sys

CORE_MODULES = [
    "aggregation",
    "alignment",
    "checkpoints",
    "data",
    "errors",
    "federation",
    "gkt",
    "jobs",
    "metrics",
    "model",
    "preprocessing",
    "schemas",
    "settings",
    "training",
    "wire",
]


def test_importing_the_core_pulls_in_no_fastapi_and_no_sqlalchemy() -> None:
    code = (
        "import sys\n"
        + "".join(f"import synergos_core.{m}\n" for m in CORE_MODULES)
        + "print(sorted({m.split('.')[0] for m in sys.modules} & {'fastapi', 'starlette', 'sqlalchemy', 'uvicorn'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_driver_imports_neither_torch_nor_the_services() -> None:
    code = (
        "import sys, synergos\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'ray', 'pika', 'fastapi', 'sqlalchemy', "
        "'synergos_core', 'synergos_contract', 'synergos_ttp', 'synergos_worker', 'synergos_director'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
