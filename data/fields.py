"""Reading one field of a webdataset sample: text, class labels, JSON values and stored tensors
(npy, pt, safetensors). A field is named by its extension (`txt`, `cls`, `latent.npy`) or as
`json:path.to.value` for a value inside the sample's JSON."""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np
import torch
from safetensors.torch import load as load_safetensors

TENSOR_FIELDS = ["npy", "pt", "pth", "safetensors"]
NPY_MAGIC, ZIP_MAGIC = b"\x93NUMPY", b"PK\x03\x04"


class BadSample(ValueError):
    """A sample that cannot be used; the stream skips and counts it under `reason`."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


class RefusedSample(ValueError):
    """A sample the config says to stop at rather than skip (e.g. `short: error`); the stream raises it with the
    shard and key named."""


def media_fields(sample: dict) -> list[str]:
    return sorted(k for k in sample if not k.startswith("__"))


def raw_field(sample: dict, name: str) -> bytes:
    """The bytes stored under `name`; a missing field makes the sample bad."""
    if name not in sample:
        raise BadSample("missing_field", f"no {name!r} field (has {', '.join(media_fields(sample)) or 'nothing'})")
    return sample[name]


def first_present(sample: dict, names: tuple[str, ...] | list[str]) -> str:
    """The first of `names` the sample has (e.g. jpg, png or webp for an image)."""
    for name in names:
        if name in sample:
            return name
    raise BadSample("missing_field", f"none of {', '.join(names)} (has {', '.join(media_fields(sample)) or 'nothing'})")


def json_value(sample: dict, spec: str) -> Any:
    """`json:a.b` -> sample['json']['a']['b']."""
    value = json.loads(raw_field(sample, "json"))
    for part in spec.split(".") if spec else []:
        if not isinstance(value, dict) or part not in value:
            raise BadSample("missing_field", f"the sample's json has no {spec!r}")
        value = value[part]
    return value


def read_value(sample: dict, spec: str) -> Any:
    """A field's value: `json:path` from the JSON, text for `txt`-like fields, else the raw bytes."""
    if spec.startswith("json:"):
        return json_value(sample, spec[len("json:"):])
    return raw_field(sample, spec)


def read_text(sample: dict, spec: str) -> str:
    value = read_value(sample, spec)
    return value.decode("utf-8").strip() if isinstance(value, bytes) else str(value)


def read_label(sample: dict, spec: str) -> int:
    value = read_value(sample, spec)
    try:
        return int(value.decode("ascii").strip() if isinstance(value, bytes) else value)
    except (ValueError, TypeError, UnicodeDecodeError):
        raise BadSample("bad_label", f"{spec} is {value!r}, not an integer class label") from None


def decode_tensor(data: bytes, name: str | None = None) -> torch.Tensor:
    """A stored tensor, told apart by its first bytes: npy, torch.save (loaded with weights_only) or
    safetensors (the tensor `name`, or its only one)."""
    if data.startswith(NPY_MAGIC):
        return torch.from_numpy(np.load(io.BytesIO(data), allow_pickle=False).copy())
    if data.startswith(ZIP_MAGIC):
        value = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        if not isinstance(value, torch.Tensor):
            raise BadSample("bad_tensor", f"a torch.save field holds a {type(value).__name__}, not a tensor")
        return value
    tensors = load_safetensors(data)
    if name is None and len(tensors) == 1:
        return next(iter(tensors.values()))
    if name not in tensors:
        raise BadSample("bad_tensor", f"safetensors field has {sorted(tensors)}; name one with tensor_name")
    return tensors[name]
