"""Training augmentation: self-blended fakes change the lower face of real clips only, every draw
repeats for the same epoch and clip (so a resumed run augments as an uninterrupted one), and bad
settings are named."""
import numpy as np
import pytest
import torch

from avlib.core.errors import ParameterError
from avlib.dataio.augment import augment_clip, parse_augment, self_blend
from avlib.dataio.loader import CachedClips, make_loader
from avlib.dataio.preprocess import settings, write_dummy_cache
from avlib.stages.parameters import check


def _clip(seed=0, t=8, size=32):
    rng = np.random.default_rng(seed)
    base = rng.integers(60, 200, (3, 1, size, size)).astype(np.uint8)
    return np.repeat(base, t, axis=1)


def test_self_blend_changes_the_lower_face_and_flickers():
    video = _clip()
    changed = np.abs(self_blend(video, np.random.default_rng(1)).astype(int) - video).sum(0)   # (T, H, W)
    assert changed[:, :5].sum() == 0 and changed[:, :, :3].sum() == 0      # top rows, left border untouched
    assert (changed[:, 14:24, 10:22] > 0).mean() > 0.5                     # the lower face blended
    masks = changed > 0
    assert any((masks[k] != masks[0]).any() for k in range(1, len(masks)))  # the region moves from frame to frame
    out = augment_clip(video, parse_augment("flip,colour,noise,compress"), np.random.default_rng(2))
    assert out.shape == video.shape and out.dtype == np.uint8 and not np.array_equal(out, video)
    assert augment_clip(video, (), np.random.default_rng(2)) is video


@pytest.fixture
def cache(tmp_path):
    write_dummy_cache(tmp_path / "cache", settings(frames=8, size=32, fps=25, n_mfcc=40, mfcc_steps=8), n=24, seed=0)
    return tmp_path / "cache"


def test_self_blend_relabels_real_clips_only_and_repeats_for_the_same_key(cache):
    plain = CachedClips(cache, "train")
    blended = CachedClips(cache, "train", self_blend=1.0)
    assert (plain.labels == 0).any() and (plain.labels == 1).any()
    for i, label in enumerate(plain.labels):
        video, _, new_label = blended[(i, 7)]
        assert new_label == 1
        assert np.array_equal(video.numpy(), plain[i][0].numpy()) == (label == 1)   # fakes load unchanged
    real = int(np.flatnonzero(plain.labels == 0)[0])
    assert torch.equal(blended[(real, 7)][0], blended[(real, 7)][0])
    assert not torch.equal(blended[(real, 7)][0], blended[(real, 8)][0])
    assert np.array_equal(blended.labels, plain.labels)                     # the cache's labels stay


def test_training_loader_augments_alike_when_an_epoch_is_replayed(cache):
    data = CachedClips(cache, "train", augment="flip,colour,noise", self_blend=0.5)
    loader = make_loader(data, batch_size=4, train=True, seed=0)

    def epoch(k):
        loader.sampler.generator.manual_seed(k)            # what fit does at the start of epoch k
        return [batch for batch in loader]

    first, again, other = epoch(3), epoch(3), epoch(4)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[2], b[2]) for a, b in zip(first, again))
    assert not all(torch.equal(a[0], b[0]) for a, b in zip(first, other))
    evaluation = make_loader(CachedClips(cache, "val", augment="flip,colour", self_blend=1.0), batch_size=64,
                             train=False)
    video, _, labels = next(iter(evaluation))[:3]
    as_cached = CachedClips(cache, "val")
    assert torch.equal(video, torch.stack([as_cached[i][0] for i in range(len(as_cached))]))
    assert labels.tolist() == as_cached.labels.tolist()


def test_bad_augmentation_settings_are_named():
    assert parse_augment("") == () and parse_augment("none") == ()
    with pytest.raises(ValueError, match="flip, colour, noise, compress"):
        parse_augment("flip,blur")
    with pytest.raises(ParameterError, match="`augment`"):
        check("03_train", {"augment": "flip,flip"})
    with pytest.raises(ParameterError, match="`self_blend`"):
        check("03_train", {"self_blend": 1.5})
    check("03_train", {"augment": "flip,compress", "self_blend": 1.0})
