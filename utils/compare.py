"""Comparing methods: which method folders a data set has, whether a folder covers the set, and the comparison
table (methods as rows, data sets x metrics as columns, the best value of each column marked) written as Markdown,
CSV and JSON.

    methods = method_names("dataset/CASIA-Test")                 # ['Input', 'Ours', 'lime', ...]
    write_comparison("results/compare", scores, columns, notes, command)
"""
import csv
import io
import json
import math
import os

INPUT = "Input"  # the row of the dark input itself: dataset/NAME/underexposed

# key: (label, higher is better, format); the order of a data set's columns
METRICS = {
    "top1": ("top-1 %", True, "{:.2f}"),
    "no_face": ("no face", False, "{:d}"),
    "accuracy": ("verification %", True, "{:.2f}"),
    "accuracy_std": ("± std", None, "{:.2f}"),
    "auc": ("AUC", True, "{:.4f}"),
    "tar_at_far_0.01": ("TAR@FAR 1e-2 %", True, "{:.2f}"),
    "tar_at_far_0.001": ("TAR@FAR 1e-3 %", True, "{:.2f}"),
    "psnr": ("PSNR", True, "{:.2f}"),
    "ssim": ("SSIM", True, "{:.4f}"),
    "unique": ("UNIQUE", True, "{:.4f}"),
    "lpips": ("LPIPS", False, "{:.4f}"),
    "fid": ("FID", False, "{:.2f}"),
}


def method_names(dataset_dir):
    """'Input' (when dataset_dir/underexposed exists) and every non-hidden folder under dataset_dir/SOTAs, sorted."""
    sotas = os.path.join(dataset_dir, "SOTAs")
    found = sorted((e.name for e in os.scandir(sotas) if e.is_dir() and not e.name.startswith(".")),
                   key=str.lower) if os.path.isdir(sotas) else []
    return ([INPUT] if os.path.isdir(os.path.join(dataset_dir, "underexposed")) else []) + found


def method_folder(dataset_dir, method):
    """The images of `method`: dataset_dir/underexposed for 'Input', else dataset_dir/SOTAs/METHOD."""
    return os.path.join(dataset_dir, "underexposed") if method == INPUT else os.path.join(dataset_dir, "SOTAs", method)


def missing_images(set_files, method_files):
    """The relative paths of set_files that method_files lacks, matched by folder and stem (a method may write
    another format)."""
    have = {os.path.splitext(rel)[0] for rel in method_files}
    return [rel for rel in set_files if os.path.splitext(rel)[0] not in have]


def _text(key, value):
    fmt = METRICS[key][2]
    return fmt.format(int(value)) if fmt == "{:d}" else fmt.format(value)


def best_methods(scores, columns):
    """{(dataset, key): [methods holding the best value of the column]}, for the columns with a direction."""
    best = {}
    for dataset, key in columns:
        higher = METRICS[key][1]
        values = {m: r[dataset][key] for m, r in scores.items() if r.get(dataset, {}).get(key) is not None
                  and not (isinstance(r[dataset][key], float) and math.isnan(r[dataset][key]))}
        if higher is None or not values:
            continue
        top = (max if higher else min)(values.values())
        best[(dataset, key)] = [m for m, value in values.items() if value == top]
    return best


def _datasets(columns):
    return list(dict.fromkeys(dataset for dataset, _ in columns))


def _images(result):
    """'N' or 'N of M' (a method folder that does not cover its set)."""
    if "images" not in result:
        return ""
    return f"{result['images']} of {result['set_images']}" if result.get("set_images") else str(result["images"])


def markdown(scores, columns, notes, command=""):
    """The table as Markdown: best values in bold, a blank cell marked [k] with its footnote below."""
    best = best_methods(scores, columns)
    marks = {note: k + 1 for k, note in enumerate(dict.fromkeys(notes.values()))}
    header = ["method"] + [f"{d} {METRICS[k][0]}" + {True: " ↑", False: " ↓", None: ""}[METRICS[k][1]]
                           for d, k in columns] + [f"{d} images" for d in _datasets(columns)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method, result in scores.items():
        cells = [method]
        for dataset, key in columns:
            value = result.get(dataset, {}).get(key)
            note = notes.get((dataset, key, method), notes.get((dataset, key)))
            if value is None:
                cells.append(f"[{marks[note]}]" if note else "")
            else:
                text = _text(key, value)
                cells.append(f"**{text}**" if method in best.get((dataset, key), ()) else text)
        cells += [_images(result.get(dataset, {})) for dataset in _datasets(columns)]
        lines.append("| " + " | ".join(cells) + " |")
    out = ([f"`{command}`", ""] if command else []) + lines
    return "\n".join(out + ([""] + [f"[{k}] {note}  " for note, k in marks.items()] if marks else [])) + "\n"


def csv_text(scores, columns):
    """The table as CSV: first column `method`, then 'DATASET METRIC' and 'DATASET images' / 'DATASET set images'
    (the set's size where the method does not cover it); blank cells where a figure is missing."""
    datasets = _datasets(columns)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["method"] + [f"{d} {k}" for d, k in columns] + [f"{d} {c}" for d in datasets
                                                                     for c in ("images", "set images")])
    for method, result in scores.items():
        row = [method] + ["" if result.get(d, {}).get(k) is None else result[d][k] for d, k in columns]
        row += [result.get(d, {}).get(c, "") for d in datasets for c in ("images", "set_images")]
        writer.writerow(row)
    return buffer.getvalue()


def write_comparison(folder, scores, columns, notes, command=""):
    """compare.md, compare.csv and compare.json in folder (each written atomically). scores: {method: {dataset:
    results of eval.py}}, in row order; columns: [(dataset, metric key of METRICS)]; notes: {(dataset, key) or
    (dataset, key, method): why its cells are blank}. Returns the three paths."""
    best = best_methods(scores, columns)
    document = {"command": command, "columns": [{"dataset": d, "metric": k, "label": METRICS[k][0],
                                                 "higher_is_better": METRICS[k][1]} for d, k in columns],
                "scores": scores, "best": [{"dataset": d, "metric": k, "methods": m} for (d, k), m in best.items()],
                "notes": [{"dataset": key[0], "metric": key[1], "method": key[2] if len(key) > 2 else None,
                           "note": note} for key, note in notes.items()]}
    from utils.checkpoint import atomic_write  # here: it loads torch, and this module's checks must answer before

    texts = {"md": markdown(scores, columns, notes, command), "csv": csv_text(scores, columns),
             "json": json.dumps(document, indent=1, allow_nan=False, default=str) + "\n"}
    paths = []
    for ext, text in texts.items():
        paths.append(os.path.join(folder, f"compare.{ext}"))
        atomic_write(paths[-1], lambda f: f.write(text.encode()))
    return paths
