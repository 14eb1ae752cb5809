"""Loading diffusers and transformers models from local folders, refusing a partial load: both libraries fill any
weight a folder lacks with a fresh random one and only warn (a wrong `model_class` then gives a random teacher)."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from potstill.core.config import ConfigError


def load_pretrained(model_class: type, folder: Path, subfolder: str | None, key: str) -> nn.Module:
    """`model_class.from_pretrained` on local files only; an unreadable folder, or weights missing, unexpected or
    of the wrong shape, is an error naming `key` and the folder."""
    where = folder / (subfolder or "")
    try:
        model, info = model_class.from_pretrained(folder, subfolder=subfolder or "", local_files_only=True,
                                                  output_loading_info=True)
    except (OSError, ValueError, RuntimeError) as error:
        raise ConfigError(f"{key}: no {model_class.__name__} in {where} ({str(error).splitlines()[0][:200]})") from None
    wrong = {kind: sorted(info.get(kind) or ()) for kind in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    if any(wrong.values()):
        found = "; ".join(f"{kind.replace('_', ' ')}: {', '.join(map(str, names[:3]))}"
                          for kind, names in wrong.items() if names)
        raise ConfigError(f"{key}: {where} does not hold a whole {model_class.__name__} ({found}); is it the "
                          "right folder and class?")
    return model
