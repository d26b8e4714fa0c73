"""Temporal localisation AP/AR against values worked out by hand on tiny cases.

Conventions being tested (see avlib/scoring/segment_metrics.py): a match needs IoU > t (strict);
AP ranks all proposals of all videos together and sums (recall_k - recall_{k-1}) * max precision
at rank >= k for k >= 2 only, as the official LAV-DF / AV-Deepfake1M code does; AR keeps the N
most confident proposals per video and pools recalled segments over all videos.
"""
import math

import numpy as np
import pytest

from avlib.scoring.segment_metrics import (
    average_precision,
    average_recall,
    challenge_score,
    iou_1d,
    localisation_report,
)


def test_iou_1d_by_hand():
    ious = iou_1d([[0, 2], [2, 4], [1, 3]], [[0, 2], [1, 2]])
    # [0,2]: vs [0,2] 2/2 = 1;       vs [1,2] 1/2
    # [2,4]: touches [0,2] at 2 -> 0; touches [1,2] at 2 -> 0
    # [1,3]: vs [0,2] 1/3;           vs [1,2] 1/2
    np.testing.assert_allclose(ious, [[1, 0.5], [0, 0], [1 / 3, 0.5]])
    assert iou_1d(np.zeros((0, 2)), [[0, 1]]).shape == (0, 1)
    assert iou_1d([[1, 1]], [[1, 1]])[0, 0] == 0.0          # zero union: 0, never a match


def test_perfect_prediction():
    truths = {"a": [[0, 1], [2, 3]], "b": [[4, 6]]}
    proposals = {"a": [[0.9, 0, 1], [0.8, 2, 3]], "b": [[0.7, 4, 6]]}
    # AR: every segment has an exact proposal -> recall 1 at every IoU threshold and every N
    assert average_recall(proposals, truths, 2) == 1.0
    assert average_recall(proposals, truths, 100) == 1.0
    # AP: TP TP TP, L = 3 -> recall 1/3, 2/3, 1, precision 1, 1, 1; the official sum starts at
    # rank 2: (2/3 - 1/3) * 1 + (1 - 2/3) * 1 = 2/3, i.e. 1 - 1/L rather than 1.0
    for t in (0.5, 0.75, 0.95):
        assert average_precision(proposals, truths, t) == pytest.approx(2 / 3)
    # one segment, one exact proposal: no rank 2 -> AP 0.0 (official avdeepfake1m 0.0.4 agrees)
    assert average_precision({"a": [[0.9, 0, 1]]}, {"a": [[0, 1]]}, 0.5) == 0.0


def test_ar_at_one_is_not_one_when_a_video_has_more_segments():
    truths = {"a": [[0, 1], [2, 3]], "b": [[4, 6]]}
    proposals = {"a": [[0.9, 0, 1], [0.8, 2, 3]], "b": [[0.7, 4, 6]]}
    # N = 1: a keeps [0,1] (1 of 2 segments), b keeps [4,6] (1 of 1) -> pooled 2 of 3
    assert average_recall(proposals, truths, 1) == pytest.approx(2 / 3)


def test_duplicate_proposal_of_one_segment_is_a_false_positive():
    truths = {"a": [[0, 1], [3, 4]]}
    proposals = {"a": [[0.9, 0, 1], [0.8, 0, 1], [0.7, 3, 4]]}
    # [0,1] claims the 0.9 row; the 0.8 copy is left unmatched -> TP FP TP
    # recall .5 .5 1, precision 1 .5 2/3; AP = (.5-.5)*max(.5,2/3) + (1-.5)*2/3 = 1/3
    assert average_precision(proposals, truths, 0.5) == pytest.approx(1 / 3)
    # without the copy: TP TP -> (1 - .5) * 1 = 0.5
    assert average_precision({"a": [[0.9, 0, 1], [0.7, 3, 4]]}, truths, 0.5) == pytest.approx(0.5)
    # AR has no one-to-one matching and the copy costs nothing: both segments found by the top 3
    assert average_recall(proposals, truths, 3) == 1.0


def test_proposals_are_ranked_across_videos():
    truths = {"a": [[0, 1]], "b": [[0, 1]]}
    # global order 0.9 (a, TP), 0.6 (b, TP), 0.3 (a, FP): recall .5 1 1, precision 1 1 2/3
    # AP = (1 - .5) * 1 + (1 - 1) * 2/3 = 0.5   (video-by-video order TP FP TP would give 1/3)
    proposals = {"a": [[0.9, 0, 1], [0.3, 5, 6]], "b": [[0.6, 0, 1]]}
    assert average_precision(proposals, truths, 0.5) == pytest.approx(0.5)
    # b's hit now below a's miss: TP FP TP -> recall .5 .5 1, precision 1 .5 2/3
    # AP = 0 * max(.5, 2/3) + .5 * 2/3 = 1/3
    proposals["b"] = [[0.2, 0, 1]]
    assert average_precision(proposals, truths, 0.5) == pytest.approx(1 / 3)


def test_real_video_without_segments_only_adds_false_positives():
    truths = {"fake": [[0, 2]], "real": []}
    proposals = {"fake": [[0.5, 0, 2]], "real": [[0.9, 0, 1], [0.8, 1, 2]]}
    # ranking 0.9 FP, 0.8 FP, 0.5 TP; L = 1: recall 0 0 1, precision 0 0 1/3
    # AP = (0-0)*1/3 + (1-0)*1/3 = 1/3
    assert average_precision(proposals, truths, 0.5) == pytest.approx(1 / 3)
    # the real video has no segment to recall: AR@1 = 1 of 1
    assert average_recall(proposals, truths, 1) == 1.0


def test_touching_segments_and_strict_iou_threshold():
    truths = {"a": [[0, 1], [1, 2]]}
    # [0,2] overlaps each true segment with IoU exactly 1/2; [1,2] is exact on the second and
    # touches the first (IoU 0)
    proposals = {"a": [[0.9, 0, 2], [0.8, 1, 2]]}
    # IoU 0.5 is not > 0.5: FP TP, recall 0 .5, precision 0 .5 -> AP = (.5 - 0) * .5 = 0.25
    assert average_precision(proposals, truths, 0.5) == pytest.approx(0.25)
    # at 0.4 [0,1] claims [0,2], [1,2] claims [1,2]: TP TP -> (1 - .5) * 1 = 0.5
    assert average_precision(proposals, truths, 0.4) == pytest.approx(0.5)
    # AR@1 keeps only [0,2]: at 0.5 nothing (0.5 is not > 0.5); at 0.4 it recalls BOTH segments
    assert average_recall(proposals, truths, 1, [0.5]) == 0.0
    assert average_recall(proposals, truths, 1, [0.4]) == 1.0


def test_ar_keeps_top_n_by_confidence_and_pools_segments():
    truths = {"a": [[0, 1], [2, 3], [4, 5]], "b": [[0, 2]]}
    proposals = {
        "a": [[0.9, 0, 1], [0.8, 2, 3], [0.7, 4, 5], [0.6, 10, 11]],
        "b": [[0.4, 0, 2], [0.95, 5, 6]],          # unsorted: the 0.95 miss ranks first
    }
    # exact hits (IoU 1) pass every threshold, so each AR is one pooled recall
    # N=1: a 1 of 3, b 0 of 1 ([5,6] is b's most confident) -> 1/4
    assert average_recall(proposals, truths, 1) == pytest.approx(1 / 4)
    # N=2: a 2, b 1 -> 3/4 (a per-video mean would be (2/3 + 1) / 2 = 5/6)
    assert average_recall(proposals, truths, 2) == pytest.approx(3 / 4)
    # N=3 and N larger than any video's proposal count keep everything -> 4/4
    assert average_recall(proposals, truths, 3) == 1.0
    assert average_recall(proposals, truths, 100) == 1.0


def test_ar_averages_over_the_ten_iou_thresholds():
    # IoU 2.5/4 = 0.625 > 0.5, 0.55, 0.6 only: 3 of the 10 thresholds 0.5:0.05:0.95
    assert average_recall({"a": [[0.9, 0, 2.5]]}, {"a": [[0, 4]]}, 1) == pytest.approx(0.3)


def test_proposals_are_matched_in_confidence_order_within_a_video():
    truths = {"a": [[0, 1], [3, 4]]}
    # rows given unsorted; by confidence: 0.9 [0,1] TP, 0.5 [3,4] TP, 0.2 [0,1] FP (copy)
    # recall .5 1 1, precision 1 1 2/3 -> AP = .5 * 1 + 0 = 0.5
    proposals = {"a": [[0.2, 0, 1], [0.9, 0, 1], [0.5, 3, 4]]}
    assert average_precision(proposals, truths, 0.5) == pytest.approx(0.5)


def test_no_proposals_at_all():
    truths = {"a": [[0, 1]], "b": [[2, 3], [4, 5]]}
    proposals = {"a": [], "b": np.zeros((0, 3))}
    assert average_precision(proposals, truths, 0.5) == 0.0
    assert average_recall(proposals, truths, 10) == 0.0
    # a video without proposals still counts its segments as missed: a's exact proposal
    # recalls 1 segment, b's 2 segments are missed -> 1 of 3
    assert average_recall({"a": [[0.9, 0, 1]], "b": []}, truths, 10) == pytest.approx(1 / 3)
    report = localisation_report(proposals, truths, "avdeepfake1m")
    assert report["score"] == 0.0 and report["ap@0.5"] == 0.0 and report["ar@50"] == 0.0


def test_no_true_segments_anywhere():
    truths = {"r1": [], "r2": []}
    proposals = {"r1": [[0.9, 0, 1]], "r2": []}
    # recall is 0/0 in both official codes: AP NaN in both; AR NaN in LAV-DF, 0.0 in avdeepfake1m
    assert math.isnan(average_precision(proposals, truths, 0.5))
    assert math.isnan(average_recall(proposals, truths, 5))
    av = localisation_report(proposals, truths, "avdeepfake1m")
    assert math.isnan(av["ap@0.5"]) and av["ar@5"] == 0.0 and math.isnan(av["score"])
    assert math.isnan(localisation_report(proposals, truths, "lavdf")["ar@10"])


def test_iou_ties_are_decided_in_float32_like_the_official_code():
    # exact IoU of [0.16, 1.68] with [0, 1] is 0.84 / 1.68 = 0.5 (float64 gives 0.5: no match)
    # float32: 0.16 -> 0.15999999642, 1.68 -> 1.67999994755; inter = 1 - 0.16f = 0.84000003,
    # union = 1.68f; 0.84000003 / 1.67999995 = 0.50000006 > 0.5 -> a match (avdeepfake1m 0.0.4: AR 1.0)
    proposals, truths = {"a": [[0.9, 0.16, 1.68]]}, {"a": [[0, 1]]}
    assert iou_1d([[0.16, 1.68]], [[0, 1]])[0, 0] == pytest.approx(0.5)
    assert average_recall(proposals, truths, 1, [0.5]) == 1.0


def test_challenge_score_and_report_keys():
    # 1/8 * (0.4 + 0.3 + 0.2 + 0.1) + 1/10 * (5 * 0.5) = 0.125 + 0.25
    assert challenge_score([0.4, 0.3, 0.2, 0.1], [0.5] * 5) == pytest.approx(0.375)
    truths = {"a": [[0, 4]], "b": [[0, 4]]}
    proposals = {"a": [[0.9, 0, 4]], "b": [[0.8, 0, 2.5]]}          # IoU 1 and 0.625
    # AP@0.5: TP TP -> (1 - .5) * 1 = 0.5; AP@0.75/0.9/0.95: TP FP -> 0
    # AR (any N): thresholds .5 .55 .6 recall 2/2, the other 7 recall 1/2 -> (3 + 3.5) / 10 = 0.65
    report = localisation_report(proposals, truths, "avdeepfake1m")
    assert list(report) == ["ap@0.5", "ap@0.75", "ap@0.9", "ap@0.95",
                            "ar@50", "ar@30", "ar@20", "ar@10", "ar@5", "score"]
    assert report["ap@0.5"] == pytest.approx(0.5)
    assert report["ap@0.75"] == report["ap@0.9"] == report["ap@0.95"] == 0.0
    assert all(report[f"ar@{n}"] == pytest.approx(0.65) for n in (50, 30, 20, 10, 5))
    # score = 1/8 * 0.5 + 1/10 * 5 * 0.65 = 0.0625 + 0.325
    assert report["score"] == pytest.approx(0.3875)
    lavdf = localisation_report(proposals, truths, "lavdf")
    assert list(lavdf) == ["ap@0.5", "ap@0.75", "ap@0.95", "ar@100", "ar@50", "ar@20", "ar@10"]
    assert lavdf["ap@0.5"] == pytest.approx(0.5) and lavdf["ar@100"] == pytest.approx(0.65)


@pytest.mark.parametrize("proposals, truths, words", [
    ({"v1": [[0.9, 1.0]]}, {"v1": [[0, 1]]}, ["v1", "3"]),
    ({"v1": [[0.9, 0, 1], [0.5, 1]]}, {"v1": [[0, 1]]}, ["v1", "row 1", "2 values"]),
    ({"v2": [[0.9, 3.0, 2.0]]}, {"v2": [[0, 1]]}, ["v2", "row 0", "ends before it starts"]),
    ({"v3": [[float("nan"), 0, 1]]}, {"v3": [[0, 1]]}, ["v3", "NaN"]),
    ({"v4": [[0.9, 0, 1]]}, {"v4": [[2, float("nan")]]}, ["v4", "true segment", "NaN"]),
    ({"v5": [[0.9, 0, 1]]}, {"v5": [[3, 1]]}, ["v5", "true segment", "ends before it starts"]),
    ({"v6": [[0.9, 0, 1]]}, {"v6": [[0, 1]], "v7": [[0, 1]]}, ["v7", "no entry"]),
])
def test_bad_input_names_the_video_and_the_fault(proposals, truths, words):
    for call in (lambda: average_precision(proposals, truths, 0.5),
                 lambda: average_recall(proposals, truths, 5),
                 lambda: localisation_report(proposals, truths, "lavdf")):
        with pytest.raises(ValueError) as err:
            call()
        for word in words:
            assert word in str(err.value)


def test_bad_parameters():
    ok = ({"a": [[0.9, 0, 1]]}, {"a": [[0, 1]]})
    with pytest.raises(ValueError, match="protocol.*'avdeepfake1m'.*'lavdf'.*'thumos'"):
        localisation_report(*ok, protocol="thumos")
    with pytest.raises(ValueError, match="n must be a positive integer"):
        average_recall(*ok, 0)
    with pytest.raises(ValueError, match="iou"):
        average_precision(*ok, 1.5)
