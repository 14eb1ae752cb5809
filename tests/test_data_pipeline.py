"""webdataset streams: folders of images, mp4 clips and audio files the repository has never seen are
packed, one shard truncated and one file corrupted; one epoch read by 2 ranks x 2 workers delivers every
intact sample exactly once and names what it skipped; the stream resumes exactly; bad configurations
are errors that name the key."""

import pytest
import torch
from media_fixtures import corrupt, pack_folder, truncate_inside, write_media_folder

from potstill.cli import main
from potstill.core.config import from_dict
from potstill.data.shards import expand_shards
from potstill.data.webdataset_source import WebDatasetOptions, open_stream

DECODE = {
    "image": {"image": {"size": 16, "channels": 3, "crop": "random"}},
    "video": {"video": {"frames": 4, "stride": 2, "size": [24, 32]}},
    "audio": {"audio": {"sample_rate": 8000, "length": 2000}},
}
SHAPES = {"image": (3, 16, 16), "video": (3, 4, 24, 32), "audio": (1, 2000)}


def options(shards: str, media: str, workers: int = 2, **extra) -> WebDatasetOptions:
    return from_dict(WebDatasetOptions, {"shards": shards, "media": media, "workers": workers, "condition": "label",
                                         "shuffle_buffer": 8, **DECODE[media], **extra}, "real_data")


@pytest.fixture(scope="module", params=["image", "video", "audio"])
def damaged_shards(request, tmp_path_factory):
    """18 samples in 6 shards of 3; item-004 corrupted; shard 3 cut inside its second sample."""
    media = request.param
    root = tmp_path_factory.mktemp(media)
    write_media_folder(root / "src", media, 18)
    corrupt(root / "src", "item-004")
    shards = pack_folder(root / "src", root / "shards", maxcount=3)
    members_per_sample = 3                                # media, txt, cls
    intact_in_cut = truncate_inside(shards[3], members_per_sample + 1)
    in_cut = {f"item-{i:03d}" for i in range(9, 12)}
    intact = ({f"item-{i:03d}" for i in range(18)} - in_cut - {"item-004"}) | set(intact_in_cut)
    return media, str(root / "shards" / "part-{000000..000005}.tar"), intact, shards[3]


def read_epochs(o: WebDatasetOptions, ranks: int, epochs: int) -> tuple[list[list[str]], list]:
    keys, streams = [], []
    for rank in range(ranks):
        stream = open_stream(o, 2, seed=5, rank=rank, world_size=ranks, epochs=epochs)
        batches = list(stream.batches())
        keys.append([k for b in batches for k in b["keys"]])
        streams.append((stream, batches))
    return keys, streams


def test_every_intact_sample_arrives_once_per_epoch(damaged_shards):
    media, shards, intact, cut_shard = damaged_shards
    keys, _ = read_epochs(options(shards, media), ranks=2, epochs=1)
    assert sorted(keys[0] + keys[1]) == sorted(intact)             # every intact sample, once
    assert not set(keys[0]) & set(keys[1])                         # ranks read disjoint shards
    keys, streams = read_epochs(options(shards, media), ranks=2, epochs=2)
    assert sorted(keys[0] + keys[1]) == sorted(list(intact) * 2)   # and once again in the next epoch
    reports = [stream.report() for stream, _ in streams]
    assert sum(r["bad_shards"] for r in reports) == 2              # the truncated shard, in each epoch
    events = [e for r in reports for e in r["recent"]]
    assert {(e["shard"], e["reason"]) for e in events if e["reason"] == "truncated_shard"} == \
        {(str(cut_shard), "truncated_shard")}
    corrupted = [e for e in events if e["key"] == "item-004" and e["reason"] != "truncated_shard"]
    assert len(corrupted) == 2 and corrupted[0]["reason"] == "undecodable"
    assert corrupted[0]["shard"].endswith("part-000001.tar")
    for _, batches in streams:
        for batch in batches:
            assert tuple(batch["x"].shape[1:]) == SHAPES[media]
            assert batch["x"].dtype == torch.float32 and batch["cond"].dtype == torch.long
            assert batch["x"].abs().max() <= 1.0 + 1e-6


def test_resumed_stream_continues_exactly(damaged_shards):
    media, shards, _, _ = damaged_shards
    o = options(shards, media)
    whole = open_stream(o, 3, seed=1)
    reference = [whole.next(4) for _ in range(14)]
    for cut in (3, 8):
        first = open_stream(o, 3, seed=1)
        rows = [first.next(4) for _ in range(cut)]
        state = first.state_dict()
        del first
        resumed = open_stream(o, 3, seed=1)
        resumed.load_state_dict(state)
        rows += [resumed.next(4) for _ in range(14 - cut)]
        for (x, c), (x_ref, c_ref) in zip(rows, reference, strict=True):
            torch.testing.assert_close(x, x_ref, rtol=0, atol=0)
            torch.testing.assert_close(c, c_ref, rtol=0, atol=0)
        assert resumed.report()["skipped"] == whole.report()["skipped"]
        assert resumed.report()["bad_shards"] == whole.report()["bad_shards"]


def test_same_seed_same_stream_other_seed_other_order(damaged_shards):
    media, shards, _, _ = damaged_shards
    first = [k for b in open_stream(options(shards, media), 2, seed=3, epochs=1).batches() for k in b["keys"]]
    again = [k for b in open_stream(options(shards, media), 2, seed=3, epochs=1).batches() for k in b["keys"]]
    other = [k for b in open_stream(options(shards, media), 2, seed=4, epochs=1).batches() for k in b["keys"]]
    assert first == again and first != other and sorted(first) == sorted(other)


def test_changed_layout_is_not_resumed(damaged_shards):
    media, shards, _, _ = damaged_shards
    stream = open_stream(options(shards, media), 2, seed=1)
    stream.next(2)
    state = stream.state_dict()
    with pytest.raises(ValueError, match="real_data: the checkpoint's stream had workers = 2, this run has 1"):
        open_stream(options(shards, media, workers=1), 2, seed=1).load_state_dict(state)


def test_missing_shard_and_empty_pattern_are_named(tmp_path):
    for index in (0, 1, 3):
        (tmp_path / f"part-{index:06d}.tar").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"real_data.shards: shard .*part-000002.tar does not exist$"):
        expand_shards(str(tmp_path / "part-{000000..000003}.tar"))
    with pytest.raises(ValueError, match=r"real_data\.shards: required"):
        expand_shards("")


def test_too_few_shards_for_the_ranks_and_workers(damaged_shards):
    media, shards, _, _ = damaged_shards
    with pytest.raises(ValueError, match="6 shards cannot give each of 4 ranks x 2 workers"):
        open_stream(options(shards, media), 2, seed=0, rank=0, world_size=4)
    resampled = open_stream(options(shards, media, resampled=True), 2, seed=0, rank=3, world_size=4)
    x, labels = resampled.next(8)
    assert x.shape == (8, *SHAPES[media]) and labels.shape == (8,)


def test_inspect_reads_one_epoch_as_two_ranks_of_two_workers(damaged_shards, capsys):
    media, shards, intact, cut_shard = damaged_shards
    with pytest.raises(SystemExit) as exit_:
        main(["data", "inspect", shards, "--media", media, "--ranks", "2", "--workers", "2", "--set", "video.frames=4"])
    assert exit_.value.code == 1                  # a damaged shard is reported, then the command fails
    out = capsys.readouterr().out
    assert f"one epoch over 2 ranks: {len(intact)} samples, 0 delivered twice" in out
    assert f"skipped shard {cut_shard}: truncated_shard" in out
    assert "skipped sample 'item-004' in" in out and ": undecodable:" in out


def test_a_refused_audio_file_stops_the_stream_naming_its_shard_and_key(tmp_path):
    write_media_folder(tmp_path / "src", "audio", 4)                      # 0.5 s clips at 16 kHz
    pack_folder(tmp_path / "src", tmp_path / "shards", maxcount=2)
    refusing = options(str(tmp_path / "shards" / "part-{000000..000001}.tar"), "audio", workers=0,
                       audio={"sample_rate": 8000, "length": 2000, "resample": False})
    with pytest.raises(ValueError, match=r"part-00000\d\.tar, sample 'item-00\d'.*real_data\.audio\.resample"):
        open_stream(refusing, 2, seed=0).next(2)
