"""Pickles read as data: the restricted unpickler, TorchScript archives without their code, atomic writes."""

from __future__ import annotations

import os
import pickle
import warnings
from collections import OrderedDict

import pytest
import torch

from side4video.atomic import atomic_save, atomic_write_text, remove_stale_temps
from side4video.safe_load import UnsafePickleError, load_plain_pickle, read_torchscript_state_dict


class _Touch:
    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


@pytest.mark.parametrize("protocol", [0, 2, pickle.HIGHEST_PROTOCOL])
def test_plain_pickles_round_trip(tmp_path, protocol):
    data = {"v1": [["a", "dog"], "a cat"], 3: (1.5, None, True, b"x"), "s": {1, 2}, "f": frozenset({"z"}),
            "o": OrderedDict(a=1)}
    (tmp_path / "p.pkl").write_bytes(pickle.dumps(data, protocol=protocol))
    assert load_plain_pickle(tmp_path / "p.pkl") == data


@pytest.mark.parametrize("payload", ["global", "persistent", "garbage"])
def test_plain_pickle_refuses_code_and_names_the_file(tmp_path, payload):
    marker, path = tmp_path / "created", tmp_path / "p.pkl"
    if payload == "global":
        path.write_bytes(pickle.dumps({"a": _Touch(marker)}))
    elif payload == "persistent":
        path.write_bytes(b"\x80\x02X\x01\x00\x00\x00aQ.")  # BINUNICODE 'a', BINPERSID, STOP
    else:
        path.write_bytes(b"\x00\x01garbage")
    with pytest.raises(UnsafePickleError, match="p.pkl"):
        load_plain_pickle(path)
    assert not marker.exists()


class _Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(3, 4)
        self.ln = torch.nn.LayerNorm(4)
        self.register_buffer("steps", torch.arange(3))
        self.h16 = torch.nn.Parameter(torch.randn(2, 5).half().t())  # non-contiguous, float16
        self.aux = torch.ones(2)  # a plain tensor attribute: not in state_dict()

    def forward(self, x):
        return self.ln(self.fc(x)) + self.h16.float().sum() + self.steps.sum() + self.aux.sum()


@pytest.mark.parametrize("mode", ["trace", "script"])
def test_torchscript_state_dict_equals_jit_load(tmp_path, mode):
    net, path = _Net(), tmp_path / "net.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = torch.jit.trace(net, torch.randn(1, 3)) if mode == "trace" else torch.jit.script(net)
        torch.jit.save(module, str(path))
        expected = torch.jit.load(str(path)).state_dict()
    got = read_torchscript_state_dict(path)
    assert list(got) == list(expected)
    for k, v in expected.items():
        assert got[k].dtype == v.dtype
        assert torch.equal(got[k], v)


def test_torchscript_reader_refuses_foreign_globals(tmp_path):
    import zipfile

    path = tmp_path / "net.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(path))
    forged = tmp_path / "forged.pt"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(forged, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename.endswith("/data.pkl"):
                data = pickle.dumps(_Touch(tmp_path / "created"), protocol=2)
            dst.writestr(item, data)
    with pytest.raises(UnsafePickleError, match=r"io.open|builtins.open"):
        read_torchscript_state_dict(forged)
    assert not (tmp_path / "created").exists()


def test_atomic_write_replaces_a_planted_symlink_and_never_writes_through_it(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("precious")
    (tmp_path / "out.txt").symlink_to(victim)
    atomic_write_text("new", tmp_path / "out.txt")
    assert victim.read_text() == "precious"
    assert not (tmp_path / "out.txt").is_symlink()
    assert (tmp_path / "out.txt").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt", "victim"]


def test_stale_temps_of_dead_writers_are_removed(tmp_path):
    dead = os.fork()
    if dead == 0:
        os._exit(0)
    os.waitpid(dead, 0)  # a pid that no longer runs
    stale = tmp_path / f".last.pt.{dead}.abc123_x.tmp"
    live = tmp_path / f".last.pt.{os.getpid()}.def456.tmp"
    stale.write_bytes(b"partial")
    live.write_bytes(b"being written")
    atomic_save({"a": torch.ones(1)}, tmp_path / "last.pt")
    assert not stale.exists()
    assert live.exists()  # this process's own write in progress is left alone
    assert remove_stale_temps(tmp_path) == []
    assert torch.load(tmp_path / "last.pt")["a"].item() == 1
