"""Multi-rank distillation under DeepSpeed's launcher:

    deepspeed --num_gpus N --module potstill.launch CONFIG [--set key=value ...] [--out DIR] [--resume]

Every rank builds the same run from the config (whose `engine.kind` must be `deepspeed` when N > 1),
trains its share of each global batch and takes part in checkpoints; rank 0 writes logs, samples and
the report, and prints the report with the teacher's per-rank parameter share."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from potstill.cli import add_distill_arguments, flatten_overrides

    parser = argparse.ArgumentParser(prog="python -m potstill.launch", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_distill_arguments(parser)
    parser.add_argument("--local_rank", type=int, default=0, help="set by DeepSpeed's launcher")
    args = parser.parse_args(argv)
    flatten_overrides(args)
    return args


def run(args: argparse.Namespace) -> None:
    from potstill.core.config import load_config
    from potstill.runs import default_run_dir, distill

    config = load_config(args.config, args.set)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and config.engine.kind != "deepspeed":
        raise ValueError(f"engine.kind: {config.engine.kind!r} runs one process but this launch has {world} ranks; "
                         "set engine.kind=deepspeed (or launch one process)")
    out = Path(args.out) if args.out else default_run_dir(args.config)
    distiller = distill(config, out, args.resume, args.allow_change)
    engine = distiller.engine
    for name, model in (("teacher", distiller.teacher), ("text encoder", distiller.text_encoder)):
        if model is not None:
            local, total = engine.parameter_share(model)
            print(f"rank {engine.rank}/{engine.world_size}: {name} parameters held {local} of {total}"
                  f" ({100 * local / max(total, 1):.1f}%)", flush=True)
    engine.barrier()
    if engine.is_main:
        print(json.dumps(json.loads((distiller.run_dir / "report.json").read_text()), indent=2))
        print(f"run directory: {distiller.run_dir}")
    engine.close()


def main(argv: list[str] | None = None) -> None:
    from potstill.cli import run_reporting_errors

    args = parse_args(argv)
    run_reporting_errors("potstill.launch", lambda: run(args))


if __name__ == "__main__":
    main()
