"""The `potstill` command: distill, sample, eval, demo and data."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from potstill.data.commands import add_data_commands


def _distill(args) -> None:
    from potstill.core.config import load_config
    from potstill.runs import default_run_dir, distill

    config = load_config(args.config, args.set)
    run_dir = Path(args.out) if args.out else default_run_dir(args.config)
    distiller = distill(config, run_dir, args.resume)
    print(json.dumps(json.loads((run_dir / "report.json").read_text()), indent=2))
    print(f"run directory: {distiller.run_dir}")


@torch.no_grad()
def _sample(args) -> None:
    from potstill.core.tensors import to_device
    from potstill.runs import open_run

    distiller = open_run(args.run)
    generator = torch.Generator().manual_seed(args.seed)
    chunks, conds = [], []
    for start in range(0, args.n, args.batch):
        noise, cond = distiller.draw_inputs(min(args.batch, args.n - start), generator)
        chunks.append(distiller.ema.model.sample(noise, cond).float().cpu())
        conds.append(to_device(cond, "cpu"))
    samples = torch.cat(chunks)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".png":
        cond = torch.cat(conds) if conds[0] is not None else None
        distiller.modality.save_samples(samples, cond, out)
    elif out.suffix == ".pt":
        torch.save(samples, out)
    else:
        raise SystemExit(f"--out {out}: use a .pt file (tensor [N, ...]) or a .png grid")
    print(f"wrote {args.n} samples of shape {tuple(samples.shape[1:])} to {out}")


def _eval(args) -> None:
    from potstill.runs import open_run

    distiller = open_run(args.run)
    if args.n:
        distiller.config.eval.n_samples = args.n
    print(json.dumps(distiller.evaluate(), indent=2))


def _demo(args) -> None:
    from potstill.demo import run_demo

    run_demo(Path(args.out), steps=args.steps)


def add_distill_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments shared by `potstill distill` and the DeepSpeed launch module."""
    parser.add_argument("config")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", nargs="+",
                        help="override any config key; values are YAML (lists work)")
    parser.add_argument("--out", help="run directory (default: runs/<config>-<time>)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")


def flatten_overrides(args: argparse.Namespace) -> None:
    args.set = [item for group in args.set for item in group]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="potstill", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("distill", help="distil a teacher into a student from a YAML config")
    add_distill_arguments(p)
    p.set_defaults(func=_distill)

    p = sub.add_parser("sample", help="draw samples from a run's EMA student")
    p.add_argument("run", help="run directory or checkpoint folder")
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--out", required=True, help="FILE.pt (tensor [N, ...]) or FILE.png (grid)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=1000)
    p.set_defaults(func=_sample)

    p = sub.add_parser("eval", help="score a run's EMA student and rewrite its report.json")
    p.add_argument("run")
    p.add_argument("--n", type=int, default=0, help="samples to score (default: the config's eval.n_samples)")
    p.set_defaults(func=_eval)

    p = sub.add_parser("demo", help="distil the embedded digits teacher into a one-step student")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--steps", type=int, default=None, help="override the demo's number of steps")
    p.set_defaults(func=_demo)

    add_data_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if getattr(args, "set", None):
        flatten_overrides(args)
    try:
        args.func(args)
    except (ValueError, FileNotFoundError, FileExistsError, KeyError) as error:
        print(f"potstill: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
