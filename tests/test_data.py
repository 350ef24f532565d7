"""Datasets with group labels: splits, unbalancing, loaders on real-format fake files, augment."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from tune_linfair.data import DATASETS, dataset_options, get_dataset, random_crop_flip
from tune_linfair.data.splits import joint_strata, make_generator, stratified_split, unbalance
from tune_linfair.data.utkface import age_bucket, parse_name
from tune_linfair.errors import UserError

torch.set_num_threads(1)


def _same(a, b) -> bool:
    return all(
        torch.equal(getattr(a, s).x, getattr(b, s).x)
        and torch.equal(getattr(a, s).y, getattr(b, s).y)
        and torch.equal(getattr(a, s).g, getattr(b, s).g)
        for s in ("train", "val", "test")
    )


def _check_split_types(ds) -> None:
    for name in ("train", "val", "test"):
        s = ds.split(name)
        assert s.x.dtype == torch.float32 and s.y.dtype == torch.int64 and s.g.dtype == torch.int64
        assert s.x.is_contiguous() and torch.isfinite(s.x).all()
        assert int(s.g.min()) >= 0 and int(s.g.max()) < ds.num_groups
        assert int(s.y.min()) >= 0 and int(s.y.max()) < ds.num_classes


# ---------------------------------------------------------------- splitting helpers


def test_stratified_split_counts_disjoint_and_seeded():
    strata = torch.tensor([0] * 10 + [1] * 30 + [2] * 1 + [3] * 2)
    rest, carved = stratified_split(strata, 0.2, make_generator(0))
    assert sorted(torch.cat([rest, carved]).tolist()) == list(range(len(strata)))
    counts = torch.bincount(strata[carved], minlength=4).tolist()
    # 20% rounded half up; a stratum of 1 stays in rest; a stratum of 2 gives 1 to each side.
    assert counts == [2, 6, 0, 1]
    again = stratified_split(strata, 0.2, make_generator(0))
    other = stratified_split(strata, 0.2, make_generator(1))
    assert torch.equal(again[1], carved)
    assert not torch.equal(other[1], carved)


def test_unbalance_keeps_share_per_label():
    labels = torch.arange(4).repeat_interleave(20)
    keep = unbalance(labels, {0: 0.9, 1: 0.1, 2: 0.0}, make_generator(3))
    assert torch.bincount(labels[keep], minlength=4).tolist() == [18, 2, 0, 20]
    assert keep.unique().numel() == keep.numel()


def test_joint_strata_distinguishes_pairs():
    g = torch.tensor([0, 0, 1, 1])
    y = torch.tensor([0, 2, 0, 2])
    assert joint_strata(g, y, 3).unique().numel() == 4


# ---------------------------------------------------------------- augmentation


def test_flip_of_known_tensor_without_padding():
    row = torch.arange(5.0)
    x = row.expand(64, 2, 3, 5).contiguous()
    out = random_crop_flip(x, make_generator(0), pad=0)
    assert out.shape == x.shape and out.dtype == x.dtype
    flipped = (out == row.flip(0)).all(dim=(1, 2, 3))
    kept = (out == row).all(dim=(1, 2, 3))
    assert bool((flipped ^ kept).all())  # every image is exactly x or its mirror
    assert 10 < int(flipped.sum()) < 54  # both happen (p = 0.5, n = 64)


def test_crop_is_a_shifted_padded_window():
    n, pad = 32, 2
    x = torch.randn(n, 3, 6, 6, generator=make_generator(1)) + 10.0  # no zeros inside
    out = random_crop_flip(x, make_generator(2), pad=pad)
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    seen = set()
    for i in range(n):
        matches = []
        for dy in range(2 * pad + 1):
            for dx in range(2 * pad + 1):
                window = padded[i, :, dy : dy + 6, dx : dx + 6]
                for flip in (False, True):
                    if torch.equal(out[i], window.flip(-1) if flip else window):
                        matches.append((dy, dx, flip))
        assert len(matches) == 1, f"image {i} is not a single crop/flip of its input"
        seen.add(matches[0][:2])
    assert len(seen) > 5  # offsets vary per sample
    again = random_crop_flip(x, make_generator(2), pad=pad)
    assert torch.equal(again, out)


# ---------------------------------------------------------------- registry and errors


def test_registry_names_and_unknown_dataset():
    assert set(DATASETS) == {"digits", "synthetic", "cifar10", "svhn", "utkface"}
    with pytest.raises(UserError, match=r"unknown dataset 'mnist'; choose one of: cifar10, digits"):
        get_dataset("mnist")


def test_unknown_option_names_valid_ones():
    with pytest.raises(UserError) as e:
        get_dataset("digits", minority_shares=0.2)
    msg = str(e.value)
    assert "'minority_shares'" in msg and "minority_share" in msg and "val_fraction" in msg
    assert "\n" not in msg
    assert "target" in dataset_options("utkface")


def test_bad_option_value():
    with pytest.raises(UserError, match="val_fraction=1.5"):
        get_dataset("digits", val_fraction=1.5)
    with pytest.raises(UserError, match="n_samples"):
        get_dataset("synthetic", n_samples=3)


# ---------------------------------------------------------------- digits


@pytest.fixture(scope="module")
def digits():
    return get_dataset("digits", seed=0)


def test_digits_shapes_counts_and_shares(digits):
    _check_split_types(digits)
    assert digits.input_shape == (1, 8, 8) and digits.num_groups == digits.num_classes == 10
    assert not digits.augment
    train = digits.train.group_counts(10)
    val = digits.val.group_counts(10)
    test = digits.test.group_counts(10)
    assert sum(train) + sum(val) + sum(test) < 1797  # minority classes were thinned
    assert all(35 <= c <= 37 for c in test)  # test keeps the source's balance
    # Validation is carved before unbalancing: balanced like test, ~36 per class.
    assert all(35 <= c <= 37 for c in val)
    # Training after unbalancing: classes 0-4 keep 90%, 5-9 keep 30% of ~108 each.
    assert all(95 <= c <= 99 for c in train[:5]) and all(30 <= c <= 34 for c in train[5:])
    assert 2.7 < (sum(train[:5]) / sum(train[5:])) < 3.3
    assert digits.info["balanced_val"] is True
    assert torch.equal(digits.train.y, digits.train.g)
    assert digits.info["group_counts"]["val"] == val
    assert abs(float(digits.train.x.mean())) < 1e-4 and abs(float(digits.train.x.std()) - 1) < 1e-3


def test_digits_unbalanced_val_option_keeps_the_earlier_split():
    ds = get_dataset("digits", seed=0, balanced_val=False)
    train, val = ds.train.group_counts(10), ds.val.group_counts(10)
    assert train == [96, 98, 96, 98, 98, 33, 33, 32, 31, 32]
    assert val == [32, 33, 32, 33, 33, 11, 11, 11, 11, 11]
    pool = [t + v for t, v in zip(train, val)]
    # Pool after unbalancing: classes 0-4 keep 90%, 5-9 keep 30% of ~144 each.
    assert all(125 <= c <= 133 for c in pool[:5]) and all(40 <= c <= 46 for c in pool[5:])


def test_digits_seeded_and_unbalance_test(digits):
    assert _same(get_dataset("digits", seed=0), digits)
    assert not _same(get_dataset("digits", seed=1), digits)
    unb = get_dataset("digits", seed=0, unbalance_test=True).test.group_counts(10)
    assert all(31 <= c <= 34 for c in unb[:5]) and all(10 <= c <= 12 for c in unb[5:])


# ---------------------------------------------------------------- synthetic


def test_synthetic_sizes_shares_and_seed():
    ds = get_dataset("synthetic", seed=0, n_samples=1000, minority_share=0.2)
    _check_split_types(ds)
    assert ds.input_shape == (2,) and ds.group_names == ("majority", "minority")
    assert ds.class_names == ("0", "1")
    sizes = [len(ds.split(s)) for s in ("train", "val", "test")]
    assert sum(sizes) == 1000 and sizes[2] == pytest.approx(200, abs=3)
    groups = torch.cat([ds.split(s).g for s in ("train", "val", "test")])
    assert int(groups.sum()) == 200
    assert ds.test.group_counts(2)[1] == pytest.approx(40, abs=2)
    assert torch.allclose(ds.train.x.mean(0), torch.zeros(2), atol=1e-5)
    assert _same(ds, get_dataset("synthetic", seed=0, n_samples=1000, minority_share=0.2))
    assert not _same(ds, get_dataset("synthetic", seed=1, n_samples=1000, minority_share=0.2))


def test_synthetic_linear_model_fails_minority_more():
    from sklearn.linear_model import LogisticRegression

    ds = get_dataset("synthetic", seed=0)
    model = LogisticRegression().fit(ds.train.x.numpy(), ds.train.y.numpy())
    pred = torch.as_tensor(model.predict(ds.test.x.numpy()))
    acc = [float((pred == ds.test.y)[ds.test.g == a].float().mean()) for a in (0, 1)]
    assert acc[0] - acc[1] > 0.08, acc
    for a in (0, 1):  # both classes present in both groups
        assert ds.train.y[ds.train.g == a].unique().numel() == 2


def test_synthetic_geometry_majority_separable_minority_at_the_curved_tip():
    from tune_linfair.data.synthetic import MARGIN, boundary, distance_to_boundary

    ds = get_dataset("synthetic", seed=0)
    norm = ds.info["normalization"]
    mean = torch.as_tensor(norm["mean"]).view(1, -1)
    std = torch.as_tensor(norm["std"]).view(1, -1)
    x = torch.cat([s.x for s in (ds.train, ds.val, ds.test)]) * std + mean
    y = torch.cat([s.y for s in (ds.train, ds.val, ds.test)])
    g = torch.cat([s.g for s in (ds.train, ds.val, ds.test)])
    dist = distance_to_boundary(x)
    # Majority: margin 0.3 minus the 0.03-std input noise; the true boundary gets all of it.
    assert float(dist[g == 0].min()) > MARGIN - 0.1
    truth = (x[:, 1] > boundary(x[:, 0])).long() == y
    assert bool(truth[g == 0].all())
    # Minority: close to the boundary, at the tip (|x1| small), with some class overlap.
    assert float(dist[g == 1].median()) < 0.15
    assert float(x[g == 1, 0].abs().median()) < 0.25
    assert 0.85 < float(truth[g == 1].float().mean()) < 1.0
    # Known points: the tip and a flat-region point.
    pts = torch.tensor([[0.0, 2.0], [3.0, 0.5]])
    assert torch.allclose(distance_to_boundary(pts), torch.tensor([0.0, 0.5]), atol=2e-3)


# ---------------------------------------------------------------- cifar10 (fake files)


def _cifar_images(labels: np.ndarray) -> np.ndarray:
    """Rows of 3072 uint8 whose channel plane c is constant 60 * c + 3 * label."""
    n = len(labels)
    planes = 60 * np.arange(3)[None, :] + 3 * labels[:, None]  # (n, 3)
    data = np.repeat(planes[:, :, None], 1024, axis=2).reshape(n, 3072)
    return data.astype(np.uint8)


def _write_cifar(root: Path, per_class_batch: int = 4, per_class_test: int = 2) -> None:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(1, 6):
        labels = rng.permutation(np.repeat(np.arange(10), per_class_batch))
        entry = {"data": _cifar_images(labels), "labels": labels.tolist()}
        if i == 2:  # python-2 style pickles carry bytes keys
            entry = {k.encode(): v for k, v in entry.items()}
            entry[b"batch_label"] = b"training batch 2 of 5"
        with open(folder / f"data_batch_{i}", "wb") as f:
            pickle.dump(entry, f)
    labels = np.repeat(np.arange(10), per_class_test)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({"data": _cifar_images(labels), "labels": labels.tolist()}, f)


def test_cifar10_fake_files(tmp_path):
    _write_cifar(tmp_path)
    ds = get_dataset("cifar10", root=str(tmp_path), seed=0)
    _check_split_types(ds)
    assert ds.input_shape == (3, 32, 32) and ds.augment and ds.class_names[0] == "airplane"
    train, val = ds.train.group_counts(10), ds.val.group_counts(10)
    assert val == [2] * 10  # 10% of 20 per class, carved before unbalancing
    assert train == [16] * 5 + [2] * 5  # the other 18: 90% / 10%
    old = get_dataset("cifar10", root=str(tmp_path), seed=0, balanced_val=False)
    pool = [t + v for t, v in zip(old.train.group_counts(10), old.val.group_counts(10))]
    assert pool == [18] * 5 + [2] * 5  # 20 per class: 90% / 10%
    assert old.val.group_counts(10) == [2] * 5 + [1] * 5
    assert ds.test.group_counts(10) == [2] * 10  # test keeps the source distribution
    # Channel-major reshape: every channel plane of every image is constant, and its value
    # increases with the label (so images and labels stayed paired).
    for split in (ds.train, ds.test):
        flat = split.x.flatten(2)
        assert torch.allclose(flat.amax(2), flat.amin(2), atol=1e-5)
        order = split.y.argsort()
        assert (split.x[order, 0, 0, 0].diff() >= -1e-6).all()
    mean = ds.train.x.mean(dim=(0, 2, 3))
    assert torch.allclose(mean, torch.zeros(3), atol=1e-4)
    unb = get_dataset("cifar10", root=tmp_path, unbalance_test=True)
    assert unb.test.group_counts(10) == [2] * 5 + [1] * 5
    assert _same(ds, get_dataset("cifar10", root=tmp_path, seed=0))
    assert not _same(ds, get_dataset("cifar10", root=tmp_path, seed=5))


def test_cifar10_missing_files(tmp_path):
    with pytest.raises(UserError, match=r"cifar-10-batches-py.*--download"):
        get_dataset("cifar10", root=tmp_path / "nowhere")
    with pytest.raises(UserError, match="--data-root"):
        get_dataset("cifar10")
    _write_cifar(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(UserError, match="data_batch_3"):
        get_dataset("cifar10", root=tmp_path)


# ---------------------------------------------------------------- svhn (fake files)


def _write_svhn(path: Path, labels: np.ndarray) -> None:
    from scipy.io import savemat

    n = len(labels)
    x = np.zeros((32, 32, 3, n), dtype=np.uint8)
    digit = np.where(labels == 10, 0, labels)
    for c in range(3):
        x[:, :, c, :] = 70 * c + 5 * digit  # plane c constant, increasing with the digit
    x[0, 1, 0, :] += 1  # one marked pixel: row 0, column 1, channel 0
    savemat(str(path), {"X": x, "y": labels.reshape(n, 1).astype(np.uint8)})


def test_svhn_fake_files_label_mapping(tmp_path):
    train_labels = np.repeat(np.arange(1, 11), [8, 20, 10, 9, 8, 8, 7, 7, 6, 12])
    np.random.default_rng(0).shuffle(train_labels)
    _write_svhn(tmp_path / "train_32x32.mat", train_labels)
    test_labels = np.repeat(np.arange(1, 11), 2)
    _write_svhn(tmp_path / "test_32x32.mat", test_labels)
    ds = get_dataset("svhn", root=tmp_path, seed=0)
    _check_split_types(ds)
    assert ds.input_shape == (3, 32, 32) and ds.augment
    total = [t + v for t, v in zip(ds.train.group_counts(10), ds.val.group_counts(10))]
    assert total == [12, 8, 20, 10, 9, 8, 8, 7, 7, 6]  # label 10 -> digit 0, natural imbalance
    assert ds.val.group_counts(10) == [1, 1, 2, 1, 1, 1, 1, 1, 1, 1]
    assert ds.test.group_counts(10) == [2] * 10
    x = ds.train.x
    # (H, W, C, N) -> (N, C, H, W): the marked pixel is x[:, 0, 0, 1] and stands out.
    assert (x[:, 0, 0, 1] > x[:, 0, 0, 2]).all() and (x[:, 0, 1, 0] == x[:, 0, 0, 2]).all()
    order = ds.train.y.argsort()
    assert (x[order, 2, 5, 5].diff() >= -1e-6).all()
    assert _same(ds, get_dataset("svhn", root=tmp_path, seed=0))


def test_svhn_missing_files(tmp_path):
    with pytest.raises(UserError, match=r"train_32x32\.mat.*--download"):
        get_dataset("svhn", root=tmp_path)


# ---------------------------------------------------------------- utkface (fake files)


def _write_utk(folder: Path) -> dict[str, int]:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    ages = [3, 8, 12, 13, 15, 17, 18, 40, 64, 65, 80, 99]  # three per bucket
    i = 0
    for rep in range(2):
        for age in ages:
            gender, race = i % 2, i % 5
            color = (i * 7 % 256, 100, 200)
            suffix = ".jpg.chip.jpg" if i % 3 == 0 else ".jpg"
            name = f"{age}_{gender}_{race}_2017011{rep}1745251{i:02d}{suffix}"
            Image.new("RGB", (48, 40), color).save(folder / name, format="JPEG")
            i += 1
    Image.new("RGB", (48, 48), (1, 2, 3)).save(folder / "1_0_0_20170109150557335.jpg")
    Image.new("RGB", (48, 48)).save(folder / "39_1_20170116174525125.jpg.chip.jpg")
    Image.new("RGB", (48, 48)).save(folder / "61_3_1_20170109142408075.jpg")  # bad gender
    (folder / "30_0_1_20170109142408999.jpg").write_bytes(b"not a jpeg")
    (folder / "notes.txt").write_text("ignored")
    return {"usable": 24, "malformed": 2, "unreadable": 1, "dropped": 1}


def test_utkface_name_parsing_and_buckets():
    assert parse_name("26_1_3_20170119180616135.jpg.chip.jpg") == (26, 1, 3)
    assert parse_name("26_1_3_20170119180616135.jpg") == (26, 1, 3)
    assert parse_name("39_1_20170116174525125.jpg.chip.jpg") is None
    assert parse_name("26_1_7_20170119180616135.jpg") is None
    assert [age_bucket(a) for a in (0, 1, 2, 12, 13, 17, 18, 64, 65, 116)] == [
        None, None, 0, 0, 1, 1, 2, 2, 3, 3,
    ]  # fmt: skip


def test_utkface_age_groups(tmp_path):
    expected = _write_utk(tmp_path / "UTKFace")
    ds = get_dataset("utkface", root=tmp_path, seed=0)
    _check_split_types(ds)
    assert ds.input_shape == (3, 32, 32) and ds.augment
    assert ds.group_names == ds.class_names == ("2-12", "13-17", "18-64", "65+")
    counts = np.sum([ds.split(s).group_counts(4) for s in ("train", "val", "test")], axis=0)
    assert counts.tolist() == [6, 6, 6, 6]
    assert ds.test.group_counts(4) == [1, 1, 1, 1]  # stratified: every group in test
    assert min(ds.val.group_counts(4)) >= 1
    assert ds.info["used"] == expected["usable"]
    assert ds.info["malformed"] == expected["malformed"]
    assert ds.info["unreadable"] == expected["unreadable"]
    assert ds.info["dropped_age_0_1"] == expected["dropped"]
    assert "39_1_20170116174525125.jpg.chip.jpg" in ds.info["malformed_examples"]
    assert _same(ds, get_dataset("utkface", root=tmp_path, seed=0))
    assert not _same(ds, get_dataset("utkface", root=tmp_path, seed=1))


def test_utkface_target_gender_group_race(tmp_path):
    _write_utk(tmp_path)  # files directly in the root also work
    ds = get_dataset("utkface", root=tmp_path, target="gender", group="race")
    assert ds.class_names == ("male", "female")
    assert ds.group_names == ("White", "Black", "Asian", "Indian", "Others")
    y = torch.cat([ds.split(s).y for s in ("train", "val", "test")])
    g = torch.cat([ds.split(s).g for s in ("train", "val", "test")])
    # Age is unused, so the 1-year-old is kept: 25 images, i % 2 genders, i % 5 races.
    assert ds.info["dropped_age_0_1"] == 0 and len(y) == 25
    assert torch.bincount(y, minlength=2).tolist() == [13, 12]
    assert torch.bincount(g, minlength=5).tolist() == [6, 5, 5, 5, 4]


def test_utkface_bad_input(tmp_path):
    with pytest.raises(UserError, match=r"unknown UTKFace target 'height'; choose one of: age"):
        get_dataset("utkface", root=tmp_path, target="height")
    with pytest.raises(UserError, match="no .jpg files"):
        get_dataset("utkface", root=tmp_path)
    with pytest.raises(UserError, match="not a folder"):
        get_dataset("utkface", root=tmp_path / "missing")
    (tmp_path / "39_1_20170116174525125.jpg.chip.jpg").write_bytes(b"x")
    with pytest.raises(UserError, match="no usable UTKFace images.*1 malformed"):
        get_dataset("utkface", root=tmp_path)


def test_cifar_reader_refuses_code_in_pickles(tmp_path: Path) -> None:
    """A batch file whose pickle would call os.system is refused, not executed."""
    import os as _os
    import pickle as _pickle

    from tune_linfair.data.cifar10 import read_batch

    class Evil:
        def __reduce__(self):
            return (_os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    bad = tmp_path / "data_batch_1"
    bad.write_bytes(_pickle.dumps({"data": Evil(), "labels": [0]}))
    with pytest.raises(UserError, match="not allowed"):
        read_batch(bad)
    assert not (tmp_path / "pwned").exists()
