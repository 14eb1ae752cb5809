"""The binary PLY parses back with a reader written here from the format's description: header, vertex count,
property types, little-endian records."""

import numpy as np
import pytest
import torch

from potstill.modalities.ply import write_ply

PLY_TYPES = {"float": "<f4", "uchar": "u1", "double": "<f8", "int": "<i4"}


def read_ply(path):
    """A minimal independent PLY reader: header lines up to end_header, then one record per vertex."""
    raw = path.read_bytes()
    end = raw.index(b"end_header\n") + len(b"end_header\n")
    lines = raw[:end].decode("ascii").splitlines()
    assert lines[0] == "ply" and lines[1] == "format binary_little_endian 1.0"
    count = next(int(line.split()[2]) for line in lines if line.startswith("element vertex"))
    fields = [(line.split()[2], PLY_TYPES[line.split()[1]]) for line in lines if line.startswith("property")]
    records = np.frombuffer(raw[end:], dtype=np.dtype(fields), count=count)
    assert len(raw) == end + count * np.dtype(fields).itemsize
    return records


def test_points_and_colours_parse_back(tmp_path):
    points = torch.randn(50, 3)
    colors = torch.rand(50, 3)
    records = read_ply(write_ply(tmp_path / "cloud.ply", points, colors))
    np.testing.assert_array_equal(np.stack([records[a] for a in "xyz"], 1), points.numpy())
    rgb = np.stack([records[c] for c in ("red", "green", "blue")], 1)
    np.testing.assert_array_equal(rgb, (colors * 255).round().to(torch.uint8).numpy())
    assert not (tmp_path / "cloud.ply.tmp").exists()


def test_an_empty_cloud_is_a_valid_file(tmp_path):
    assert len(read_ply(write_ply(tmp_path / "empty.ply", torch.zeros(0, 3), torch.zeros(0, 3)))) == 0


def test_mismatched_shapes_are_refused(tmp_path):
    with pytest.raises(ValueError, match="points and colours must both be"):
        write_ply(tmp_path / "bad.ply", torch.zeros(3, 3), torch.zeros(2, 3))
