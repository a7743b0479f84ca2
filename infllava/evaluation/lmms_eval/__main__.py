"""`python -m infllava.evaluation.lmms_eval OUT [--split test]`: write OUT/hrvqa.yaml, lmms-eval's `hrvqa`
task over the questions `infllava hrvqa OUT` wrote (see `write_task`), and print how to run it."""

from __future__ import annotations

import argparse
import sys

from . import write_task


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m infllava.evaluation.lmms_eval",
                                description="Write OUT/hrvqa.yaml: lmms-eval's hrvqa task over a folder written "
                                            "by `infllava hrvqa OUT`.")
    p.add_argument("out", help="the folder `infllava hrvqa` wrote (SPLIT.jsonl and images/)")
    p.add_argument("--split", default="test", help="the split to evaluate (default: test)")
    args = p.parse_args(argv)
    try:
        path = write_task(args.out, args.split)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {path}\nrun: lmms-eval --model infllava --model_args pretrained=inf-llava-mini "
          f"--tasks hrvqa --include_path {path.parent} --batch_size 8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
