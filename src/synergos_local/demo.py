"""`make demo`: the deployment guide's flow on this machine, basic mode.

Prepares two parties' data (palmerpenguins split by island), starts a TTP and two Workers on
the guide's ports, each on its own loopback address, runs the guide's Phase 1-3 script through
the Driver, prints the validation results and where outputs went, and stops everything.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

from . import datasets, topology
from .topology import GUIDE_ADDRESSES as ADDR

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = {
    "basic": ("synergos_basic.py", datasets.prepare_penguins, "palmerpenguins split by island"),
    "images": ("synergos_images.py", datasets.prepare_digits_images, "digits as 32x32 PNG files"),
    "text": ("synergos_text.py", datasets.prepare_text_reviews, "generated reviews"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workspace", type=Path, default=Path.cwd() / "demo_workspace")
    parser.add_argument("--keep", action="store_true", help="keep the previous workspace")
    parser.add_argument("--example", choices=sorted(EXAMPLES), default="basic",
                        help="basic: the guide's tabular flow (penguins); images: a CNN on digits; text: reviews")
    args = parser.parse_args(argv)
    workspace: Path = args.workspace.resolve()
    if workspace.exists() and not args.keep:
        shutil.rmtree(workspace)
    logs = workspace / "logs"
    script_name, prepare, what = EXAMPLES[args.example]
    print(f"[demo] preparing two parties' data ({what}) in {workspace}")
    roots = prepare(workspace)
    started = time.monotonic()
    with topology.Topology() as topo:
        topo.add(topology.ttp("ttp", ADDR["ttp"], 5000, workspace / "ttp", logs))
        for name in ("worker_1", "worker_2"):
            topo.add(topology.worker(name, ADDR[name], 5000, 8020, roots[name], workspace / name / "outputs", logs))
        print(f"[demo] starting TTP on {ADDR['ttp']}:5000 and Workers on {ADDR['worker_1']} and "
              f"{ADDR['worker_2']} (REST 5000, federation 8020)")
        topo.wait()
        print(f"[demo] running examples/{script_name} through the Driver")
        script = [sys.executable, str(ROOT / "examples" / script_name), "--host", ADDR["ttp"], "--port",
                  "5000", "--worker", ADDR["worker_1"], "--worker", ADDR["worker_2"]]
        code = subprocess.call(script, stdin=subprocess.DEVNULL)
        if code != 0:
            print(f"[demo] the example failed (exit {code}); service logs are in {logs}")
            for service in topo.services:
                print(f"--- {service.name} ---\n{service.tail(15)}")
            return code
    print(f"\n[demo] finished in {time.monotonic() - started:.0f} s; all services stopped.")
    print(f"[demo] TTP outputs (global and local models, loss histories, checkpoints): {workspace / 'ttp' / 'outputs'}")
    print(f"[demo] each Worker's predictions and statistics: {workspace}/worker_*/outputs")
    print(f"[demo] service logs: {logs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
