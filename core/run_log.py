"""Run logs: one JSON line per logged step and TensorBoard scalars. On resume both are cut back to
the checkpoint's step, so a resumed run's log reads as if it never stopped."""

from __future__ import annotations

import json
from pathlib import Path

from torch.utils.tensorboard import SummaryWriter


def drop_records_after(path: Path, step: int) -> None:
    """Keep a log's records up to `step`: a resumed run writes the later ones again."""
    if path.exists():
        kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
        path.write_text("".join(line + "\n" for line in kept))


def append_record(path: Path, record: dict) -> None:
    """One JSON line at the end of a log that is written rarely (the periodic evaluations)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as file:
        file.write(json.dumps(record) + "\n")


class RunLog:
    def __init__(self, folder: Path, resume_step: int = 0, tensorboard: bool = True) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / "metrics.jsonl"
        drop_records_after(self.path, resume_step)
        self.file = open(self.path, "a")  # noqa: SIM115  (held open for the run, closed by close())
        self.writer = SummaryWriter(str(folder / "tb"), purge_step=resume_step + 1) if tensorboard else None

    def write(self, step: int, metrics: dict[str, float]) -> None:
        self.file.write(json.dumps({"step": step, **metrics}) + "\n")
        self.file.flush()
        if self.writer is not None:
            for key, value in metrics.items():
                self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        self.file.close()
        if self.writer is not None:
            self.writer.close()


def read_log(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
