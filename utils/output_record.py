"""The record of what made an output folder: a small JSON file, RECORD_NAME, written into the folder before the
first output, so that a run with other weights or settings never mixes its outputs with an earlier run's.

    claim_folder("--enhanced_path", folder, {"command": "test.py", "weights_sha256": ..., ...}, overwrite, outputs)
    ...                                       # write the outputs
    finish_folder(folder, made_by)            # once every output asked for is this run's own (or absent)

A run refuses, in one line naming --overwrite, a folder whose record names other settings, a folder of images
without a record, and a folder where an --overwrite run into it did not finish. With --overwrite it records its
own settings (marked 'replacing' until finish_folder) and replaces only the files it writes itself.
"""
import json
import os
import sys

from utils.checkpoint import atomic_write

RECORD_NAME = ".made_by.json"  # list_images passes it over without a line: it is part of the folder, not an image


def read_record(folder):
    """The folder's record (a dict), None where it has none, or {} where the file cannot be read as one."""
    path = os.path.join(folder, RECORD_NAME)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) and isinstance(record.get("made_by"), dict) else {}


def write_record(folder, made_by, replacing=False, details=None):
    """Write the record {'made_by', 'replacing', 'details'} atomically (details: shown, never compared)."""
    text = json.dumps({"made_by": made_by, "replacing": replacing, "details": details or {}}, indent=1) + "\n"
    atomic_write(os.path.join(folder, RECORD_NAME), lambda f: f.write(text.encode()))


def _differences(old, new):
    """'key (was A, now B)' for each setting that differs, shortening hashes to 12 characters."""
    short = lambda value: value[:12] if isinstance(value, str) and len(value) == 64 else value
    return ", ".join(f"{key} (was {short(old.get(key))}, now {short(new.get(key))})"
                     for key in sorted(set(old) | set(new)) if old.get(key) != new.get(key))


def claim_folder(label, folder, made_by, overwrite, outputs, details=None, say=print):
    """Check `folder` against `made_by` (the settings its outputs depend on, a JSON-able dict) before a run writes
    there, and record them; exit with one line where the folder holds outputs of other settings or images with
    no record, unless `overwrite`. outputs: the relative paths the run writes (the others are named in one line
    when a run replaces a folder's outputs). Returns whether the record is marked 'replacing'."""
    from utils.images import list_images  # here: utils.images imports RECORD_NAME from this module
    record = read_record(folder)
    if record is not None and record.get("made_by") == made_by:
        if record.get("replacing") and not overwrite:
            sys.exit(f"error: {label} {folder}: an --overwrite run with these settings into it did not finish, so it "
                     f"may still hold outputs of other settings; run it again with --overwrite")
        return bool(record.get("replacing"))
    existing = list_images(folder)[0] if os.path.isdir(folder) else []
    if record is None and not existing:  # a new folder
        write_record(folder, made_by, details=details)
        return False
    if not overwrite:
        what = (f"holds outputs of other settings: {_differences(record['made_by'], made_by)}" if record
                else f"holds {len(existing)} images without a record of what made them ({RECORD_NAME})"
                if record is None else f"has a record ({RECORD_NAME}) that cannot be read")
        sys.exit(f"error: {label} {folder} {what}; --overwrite replaces them, or choose another folder")
    others = [rel for rel in existing if rel not in outputs]
    if others:
        say(f"note: {len(others)} images in {folder} are not outputs of this run and stay as they are (first: "
            f"{os.path.join(folder, others[0])})")
    write_record(folder, made_by, replacing=True, details=details)
    return True


def finish_folder(folder, made_by, details=None):
    """Clear the 'replacing' mark once every output the run asked for is its own (written by it, or absent)."""
    record = read_record(folder)
    if record and record.get("made_by") == made_by and record.get("replacing"):
        write_record(folder, made_by, details=details)
