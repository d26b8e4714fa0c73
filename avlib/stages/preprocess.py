"""01_preprocess: index (generating the synthetic corpus first when asked), split, decode, cache."""
from __future__ import annotations

from avlib.core.errors import MissingInputError
from avlib.core.locking import writer_lock
from avlib.core.paths import default_cache_dir, portable, resolve, run_dir, write_json
from avlib.dataio.indexers import index_dataset
from avlib.dataio.preprocess import preprocess, settings, write_dummy_cache
from avlib.dataio.synthetic import CorpusSpec, generate_corpus
from avlib.stages.common import stage


@stage("01_preprocess")
def preprocess_stage(p, *, progress: bool = True) -> dict:
    """Index (generating the synthetic corpus first when asked), split, decode and cache;
    writes results/<run_name>/preprocess.json and returns it."""
    config = settings(frames=p.frames, size=p.size, fps=p.fps, n_mfcc=p.n_mfcc, mfcc_steps=p.mfcc_steps,
                      window=p.window, skip_silence=p.skip_silence, face_crop=p.face_crop)
    cache = resolve(p.cache_dir) if p.cache_dir else default_cache_dir(
        p.dataset, p.frames, p.size, p.fps, p.n_mfcc, p.mfcc_steps, "" if p.dataset == "dummy" else p.data_dir)
    part = f"shard-{p.shard}-of-{p.num_shards}" if p.num_shards > 1 else ""    # shards of one corpus write side by side
    with writer_lock(run_dir(p.results_dir, p.run_name), "01_preprocess", part=part), \
            writer_lock(cache, "01_preprocess", part=part):
        if p.dataset == "dummy":
            report = write_dummy_cache(cache, config, n=p.limit or 48, seed=p.seed, val_fraction=p.val_fraction,
                                       test_fraction=p.test_fraction, real_only=p.real_only)
        else:
            data = resolve(p.data_dir)
            if p.dataset == "synthetic":
                generate_corpus(data, CorpusSpec(identities=p.identities, seed=p.seed, styles=p.corpus_styles,
                                                 audio_swap=p.audio_swap, real_only=p.real_only),
                                workers=max(p.workers, 1),
                                progress=progress)
            elif not data.is_dir():
                raise MissingInputError(f"parameter `data_dir`: {data} does not exist; put the {p.dataset} files "
                                        f"there (see README, 'Running on the real datasets')")
            records = index_dataset(p.dataset, data)
            if p.real_only:                      # a calibration set of the target domain: its real clips
                records = records[records["label"] == 0].reset_index(drop=True)
            if p.limit and p.limit < len(records):
                records = records.sample(n=p.limit, random_state=p.seed).sort_values("path").reset_index(drop=True)
            report = preprocess(records, data, cache, config, workers=p.workers, shard=p.shard,
                                num_shards=p.num_shards, val_fraction=p.val_fraction, test_fraction=p.test_fraction,
                                seed=p.seed, progress=progress)
        report = {"run_name": p.run_name, "dataset": p.dataset, "data_dir": str(p.data_dir), **report,
                  "cache_dir": portable(report["cache_dir"])}
        write_json(run_dir(p.results_dir, p.run_name) / "preprocess.json", report)
        return report
