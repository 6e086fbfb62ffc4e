"""LR/HR pairs on disk: one set of rules, each command's wording of the errors."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from cvdm_cli.errors import DataError, InputNotFoundError, InvalidPixelsError
from cvdm_cli.io.pairs import ImagePair, find_pairs, read_plane


def _folders(tmp_path, lr_names, hr_names):
    lr, hr = tmp_path / "lr", tmp_path / "hr"
    lr.mkdir()
    hr.mkdir()
    for name in lr_names:
        tifffile.imwrite(lr / name, np.zeros((4, 4), np.uint16))
    for name in hr_names:
        tifffile.imwrite(hr / name, np.zeros((8, 8), np.float32))
    return lr, hr


def test_pairs_by_stem_sorted_ignoring_hidden_files_and_folders(tmp_path):
    lr, hr = _folders(tmp_path, ["b.tif", "a.TIFF", ".a.tif.partial-1"], ["a.tif", "b.tif"])
    (lr / "c.tif").mkdir()  # a folder with a TIFF name is not an image
    (lr / "notes.txt").write_text("x")
    for purpose in ("evaluation", "training"):
        assert find_pairs(lr, hr, purpose=purpose) == [
            ImagePair("a", lr / "a.TIFF", hr / "a.tif"),
            ImagePair("b", lr / "b.tif", hr / "b.tif"),
        ]


def test_a_stem_twice_keeps_the_first_name(tmp_path):
    lr, hr = _folders(tmp_path, ["a.tif", "a.tiff"], ["a.tif"])
    assert find_pairs(lr, hr, purpose="training")[0].lr == lr / "a.tif"


def test_evaluation_wording(tmp_path):
    lr, hr = _folders(tmp_path, ["a.tif", "extra.tif"], ["a.tif"])
    with pytest.raises(DataError, match=r"1 image\(s\) without a HR partner: extra") as err:
        find_pairs(lr, hr)
    assert err.value.path == str(hr)
    with pytest.raises(DataError, match="without a LR partner: extra"):
        find_pairs(hr, lr)  # folders swapped: 'extra' is now on the HR side only
    with pytest.raises(InputNotFoundError, match="folder not found"):
        find_pairs(tmp_path / "nope", hr)


def test_training_wording(tmp_path):
    lr, hr = _folders(tmp_path, ["a.tif", "extra.tif"], ["a.tif", "zz.tif"])
    with pytest.raises(DataError, match=r"unpaired files: 1 in --lr .* 1 in --hr") as err:
        find_pairs(lr, hr, purpose="training")
    assert err.value.path == str(lr / "extra.tif")  # the first unpaired file
    with pytest.raises(DataError, match="folder not found") as missing:
        find_pairs(tmp_path / "nope", hr, purpose="training")
    assert not isinstance(missing.value, InputNotFoundError)  # exit 1, as before


@pytest.mark.parametrize(
    ("purpose", "words"), [("evaluation", "no .tif files"), ("training", "no .tif/.tiff files")]
)
def test_an_lr_folder_without_tiffs_is_named_first(tmp_path, purpose, words):
    lr, hr = _folders(tmp_path, [], ["a.tif"])
    with pytest.raises(DataError, match=words.replace(".", "\\.")) as err:
        find_pairs(lr, hr, purpose=purpose)
    assert err.value.path == str(lr)


def test_read_plane_dtypes_and_errors(tmp_path):
    path = tmp_path / "p.tif"
    tifffile.imwrite(path, np.arange(12, dtype=np.uint16).reshape(3, 4))
    assert read_plane(path).dtype == np.float64 and read_plane(path).shape == (3, 4)
    assert read_plane(path, np.float32).dtype == np.float32
    assert read_plane(path, None).dtype == np.uint16
    stack = tmp_path / "stack.tif"
    tifffile.imwrite(stack, np.ones((2, 4, 4), np.float32), imagej=True, metadata={"axes": "ZYX"})
    with pytest.raises(DataError, match="evaluation pairs are 2D"):
        read_plane(stack)
    with pytest.raises(DataError, match="training pairs are 2D"):
        read_plane(stack, purpose="training")
    bad = tmp_path / "nan.tif"
    tifffile.imwrite(bad, np.full((4, 4), np.nan, np.float32))
    with pytest.raises(InvalidPixelsError, match="NaN"):
        read_plane(bad)
