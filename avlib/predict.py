"""Is this video fake? Score your own files with a trained checkpoint:

    python -m avlib.predict PATH [PATH ...] --checkpoint results/demo_sync/checkpoints/best.pt
        [--csv scores.csv [--resume]] [--json scores.json] [--windows windows.csv] [--timeline FOLDER]
        [--stride SECONDS] [--max-windows N] [--batch-size N] [--workers N] [--shard K/N]
        [--threshold T] [--calibrate-on REAL_VIDEOS [--target-fpr F]] [--device cpu]
        [--max-file-mb MB] [--max-side PIXELS] [--max-duration SECONDS]

PATH may be a file or a folder (searched recursively for video files). Each video is cut into
windows of the length the model was trained on (frames / fps seconds, decoded exactly as
01_preprocess does) every `--stride` seconds (default: one window length, no overlap), the last
aligned to the end of the file: every second is scored, unless `--max-windows` caps the windows
(each row says `duration` and `covered_seconds`, and a warning names a video cut short). P(fake)
of the video is the MEAN of its window probabilities (a manipulation spanning the video raises
every window, and one odd window does not decide); the MAX is reported beside it for videos
where only a part may be manipulated. The verdict is the run's (verdict.json next to the
checkpoint folder, fitted by 04_evaluate on validation): P(fake) calibrated, its threshold,
and for a sync model a video whose lips and voice disagree more than in every real validation
clip called fake whatever P(fake) says. --calibrate-on sets the thresholds on your own real
videos instead, at --target-fpr; --threshold overrides the P(fake) threshold. Unreadable files
are reported and the rest scored; the exit status is 1 when any file failed.

Large folders: each file is decoded once, from its start (avlib.dataio.stream), in `--workers`
processes ahead of the model; windows are scored `--batch-size` at a time across files
(avlib.scoring.videos), so memory holds a few windows per worker whatever the videos' length.
Each video's row is appended to --csv as soon as it is done: after a kill, `--resume` keeps
them and scores the rest. `--shard K/N` scores every N-th video from the K-th (K from 0) of the
sorted list, for array jobs on a cluster: the N files together hold one run's rows. On a
terminal, a progress line at most every 15 s: videos done, seconds of video per second, ETA.

Files from strangers: a file larger than --max-file-mb, with frames wider or taller than
--max-side pixels, or lasting longer than --max-duration seconds is refused from its size and
stream header, before any frame is decoded (the header probe itself runs with FFmpeg's
max_pixels at the limit, and so does the decoder, in case the stream grows after its header).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import av
import numpy as np
import pandas as pd

from avlib.core.progress import ProgressLines
from avlib.core.runtime import resolve_amp, tune_allocator, usable_cores
from avlib.dataio.decode import DecodeError
from avlib.dataio.inputs import InputLimits, InputRefused, expand_paths, parse_shard, take_shard
from avlib.figures.plots import plot_timeline
from avlib.models.detector import inference_model
from avlib.scoring.calibration import apply_verdict, domain_verdict, too_few_clips
from avlib.scoring.scorer import load_detector
from avlib.scoring.videos import WindowPlan, score_videos, window_starts  # noqa: F401  (window_starts: also for users)


def covered_seconds(windows: pd.DataFrame) -> float:
    """Seconds of the video inside at least one scored window (the union of [start, end])."""
    covered, reach = 0.0, -np.inf
    for start, end in sorted(zip(windows["start"], windows["end"])):
        covered += max(0.0, end - max(start, reach))
        reach = max(reach, end)
    return round(covered, 3)


def score_file(model, path: Path, cfg: dict, device, *, stride: float | None = None, max_windows: int | None = None,
               limits: InputLimits = InputLimits(), amp: bool = False, batch_size: int = 16) -> pd.DataFrame:
    """One row per window of one file (avlib.scoring.videos.score_windows' columns), decoded once
    and scored `batch_size` windows at a time. Raises InputRefused for a file over `limits`
    (checked before decoding), DecodeError for an unreadable one."""
    got = {}
    score_videos(model, [path], WindowPlan(cfg, stride, max_windows, limits), device, batch_size=batch_size,
                 amp=amp, on_video=lambda p, windows, error: got.update(windows=windows, error=error))
    if got["error"]:
        kind, _, reason = got["error"].partition(": ")
        raise (InputRefused if kind == "InputRefused" else DecodeError)(reason)
    return got["windows"]


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
                                                      max_windows=args.max_windows, limits=limits, amp=amp,
                                                      batch_size=args.batch_size)))
        except (DecodeError, InputRefused, av.error.FFmpegError) as e:
            print(f"calibration video {path} not used: {type(e).__name__}: {e}", file=sys.stderr)
    if len(rows) < 2:
        raise SystemExit(f"--calibrate-on: fewer than 2 readable real videos in {', '.join(folder)}")
    real = apply_verdict(verdict, pd.DataFrame(rows))
    domain, report = domain_verdict(verdict, real, target_fpr=target_fpr)
    held = report.get("held_out_real_called_fake")
    p_side = "off (above 1)" if domain["threshold"] > 1 else f"{domain['threshold']:.3f}"
    print(f"thresholds set on {report['n_set']} of your {len(rows)} real videos at {target_fpr:.1%}: "
          f"P(fake) {p_side}" + (f", sync {domain['sync']['threshold']:.3f}" if domain.get("sync") else "")
          + (f"; the other {report['n_held_out']}: {held:.1%} called fake" if held is not None else "")
          + too_few_clips(report), file=sys.stderr)
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
                             "%(default)g; for a sync model one test over P(fake) and its sync evidence)")
    parser.add_argument("--batch-size", type=_positive(int), default=16,
                        help="windows scored at a time, across videos (default %(default)d)")
    parser.add_argument("--workers", type=int, default=DEFAULT_WORKERS,
                        help="processes decoding videos ahead of the model (0: decode in this process; default "
                             "%(default)d: the cores beyond two, at most 4, so that the model keeps two)")
    parser.add_argument("--resume", action="store_true",
                        help="with --csv: keep the videos already in it and score only the others")
    parser.add_argument("--shard", type=parse_shard, metavar="K/N",
                        help="score only the K-th of N shares of the videos (K from 0; e.g. SLURM_ARRAY_TASK_ID/N): "
                             "the N outputs together are one run's")
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
    if args.resume and not args.csv:
        parser.error("--resume continues the file given with --csv: name it")
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
    paths = take_shard(expand_paths(args.paths), args.shard)
    out = ResultsFile(args.csv, resume=args.resume)
    todo = [p for p in paths if str(p) not in out.done]
    if out.done:
        print(f"resuming: {len(paths) - len(todo)} of {len(paths)} videos already in {args.csv}", file=sys.stderr)
    windows_file = ResultsFile(args.windows, resume=args.resume, columns=None) if args.windows else None
    progress = VideoProgress(len(todo), enabled=sys.stderr.isatty())

    def finished(path: Path, windows: pd.DataFrame | None, error: str) -> None:
        if windows is None:
            out.append({"path": str(path), "label": "ERROR", "windows": 0, "error": error})
            progress.update(0.0)
            return
        row, windows = video_verdict(path, windows, verdict)
        if row["covered_seconds"] < row["duration"] - 0.05:          # False for NaN: no duration in the header
            print(f"warning: {path}: scored {row['covered_seconds']:.1f} s of its {row['duration']:.1f} s"
                  + (f" (--max-windows {args.max_windows})" if args.max_windows else ""), file=sys.stderr)
        out.append(row)
        if windows_file is not None:
            windows_file.append_frame(windows.drop(columns=["label"]).assign(path=str(path)))
        if args.timeline:
            plot_timeline(windows, args.timeline / f"{path.stem}_timeline.png", path.name, threshold)
        progress.update(covered_seconds(windows))

    score_videos(model, todo, WindowPlan(cfg, args.stride, args.max_windows, limits), device,
                 batch_size=args.batch_size, workers=args.workers, amp=amp, on_video=finished)
    table = out.table()
    with pd.option_context("display.max_colwidth", 60, "display.width", 160):
        sync = verdict.get("sync")
        print(f"threshold {threshold:.3f} on calibrated P(fake) ({verdict['calibration']['method']} calibration)"
              + (f"; sync threshold {sync['threshold']:.3f}" if sync else ""))
        print(table.to_string(index=False))
    for row in table[table["label"] == "ERROR"].itertuples():
        print(f"{row.path}: {row.error}", file=sys.stderr)
    if args.json:
        args.json.write_text(table.to_json(orient="records", indent=2))
    return 1 if (table["label"] == "ERROR").any() else 0


# On 2 cores, decoding workers slowed predict down (46 against 54 s of video per second at 224x224, 12 against
# 15 at 720x720: python -m avlib.bench predict): the model and the decoders shared the two cores
DEFAULT_WORKERS = max(0, min(4, usable_cores() - 2))
RESULT_COLUMNS = ["path", "p_fake", "p_fake_max", "label", "windows", "duration", "covered_seconds", "sync_score",
                  "offset_ms_median", "error"]


def video_verdict(path: Path, windows: pd.DataFrame, verdict: dict) -> tuple[dict, pd.DataFrame]:
    """(the video's row, its windows with calibrated P(fake) and the verdict per window). The
    video's verdict is taken on its windows' mean P(fake) (and mean sync score)."""
    windows = apply_verdict(verdict, windows.assign(label=0))
    video = apply_verdict(verdict, pd.DataFrame([video_scores(path, windows.assign(p_fake=windows["p_fake_raw"]))]))
    decided = video.iloc[0]
    row = {"path": str(path), "p_fake": round(float(decided["p_fake"]), 4),
           "p_fake_max": round(float(windows["p_fake"].max()), 4), "label": "FAKE" if decided["pred"] else "REAL",
           "windows": len(windows), "duration": float(windows["duration"].iloc[0]),
           "covered_seconds": covered_seconds(windows), "error": ""}
    if "sync_score" in windows:
        row.update(sync_score=round(float(decided["sync_score"]), 4),
                   offset_ms_median=float(windows["offset_ms"].median()))
    return row, windows


class ResultsFile:
    """A CSV that gets one row per video as soon as the video is done (flushed and synced to
    disk), so that a killed run loses only the videos in flight; with `resume`, the rows already
    there are kept (a last line cut by the kill is dropped) and their paths are `done`. Why CSV,
    not Parquet: a row appended is complete on its own and readable with any tool, where a
    Parquet file is written whole or in row groups. None for no file: rows are kept in memory."""

    def __init__(self, path: Path | None, *, resume: bool = False, columns: list[str] | None = RESULT_COLUMNS):
        self.path, self.columns, self.rows = path, columns, []
        self.done: set[str] = set()
        if path is None:
            return
        if resume and path.is_file() and path.stat().st_size:
            text = path.read_text()
            if not text.endswith("\n"):                      # the line a kill cut short
                path.write_text(text[: text.rfind("\n") + 1])
            if self.columns is not None:
                self.done = set(pd.read_csv(path, keep_default_na=False)["path"].astype(str))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("")

    def append(self, row: dict) -> None:
        self.append_frame(pd.DataFrame([{c: row.get(c, "") for c in self.columns}]))

    def append_frame(self, frame: pd.DataFrame) -> None:
        self.rows.append(frame)
        if self.path is None:
            return
        header = self.path.stat().st_size == 0
        with open(self.path, "a", encoding="utf-8") as f:
            frame.to_csv(f, index=False, header=header)
            f.flush()
            os.fsync(f.fileno())

    def table(self) -> pd.DataFrame:
        if self.path is not None:
            return pd.read_csv(self.path, keep_default_na=False) if self.path.stat().st_size else \
                pd.DataFrame(columns=self.columns)
        return pd.concat(self.rows, ignore_index=True) if self.rows else pd.DataFrame(columns=self.columns)


class VideoProgress(ProgressLines):
    """ProgressLines over videos that also counts the seconds of video scored: videos done,
    seconds of video per second, ETA; a line at most every 15 s."""

    def __init__(self, total: int, **kwargs):
        super().__init__("predict", total, unit="videos", **kwargs)
        self.seconds = 0.0

    def update(self, seconds: float = 0.0) -> None:
        self.seconds += seconds
        super().update(1)

    def line(self, now: float | None = None) -> str:
        elapsed = (self.clock() if now is None else now) - self.start
        return (f"{super().line(now)}; {self.seconds:,.0f} s of video, "
                f"{self.seconds / elapsed if elapsed > 0 else float('nan'):.1f} s of video per second")


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
