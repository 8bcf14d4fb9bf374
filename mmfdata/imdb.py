"""MMF imdb annotation files (`.npy`) and the feature_path fix-ups TextVQA / ST-VQA apply.

Two formats exist: an object array whose element 0 is a header dict (no `image_id`), or a pickled dict
`{"metadata": ..., "data": [...]}`. Both are pickles, so they load only from trusted installs (`trust.py`).
"""
from __future__ import annotations

import os
import zipfile

import numpy as np

from .errors import DataFileError, ImdbFormatError, fetch_advice, repair_advice
from .trust import require_trusted

REQUIRED = ("question_id", "image_id")


def load_imdb(path: str, trust_pickle: bool = False) -> list[dict]:
    """The per-question dicts of an imdb file (header removed, MMF's answer-field hacks applied)."""
    if not os.path.isfile(path):
        raise DataFileError(f"imdb file {path} does not exist: "
                            f"{fetch_advice([path], 'dataset_config.<name>.annotations')}")
    require_trusted(path, trust_pickle, "the imdb")
    try:
        db = np.load(path, allow_pickle=True)
    except (PermissionError, IsADirectoryError, MemoryError) as e:  # not the file's content: say so
        raise DataFileError(f"imdb file {path} cannot be read ({type(e).__name__}: {e})") from e
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, Exception) as e:  # pickle errors vary widely
        raise DataFileError(f"imdb file {path} cannot be read ({type(e).__name__}: {e}): it is damaged; "
                            f"{repair_advice(path)}") from e
    if isinstance(db, np.ndarray) and db.shape == () and db.dtype == object:
        db = db.item()
    if isinstance(db, dict):
        data = list(db.get("data", []))
    elif isinstance(db, np.ndarray) and db.ndim == 1 and db.dtype == object:
        data = list(db)
        if data and isinstance(data[0], dict) and "image_id" not in data[0]:
            data = data[1:]  # header
    else:
        raise ImdbFormatError(f"imdb file {path} holds {type(db).__name__} {getattr(db, 'shape', '')}: expected "
                              "a 1-D object array (header + question dicts) or a {'metadata', 'data'} dict")
    for i, item in enumerate(data):
        if not isinstance(item, dict):
            raise ImdbFormatError(f"imdb file {path} entry {i} is a {type(item).__name__}, not a question dict")
        missing = [k for k in REQUIRED if k not in item]
        if missing:
            raise ImdbFormatError(f"imdb file {path} question #{i} lacks {missing}")
        if "answers" not in item:
            if "all_answers" in item and "valid_answers" not in item:
                item["answers"] = item["all_answers"]
            if "valid_answers" in item:
                item["answers"] = item["valid_answers"]
        if item.get("answers") and item["answers"][-1] == "<copy>":
            item["answers"] = item["answers"][:-1]
    return data


def fix_feature_path(item: dict, annotation_path: str, split: str) -> str:
    """The feature path MMF's TextVQA/ST-VQA dataset reads for one question."""
    if "stvqa" in annotation_path:
        prefix = "test_task3" if split == "test" else "train"
        path = item.get("feature_path", "")
        return path if path.startswith(prefix) else f"{prefix}/{path}"
    if "COCO" not in item.get("feature_path", ""):
        if "image_path" not in item:
            raise ImdbFormatError(f"imdb {annotation_path} question {item.get('question_id')} has no image_path "
                                  "to derive its feature_path from")
        return item["image_path"].replace(".jpg", ".npy")
    return item["feature_path"]


def feature_keys(feature_path: str) -> list[bytes]:
    """LMDB keys to try for a feature path, in MMF's order: numeric id after the last `_`, then the path."""
    rel = os.path.normpath(feature_path).replace(os.sep, "/").split(".npy")[0]
    keys = []
    try:
        keys.append(str(int(rel.split("_")[-1])).encode())
    except ValueError:
        pass
    keys.append(rel.encode())
    return keys


def question_text(item: dict) -> str:
    return item["question"] if "question" in item else item.get("question_str", "")


def ocr_boxes(item: dict, max_length: int) -> np.ndarray:
    """[max_length, 4] normalized OCR boxes: `ocr_normalized_boxes` (new imdbs) or `ocr_info` (old ones)."""
    out = np.zeros((max_length, 4), dtype=np.float32)
    if "ocr_normalized_boxes" in item:
        boxes = np.asarray(item["ocr_normalized_boxes"], dtype=np.float32).reshape(-1, 4)
        out[: min(len(boxes), max_length)] = boxes[:max_length]
    elif "ocr_info" in item:
        for i, info in enumerate(item["ocr_info"][:max_length]):
            b = info["bounding_box"]
            x = b["top_left_x"] if "top_left_x" in b else b["topLeftX"]
            y = b["top_left_y"] if "top_left_y" in b else b["topLeftY"]
            out[i] = [x, y, x + b["width"], y + b["height"]]
    return out


def obj_boxes(item: dict, max_features: int) -> np.ndarray:
    """[max_features, 4] normalized object boxes from the imdb (`obj_normalized_boxes`), zero padded."""
    out = np.zeros((max_features, 4), dtype=np.float32)
    if "obj_normalized_boxes" in item:
        boxes = np.asarray(item["obj_normalized_boxes"], dtype=np.float32).reshape(-1, 4)
        out[: min(len(boxes), max_features)] = boxes[:max_features]
    return out
