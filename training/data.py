"""Data sets, class mapping, duplicate/patient grouping and splits.

Every image is listed as an ``Item`` (path relative to the shared data folder,
class label, group key).  Groups are what the leakage-free protocol keeps on
one side of a split: exact duplicates, perceptual near-duplicates and the
patient proxies described in ``training/README.md``.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
PLUGIN_DIR = REPO_ROOT / "plugin"
CACHE_DIR = REPO_ROOT / "training" / ".cache"


def data_dir() -> Path:
    override = os.environ.get("ORTHANC_AI_DATA")
    if override:
        return Path(override)
    return REPO_ROOT.parent / "shared" / "data"


@dataclass
class Item:
    path: str  # relative to data_dir()
    label: int
    group: str = ""  # patient / duplicate proxy before hash merging
    source: str = ""  # sub-dataset, for the report


IQ = "iq-othnccd/The IQ-OTHNCCD lung cancer dataset"
IQ_FOLDERS = {"Bengin cases": "Benign", "Malignant cases": "Malignant", "Normal cases": "Normal"}
CHEST_CT = "chest-ctscan-images/Data"
# Kaggle "Chest CT-Scan images": long TNM-staged folder names (train/valid) and short ones (test).
CHEST_CT_FOLDERS = {
    "adenocarcinoma": "Adenocarcinoma",
    "large.cell.carcinoma": "Large_Cell_Carcinoma",
    "squamous.cell.carcinoma": "Squamous_Cell_Carcinoma",
    "normal": "Normal",
}
# One pixel-identical pair crosses classes (data README): one of the two is mislabelled and
# we cannot tell which, so both are left out of lung-ct-6.
CHEST_CT_EXCLUDE = {
    "train/large.cell.carcinoma_left.hilum_T2_N2_M0_IIIa/l4.png",
    "train/squamous.cell.carcinoma_left.hilum_T1_N2_M0_IIIa/sq2.png",
}
KERMANY = "kermany-pediatric-cxr-224"
BODYPART = "xray-bodypart"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}


def _images(folder: Path):
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def _case_number(name: str) -> int:
    match = re.search(r"\((\d+)\)", name)
    return int(match.group(1)) if match else -1


def iq_items(classes: list[str], root: Path) -> list[Item]:
    items = []
    for folder, cls in IQ_FOLDERS.items():
        files = sorted(_images(root / IQ / folder), key=lambda p: _case_number(p.name))
        for p in files:
            items.append(Item(f"{IQ}/{folder}/{p.name}", classes.index(cls), "", "IQ-OTH/NCCD"))
    _iq_patient_proxy(items, root)
    return items


# Patient proxy for IQ-OTH/NCCD (no patient ids are published): the files of a class are
# numbered in acquisition order, so consecutive case numbers whose slices look alike belong
# to one run.  A run is cut where the 32x32 thumbnail correlation of case n and n+1 drops
# below IQ_LINK_CORR or the image size changes.  (Fixed blocks of consecutive numbers were
# tried too: merged with the near-duplicate links they chain into one group of 344-433 images.)
IQ_LINK_CORR = 0.70


def _thumb(path: Path, size: int = 32) -> tuple[np.ndarray, tuple[int, int]]:
    with Image.open(path) as opened:
        im = opened.convert("L")
        shape = im.size
        small = np.asarray(im.resize((size, size), Image.Resampling.BILINEAR), dtype=np.float32).ravel()
    small = (small - small.mean()) / (small.std() + 1e-6)
    return small, shape


def _iq_patient_proxy(items: list[Item], root: Path) -> None:
    by_class: dict[int, list[Item]] = {}
    for it in items:
        by_class.setdefault(it.label, []).append(it)
    for label, members in by_class.items():
        members.sort(key=lambda it: _case_number(it.path))
        run = 0
        prev = None
        for it in members:
            thumb, shape = _thumb(root / it.path)
            if prev is not None:
                corr = float(np.dot(thumb, prev[0]) / thumb.size)
                if corr < IQ_LINK_CORR or shape != prev[1]:
                    run += 1
            prev = (thumb, shape)
            it.group = f"iq:{label}:run{run}"


def chest_ct_items(classes: list[str], root: Path) -> list[Item]:
    items = []
    base = root / CHEST_CT
    for split in ("train", "valid", "test"):
        for folder in sorted(p for p in (base / split).iterdir() if p.is_dir()):
            short = folder.name.split("_")[0]
            cls = CHEST_CT_FOLDERS[short]
            for p in _images(folder):
                rel = f"{split}/{folder.name}/{p.name}"
                if rel in CHEST_CT_EXCLUDE:
                    continue
                # "10 - Copy (2).png", "10 (2).png" ... are copies of "10.png": same group.
                stem = re.sub(r"( - Copy( \(\d+\))?| \(\d+\))", "", p.stem).strip().lower()
                items.append(Item(f"{CHEST_CT}/{rel}", classes.index(cls), f"ct:{cls}:{stem}", "Chest CT-Scan images"))
    return items


def kermany_items(label: int, root: Path) -> list[Item]:
    items = []
    for split in ("train", "test"):
        for cls in ("NORMAL", "PNEUMONIA"):
            for p in _images(root / KERMANY / split / cls):
                m = re.match(r"(person\d+)", p.name) or re.match(r"((?:NORMAL2-)?IM-\d+)", p.name)
                pid = m.group(1) if m else p.stem
                items.append(Item(f"{KERMANY}/{split}/{cls}/{p.name}", label, f"kermany:{pid}",
                                  "Kermany pediatric CXR"))
    return items


def bodypart_items(classes: list[str], root: Path) -> list[Item]:
    items = []
    base = root / BODYPART
    for folder in sorted(p for p in base.iterdir() if p.is_dir()):
        cls = "other" if folder.name.startswith("other-") else folder.name
        for p in _images(folder):
            name = re.sub(r"^[^_]+_[0-9a-f]{8}_", "", p.stem)
            if folder.name == "other-knee":
                key = re.sub(r"[LR]$", "", name)  # left and right knee of one patient
            elif folder.name == "spine":
                key = re.sub(r"_\d+_\d+$", "", name)
            elif folder.name.startswith("other-"):
                key = re.sub(r"\.rf\..*$", "", name)
            else:
                key = name
            items.append(Item(f"{BODYPART}/{folder.name}/{p.name}", classes.index(cls), f"bp:{folder.name}:{key}",
                              f"xray-bodypart/{folder.name}"))
    return items


# --------------------------------------------------------------------------- hashing

def image_hashes(path: Path) -> tuple[str, np.ndarray]:
    """(md5 of the decoded grey pixels, 512-bit aHash+dHash on 16x16)."""
    with Image.open(path) as im:
        grey = im.convert("L")
        pixels = np.asarray(grey)
        md5 = hashlib.md5(pixels.tobytes() + str(pixels.shape).encode()).hexdigest()
        a = np.asarray(grey.resize((16, 16), Image.Resampling.BILINEAR), dtype=np.float32)
        d = np.asarray(grey.resize((17, 16), Image.Resampling.BILINEAR), dtype=np.float32)
    ahash = (a > a.mean()).ravel()
    dhash = (d[:, 1:] > d[:, :-1]).ravel()
    return md5, np.concatenate([ahash, dhash])


NEAR_DUP_BITS = 12  # of 512 (aHash + dHash); chosen so that no IQ-OTH/NCCD pair crosses classes


class UnionFind:
    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, i: int, j: int) -> None:
        ri, rj = self.find(i), self.find(j)
        if ri != rj:
            self.parent[max(ri, rj)] = min(ri, rj)


def assign_groups(items: list[Item], root: Path) -> tuple[list[int], dict]:
    """Group ids merging: the patient proxy key, pixel-identical images and near duplicates."""
    n = len(items)
    uf = UnionFind(n)
    first: dict[str, int] = {}
    md5s, bits = [], []
    cache_file = CACHE_DIR / "hashes.json"
    cache = json.loads(cache_file.read_text()) if cache_file.exists() else {}
    dirty = False
    for i, it in enumerate(items):
        if it.path not in cache:
            md5, hbits = image_hashes(root / it.path)
            cache[it.path] = [md5, np.packbits(hbits).tobytes().hex()]
            dirty = True
        md5, hexbits = cache[it.path]
        md5s.append(md5)
        bits.append(np.unpackbits(np.frombuffer(bytes.fromhex(hexbits), dtype=np.uint8)))
        for key in (f"key:{it.group}", f"md5:{md5}"):
            if key in first:
                uf.union(first[key], i)
            else:
                first[key] = i
    if dirty:
        CACHE_DIR.mkdir(parents=True, exist_ok=True)
        cache_file.write_text(json.dumps(cache))
    b = np.stack(bits).astype(np.float32)
    dist = b @ (1 - b).T + (1 - b) @ b.T
    near = np.argwhere(np.triu(dist <= NEAR_DUP_BITS, k=1))
    cross_class = 0
    for i, j in near:
        if items[i].label != items[j].label:
            cross_class += 1
        uf.union(int(i), int(j))
    roots = [uf.find(i) for i in range(n)]
    remap = {r: k for k, r in enumerate(sorted(set(roots)))}
    groups = [remap[r] for r in roots]
    exact_dupes = n - len(set(md5s))
    stats = {
        "images": n,
        "groups": len(remap),
        "exact_duplicate_copies": exact_dupes,
        "near_duplicate_pairs": int(len(near)),
        "near_duplicate_pairs_across_classes": cross_class,
        "largest_group": int(np.bincount(groups).max()),
    }
    return groups, stats


# --------------------------------------------------------------------------- splits

def grouped_stratified_split(labels: np.ndarray, groups: np.ndarray, fractions: dict[str, float],
                             seed: int) -> dict[str, np.ndarray]:
    """Assign whole groups to parts so that every class is near its target fraction in each part.

    Groups are visited largest first (random order among equals); each goes to the
    part with the largest remaining deficit for the group's class mix.
    """
    rng = np.random.default_rng(seed)
    names = list(fractions)
    frac = np.array([fractions[k] for k in names])
    n_classes = int(labels.max()) + 1
    class_totals = np.bincount(labels, minlength=n_classes).astype(float)
    target = frac[:, None] * class_totals[None, :]  # part x class
    have = np.zeros_like(target)
    uniq = np.unique(groups)
    counts = {g: np.bincount(labels[groups == g], minlength=n_classes) for g in uniq}
    order = list(uniq)
    rng.shuffle(order)
    order.sort(key=lambda g: -counts[g].sum())
    assignment = {}
    for g in order:
        c = counts[g]
        deficit = ((target - have) * c[None, :]).sum(axis=1) / max(c.sum(), 1)
        # relative deficit so that small parts still get their share
        score = deficit / np.maximum(frac * c.sum(), 1e-9)
        part = int(np.argmax(score + rng.uniform(0, 1e-6, len(names))))
        assignment[g] = part
        have[part] += c
    part_of = np.array([assignment[g] for g in groups])
    return {k: np.flatnonzero(part_of == i) for i, k in enumerate(names)}


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Image-level stratified random split (the 'paper' protocol)."""
    rng = np.random.default_rng(seed)
    train: list[int] = []
    test: list[int] = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        k = int(round(len(idx) * test_fraction))
        test.extend(idx[:k])
        train.extend(idx[k:])
    return np.sort(np.array(train)), np.sort(np.array(test))
