"""`potstill data` refuses what would go wrong halfway or silently: embed writing over its input shards,
pack limits and output patterns it cannot honour; inspect exits non-zero on damaged shards and does not
count the sample the damage cut into; hidden files the packer skips are named; `--help` needs no torch."""

import subprocess
import sys
from pathlib import Path

import pytest
from media_fixtures import image_bytes, pattern_frames, truncate_inside

from potstill.cli import main
from potstill.data.embed import embed_shards
from potstill.data.pack import pack


def write_images(folder, names, sidecars=False):
    """Tiny png files (with a caption and a label each when `sidecars`)."""
    for index, name in enumerate(names):
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(image_bytes(pattern_frames(1, 8, 8, index)[0], "png"))
        if sidecars:
            path.with_suffix(".txt").write_text(f"caption {index}")
            path.with_suffix(".cls").write_text(str(index % 2))
    return folder


def tree(root):
    return sorted((str(p.relative_to(root)), p.stat().st_size) for p in root.rglob("*"))


def run_cli(argv, capsys):
    """The exit status of `potstill ARGV` (0 when it returns) and its stdout and stderr."""
    try:
        main(argv)
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def six_shards_of_three(tmp_path):
    """Two shards of three captioned, labelled images: (shard folder, brace pattern, shard paths)."""
    source = write_images(tmp_path / "src", [f"i{k}.png" for k in range(6)], sidecars=True)
    summary = pack(source, str(tmp_path / "shards" / "p-%03d.tar"), maxcount=3)
    return tmp_path / "shards", summary.pattern, summary.shards


def test_embed_refuses_the_input_shards_folder(six_shards_of_three, capsys):
    folder, pattern, _ = six_shards_of_three
    before = tree(folder)
    for out_dir in (str(folder), f"{folder}/.", f"{folder}/../shards"):
        code, _, err = run_cli(["data", "embed", pattern, out_dir], capsys)
        assert code == 2 and f"potstill: error: OUT_DIR {Path(out_dir)}: " in err
        assert "would replace the input shard" in err

    def never(captions):
        raise AssertionError("nothing may be embedded")

    with pytest.raises(ValueError, match=f"OUT_DIR {folder}: "):
        embed_shards(pattern, folder, never)
    assert tree(folder) == before                                      # no shard replaced, no .tmp left


def test_embed_refuses_two_inputs_of_one_name(six_shards_of_three, tmp_path):
    _, _, shards = six_shards_of_three
    other = tmp_path / "copy"
    other.mkdir()
    (other / shards[0].name).write_bytes(shards[0].read_bytes())
    with pytest.raises(ValueError, match=f"2 input shards are named {shards[0].name}"):
        embed_shards(f"{shards[0]}::{other / shards[0].name}", tmp_path / "out", lambda captions: None)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("member", [3, 4], ids=["cut-in-first-file", "cut-in-second-file"])
def test_inspect_exits_1_and_counts_only_intact_samples(six_shards_of_three, capsys, member):
    """Shard 1 (i3, i4, i5; files cls, png, txt each) cut inside i4's cls (i4 is lost) or its png (i4 is read
    with its cls alone): either way shard 1 holds one intact sample, as the training stream finds."""
    _, pattern, shards = six_shards_of_three
    intact = truncate_inside(shards[1], member)
    assert intact == ["i3"]
    code, out, err = run_cli(["data", "inspect", pattern, "--media", "image", "--set", "image.size=8",
                              "image.channels=1", "condition=label"], capsys)
    assert code == 1 and "1 of 2 shards are truncated or unreadable" in err
    assert f"{shards[1]}: 1 samples" in out and "total: 2 shards, 4 samples" in out
    assert f"skipped shard {shards[1]}: truncated_shard" in out and f"1 of 2 shards damaged: {shards[1]}" in out
    assert ("not counted, the damage cut into it: i4: cls '0'" in out) == (member == 4)
    assert "one epoch over 1 ranks: 4 samples" in out                  # the stream's count agrees


def test_inspect_help_documents_the_exit_status(capsys):
    code, out, _ = run_cli(["data", "inspect", "--help"], capsys)
    assert code == 0 and "1 when any is truncated or unreadable" in " ".join(out.split())


@pytest.mark.parametrize("flag, value", [("--maxcount", "0"), ("--maxcount", "-1"), ("--maxsize", "0"),
                                         ("--maxsize", "-5")])
def test_pack_refuses_limits_that_are_not_positive(tmp_path, capsys, flag, value):
    source = write_images(tmp_path / "src", ["a.png"])
    code, _, err = run_cli(["data", "pack", str(source), str(tmp_path / "out" / "s-%02d.tar"), flag, value],
                           capsys)
    assert code == 2 and f"potstill: error: {flag} {value}" in err and "must be a positive" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", ["s.tar", "s-%02d-%02d.tar", "d-%02d/s.tar", "s-%s-%02d.tar", "s-%5d.tar",
                                  "100%-%02d.tar", "s-%02d.tgz", "file/s-%02d.tar", "file/deeper/s-%02d.tar"])
def test_pack_refuses_malformed_patterns_before_writing(tmp_path, capsys, name):
    source = write_images(tmp_path / "src", ["a.png"])
    (tmp_path / "file").write_text("not a folder")
    before = tree(tmp_path)
    pattern = str(tmp_path / name)
    code, _, err = run_cli(["data", "pack", str(source), pattern], capsys)
    assert code == 2 and f"potstill: error: OUT_PATTERN {pattern!r}: " in err
    assert tree(tmp_path) == before


def test_pack_names_the_hidden_files_it_skips(tmp_path):
    source = write_images(tmp_path / "src", ["a.png", ".b.png", "sub/._c.png"])
    summary = pack(source, str(tmp_path / "out" / "s-%02d.tar"))
    assert summary.samples == 1 and summary.hidden == [".b.png", "sub/._c.png"]
    assert "skipped 2 hidden files (names starting with '.'): .b.png, sub/._c.png" in summary.describe()
    (source / "a.png").unlink()
    with pytest.raises(ValueError, match=r"holds no media file .*; skipped 2 hidden files"):
        pack(source, str(tmp_path / "other" / "s-%02d.tar"))


def test_help_needs_no_torch():
    script = ("import sys\n"
              "from potstill.cli import main\n"
              "for argv in (['--help'], ['data', '--help'], ['data', 'inspect', '--help']):\n"
              "    try:\n"
              "        main(argv)\n"
              "    except SystemExit:\n"
              "        pass\n"
              "print('TORCH' if 'torch' in sys.modules else 'NO TORCH')\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.strip().endswith("NO TORCH")
