"""`python -m benchmarks [--quick] [--json OUT] [--only NAME ...]`: run the suite, write JSON and PNG charts.

Results are ratios measured in one run on one machine; absolute times are only meaningful on a GPU.
"""

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from . import capture, charts, projector, quantization, render, ttft

SECTIONS = {"ttft": ttft, "capture": capture, "projector": projector, "quantization": quantization, "render": render}
RESULTS = Path(__file__).resolve().parent / "results"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer repeats and sizes (under 10 minutes on 2 CPU cores)")
    parser.add_argument("--json", type=Path, default=None, help="where to write the results (default benchmarks/results/)")
    parser.add_argument("--only", nargs="*", choices=sorted(SECTIONS), default=None)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    out = {"machine": {"platform": platform.platform(), "processor": platform.processor(), "threads": torch.get_num_threads(),
                       "torch": torch.__version__, "cuda": torch.cuda.is_available()},
           "quick": args.quick, "sections": {}}  # fmt: skip
    started = time.time()
    for name in args.only or SECTIONS:
        print(f"[{name}]", flush=True)
        section_start = time.time()
        result = SECTIONS[name].run(quick=args.quick)
        result["seconds"] = round(time.time() - section_start, 1)
        out["sections"][name] = result
        out.update(result["summary"])
        print(f"  {json.dumps(result['summary'])}", flush=True)
    out["seconds"] = round(time.time() - started, 1)
    path = args.json or RESULTS / ("quick.json" if args.quick else "cpu.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1) + "\n")
    for chart in charts.draw(out, path.parent, prefix=path.stem):
        print(f"chart: {chart}")
    print(f"results: {path}")


if __name__ == "__main__":
    main()
