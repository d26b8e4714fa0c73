"""The synthetic corpus: read by the fakeavceleb indexer, deterministic, resumable, checked."""
import pytest

from avlib.indexers import index_dataset, read_fakeavceleb_metadata
from avlib.synthetic import CorpusSpec, generate_corpus

SPEC = CorpusSpec(identities=3, seconds=0.6, size=32)


def test_corpus_has_fakeavcelebs_layout_and_quirks(tmp_path):
    root = generate_corpus(tmp_path, SPEC, workers=1, progress=False)
    records = index_dataset("fakeavceleb", tmp_path)
    assert len(records) == 15
    assert records["category"].value_counts().to_dict() == {"RVRA": 6, "RVFA": 3, "FVRA": 3, "FVFA": 3}
    header = (root / "meta_data.csv").read_text().splitlines()[0]
    assert header.endswith("path,")
    assert len(read_fakeavceleb_metadata(root / "meta_data.csv")) == 15
    assert (records["method"] != "unknown").all()


def test_same_seed_same_bytes_and_a_killed_run_is_completed(tmp_path):
    a = generate_corpus(tmp_path / "a", SPEC, workers=1, progress=False)
    b = generate_corpus(tmp_path / "b", SPEC, workers=2, progress=False)    # other clip-to-worker order
    files = sorted(p.relative_to(a) for p in a.rglob("*.mp4"))
    assert sorted(p.relative_to(b) for p in b.rglob("*.mp4")) == files
    assert [(a / f).read_bytes() for f in files] == [(b / f).read_bytes() for f in files]
    victims = [a / files[i] for i in (1, 4, 9, 13)]
    originals = [v.read_bytes() for v in victims]
    for v in victims:
        v.unlink()
    (victims[0].parent / f".{victims[0].stem}.tmp.mp4").write_bytes(b"half")   # what a kill mid-write leaves
    generate_corpus(tmp_path / "a", SPEC, workers=1, progress=False)        # each victim first in its worker
    assert [v.read_bytes() for v in victims] == originals
    assert sorted(p.relative_to(a) for p in a.rglob("*.mp4")) == files      # completed, nothing duplicated


@pytest.mark.parametrize("spec,match", [(CorpusSpec(identities=0), "identities"),
                                        (CorpusSpec(seconds=-1.0), "seconds")])
def test_parameters_that_cannot_make_a_corpus(tmp_path, spec, match):
    with pytest.raises(ValueError, match=match):
        generate_corpus(tmp_path, spec, progress=False)


def test_data_dir_that_is_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(NotADirectoryError, match="data_dir"):
        generate_corpus(tmp_path / "f", SPEC, progress=False)
