"""Readers of datasets not present here, tested on fixtures written in the real format; the class-
folder reader and the synthetic generator; bad files give errors naming the file."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.io import savemat

from scc.data import make_dataset
from scc.evaluate import threshold_size
from scc.data.imagefolder import ImageFolderPairs
from scc.data.pfpascal import PFPascal
from scc.data.spair import SPair, parse_entry
from scc.data.synthetic import SyntheticPairs
from scc.data.tss import TSS, read_flo
from test_data_model import write_willow

# The shared data folder: $SCC_DATA, else ../shared/data beside the repository (as on CI).
SHARED = Path(os.environ.get("SCC_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")


def img(path: Path, w=40, h=30, mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(abs(hash(path.name)) % 2**32).integers(0, 255, (h, w, 3), dtype=np.uint8)
    Image.fromarray(arr).convert(mode).save(path)


# ---- PF-PASCAL -----------------------------------------------------------------------------------

def write_pascal(root: Path):
    img(root / "JPEGImages" / "a.jpg")
    img(root / "JPEGImages" / "b.jpg", 80, 60)
    kps_a = np.array([[1, 2], [3, 4], [np.nan, np.nan], [5, 6]], float)
    kps_b = np.array([[10, 20], [np.nan, np.nan], [7, 7], [50, 60]], float)
    (root / "Annotations" / "cat").mkdir(parents=True)
    savemat(root / "Annotations" / "cat" / "a.mat", {"kps": kps_a, "bbox": np.array([[0, 0, 20, 10]])})
    savemat(root / "Annotations" / "cat" / "b.mat", {"kps": kps_b, "bbox": np.array([[4, 8, 44, 28]])})
    (root / "test_pairs.csv").write_text("source_image,target_image,class\nJPEGImages/a.jpg,JPEGImages/b.jpg,8\n")
    return root


def test_pfpascal_fixture(tmp_path):
    ds = PFPascal(str(write_pascal(tmp_path)), img_size=None)
    it = ds[0]
    assert it["category"] == "cat" and it["n_pts"] == 2  # keypoints visible in both images only
    assert torch.equal(it["src_kps"][:2], torch.tensor([[1.0, 2.0], [5.0, 6.0]]))
    assert torch.equal(it["trg_kps"][:2], torch.tensor([[10.0, 20.0], [50.0, 60.0]]))
    # the field's PF-PASCAL threshold: the target image's longer side (80 x 60); the box one is 40
    assert it["pckthres"] == max(it["trg_img"].shape[1:]) == 80.0
    batch = {k: (v[None] if isinstance(v, torch.Tensor) else [v]) for k, v in it.items()}
    assert threshold_size(batch, "bbox") == 40.0  # target bbox 4..44 x 8..28


def test_pfpascal_bad_files(tmp_path):
    root = write_pascal(tmp_path)
    (root / "test_pairs.csv").write_text("source_image,target_image,class\nJPEGImages/a.jpg,JPEGImages/b.jpg,21\n")
    with pytest.raises(ValueError, match="class 21 outside"):
        PFPascal(str(root))
    (root / "test_pairs.csv").write_text("source_image,target_image,class\nJPEGImages/a.jpg,JPEGImages/b.jpg,8\n")
    savemat(root / "Annotations" / "cat" / "b.mat", {"kps": np.zeros((4, 2))})
    with pytest.raises(ValueError, match="no `bbox` field"):
        PFPascal(str(root))[0]
    (root / "Annotations" / "cat" / "b.mat").write_bytes(b"junk")
    with pytest.raises(ValueError, match="corrupt annotation .*b.mat"):
        PFPascal(str(root))[0]


# ---- SPair-71k ------------------------------------------------------------------------------------

def write_spair(root: Path, entry="0-src1-trg1:cat", ann=None):
    (root / "Layout" / "large").mkdir(parents=True)
    (root / "Layout" / "large" / "test.txt").write_text(entry + "\n")
    img(root / "JPEGImages" / "cat" / "src1.jpg")
    img(root / "JPEGImages" / "cat" / "trg1.jpg", 60, 40)
    ann = ann or dict(src_kps=[[1, 1], [5, 9]], trg_kps=[[3, 4], [30, 20]], src_bndbox=[0, 0, 10, 10],
                      trg_bndbox=[2, 2, 32, 22], category="cat", src_imname="src1.jpg", trg_imname="trg1.jpg",
                      src_imsize=[40, 30, 3], trg_imsize=[60, 40, 3], viewpoint_variation=0, scale_variation=0,
                      truncation=0, occlusion=0)
    (root / "PairAnnotation" / "test").mkdir(parents=True)
    (root / "PairAnnotation" / "test" / f"{entry}.json").write_text(json.dumps(ann))
    return root


def test_spair_fixture(tmp_path):
    ds = SPair(str(write_spair(tmp_path)), img_size=30)
    it = ds[0]
    assert it["trg_img"].shape == (3, 20, 30) and it["n_pts"] == 2
    assert torch.allclose(it["trg_kps"][1], torch.tensor([15.0, 10.0]))
    assert it["pckthres"] == pytest.approx(15.0)  # bbox 30 wide * 0.5
    assert parse_entry("12-a_b-c_d:n0123") == ("a_b", "c_d", "n0123")


def test_spair_bad_files(tmp_path):
    with pytest.raises(ValueError, match="malformed SPair-71k layout entry"):
        SPair(str(write_spair(tmp_path / "x", entry="garbage")))
    root = write_spair(tmp_path / "y")
    (root / "PairAnnotation" / "test" / "0-src1-trg1:cat.json").write_text("{bad json")
    with pytest.raises(ValueError, match="corrupt JSON"):
        SPair(str(root))[0]
    root = write_spair(tmp_path / "z", ann=dict(src_kps=[[1, 1]], trg_kps=[], src_bndbox=[0] * 4, trg_bndbox=[0] * 4,
                                                  category="cat"))
    with pytest.raises(ValueError, match="equal length"):
        SPair(str(root))[0]


SPAIR_OK = dict(src_kps=[[1, 1], [5.5, 9]], trg_kps=[[3, 4], [30, 20]], src_bndbox=[0, 0, 10, 10],
                trg_bndbox=[2, 2, 32, 22], category="cat")


@pytest.mark.parametrize("key, value, match", [
    ("trg_bndbox", [100, 80, 0, 0], "`trg_bndbox` must have x1 < x2 and y1 < y2, got \\[100, 80, 0, 0\\]"),
    ("src_bndbox", [0, 0, 10], "`src_bndbox` must be 4 finite numbers"),
    ("trg_bndbox", [[2, 2], [32, 22]], "`trg_bndbox` must be 4 finite numbers"),
    ("trg_bndbox", [2, 2, float("inf"), 22], "`trg_bndbox` must be 4 finite numbers"),
    ("src_kps", [[float("nan"), 1], [5, 9]], "`src_kps` entry 0 must be an \\[x, y\\] pair of finite numbers"),
    ("trg_kps", [[3, 4], [None, 20]], "`trg_kps` entry 1 must be an \\[x, y\\] pair"),
    ("trg_kps", [[[3, 4]], [30, 20]], "`trg_kps` entry 0 must be an \\[x, y\\] pair"),
    ("src_kps", [[1, 1, 1], [5, 9]], "`src_kps` entry 0 must be an \\[x, y\\] pair"),
    ("src_kps", [[True, 1], [5, 9]], "`src_kps` entry 0"),
    ("src_kps", 7, "`src_kps` must be a list of \\[x, y\\] pairs"),
])
def test_spair_bad_values_name_the_file_and_field(tmp_path, key, value, match):
    # these used to load: an inverted or 3-number box gave PCK 0 silently, a NaN keypoint crashed later
    root = write_spair(tmp_path, ann={**SPAIR_OK, key: value})
    with pytest.raises(ValueError, match="0-src1-trg1:cat.json: " + match):
        SPair(str(root))[0]
    assert SPair(str(write_spair(tmp_path / "ok", ann=SPAIR_OK)), img_size=None)[0]["n_pts"] == 2


# ---- PF-WILLOW / PF-PASCAL CSV written by Excel (UTF-8 with a byte-order mark) --------------------

def test_csv_with_byte_order_mark(tmp_path):
    root = write_willow(tmp_path / "willow")
    csv_path = root / "test_pairs.csv"
    csv_path.write_bytes(b"\xef\xbb\xbf" + csv_path.read_bytes())
    assert len(make_dataset("pf-willow", str(root))) == 1
    root = write_pascal(tmp_path / "pascal")
    csv_path = root / "test_pairs.csv"
    csv_path.write_bytes(b"\xef\xbb\xbf" + csv_path.read_bytes())
    assert PFPascal(str(root)).pairs == [("a.jpg", "b.jpg", "cat")]


# ---- TSS ------------------------------------------------------------------------------------------

def write_flo(path: Path, flow: np.ndarray):
    h, w, _ = flow.shape
    path.write_bytes(np.float32(202021.25).tobytes() + np.int32(w).tobytes() + np.int32(h).tobytes()
                     + flow.astype(np.float32).tobytes())


def test_tss_fixture(tmp_path):
    d = tmp_path / "FG3DCar" / "pair1"
    img(d / "image1.png", 32, 24)
    img(d / "image2.png", 32, 24)
    flow = np.zeros((24, 32, 2), np.float32)
    flow[..., 0] = 3.0
    write_flo(d / "flow1.flo", flow)
    write_flo(d / "flow2.flo", -flow)
    mask = np.zeros((24, 32), np.uint8)
    mask[4:20, 4:28] = 255
    Image.fromarray(mask).save(d / "mask1.png")
    Image.fromarray(mask).save(d / "mask2.png")
    ds = TSS(str(tmp_path), img_size=None, grid=8)
    assert len(ds) == 2
    it = ds[0]
    n = it["n_pts"]
    assert n == 6  # grid points x in (4, 12, 20), y in (4, 12) fall inside the mask
    assert torch.allclose(it["trg_kps"][:n] - it["src_kps"][:n], torch.tensor([3.0, 0.0]).expand(n, 2))
    assert it["pckthres"] == 32.0 and it["category"] == "FG3DCar"
    (d / "flow1.flo").write_bytes(b"nope")
    with pytest.raises(ValueError, match="not a .flo file"):
        read_flo(d / "flow1.flo")


# ---- class folders and synthetic ------------------------------------------------------------------

def test_imagefolder_pairs(tmp_path):
    for c in ("n001", "n002"):
        for i in range(3):
            img(tmp_path / c / f"{c}_{i}.JPEG", mode="L" if i == 0 else "RGB")  # grayscale becomes RGB
    (tmp_path / "empty").mkdir()
    ds = ImageFolderPairs(str(tmp_path), img_size=32, num_pairs=10, seed=1)
    assert ds.classes == ["n001", "n002"] and len(ds) == 10
    it = ds[0]
    assert it["src_img"].shape == (3, 32, 32) and it["src_imname"].split("/")[0] == it["category"]
    assert it["src_imname"] != it["trg_imname"]
    assert [p for p in ds.pairs] == [p for p in ImageFolderPairs(str(tmp_path), 32, 10, seed=1).pairs]
    with pytest.raises(ValueError, match="no class folders"):
        ImageFolderPairs(str(tmp_path / "empty"))
    (tmp_path / "n001" / "n001_1.JPEG").write_bytes(b"broken")
    broken = [i for i, (c, a, b) in enumerate(ds.pairs) if c == 0 and 1 in (a, b)]
    if broken:
        with pytest.raises(ValueError, match="corrupt or unreadable image .*n001_1.JPEG"):
            ds[broken[0]]


@pytest.mark.skipif(not (SHARED / "imagenette").is_dir(), reason="shared data absent: set SCC_DATA or place it at ../shared/data (imagenette)")
def test_imagenette_real():
    ds = ImageFolderPairs(str(SHARED / "imagenette" / "train"), num_pairs=5)
    assert ds.num_classes == 10 and ds[0]["src_img"].shape == (3, 224, 224)


def test_synthetic_is_deterministic_and_consistent():
    a, b = SyntheticPairs(num_pairs=3, img_size=64, seed=3), SyntheticPairs(num_pairs=3, img_size=64, seed=3)
    x, y = a[2], b[2]
    assert torch.equal(x["src_img"], y["src_img"]) and torch.equal(x["trg_kps"], y["trg_kps"])
    n = x["n_pts"]
    assert x["label"] == a.classes.index(x["category"]) and n >= 7
    assert (x["src_kps"][:n] >= -8).all() and (x["src_kps"][:n] <= 72).all()
    assert not torch.equal(x["src_kps"][:n], x["trg_kps"][:n])  # two different instances
    with pytest.raises(ValueError, match="unknown dataset"):
        make_dataset("nope", None)
