"""The synthetic corpus: read by the fakeavceleb indexer, deterministic, resumable, checked;
its generator styles and its audio-swap evaluation corpus."""
import dataclasses

import av
import numpy as np
import pytest

from avlib.core.errors import ParameterError
from avlib.dataio.indexers import index_dataset, read_fakeavceleb_metadata
from avlib.dataio.synthetic import CorpusSpec, clip_fps, generate_corpus
from avlib.dataio.synthetic_styles import STYLES
from avlib.stages.parameters import check

SPEC = CorpusSpec(identities=3, seconds=0.6, size=32)
STYLED = CorpusSpec(identities=4, seconds=0.4, size=32, styles=tuple(STYLES))   # one identity per style


@pytest.fixture(scope="module")
def styled_corpus(tmp_path_factory):
    data = tmp_path_factory.mktemp("styled")
    return data, generate_corpus(data, STYLED, workers=2, progress=False)


def _decode(path):
    """(frames (N, H, W, 3) uint8, audio samples float32, average frame rate) of a file."""
    with av.open(str(path)) as c:
        frames = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
    with av.open(str(path)) as c:
        audio = np.concatenate([f.to_ndarray().reshape(-1) for f in c.decode(audio=0)])
        rate = float(c.streams.video[0].average_rate)
    return frames, audio, rate


def test_corpus_has_fakeavcelebs_layout_and_quirks(tmp_path):
    root = generate_corpus(tmp_path, SPEC, workers=1, progress=False)
    records = index_dataset("fakeavceleb", tmp_path)
    assert len(records) == 15
    assert records["category"].value_counts().to_dict() == {"RVRA": 6, "RVFA": 3, "FVRA": 3, "FVFA": 3}
    header = (root / "meta_data.csv").read_text().splitlines()[0]
    assert header.endswith("path,")
    assert len(read_fakeavceleb_metadata(root / "meta_data.csv")) == 15
    assert (records["method"] != "unknown").all()
    assert "style" not in records                                             # FakeAVCeleb's indexer: as it was
    assert (index_dataset("synthetic", tmp_path)["style"] == "studio").all()


def test_same_seed_same_bytes_and_a_killed_run_is_completed(tmp_path, styled_corpus):
    a = generate_corpus(tmp_path / "a", STYLED, workers=1, progress=False)
    b = styled_corpus[1]                               # made by two workers: other clip-to-worker order
    files = sorted(p.relative_to(a) for p in a.rglob("*.mp4"))
    assert sorted(p.relative_to(b) for p in b.rglob("*.mp4")) == files
    assert [(a / f).read_bytes() for f in files] == [(b / f).read_bytes() for f in files]
    victims = [a / files[i] for i in (1, 4, 9, 13)]
    originals = [v.read_bytes() for v in victims]
    for v in victims:
        v.unlink()
    (victims[0].parent / f".{victims[0].stem}.tmp.mp4").write_bytes(b"half")   # what a kill mid-write leaves
    generate_corpus(tmp_path / "a", STYLED, workers=1, progress=False)      # each victim first in its worker
    assert [v.read_bytes() for v in victims] == originals
    assert sorted(p.relative_to(a) for p in a.rglob("*.mp4")) == files      # completed, nothing duplicated


def test_styles_differ_in_what_they_set_and_reach_the_index(styled_corpus):
    data = styled_corpus[0]
    records = index_dataset("synthetic", data)
    assert records.groupby("identity")["style"].nunique().eq(1).all()
    style_of = records.groupby("identity")["style"].first()
    assert sorted(style_of) == sorted(STYLES)
    texture = {}
    for ident, name in style_of.items():
        real = data / records.loc[(records["identity"] == ident) & (records["method"] == "real"), "path"].iloc[0]
        frames, _, rate = _decode(real)
        assert rate == pytest.approx(clip_fps(STYLED, STYLES[name]), abs=0.01)
        assert f"crf={STYLES[name].crf}.0".encode() in real.read_bytes()     # x264 writes its settings in the stream
        grey = frames.astype(float).mean(-1)
        sides = np.concatenate([grey[:, :, :4], grey[:, :, -4:]], 2)             # background only
        texture[name] = np.abs(np.diff(sides, axis=1)).mean() + np.abs(np.diff(sides, axis=2)).mean()
    assert texture["webcam"] > 2 * texture["studio"]                            # clutter and grain vs a gradient


def test_audio_swap_corpus_carries_another_real_voice_on_the_same_video(tmp_path, styled_corpus):
    data = styled_corpus[0]
    with pytest.raises(FileExistsError, match="another data_dir"):             # one spec per data_dir
        generate_corpus(data, dataclasses.replace(STYLED, audio_swap=True), progress=False)
    generate_corpus(tmp_path, dataclasses.replace(STYLED, audio_swap=True), workers=2, progress=False)
    records = index_dataset("synthetic", tmp_path)
    assert records.groupby(["category", "method"]).size().to_dict() == {("RVFA", "audioswap"): 4, ("RVRA", "real"): 4}
    for swap in records[records["method"] == "audioswap"].itertuples():
        real_path = records.loc[(records["identity"] == swap.identity) & (records["method"] == "real"), "path"].iloc[0]
        donor = swap.path.rsplit("/", 1)[1].split("_")[1]
        donor_path = records.loc[(records["identity"] == donor) & (records["method"] == "real"), "path"].iloc[0]
        assert donor != swap.identity
        assert (tmp_path / real_path).read_bytes() == (data / real_path).read_bytes()   # the real clip, untouched
        frames, audio, _ = _decode(tmp_path / swap.path)
        real_frames, real_audio, _ = _decode(tmp_path / real_path)
        _, donor_audio, _ = _decode(tmp_path / donor_path)
        assert np.array_equal(frames, real_frames)
        assert np.array_equal(audio, donor_audio) and not np.array_equal(audio, real_audio)
        level = 20 * np.log10(np.sqrt(np.mean(audio ** 2)) / np.sqrt(np.mean(real_audio ** 2)))
        assert abs(level) < 6


def test_a_bad_style_parameter_names_the_allowed_ones():
    with pytest.raises(ParameterError, match="corpus_styles.*studio, newsroom, webcam, outdoor"):
        check("01_preprocess", {"corpus_styles": "studio,cartoon"})
    with pytest.raises(ParameterError, match="identities"):
        check("01_preprocess", {"dataset": "synthetic", "identities": 3, "corpus_styles": "studio,newsroom,webcam,outdoor"})


@pytest.mark.parametrize("spec,match", [(CorpusSpec(identities=0), "identities"),
                                        (CorpusSpec(seconds=-1.0), "seconds"),
                                        (CorpusSpec(styles="studio,cartoon"), "styles"),
                                        (CorpusSpec(identities=3, styles=tuple(STYLES)), "identities")])
def test_parameters_that_cannot_make_a_corpus(tmp_path, spec, match):
    with pytest.raises(ValueError, match=match):
        generate_corpus(tmp_path, spec, progress=False)


def test_data_dir_that_is_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(NotADirectoryError, match="data_dir"):
        generate_corpus(tmp_path / "f", SPEC, progress=False)
