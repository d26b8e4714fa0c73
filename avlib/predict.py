"""Is this video fake? Score your own files with a trained checkpoint:

    python -m avlib.predict PATH [PATH ...] --checkpoint results/demo/checkpoints/best.pt
        [--csv scores.csv] [--json scores.json] [--windows windows.csv] [--timeline FOLDER]
        [--stride SECONDS] [--max-windows N] [--threshold T] [--calibrate-on REAL_VIDEOS [--target-fpr F]]
        [--device cpu]
        [--max-file-mb MB] [--max-side PIXELS] [--max-duration SECONDS]

PATH may be a file or a folder (searched recursively for video files). Each video is cut into
windows of the length the model was trained on (frames / fps seconds, decoded exactly as
01_preprocess does) every `--stride` seconds (default: one window length, no overlap), the last
aligned to the end of the file: every second is scored, unless `--max-windows` caps the windows
(each row says `duration` and `covered_seconds`, and a warning names a video cut short). P(fake) of the video is the MEAN of its window probabilities (a manipulation
spanning the video raises every window, and one odd window does not decide); the MAX is
reported beside it for videos where only a part may be manipulated. The verdict is the run's
(verdict.json next to the checkpoint folder, fitted by 04_evaluate on validation): P(fake)
calibrated, its threshold, and for a sync model a video whose lips and voice disagree more
than in every real validation clip called fake whatever P(fake) says. --calibrate-on sets the
thresholds on your own real videos instead, at --target-fpr; --threshold overrides the
P(fake) threshold. Unreadable files are reported and the rest scored; the exit status is 1
when any file failed.

Files from strangers: a file larger than --max-file-mb, with frames wider or taller than
--max-side pixels, or lasting longer than --max-duration seconds is refused from its size and
stream header, before any frame is decoded (the header probe itself runs with FFmpeg's
max_pixels at the limit, and so does the decoder, in case the stream grows after its header).
Windows are decoded in one thread, so memory does not grow with the machine's cores.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from avlib.core.runtime import resolve_amp, tune_allocator
from avlib.data.decode import DecodeError, decode_clip
from avlib.data.features import compute_mfcc
from avlib.data.indexers import VIDEO_EXTENSIONS
from avlib.figures.plots import plot_timeline
from avlib.models.detector import inference_model, video_to_model_input
from avlib.scoring.calibration import apply_verdict, domain_verdict
from avlib.scoring.scorer import is_sync_model, load_detector


@dataclass(frozen=True)
class InputLimits:
    """What predict accepts from a file; each limit is a command-line flag."""
    max_file_mb: float = 4096.0     # --max-file-mb: size of the file, MiB
    max_side: int = 4096            # --max-side: width or height of a frame, pixels
    max_duration: float = 3600.0    # --max-duration: duration in the header, seconds


class InputRefused(ValueError):
    """A file is over one of the InputLimits; the message names the limit and its flag."""


def check_input(path: Path, limits: InputLimits) -> float | None:
    """Check `path` against `limits` from its size and stream header, decoding no frame beyond
    the limit; returns its duration in seconds (None when the header has none).

    Raises InputRefused naming the limit and its flag, DecodeError for unreadable files."""
    if not path.is_file():
        raise DecodeError("file not found")
    size_mb = path.stat().st_size / 2**20
    if size_mb > limits.max_file_mb:
        raise InputRefused(f"over --max-file-mb {limits.max_file_mb:g}: the file is {size_mb:,.1f} MiB "
                           f"(nothing was read)")
    side = limits.max_side
    try:     # H.264's probe decodes a frame: max_pixels makes it refuse one over the limit instead
        with av.open(str(path), options={"max_pixels": str(min(side * side, 2**31 - 1))}) as container:
            if not container.streams.video:
                raise DecodeError("no video stream (audio-only file)")
            header = container.streams.video[0].codec_context
            width, height = header.width, header.height
            duration = container.duration / av.time_base if container.duration else None
    except av.error.FFmpegError as e:
        raise DecodeError(f"not a readable media file ({str(e).splitlines()[0][:200]})") from e
    if max(width, height) > side:
        raise InputRefused(f"over --max-side {side}: frames of {width}x{height} pixels (from the stream header; "
                           f"no frame decoded)")
    if not width or not height:
        raise InputRefused(f"frame size unknown at --max-side {side}: the header gives none, and no frame of at "
                           f"most {side}x{side} pixels decodes to tell")
    if duration is not None and duration > limits.max_duration:
        raise InputRefused(f"over --max-duration {limits.max_duration:g}: the file lasts {duration:,.0f} s "
                           f"(no frame decoded)")
    return duration


def expand_paths(paths: list[str]) -> list[Path]:
    """Files as given, folders expanded to the video files below them (sorted)."""
    out = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.suffix.lower() in VIDEO_EXTENSIONS and f.is_file())
        else:
            out.append(p)
    return out


def window_starts(duration: float | None, window_seconds: float, stride: float,
                  max_windows: int | None = None) -> list[float]:
    """Start times of windows that cover the whole of `duration`: one every `stride` seconds,
    and the last aligned to the end (overlapping the one before) so that no second is left out;
    the first `max_windows` only when a cap is asked for. At least one window."""
    if not duration or duration <= window_seconds:
        return [0.0]
    n = int(np.floor((duration - window_seconds) / stride + 1e-9)) + 1
    starts = [round(i * stride, 3) for i in range(n)]
    last = round(duration - window_seconds, 3)
    if starts[-1] < last - 1e-3:
        starts.append(last)
    return starts[:max_windows] if max_windows else starts


def covered_seconds(windows: pd.DataFrame) -> float:
    """Seconds of the video inside at least one scored window (the union of [start, end])."""
    covered, reach = 0.0, -np.inf
    for start, end in sorted(zip(windows["start"], windows["end"])):
        covered += max(0.0, end - max(start, reach))
        reach = max(reach, end)
    return round(covered, 3)


def score_file(model, path: Path, cfg: dict, device, *, stride: float | None = None, max_windows: int | None = None,
               limits: InputLimits = InputLimits(), amp: bool = False) -> pd.DataFrame:
    """One row per window: start, end, p_fake, has_audio, and for a sync model the estimated
    audio-visual offset (offset_frames, offset_ms; positive when the audio lags the video),
    its confidence (peak minus median similarity, as SyncNet) and the sync score (under bf16 autocast with `amp`, for a
    model made by inference_model(amp=True)). Raises InputRefused for a file over `limits`
    (checked before decoding), DecodeError for unreadable files."""
    sync = is_sync_model(model)
    window_seconds = cfg["frames"] / cfg["fps"]
    duration = check_input(path, limits)
    rows = []
    for start in window_starts(duration, window_seconds, stride or window_seconds, max_windows):
        clip = decode_clip(path, frames=cfg["frames"], size=cfg["size"], fps=cfg["fps"],
                           sample_rate=cfg.get("sample_rate", 16000), face_crop=cfg.get("face_crop", False),
                           offset=start, threads=1, max_pixels=limits.max_side ** 2)
        mfcc = compute_mfcc(clip.audio, cfg.get("sample_rate", 16000), cfg["n_mfcc"], cfg["mfcc_steps"])
        video = torch.from_numpy(np.ascontiguousarray(clip.video.transpose(3, 0, 1, 2)))[None]
        inputs = [video_to_model_input(video, device), torch.from_numpy(mfcc)[None].to(device)]
        if sync:
            inputs.append(torch.from_numpy(np.ascontiguousarray(clip.audio, np.float32))[None].to(device))
        with torch.no_grad(), torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=amp):
            out = model(*inputs, with_sync=True) if sync else model(*inputs)
        logits, sync_out = out if sync else (out, None)
        row = {"start": start, "end": round(start + window_seconds, 3),
               "p_fake": float(torch.softmax(logits.float(), 1)[0, 1]), "has_audio": clip.has_audio,
               "valid_frames": clip.valid_frames}
        if sync_out is not None:     # positive: the audio lags the video
            offset = int(sync_out["offset"][0])
            row.update(offset_frames=offset, offset_ms=round(1000.0 * offset / cfg["fps"], 1),
                       offset_confidence=round(float(sync_out["confidence"][0]), 4),
                       sync_score=round(float(sync_out["score"][0]), 4))
        rows.append(row)
        if clip.valid_frames < cfg["frames"]:
            break
    if not rows:
        raise DecodeError("no window could be decoded")
    return pd.DataFrame(rows).assign(duration=round(duration, 3) if duration else np.nan)


def run_verdict(checkpoint: Path) -> dict:
    """The verdict 04_evaluate fitted for the checkpoint's run (verdict.json beside its
    checkpoints folder: calibrator, threshold, sync threshold); for a run evaluated before
    verdicts existed, its metrics.json threshold on uncalibrated P(fake); else 0.5."""
    run = checkpoint.resolve().parent.parent
    if (run / "verdict.json").is_file():
        return json.loads((run / "verdict.json").read_text())
    threshold = float(json.loads((run / "metrics.json").read_text())["threshold"]) \
        if (run / "metrics.json").is_file() else 0.5
    return {"calibration": {"method": "none"}, "threshold": threshold, "sync": None, "source": "metrics.json"}


def video_scores(path: Path, windows: pd.DataFrame) -> dict:
    """A video's row before the verdict: its windows' mean P(fake) as the model gives it, and
    their mean sync score for a sync model (means: one odd window does not decide)."""
    row = {"path": str(path), "clip_id": str(path), "identity": "", "label": 0,
           "p_fake": float(windows["p_fake"].mean()), "windows": len(windows)}
    if "sync_score" in windows:
        row["sync_score"] = float(windows["sync_score"].mean())
    return row


def calibrate_on(model, folder: list[str], verdict: dict, cfg: dict, device, *, target_fpr: float, args, limits,
                 amp: bool) -> dict:
    """The verdict with thresholds set on the user's own real videos at `target_fpr`
    (avlib.scoring.calibration.domain_verdict: half of them set, the other half shows the rate);
    prints what it set. Raises SystemExit when no video of the folder could be scored."""
    rows = []
    for path in expand_paths(folder):
        try:
            rows.append(video_scores(path, score_file(model, path, cfg, device, stride=args.stride,
                                                      max_windows=args.max_windows, limits=limits, amp=amp)))
        except (DecodeError, InputRefused, av.error.FFmpegError) as e:
            print(f"calibration video {path} not used: {type(e).__name__}: {e}", file=sys.stderr)
    if len(rows) < 2:
        raise SystemExit(f"--calibrate-on: fewer than 2 readable real videos in {', '.join(folder)}")
    real = apply_verdict(verdict, pd.DataFrame(rows))
    domain, report = domain_verdict(verdict, real, target_fpr=target_fpr)
    held = report.get("held_out_real_called_fake")
    print(f"thresholds set on {report['n_set']} of your {len(rows)} real videos at {target_fpr:.1%}: "
          f"P(fake) {domain['threshold']:.3f}" + (f", sync {domain['sync']['threshold']:.3f}" if domain.get("sync") else "")
          + (f"; the other {report['n_held_out']}: {held:.1%} called fake" if held is not None else ""),
          file=sys.stderr)
    return domain


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", help="video files or folders")
    parser.add_argument("--checkpoint", required=True, type=Path, help="best.pt or last.pt written by 03_train")
    parser.add_argument("--csv", type=Path, help="write one row per video here")
    parser.add_argument("--json", type=Path, help="write the per-video results as JSON here")
    parser.add_argument("--windows", type=Path, help="write one row per window here")
    parser.add_argument("--timeline", type=Path, help="folder for one P(fake)-over-time PNG per video")
    parser.add_argument("--stride", type=_positive(float),
                        help="seconds between window starts (default: the window length)")
    parser.add_argument("--max-windows", type=_positive(int),
                        help="score only the first N windows of each video (default: every window, the whole video)")
    parser.add_argument("--threshold", type=float, help="decision threshold on calibrated P(fake) (default: the "
                        "run's, from its verdict.json)")
    parser.add_argument("--calibrate-on", nargs="+", metavar="PATH",
                        help="real videos of your own domain (files or folders): the thresholds are set on them at "
                             "--target-fpr, so that no fake of that domain is needed")
    parser.add_argument("--target-fpr", type=_fraction, default=0.05,
                        help="with --calibrate-on: the rate of your real videos that may be called fake (default "
                             "%(default)g; a sync model gives half to its sync evidence)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", default="auto", choices=["auto", "true", "false"],
                        help="bf16 autocast; auto (default): only where the hardware computes in bf16 natively")
    parser.add_argument("--max-file-mb", type=_positive(float), default=InputLimits.max_file_mb,
                        help="refuse files larger than this many MiB (default %(default)g)")
    parser.add_argument("--max-side", type=_positive(int), default=InputLimits.max_side,
                        help="refuse frames wider or taller than this many pixels (default %(default)d)")
    parser.add_argument("--max-duration", type=_positive(float), default=InputLimits.max_duration,
                        help="refuse files lasting longer than this many seconds (default %(default)g)")
    args = parser.parse_args(argv)
    limits = InputLimits(args.max_file_mb, args.max_side, args.max_duration)

    model, state = load_detector(args.checkpoint, args.device)
    cfg = state.get("preprocess")
    if not cfg:
        parser.error(f"{args.checkpoint} does not record its preprocessing settings (written by an older avlib)")
    verdict = run_verdict(args.checkpoint)
    if verdict.get("epoch") is not None and verdict.get("epoch") != state.get("epoch"):
        print(f"warning: the run's verdict.json was fitted for {verdict.get('checkpoint')} of epoch {verdict['epoch']}, "
              f"and {args.checkpoint.name} holds epoch {state.get('epoch')}: rerun 04_evaluate for these weights",
              file=sys.stderr)
    device = next(model.parameters()).device
    tune_allocator()
    amp = resolve_amp("auto" if args.amp == "auto" else args.amp == "true", device,
                      log=lambda line: print(line, file=sys.stderr))
    model = inference_model(model, amp=amp)   # BatchNorm folded: same scores, less work
    if args.calibrate_on:
        verdict = calibrate_on(model, args.calibrate_on, verdict, cfg, device, target_fpr=args.target_fpr, args=args,
                               limits=limits, amp=amp)
    if args.threshold is not None:
        verdict = {**verdict, "threshold": args.threshold}
    threshold = verdict["threshold"]
    results, all_windows = [], []
    for path in tqdm(expand_paths(args.paths), desc="scoring", unit="video", disable=not sys.stderr.isatty()):
        try:
            windows = score_file(model, path, cfg, device, stride=args.stride, max_windows=args.max_windows,
                                 limits=limits, amp=amp)
        except Exception as e:  # noqa: BLE001 - one unreadable file must not stop the others; it is reported
            results.append({"path": str(path), "p_fake": np.nan, "p_fake_max": np.nan, "label": "ERROR",
                            "windows": 0, "error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"})
            continue
        windows = apply_verdict(verdict, windows.assign(label=0))
        video = apply_verdict(verdict, pd.DataFrame([video_scores(path, windows.assign(p_fake=windows["p_fake_raw"]))]))
        decided = video.iloc[0]
        duration = float(windows["duration"].iloc[0])
        covered = covered_seconds(windows)
        if duration == duration and covered < duration - 0.05:          # NaN: no duration in the header
            print(f"warning: {path}: scored {covered:.1f} s of its {duration:.1f} s"
                  + (f" (--max-windows {args.max_windows})" if args.max_windows else ""), file=sys.stderr)
        results.append({"path": str(path), "p_fake": round(float(decided["p_fake"]), 4),
                        "p_fake_max": round(float(windows["p_fake"].max()), 4),
                        "label": "FAKE" if decided["pred"] else "REAL", "windows": len(windows),
                        "duration": duration, "covered_seconds": covered, "error": "",
                        **({"sync_score": round(float(decided["sync_score"]), 4),
                            "offset_ms_median": float(windows["offset_ms"].median())} if "offset_ms" in windows else {})})
        all_windows.append(windows.drop(columns=["label"]).assign(path=str(path)))
        if args.timeline:
            plot_timeline(windows, args.timeline / f"{path.stem}_timeline.png", path.name, threshold)
    table = pd.DataFrame(results)
    with pd.option_context("display.max_colwidth", 60, "display.width", 160):
        sync = verdict.get("sync")
        print(f"threshold {threshold:.3f} on calibrated P(fake) ({verdict['calibration']['method']} calibration)"
              + (f"; sync threshold {sync['threshold']:.3f}" if sync else ""))
        print(table.to_string(index=False))
    for row in table[table["label"] == "ERROR"].itertuples():
        print(f"{row.path}: {row.error}", file=sys.stderr)
    if args.csv:
        table.to_csv(args.csv, index=False)
    if args.json:
        args.json.write_text(table.to_json(orient="records", indent=2))
    if args.windows and all_windows:
        pd.concat(all_windows).to_csv(args.windows, index=False)
    return 1 if (table["label"] == "ERROR").any() else 0


def _fraction(text: str) -> float:
    """An argparse type: a rate in (0, 1) (5 % is 0.05)."""
    value = float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be a rate between 0 and 1 (5 % is 0.05), got {text}")
    return value


def _positive(kind):
    """An argparse type: a number of `kind` > 0 (argparse names the flag when it is not)."""
    def parse(text: str):
        value = kind(text)
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value
    parse.__name__ = kind.__name__
    return parse


if __name__ == "__main__":
    sys.exit(main())
