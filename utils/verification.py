"""Face verification as face-recognition papers report it: pairs in LFW's pairs.txt format, the 10-fold accuracy,
the ROC curve, its AUC and the true-accept rate at a fixed false-accept rate.

    folds = make_pairs(images_by_identity, seed=0)              # or read_pairs("pairs.txt")
    write_pairs(folds, "results/compare/pairs_CASIA-Test.txt")
    figures = verification_figures(scores, same, fold_of)      # accuracy, std, AUC, TAR at FAR 1e-2 and 1e-3

pairs.txt (LFW): a first line "FOLDS PAIRS", then per fold PAIRS matched lines "name n1 n2" followed by PAIRS
mismatched lines "name1 n1 name2 n2" (tab-separated); n is the number at the end of the image's name
(NAME_0003.jpg: 3) or, for names without one, the image's 1-based place among its identity's sorted images.
"""
import os
import re

import numpy as np

from utils.checkpoint import atomic_write

FARS = (1e-2, 1e-3)


class PairsError(ValueError):
    """A pairs file that cannot be read or does not fit the images; the message names the file and the line."""


def image_number(rel, images_of_identity):
    """The number pairs.txt gives the image `rel`: its name's trailing number, else its 1-based sorted place."""
    match = re.search(r"_(\d+)$", os.path.splitext(os.path.basename(rel))[0])
    return int(match.group(1)) if match else sorted(images_of_identity).index(rel) + 1


def _numbered(images_by_identity):
    """{identity: {number: relative path}}."""
    return {name: {image_number(rel, rels): rel for rel in rels} for name, rels in images_by_identity.items()}


def make_pairs(images_by_identity, folds=10, per_fold=300, seed=0):
    """[fold: (matched [(name, n1, n2)], mismatched [(name1, n1, name2, n2)])], drawn reproducibly from
    {identity: [relative paths]}: per fold up to `per_fold` of each kind, as many matched as mismatched, no pair
    twice. Fewer folds than asked when the set has fewer pairs of a kind than folds."""
    rng = np.random.default_rng(seed)
    numbered = _numbered(images_by_identity)
    names = sorted(numbered)
    matched = [(name, a, b) for name in names for i, a in enumerate(sorted(numbered[name]))
               for b in sorted(numbered[name])[i + 1:]]
    possible = sum(len(numbered[a]) * len(numbered[b]) for i, a in enumerate(names) for b in names[i + 1:])
    if min(len(matched), possible) < 2:
        raise ValueError(f"{len(matched)} matched and {possible} mismatched pairs can be made: verification needs at "
                         "least 2 of each (2 folds)")
    folds = min(folds, len(matched), possible)
    per_fold = min(per_fold, len(matched) // folds, possible // folds)
    matched = [matched[i] for i in rng.permutation(len(matched))[:folds * per_fold]]
    mismatched, seen = [], set()
    while len(mismatched) < folds * per_fold:
        a, b = sorted(rng.choice(len(names), 2, replace=False))
        pair = (names[a], int(rng.choice(sorted(numbered[names[a]]))), names[b],
                int(rng.choice(sorted(numbered[names[b]]))))
        if pair not in seen:
            seen.add(pair)
            mismatched.append(pair)
    return [(matched[k * per_fold:(k + 1) * per_fold], mismatched[k * per_fold:(k + 1) * per_fold])
            for k in range(folds)]


def format_pairs(folds):
    """The text of pairs.txt for `folds` (make_pairs' layout)."""
    lines = [f"{len(folds)}\t{len(folds[0][0])}"]
    for matched, mismatched in folds:
        lines += ["\t".join(map(str, pair)) for pair in matched + mismatched]
    return "\n".join(lines) + "\n"


def write_pairs(folds, path):
    """Write pairs.txt atomically (utils.checkpoint.atomic_write)."""
    atomic_write(path, lambda f: f.write(format_pairs(folds).encode()))


def read_pairs(path):
    """The folds of a pairs.txt file (make_pairs' layout); PairsError names the file and line of a fault. As in
    LFW's own file, a fold holds PAIRS matched lines, then PAIRS mismatched ones."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = [line.split() for line in f if line.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise PairsError(f"{path}: cannot read the pairs file ({e})") from None
    try:
        folds, per_fold = (int(v) for v in lines[0])
    except (IndexError, ValueError):
        raise PairsError(f"{path}: line 1 must be 'FOLDS PAIRS' (LFW pairs.txt format)") from None
    if len(lines) != 1 + 2 * folds * per_fold or folds < 2:
        raise PairsError(f"{path}: {len(lines) - 1} pair lines; line 1 announces {folds} folds of {per_fold} matched "
                         f"and {per_fold} mismatched pairs (at least 2 folds)")
    out, at = [], 1
    for _ in range(folds):
        fold = ([], [])
        for kind, width in ((0, 3), (1, 4)):
            for _ in range(per_fold):
                fields = lines[at]
                at += 1
                if len(fields) != width or not all(fields[i].isdigit() for i in ((1, 2) if width == 3 else (1, 3))):
                    raise PairsError(f"{path}: line {at}: a {'matched' if width == 3 else 'mismatched'} pair "
                                     f"'{'name n1 n2' if width == 3 else 'name1 n1 name2 n2'}' is expected here")
                fold[kind].append((fields[0], int(fields[1]), int(fields[2])) if width == 3 else
                                  (fields[0], int(fields[1]), fields[2], int(fields[3])))
        out.append(fold)
    return out


def resolve_pairs(folds, images_by_identity, path="the pairs"):
    """[(first relative path, second relative path, same identity, fold index)] of every pair; PairsError naming
    the first name or number that no image of {identity: [relative paths]} carries."""
    numbered = _numbered(images_by_identity)

    def find(name, number):
        try:
            return numbered[name][number]
        except KeyError:
            raise PairsError(f"{path}: image {number} of {name!r} is not in the set") from None
    return [(find(p[0], p[1]), find(p[0], p[2]) if len(p) == 3 else find(p[2], p[3]), len(p) == 3, k)
            for k, (matched, mismatched) in enumerate(folds) for p in matched + mismatched]


# -----------------------------------------------------------------------------
# figures of similarity scores: higher = more likely the same person


def best_threshold(scores, same):
    """The threshold t (one of the scores, or +inf) whose rule 'same when score >= t' is right most often; the
    lowest such t on ties."""
    candidates = np.append(np.unique(scores), np.inf)
    right = [np.sum((scores >= t) == same) for t in candidates]
    return float(candidates[int(np.argmax(right))])


def kfold_accuracy(scores, same, fold_of):
    """(mean, std) of the per-fold accuracies: each fold's threshold is chosen on the other folds (best_threshold)
    and tested on it, LFW's standard protocol; std over folds as numpy's (population)."""
    scores, same, fold_of = np.asarray(scores, float), np.asarray(same, bool), np.asarray(fold_of)
    accuracies = []
    for k in np.unique(fold_of):
        train, test = fold_of != k, fold_of == k
        t = best_threshold(scores[train], same[train])
        accuracies.append(np.mean((scores[test] >= t) == same[test]))
    return float(np.mean(accuracies)), float(np.std(accuracies))


def roc(scores, same):
    """(FAR, TAR) arrays of the rule 'same when score >= t' for t from +inf down through every distinct score: from
    (0, 0) to (1, 1)."""
    scores, same = np.asarray(scores, float), np.asarray(same, bool)
    thresholds = np.append(np.inf, np.unique(scores)[::-1])
    tar = np.array([np.mean(scores[same] >= t) for t in thresholds])
    far = np.array([np.mean(scores[~same] >= t) for t in thresholds])
    return far, tar


def auc(far, tar):
    """Area under the ROC curve (trapezoids)."""
    return float(np.sum(np.diff(far) * (tar[1:] + tar[:-1]) / 2))


def tar_at_far(far, tar, target, mismatched):
    """The highest TAR whose FAR is at most `target`, or None when the set has fewer than 1 / target mismatched
    pairs (its FAR cannot resolve `target`)."""
    if mismatched < round(1 / target):
        return None
    return float(tar[far <= target].max())


def verification_figures(scores, same, fold_of):
    """{'accuracy', 'accuracy_std' (in %), 'auc', 'tar_at_far_0.01', 'tar_at_far_0.001' (in %, None when too few
    mismatched pairs), 'pairs', 'matched', 'mismatched', 'folds'} of similarity scores of pairs."""
    same = np.asarray(same, bool)
    mean, std = kfold_accuracy(scores, same, fold_of)
    far, tar = roc(scores, same)
    out = {"accuracy": 100 * mean, "accuracy_std": 100 * std, "auc": auc(far, tar)}
    for target in FARS:
        value = tar_at_far(far, tar, target, int((~same).sum()))
        out[f"tar_at_far_{target:g}"] = None if value is None else 100 * value
    out.update(pairs=len(same), matched=int(same.sum()), mismatched=int((~same).sum()),
               folds=len(np.unique(fold_of)))
    return out
