"""Decoding real encoded files (made with PyAV here, no mocks), including every odd input."""
import numpy as np
import pytest

from avlib.dataio.decode import DecodeError, decode_clip, leading_silence_seconds
from avlib.dataio.features import compute_mfcc, mfcc_hop
from avlib.dataio.media import write_video
from tests.conftest import face_frames, tone


def test_window_has_the_requested_shape_and_frames_in_order(make_video):
    clip = decode_clip(make_video(n_frames=50), frames=16, size=32, fps=25)
    assert clip.video.shape == (16, 32, 32, 3) and clip.video.dtype == np.uint8
    assert clip.valid_frames == 16 and clip.has_audio
    brightness = clip.video.reshape(16, -1).mean(1)
    assert np.all(np.diff(brightness) > 0)          # frame i is brighter than frame i-1
    assert clip.audio.shape == (round(16 / 25 * 16000),) and clip.audio.dtype == np.float32


def test_audio_covers_the_same_seconds_as_the_video(tmp_path):
    # 2 s of silence then a tone; a window starting at 2.0 s must hear the tone from its first sample
    frames = face_frames(100)
    audio = np.concatenate([np.zeros(32000, np.float32), tone(2.0)])
    path = write_video(tmp_path / "late_tone.mp4", frames, 25, audio, 16000)
    start = decode_clip(path, frames=25, size=16, fps=25, window="start")
    assert np.abs(start.audio).max() < 0.01
    centre = decode_clip(path, frames=25, size=16, fps=25, window="center")
    assert centre.start_seconds == pytest.approx(1.5, abs=0.1)
    skipped = decode_clip(path, frames=25, size=16, fps=25, skip_silence=True)
    assert skipped.start_seconds == pytest.approx(2.0, abs=0.05)
    assert np.abs(skipped.audio[800:]).mean() > 0.1


def test_30fps_source_is_resampled_by_timestamp(make_video):
    clip = decode_clip(make_video("thirty.mp4", n_frames=60, fps=30), frames=25, size=16, fps=25)
    # 1 s at 25 fps from a 30 fps source: frames 0..29 sampled, brightness 4*index at the nearest frame
    brightness = clip.video[:, :, :, 0].reshape(25, -1).mean(1)
    expected_index = np.round(np.arange(25) / 25 * 30)
    assert clip.valid_frames == 25
    assert np.corrcoef(brightness, expected_index)[0, 1] > 0.99
    assert brightness[-1] - brightness[0] == pytest.approx(4 * expected_index[-1], abs=8)


def test_variable_frame_rate_uses_timestamps(tmp_path):
    # frames at irregular times; the frame shown at t=1.0 s is the one stamped 0.98 s (index 40)
    times = np.cumsum(np.r_[0, np.tile([0.02, 0.05], 40)])[:80]
    frames = face_frames(80)
    path = write_video(tmp_path / "vfr.mp4", frames, 25, tone(3.0), 16000, timestamps=times)
    clip = decode_clip(path, frames=26, size=16, fps=25)
    idx_expected = int(np.argmin(np.abs(times - 1.0)))
    got = clip.video[25].mean()
    assert got == pytest.approx(frames[idx_expected][:, :, :].mean(), abs=6)


def test_short_clip_is_padded_by_repeating_the_last_frame(make_video):
    clip = decode_clip(make_video("ten.mp4", n_frames=10), frames=16, size=16, fps=25)
    assert clip.valid_frames == 10 and clip.video.shape[0] == 16
    assert np.array_equal(clip.video[10], clip.video[9]) and np.array_equal(clip.video[15], clip.video[9])
    assert np.abs(clip.audio[-1000:]).max() == 0      # audio padded with silence past the end


def test_one_frame_clip(make_video):
    clip = decode_clip(make_video("one.mp4", n_frames=1), frames=8, size=16, fps=25)
    assert clip.valid_frames == 1 and clip.video.shape == (8, 16, 16, 3)


def test_video_without_audio_is_processed_and_flagged(make_video):
    clip = decode_clip(make_video("mute.mp4", audio=False), frames=8, size=16, fps=25)
    assert not clip.has_audio and clip.video.shape == (8, 16, 16, 3)
    assert not clip.audio.any()


def test_portrait_and_grayscale_sources(tmp_path):
    portrait = write_video(tmp_path / "portrait.mp4", [np.full((640, 360, 3), 100, np.uint8)] * 5, 25, tone(0.2), 16000)
    clip = decode_clip(portrait, frames=4, size=32, fps=25)
    assert clip.video.shape == (4, 32, 32, 3)
    gray = write_video(tmp_path / "gray.mp4", [np.full((64, 64, 3), 90, np.uint8)] * 5, 25, None, pix_fmt="gray")
    g = decode_clip(gray, frames=4, size=16, fps=25)
    assert g.video.shape == (4, 16, 16, 3) and abs(int(g.video[0, 8, 8, 0]) - int(g.video[0, 8, 8, 2])) <= 2


@pytest.mark.parametrize("ext", [".flv", ".avi", ".webm", ".mkv"])
def test_other_containers(make_video, ext):
    clip = decode_clip(make_video(f"c{ext}", n_frames=30), frames=8, size=16, fps=25)
    assert clip.video.shape == (8, 16, 16, 3) and clip.has_audio


def test_48khz_stereo_audio_becomes_16khz_mono(make_video):
    clip = decode_clip(make_video("stereo.mp4", n_frames=50, rate=48000, channels=2), frames=25, size=16, fps=25)
    assert clip.audio.shape == (16000,)
    spectrum = np.abs(np.fft.rfft(clip.audio))
    assert np.argmax(spectrum) == pytest.approx(440, abs=3)      # 1 s window: bin index = Hz


def test_long_video_decodes_only_the_window(tmp_path):
    import resource
    import time

    frames = [np.full((480, 640, 3), i % 255, np.uint8) for i in range(0, 25 * 120, 25 * 4)]   # sparse content
    path = tmp_path / "long.mp4"
    # 2 minutes of 640x480 at 25 fps: write frames repeatedly
    from avlib.dataio.media import write_video as wv
    all_frames = (frames[i // 100] for i in range(25 * 120))
    wv(path, list(all_frames), 25, tone(120.0), 16000, crf=35)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    clip = decode_clip(path, frames=16, size=32, fps=25)
    assert time.perf_counter() - start < 5          # stops after the window, not after 2 minutes
    assert clip.video.shape == (16, 32, 32, 3)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
    assert grown_mb < 200


def test_paths_with_spaces_parentheses_and_non_ascii(tmp_path, make_video):
    path = make_video("clip (1) émoji ü.mp4", n_frames=12)
    assert decode_clip(path, frames=4, size=16, fps=25).video.shape == (4, 16, 16, 3)


@pytest.mark.parametrize("kind", ["empty", "text", "truncated", "audio_only"])
def test_unreadable_files_raise_a_decode_error_with_a_reason(tmp_path, make_video, kind):
    if kind == "empty":
        path = tmp_path / "empty.mp4"
        path.write_bytes(b"")
        match = "empty"
    elif kind == "text":
        path = tmp_path / "text.mp4"
        path.write_text("this is not a video\n" * 20)
        match = "not a readable media file"
    elif kind == "truncated":
        good = make_video("good.mp4", n_frames=50)
        data = good.read_bytes()
        path = tmp_path / "half.mp4"
        path.write_bytes(data[: len(data) // 2])    # moov atom (at the end) is lost
        match = "not a readable media file"
    else:
        path = write_video(tmp_path / "audio_only.m4a", None, 25, tone(1.0), 16000)
        match = "audio-only"
    with pytest.raises(DecodeError, match=match):
        decode_clip(path, frames=4, size=16, fps=25)


def test_bytes_corrupted_mid_stream_give_a_clip_or_a_decode_error(tmp_path, make_video):
    good = make_video("good.mp4", n_frames=50)
    data = bytearray(good.read_bytes())
    rng = np.random.default_rng(0)
    for i in rng.integers(len(data) // 4, len(data) // 2, 400):
        data[i] = rng.integers(0, 256)
    path = tmp_path / "corrupt.mp4"
    path.write_bytes(bytes(data))
    try:
        clip = decode_clip(path, frames=8, size=16, fps=25)
    except DecodeError as e:
        assert str(e)
    else:
        assert clip.video.shape == (8, 16, 16, 3) and clip.valid_frames >= 1


def test_leading_silence_is_measured(tmp_path):
    audio = np.concatenate([np.zeros(8000, np.float32), tone(1.0)])
    path = write_video(tmp_path / "sil.mp4", face_frames(40), 25, audio, 16000)
    assert leading_silence_seconds(path) == pytest.approx(0.5, abs=0.04)


def test_mfcc_has_exactly_the_requested_steps():
    assert mfcc_hop(128 / 25, 16000, 200) == 410
    for steps in (200, 50, 7):
        out = compute_mfcc(tone(128 / 25), 16000, 40, steps)
        assert out.shape == (steps, 40) and out.dtype == np.float32 and np.isfinite(out).all()
    silent = compute_mfcc(np.zeros(16000, np.float32), 16000, 40, 20)
    assert np.isfinite(silent).all()


def test_face_crop_follows_the_face_and_falls_back_to_the_centre(tmp_path):
    from avlib.dataio.face import smooth_boxes

    boxes = smooth_boxes([(10, 10, 20), None, (12, 10, 20), None, (90, 90, 20), None, (14, 10, 20)], 7)
    assert boxes.shape == (7, 3)
    assert boxes[1, 0] == pytest.approx(11) and boxes[4, 0] < 20      # interpolated; the lone outlier is filtered
    assert smooth_boxes([None, None], 2) is None
    # no face in a plain gradient: the crop falls back to the centre and keeps the shape
    path = write_video(tmp_path / "noface.mp4", face_frames(12, 48, 80), 25, tone(0.5), 16000)
    clip = decode_clip(path, frames=8, size=16, fps=25, face_crop=True)
    plain = decode_clip(path, frames=8, size=16, fps=25)
    assert clip.video.shape == (8, 16, 16, 3)
    assert np.abs(clip.video.astype(int) - plain.video.astype(int)).mean() < 3
