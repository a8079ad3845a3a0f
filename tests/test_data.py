"""The zoo's data sets: bundled digits and a byte-level corpus, no download."""

import pytest
import torch

from runtime.rank.data import load_byte_corpus, load_dataset


def test_digits_are_scikit_learns_bundled_images():
    d = load_dataset("digits")
    assert len(d) == 1797
    x, _y = d.batch([0, 10])
    assert x.shape == (2, 64) and x.dtype == torch.float32
    assert float(d.inputs.min()) >= 0 and float(d.inputs.max()) == 1.0
    assert set(d.targets.tolist()) == set(range(10))


def test_stdlib_corpus_windows_predict_the_next_byte():
    c = load_dataset("bytes:stdlib", seq_len=32)
    assert c.name == "bytes:stdlib"
    assert len(c) > 10_000
    x, y = c.batch([0, 7])
    assert x.shape == y.shape == (2, 32)
    assert int(x.max()) < 256
    assert torch.equal(x[:, 1:], y[:, :-1])
    # Deterministic: a second load gives the same bytes.
    assert torch.equal(load_dataset("bytes:stdlib", seq_len=32).batch([7])[0], x[1:])


def test_corpus_from_any_text_files(tmp_path):
    (tmp_path / "b.txt").write_text("world " * 10)
    (tmp_path / "a.md").write_text("hello ")
    c = load_byte_corpus(tmp_path, seq_len=5)
    x, y = c.batch([0])
    assert bytes(x[0].tolist()) == b"hello" and bytes(y[0].tolist()) == b"ello "
    with pytest.raises(IndexError):
        c.batch([len(c)])


def test_bad_data_sets_are_named():
    with pytest.raises(ValueError, match="unknown data set 'imagenet'"):
        load_dataset("imagenet")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_dataset("bytes:/no/such/dir", seq_len=8)
