"""The command line shared by the one-process A/B benchmarks (gelu, text_ops,
conv_materialise): ``--only`` presets, ``--repeats`` (>= 5), ``--out`` JSON path."""
from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path


def parse(doc: str, presets: Sequence[str], script: str,
          repeats: int = 15) -> argparse.Namespace:
    """Parse ``sys.argv`` for the benchmark whose module docstring is ``doc`` and whose file
    is ``script`` (its JSON goes next to it by default)."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--only", default=",".join(presets), help="comma-separated name:preset")
    parser.add_argument("--repeats", type=int, default=repeats)
    parser.add_argument("--out", default=str(Path(script).with_suffix(".json")))
    args = parser.parse_args()
    if args.repeats < 5:
        parser.error(f"need --repeats >= 5, got {args.repeats}")
    return args
