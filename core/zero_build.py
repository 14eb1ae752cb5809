"""Models under ZeRO-3 built without a whole copy on any rank: weights streamed from safetensors one tensor at a
time into their partitions, and copies (student, fake score, EMA from the teacher) made parameter by parameter.
Each works on whole (unpartitioned) models too, so builders call them whatever the engine."""

from __future__ import annotations

import copy
from collections.abc import Callable
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from potstill.core.memory_budget import check_fits
from potstill.core.weights import check_state, read_torch_state


def is_partitioned(tensor: torch.Tensor) -> bool:
    """A ZeRO-3 parameter: its `.data` is empty and this rank holds a flat slice in `ds_tensor`."""
    return hasattr(tensor, "ds_id")


def held_elements(tensor: torch.Tensor) -> torch.Tensor:
    """The elements of a parameter this rank holds: a ZeRO-3 partition without its padding (DeepSpeed leaves the
    last partition's padding uninitialised, so it may read as NaN), or the whole tensor."""
    if not is_partitioned(tensor):
        return tensor
    partition = tensor.ds_tensor
    start = partition.numel() * tensor.ds_zero_partition_rank
    return partition.narrow(0, 0, max(0, min(partition.numel(), tensor.ds_numel - start)))


def full_shape(tensor: torch.Tensor) -> torch.Size:
    return tensor.ds_shape if is_partitioned(tensor) else tensor.shape


def load_weights(module: nn.Module, shapes: dict[str, torch.Tensor], read: Callable[[str], torch.Tensor], key: str,
                 source: str, what: str) -> nn.Module:
    """The weights an open `tensor_reader` gives into a whole `module`, tensor by tensor; names and shapes are
    checked against the module before any tensor is read."""
    targets = module.state_dict(keep_vars=True)
    check_state(expected_shapes(targets), shapes, key, source, what)
    with torch.no_grad():
        for name, target in targets.items():
            target.copy_(read(name))
    return module


def expected_shapes(targets: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Meta tensors of a state dict's whole shapes (a partitioned parameter's own is empty)."""
    return {name: torch.empty(full_shape(t), device="meta") for name, t in targets.items()}


def build_with_weights(factory: Callable[[], nn.Module], paths: Path | list[Path], key: str, source: str, what: str,
                       partition: Any | None = None, dtype: torch.dtype | None = None,
                       budget: int | None = None, skip: Callable[[str], bool] | None = None) -> nn.Module:
    """`factory()` with the weights of `paths` (one file, or the shards of one model). With `partition` (a
    `deepspeed.zero.Init`) its parameters are made on the meta device, which holds nothing (buffers, which a model
    may compute as it is made, are made for real), and each parameter is then materialised alone, in `dtype` (None:
    fp32): read on rank 0, broadcast and split across ranks, so no rank ever holds more than one whole tensor;
    without, built whole and loaded tensor by tensor. A model whose share on this rank exceeds `budget` bytes is
    refused before anything is built or read. Stored tensors whose names `skip` accepts are passed over (a CLIP
    file's image tower, for its text tower)."""
    from accelerate import init_empty_weights

    dtype = dtype or torch.float32
    ranks = torch.distributed.get_world_size() if partition is not None else 1
    with tensor_reader(paths, key) as (shapes, read):
        if skip is not None:
            shapes = {name: shape for name, shape in shapes.items() if not skip(name)}
        check_fits(sum(t.numel() for t in shapes.values()) * dtype.itemsize // ranks, budget, key, ranks,
                   partition is not None)
        if partition is None:
            return load_weights(factory(), shapes, read, key, source, what)
        with init_empty_weights(include_buffers=False):
            module = factory()
        if callable(getattr(module, "tie_weights", None)):
            module.tie_weights()    # transformers ties embeddings as a model is made; the meta build made copies
        targets = module.state_dict(keep_vars=True)
        stored = stored_names(targets, shapes)
        check_state(expected_shapes({name: targets[name] for name in stored.values()}), shapes, key, source, what)
        main = torch.distributed.get_rank() == 0
        made: dict[int, torch.Tensor] = {}
        for name, target in targets.items():
            if id(target) not in made:
                stored_as = stored[id(target)]
                made[id(target)] = materialise(target, lambda stored_as=stored_as: read(stored_as), partition, dtype,
                                               main)
            put(module, name, made[id(target)])
    return module


def stored_names(targets: dict[str, torch.Tensor], shapes: dict[str, torch.Tensor]) -> dict[int, str]:
    """One state-dict name per distinct tensor: a tied weight (T5's shared embedding) appears under several names
    and is stored under one of them, the one read."""
    names: dict[int, str] = {}
    for name, target in targets.items():
        if id(target) not in names or (name in shapes and names[id(target)] not in shapes):
            names[id(target)] = name
    return names


def materialise(target: torch.Tensor, read: Callable[[], torch.Tensor], partition: Any, dtype: torch.dtype,
                main: bool) -> torch.Tensor:
    """The real tensor for a meta one: a buffer read whole on every rank; a parameter read on the main rank only,
    in `dtype`, then broadcast and split across ranks."""
    if not isinstance(target, nn.Parameter):
        return read()
    value = read().to(dtype) if main else torch.empty(target.shape, dtype=dtype)
    parameter = nn.Parameter(value, requires_grad=target.requires_grad)
    convert_to_partitions(partition, parameter)
    return parameter


def put(module: nn.Module, name: str, tensor: torch.Tensor) -> None:
    """Set the parameter or buffer `name` (a state-dict key) of `module` to `tensor`, in place of its meta one."""
    owner_name, _, leaf = name.rpartition(".")
    owner = module.get_submodule(owner_name)
    if isinstance(tensor, nn.Parameter):
        owner._parameters[leaf] = tensor
    else:
        owner._buffers[leaf] = tensor


@contextmanager
def tensor_reader(paths: Path | list[Path], key: str):
    """(meta tensors of every stored shape, read(name)) for a model's weights: safetensors files (one, or a model's
    shards) read one tensor at a time, a torch checkpoint (which cannot be read in parts) loaded whole."""
    paths = [paths] if isinstance(paths, Path) else paths
    if paths[0].suffix != ".safetensors":
        state = read_torch_state(paths[0], key)
        yield {name: torch.empty(t.shape, device="meta") for name, t in state.items()}, state.__getitem__
        return
    with ExitStack() as files:
        owner, shapes = {}, {}
        for path in paths:
            try:
                weights = files.enter_context(safe_open(str(path), "pt"))
            except SafetensorError as error:
                raise ValueError(f"{key}: {path} is not a readable safetensors file ({error})") from None
            for name in weights.keys():       # noqa: SIM118  (a safetensors handle is not a mapping)
                owner[name] = weights
                shapes[name] = torch.empty(weights.get_slice(name).get_shape(), device="meta")
        yield shapes, lambda name: owner[name].get_tensor(name)


def meta_twin(module: nn.Module) -> nn.Module:
    """An fp32 copy of `module` on the meta device, holding nothing, for build-time probes of output shapes: a
    partitioned module's own parameters are empty until an engine gathers them in its forward."""
    memo = {id(p): nn.Parameter(torch.empty(full_shape(p), device="meta"), requires_grad=False)
            for p in module.parameters()}
    memo |= {id(b): torch.empty(b.shape, dtype=b.dtype, device="meta") for b in module.buffers()}
    return copy.deepcopy(module, memo)


def copy_module(module: nn.Module, partition: Any | None, dtype: torch.dtype | None,
                memo: dict[int, Any] | None = None) -> nn.Module:
    """A copy of `module`, one parameter at a time: its structure and buffers deep-copied with every parameter a
    placeholder, then each parameter filled alone, in `dtype` (None: the source's). `partition` (a
    `deepspeed.zero.Init`) splits each across ranks as it is filled, from the source's own slice when that is
    partitioned too (no communication); without it a partitioned source is gathered one parameter at a time.
    `memo` maps tensors the copy shares with the source (a LoRA student's frozen base) to themselves."""
    memo = dict(memo or {})
    sources = [p for p in module.parameters() if id(p) not in memo]
    for source in sources:
        memo[id(source)] = nn.Parameter(torch.empty(0, dtype=source.dtype, device=source.device),
                                        requires_grad=source.requires_grad)
    copied = copy.deepcopy(module, memo)
    for source in sources:
        fill(memo[id(source)], source, partition, dtype or source.dtype)
    return copied


def fill(target: nn.Parameter, source: nn.Parameter, partition: Any | None, dtype: torch.dtype) -> None:
    with torch.no_grad():
        if partition is not None and is_partitioned(source):
            target.data = torch.empty(source.ds_shape, dtype=dtype, device=source.ds_tensor.device)
            convert_to_partitions(partition, target)
            if target.ds_tensor.numel() != source.ds_tensor.numel():
                raise RuntimeError(f"a parameter of shape {tuple(source.ds_shape)} is split differently in its copy "
                                   f"({target.ds_tensor.numel()} against {source.ds_tensor.numel()} per rank)")
            target.ds_tensor.copy_(source.ds_tensor)
        elif is_partitioned(source):
            import deepspeed

            with deepspeed.zero.GatheredParameters([source]):
                target.data = source.data.to(dtype, copy=True)
        else:
            target.data = source.data.to(dtype, copy=True)
            if partition is not None:
                convert_to_partitions(partition, target)


def convert_to_partitions(partition: Any, parameter: nn.Parameter) -> None:
    """Split one whole parameter across ranks as `deepspeed.zero.Init` splits those created in its context (its
    own conversion, the one it applies to a module handed to it, taken one parameter at a time)."""
    partition._convert_to_zero_parameters([parameter])
