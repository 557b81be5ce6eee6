"""The `jssl` console script.

    jssl train --config=experiments/simclr.py:fashion_mnist --workdir=runs/simclr [--config.x=..]
    jssl eval  --config=experiments/simclr.py:fashion_mnist --workdir=runs/simclr
    jssl results [--add WORKDIR] [--runs docs/results] [--check]
    jssl demo
    jssl generate --workdir=runs/gpt [--prompt=TEXT ...] [--temperature=0.8] [--top_k=40]
    jssl neighbours --workdir=runs/word2vec --word=love [--word=...] [--k=10]

``train`` trains (resuming from the workdir's checkpoint if any) and then evaluates;
``eval`` evaluates the workdir's newest checkpoint without training (its ``results.json``
keeps the training run's command, time and date, adds ``eval_*`` fields, and reports the
checkpoint's step). Both take every flag
of ``python -m jssl.main`` (absl + ``ml_collections.config_flags``, multi-host flags too).
``results`` regenerates ``docs/RESULTS.md`` and its plot from the recorded runs.
"""
from __future__ import annotations

import argparse
import sys

_MODES = {"train": "train_eval", "eval": "eval"}


def main(argv: list[str] | None = None) -> int:
    argv_from_command_line = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="jssl", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_ in (("train", "train a config, then evaluate it (flags of jssl.main)"),
                        ("eval", "evaluate a workdir's newest checkpoint (flags of jssl.main)")):
        sub.add_parser(name, help=help_, add_help=False)
    res = sub.add_parser("results", help="regenerate docs/RESULTS.md from recorded runs")
    res.add_argument("--runs", default=None, help="folder of recorded results JSON")
    res.add_argument("--check", action="store_true", help="fail if RESULTS.md is stale")
    res.add_argument("--add", action="append", default=[], metavar="WORKDIR",
                     help="record a finished run's results.json first (repeatable)")
    sub.add_parser("demo", help="tour of the sharding-aware losses on 8 simulated CPU devices")
    gen = sub.add_parser("generate", help="sample text from a GPT run's newest checkpoint")
    gen.add_argument("--workdir", required=True, help="a GPT run (its config.json is used)")
    gen.add_argument("--prompt", action="append", default=None, help="repeatable; default ''")
    gen.add_argument("--max_new_tokens", type=int, default=48)
    gen.add_argument("--temperature", type=float, default=0.8, help="<= 0: greedy")
    gen.add_argument("--top_k", type=int, default=40, help="0: no top-k cut")
    gen.add_argument("--num_samples", type=int, default=3)
    gen.add_argument("--seed", type=int, default=0)
    nb = sub.add_parser("neighbours", help="nearest pieces of words in a word2vec run")
    nb.add_argument("--workdir", required=True, help="a word2vec run (tokenizer + checkpoint)")
    nb.add_argument("--word", action="append", required=True, help="repeatable")
    nb.add_argument("--k", type=int, default=10)
    args, rest = parser.parse_known_args(argv)
    if args.command in _MODES:
        if any(a == "--mode" or a.startswith("--mode=") for a in rest):
            parser.error(f"`jssl {args.command}` sets --mode itself; drop --mode")
        if argv_from_command_line:  # on CPU: restart once with tcmalloc (jssl.cpu_malloc)
            from jssl.cpu_malloc import maybe_reexec

            maybe_reexec()
        from absl import app

        from jssl import main as jssl_main

        app.run(jssl_main.main, argv=["jssl", *rest, f"--mode={_MODES[args.command]}"])
        return 0
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command == "generate":
        from jssl.methods.gpt import generate_text

        for samples in generate_text(args.workdir, args.prompt or [""],
                                     max_new_tokens=args.max_new_tokens,
                                     temperature=args.temperature, top_k=args.top_k or None,
                                     num_samples=args.num_samples, seed=args.seed):
            print("\n---\n".join(samples), end="\n\n")
        return 0
    if args.command == "neighbours":
        from jssl.methods.word2vec import neighbours

        for word, pieces, near in neighbours(args.workdir, args.word, args.k):
            print(f"{word} ({' '.join(pieces)}): " + ", ".join(f"{p} {s:.3f}" for p, s in near))
        return 0
    if args.command == "results":
        from jssl.evaluate import results_doc

        return results_doc.main(args.runs, check=args.check, add=args.add)
    from jssl import demo

    demo.main()
    return 0


if __name__ == "__main__":
    sys.exit(main())
