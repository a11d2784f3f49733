"""utils.verification against values computed by hand on tiny sets of known similarity scores, and LFW's pairs.txt
format: generated reproducibly, written, read back and resolved to the images."""
import numpy as np
import pytest

from utils import verification as v

# fold 0: two matched pairs (0.9, 0.8) above two mismatched (0.3, 0.2); fold 1: a matched 0.7 below a mismatched 0.75
SCORES = [0.9, 0.8, 0.3, 0.2, 0.7, 0.4, 0.75, 0.1]
SAME = [True, True, False, False, True, False, False, False]
FOLD = [0, 0, 0, 0, 1, 1, 1, 1]


def test_kfold_accuracy_by_hand():
    # fold 1 trains fold 0's threshold: on 0.7, 0.4, 0.75, 0.1 the rules '>= 0.7' and '>= inf' are right 3 times
    # of 4, the lowest wins: fold 0 at '>= 0.7' is 4/4 right. Fold 0 trains '>= 0.8' (4/4): fold 1 gets 0.7 wrong.
    assert v.best_threshold(np.array(SCORES[4:]), np.array(SAME[4:])) == 0.7
    assert v.best_threshold(np.array(SCORES[:4]), np.array(SAME[:4])) == 0.8
    mean, std = v.kfold_accuracy(SCORES, SAME, FOLD)
    assert mean == pytest.approx(0.875) and std == pytest.approx(0.125)


def test_roc_auc_by_hand():
    far, tar = v.roc(SCORES, SAME)
    assert np.allclose(far, [0, 0, 0, 0.2, 0.2, 0.4, 0.6, 0.8, 1])
    assert np.allclose(tar, [0, 1 / 3, 2 / 3, 2 / 3, 1, 1, 1, 1, 1])
    assert v.auc(far, tar) == pytest.approx(14 / 15)  # 15 (matched, mismatched) pairs, one ordered wrongly


def test_tar_at_far_and_too_few_pairs():
    negatives = list(np.arange(100) * 0.005)  # 0 .. 0.495
    scores, same = [0.6, 0.3, 0.2] + negatives, [True] * 3 + [False] * 100
    figures = v.verification_figures(scores, same, [i % 2 for i in range(103)])
    assert figures["tar_at_far_0.01"] == pytest.approx(100 / 3)  # '>= 0.495': 1 of 100 accepted, 1 of 3 matched
    assert figures["tar_at_far_0.001"] is None  # 100 mismatched pairs cannot resolve a FAR of 1e-3
    assert (figures["pairs"], figures["matched"], figures["mismatched"], figures["folds"]) == (103, 3, 100, 2)
    small = v.verification_figures(SCORES, SAME, FOLD)
    assert small["accuracy"] == pytest.approx(87.5) and small["accuracy_std"] == pytest.approx(12.5)
    assert small["auc"] == pytest.approx(14 / 15) and small["tar_at_far_0.01"] is None


def _identities():
    return {f"P{i}": [f"P{i}/P{i}_{k:04d}.jpg" for k in range(1, 5)] for i in range(6)} | {"flat": ["flat_a.png",
                                                                                                  "flat_b.png"]}


def test_pairs_are_reproducible_valid_and_round_trip(tmp_path):
    folds = v.make_pairs(_identities(), folds=10, per_fold=3, seed=4)
    assert folds == v.make_pairs(_identities(), folds=10, per_fold=3, seed=4)
    assert folds != v.make_pairs(_identities(), folds=10, per_fold=3, seed=5)
    assert len(folds) == 10 and all(len(m) == len(n) == 3 for m, n in folds)
    everything = [p for m, n in folds for p in m + n]
    assert len(set(everything)) == len(everything)
    v.write_pairs(folds, tmp_path / "pairs.txt")
    text = (tmp_path / "pairs.txt").read_text()
    assert text.splitlines()[0] == "10\t3" and len(text.splitlines()) == 61
    assert v.read_pairs(tmp_path / "pairs.txt") == folds
    resolved = v.resolve_pairs(folds, _identities())
    identity = {rel: name for name, rels in _identities().items() for rel in rels}
    for first, second, same, fold in resolved:
        assert (identity[first] == identity[second]) == same and first != second
    assert [r[3] for r in resolved] == [k for k in range(10) for _ in range(6)]
    # 6 x 4 + 2 images: 37 matched pairs; 'flat' numbers its images by place (flat_b.png is 2)
    assert v.image_number("flat_b.png", ["flat_b.png", "flat_a.png"]) == 2 and v.image_number("P1/P1_0004.jpg", []) == 4


def test_small_sets_get_fewer_folds_and_bad_files_one_line(tmp_path):
    few = {"A": ["A_1.jpg", "A_2.jpg", "A_3.jpg"], "B": ["B_1.jpg"]}  # 3 matched pairs possible
    assert len(v.make_pairs(few, seed=0)) == 3
    with pytest.raises(ValueError, match="at least 2 of each"):
        v.make_pairs({"A": ["A_1.jpg", "A_2.jpg"], "B": ["B_1.jpg"]})
    bad = tmp_path / "pairs.txt"
    bad.write_text("2\t1\nA\t1\t2\nA\t1\tB\t1\nA\t1\t3\nA\tx\tB\t1\n")
    with pytest.raises(v.PairsError, match=r"pairs.txt: line 5: a mismatched pair"):
        v.read_pairs(bad)
    bad.write_text("2\t1\nA\t1\t2\nA\t1\tB\t1\nA\t1\t9\nA\t2\tB\t1\n")
    with pytest.raises(v.PairsError, match="image 9 of 'A' is not in the set"):
        v.resolve_pairs(v.read_pairs(bad), few, str(bad))
