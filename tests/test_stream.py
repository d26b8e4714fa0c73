"""A whole video from one pass of the decoder: each window as 01_preprocess decodes it, memory
bounded by the windows being filled, and the same scores whatever the batch."""
import numpy as np
import pytest
import torch

from avlib.dataio.decode import decode_clip
from avlib.dataio.features import compute_mfcc
from avlib.dataio.media import write_video
from avlib.dataio.stream import _RollingAudio, stream_windows
from avlib.models.detector import build_model, inference_model
from avlib.predict import score_file, window_starts
from tests.conftest import face_frames, tone


@pytest.mark.parametrize("rate,fps,stride", [(16000, 25, 1.28), (44100, 30, 2.0), (16000, 25, 0.5)],
                         ids=["16k-tiled", "44k-30fps", "overlapping"])
def test_each_streamed_window_is_the_window_decode_clip_gives(tmp_path, rate, fps, stride):
    seconds = 7.2
    path = write_video(tmp_path / "long.mp4", face_frames(int(seconds * fps), 64, 64), fps, tone(seconds, rate=rate),
                       rate)
    window = 32 / 25.0
    starts = window_starts(seconds, window, stride)
    streamed = list(stream_windows(path, starts, frames=32, size=32, fps=25.0))
    assert [c.start_seconds for c in streamed] == starts
    for clip in streamed:
        ref = decode_clip(path, frames=32, size=32, fps=25.0, offset=clip.start_seconds, threads=1)
        assert np.array_equal(clip.video, ref.video) and clip.valid_frames == ref.valid_frames
        if rate == 16000:                      # no resampling: the very samples
            assert np.array_equal(clip.audio, ref.audio)
        else:                                  # resampled: the phase decode_clip's seek gives, within a sample
            a, b = (compute_mfcc(x, 16000, 40, 50) for x in (clip.audio, ref.audio))
            assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.99


def test_rolling_audio_forgets_what_no_window_needs_any_more():
    class Chunk:                               # what the resampler hands out: 1024 samples of value i
        def __init__(self, i):
            self.i = i

        def to_ndarray(self):
            return np.full(1024, self.i, np.float32)

    audio = _RollingAudio(16000)
    audio.start = 0.0
    audio._append([Chunk(i) for i in range(100)])          # 6.4 s
    audio.drop_before(5.0)
    assert len(audio.chunks) < 100 and audio.first + sum(map(len, audio.chunks)) == 100 * 1024
    assert (audio.window(5.12, 1024) == 80).all()          # sample 81,920 is the first of chunk 80


def test_scores_do_not_depend_on_how_windows_are_batched(tmp_path):
    torch.manual_seed(0)
    model = inference_model(build_model(fusion="sync", fps=10.0, frames=16, trunk_stride=4,
                                        video_encoder="framediff").eval())
    path = write_video(tmp_path / "talk.mp4", face_frames(80, 32, 32), 25, tone(3.2), 16000)
    cfg = {"frames": 16, "size": 16, "fps": 10.0, "n_mfcc": 40, "mfcc_steps": 8}
    one = score_file(model, path, cfg, torch.device("cpu"), stride=0.4, batch_size=1)
    many = score_file(model, path, cfg, torch.device("cpu"), stride=0.4, batch_size=5)
    assert len(one) == len(many) == len(window_starts(3.2, 1.6, 0.4))
    assert np.allclose(one["p_fake"], many["p_fake"], atol=1e-5)
    assert (one["offset_frames"] == many["offset_frames"]).all()


@pytest.mark.parametrize("model_cores,workers,expected", [(0, 2, 4), (0, 1, 8), (6, 2, 1), (0, 16, 1)],
                         ids=["gpu-2-workers", "gpu-1-worker", "cpu-model-keeps-6", "more-workers-than-cores"])
def test_a_decoding_worker_gets_its_share_of_the_cores_and_the_same_windows(tmp_path, monkeypatch, model_cores,
                                                                            workers, expected):
    # one worker for a single long file had one decoding thread, and ran at 0.44 of the in-process speed
    from types import SimpleNamespace

    from avlib.dataio import stream
    from avlib.scoring import videos

    path = write_video(tmp_path / "talk.mp4", face_frames(100, 64, 64), 25, tone(4.0), 16000)
    plan = videos.WindowPlan({"frames": 16, "size": 16, "fps": 10.0, "n_mfcc": 40, "mfcc_steps": 8})
    threads, real = [], stream._stream

    def spy(container, vstream, *args):                  # what the opened decoder was given
        threads.append(vstream.codec_context.thread_count)
        return real(container, vstream, *args)

    monkeypatch.setattr(stream, "_stream", spy)
    here = list(videos.VideoWindows([path], plan))                  # the calling process: FFmpeg decides
    monkeypatch.setattr(videos, "usable_cores", lambda: 8)
    monkeypatch.setattr(videos, "get_worker_info", lambda: SimpleNamespace(id=0, num_workers=workers))
    worker = list(videos.VideoWindows([path], plan, model_cores=model_cores))    # worker 0 of `workers` on 8 cores
    assert threads[1] == expected
    assert len(here) == len(worker) == 3
    assert all(np.array_equal(a["video"], b["video"]) and np.array_equal(a["audio"], b["audio"])
               for a, b in zip(here, worker))
