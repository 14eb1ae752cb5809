"""`potstill data pack` writes folders as shards (captions, labels, metadata, class folders) and never
leaves a half-written pack; `potstill data inspect` reports them; keys are safe for webdataset."""

import json
import tarfile

import pytest
from media_fixtures import image_bytes, pattern_frames

from potstill.cli import main
from potstill.data.pack import brace_pattern, pack
from potstill.data.shard_stream import read_shards


def make_folder(root, names):
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(image_bytes(pattern_frames(1, 8, 8, len(name))[0], "png"))
    return root


def samples_of(shards):
    return [s for shard in shards for s in read_shards([str(shard)], [])]


def test_pack_with_sidecars_metadata_and_folders(tmp_path):
    source = make_folder(tmp_path / "src", ["cats/a.png", "cats/b.v2.png", "dogs/c.png", "dogs/d.png", "dogs/e.png"])
    (source / "cats" / "a.txt").write_text("a cat")
    (source / "meta.csv").write_text("file,caption,label,score\ndogs/c.png,a dog,5,0.9\n")
    summary = pack(source, str(tmp_path / "out" / "s-%04d.tar"), maxcount=2, metadata=source / "meta.csv",
                   labels_from_folders=True)
    assert [p.name for p in summary.shards] == ["s-0000.tar", "s-0001.tar", "s-0002.tar"]
    assert summary.pattern == str(tmp_path / "out" / "s-{0000..0002}.tar") and summary.samples == 5
    samples = {s["__key__"]: s for s in samples_of(summary.shards)}
    assert sorted(samples) == ["cats/a", "cats/b_v2", "dogs/c", "dogs/d", "dogs/e"]
    assert samples["cats/a"]["txt"] == b"a cat" and samples["cats/a"]["cls"] == b"0"
    assert samples["dogs/c"]["txt"] == b"a dog" and samples["dogs/c"]["cls"] == b"1"    # folder label wins
    assert json.loads(samples["dogs/c"]["json"]) == {"caption": "a dog", "label": "5", "score": "0.9"}
    assert summary.classes == ["cats", "dogs"]
    assert not list((tmp_path / "out").glob(".pack-*"))


def test_pack_refuses_clashes_and_bad_patterns(tmp_path):
    source = make_folder(tmp_path / "src", ["x.png", "x.jpg"])
    with pytest.raises(ValueError, match="would share the sample key 'x'"):
        pack(source, str(tmp_path / "out" / "s-%06d.tar"))
    (source / "x.jpg").unlink()
    with pytest.raises(ValueError, match="OUT_PATTERN"):
        pack(source, str(tmp_path / "out" / "s.tar"))
    pack(source, str(tmp_path / "out" / "s-%06d.tar"))
    with pytest.raises(FileExistsError, match=r"s-000000\.tar exists already"):
        pack(source, str(tmp_path / "out" / "s-%06d.tar"))
    with pytest.raises(ValueError, match="holds no media file"):
        pack(tmp_path / "out", str(tmp_path / "other" / "s-%06d.tar"))
    assert brace_pattern("d/s-%06d.tar", 1) == "d/s-000000.tar"


def test_packs_are_reproducible_and_take_long_names(tmp_path):
    long_name = "a" * 90 + "/" + "b" * 120 + ".png"
    source = make_folder(tmp_path / "src", ["x.png", long_name])
    first = pack(source, str(tmp_path / "one" / "s-%02d.tar"))
    again = pack(source, str(tmp_path / "two" / "s-%02d.tar"))
    assert first.shards[0].read_bytes() == again.shards[0].read_bytes()       # no times or pax headers inside
    assert sorted(s["__key__"] for s in samples_of(first.shards)) == [long_name[:-4], "x"]


def test_jsonl_metadata(tmp_path):
    source = make_folder(tmp_path / "src", ["a.png"])
    (source / "meta.jsonl").write_text(json.dumps({"path": "a.png", "prompt": "red", "class": 2}) + "\n")
    summary = pack(source, str(tmp_path / "s-%02d.tar"), metadata=source / "meta.jsonl")
    (sample,) = samples_of(summary.shards)
    assert sample["txt"] == b"red" and sample["cls"] == b"2"
    with tarfile.open(summary.shards[0]) as archive:
        assert sorted(m.name for m in archive.getmembers()) == ["a.cls", "a.json", "a.png", "a.txt"]


def test_cli_pack_and_inspect(tmp_path, capsys):
    source = make_folder(tmp_path / "src", [f"i{k}.png" for k in range(6)])
    for k in range(6):
        (source / f"i{k}.cls").write_text(str(k % 2))
    main(["data", "pack", str(source), str(tmp_path / "sh" / "p-%03d.tar"), "--maxcount", "2"])
    out = capsys.readouterr().out
    assert "wrote 6 samples in 3 shards" in out and "sh/p-{000..002}.tar" in out
    main(["data", "inspect", str(tmp_path / "sh" / "p-{000..002}.tar"), "--media", "image", "--ranks", "2",
          "--set", "image.size=8", "image.channels=1", "condition=label"])
    out = capsys.readouterr().out
    assert "total: 3 shards, 6 samples" in out and "i0: cls '0', png" in out
    assert "one epoch over 2 ranks: 6 samples, 0 delivered twice, decoded shape (1, 8, 8)" in out
    with pytest.raises(SystemExit):
        main(["data", "inspect", str(tmp_path / "sh" / "p-{000..003}.tar")])
    assert "PATTERN: shard" in capsys.readouterr().err
