"""load_official: the authors' checkpoint layouts give the authors' logits; bad files fail in one line.

``data/official_cases.json`` (read by ``helpers.official_case``) was written by
``tools/compare_official.py --fixture`` from the authors' own model classes (tiny size, random
weights): for each case the authors' key layout (names, shapes), the seed of its weights and the
authors' logits. Each test rebuilds that checkpoint with the same layout writer, loads it with
``load_official`` and compares.
"""

import importlib
import re
import sys
import textwrap

import numpy as np
import pytest
import torch

from helpers import OFFICIAL_CASES, official_case, official_harness
from side4video import load_official
from side4video.official import OfficialCheckpointError, convert_official, read_config
from side4video.safe_load import Opaque, load_checkpoint_data


@pytest.mark.parametrize("name", [n for n in OFFICIAL_CASES if n.endswith(" 8f")])
def test_official_layouts_give_the_authors_logits(name, tmp_path):
    path, kwargs, case = official_case(name, tmp_path)
    model = load_official(path, num_frames=case["frames"], **kwargs)
    assert not model.training
    with torch.no_grad():
        logits = model(official_harness.clips(case["frames"], case["seed"]))
    assert (logits - torch.tensor(case["logits"])).abs().max() <= 1e-4


def test_imported_zeroi2v_still_merges_exactly(tmp_path):
    path, kwargs, case = official_case("zeroi2v 6 adapters (separate q/k/v), long_shift_right 8f", tmp_path)
    model = load_official(path, **kwargs)
    assert model.cfg.qkv_adapters
    assert model.shift_groups[:4] == ((-1, 32), (1, 32), (-2, 32), (2, 32))
    merged = model.reparameterize()
    video = official_harness.clips(case["frames"], case["seed"])
    with torch.no_grad():
        assert (merged(video) - torch.tensor(case["logits"])).abs().max() <= 1e-4


STAND_IN = """
import collections
import os


class HistoryBuffer:  # mmengine.logging.HistoryBuffer: numpy histories of a logged scalar
    def __init__(self, values, counts):
        self._log_history, self._count_history, self.max_length = values, counts, 1000000


class MessageHub:
    def __init__(self):
        self._log_scalars, self._runtime_info = collections.OrderedDict(), collections.OrderedDict()


class Touch:  # executed on load, it would create the marker file
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return os.system, ("touch " + self.path,)


class Open(Touch):
    def __reduce__(self):
        return open, (self.path, "w")
"""


def test_a_full_mmengine_checkpoint_is_read_as_data_and_runs_nothing(tmp_path):
    path, kwargs, case = official_case("zeroi2v K400 B/16-style: shift_div, 4 adapters 8f", tmp_path)
    plain = torch.load(path, weights_only=True)
    marker, module = tmp_path / "executed", "mmengine_stand_in"
    (tmp_path / f"{module}.py").write_text(textwrap.dedent(STAND_IN))
    sys.path.insert(0, str(tmp_path))
    try:  # mmengine's save_checkpoint layout, with classes that exist only while saving
        importlib.invalidate_caches()
        mm = importlib.import_module(module)
        hub = mm.MessageHub()
        hub._log_scalars["loss"] = mm.HistoryBuffer(np.array([0.7, 0.5]), np.array([1, 1]))
        net = torch.nn.Linear(2, 2)
        optimizer = torch.optim.AdamW(net.parameters())
        net(torch.ones(1, 2)).sum().backward()
        optimizer.step()
        full = {
            "meta": {**plain["meta"], "seed": np.int64(3), "dtype": np.dtype("float32"), "hub": hub,
                     "dataset_meta": {"classes": np.array(["a", "b"])}, "time": "20231101_120000"},
            "state_dict": plain["state_dict"],
            "message_hub": {"log_scalars": hub._log_scalars, "runtime_info": {"epoch": np.int64(40)},
                            "resumed_keys": {"loss": True}, "x": [mm.Touch(str(marker)), mm.Open(str(marker))]},
            "optimizer": optimizer.state_dict(),
            "param_schedulers": [{"base_values": [1e-3], "last_step": np.int64(40)}],
        }
        torch.save(full, path)
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop(module)
    with pytest.raises(Exception, match="Weights only load failed"):
        torch.load(path, weights_only=True)

    model = load_official(path, **kwargs)
    with torch.no_grad():
        logits = model(official_harness.clips(case["frames"], case["seed"]))
    assert (logits - torch.tensor(case["logits"])).abs().max() <= 1e-4
    data = load_checkpoint_data(path)
    assert data["meta"]["cfg"] == plain["meta"]["cfg"]
    assert all(torch.equal(data["state_dict"][k], v) for k, v in plain["state_dict"].items())
    assert data["optimizer"]["state"][0]["exp_avg"].shape == (2, 2)
    buffer = data["message_hub"]["log_scalars"]["loss"]
    assert isinstance(buffer, Opaque)
    assert buffer.qualname == f"{module}.HistoryBuffer"
    assert {type(x).__name__ for x in data["message_hub"]["x"]} == {"system", "open"}
    assert not marker.exists()
    assert module not in sys.modules


# ----------------------------------------------------------------------------- errors


def one_line_error(fn, *names: str) -> str:
    with pytest.raises(OfficialCheckpointError) as err:
        fn()
    message = str(err.value)
    assert "\n" not in message
    for name in names:
        assert name in message, message
    return message


def test_missing_or_inconsistent_keys_name_the_file_and_key(tmp_path):
    path, _, case = official_case("side4video B/16-style (OpenAI CLIP) 8f", tmp_path)
    ckpt = torch.load(path)
    del ckpt["model_state_dict"]["visual.transformer.side_lns.1.bias"]
    torch.save(ckpt, path)
    one_line_error(lambda: load_official(path), str(path), "visual.transformer.side_lns.1.bias")

    path, kwargs, case = official_case("st-adapter K400 12x (before MLP) 8f", tmp_path)
    one_line_error(lambda: load_official(path), str(path), "pretrained")
    ckpt = torch.load(path)
    ckpt["model"]["transformer.resblocks.0.adapter_pre_mlp.gate"] = torch.zeros(1)
    torch.save(ckpt, path)
    one_line_error(lambda: load_official(path, **kwargs), str(path), "transformer.resblocks.0.adapter_pre_mlp.gate")

    path, _, case = official_case("zeroi2v K400 B/16-style: shift_div, 4 adapters 8f", tmp_path)
    one_line_error(lambda: load_official(path, num_frames=16), "num_frames")
    ckpt = torch.load(path)
    ckpt["meta"]["cfg"] = ckpt["meta"]["cfg"].replace("num_frames=8", "num_frames=16")
    torch.save(ckpt, path)
    one_line_error(lambda: load_official(path), str(path), "backbone.temporal_embedding", "num_frames=16")
    text = ckpt["meta"]["cfg"]
    ckpt["meta"]["cfg"] = text.replace("num_frames=16", "num_frames=8").replace("num_classes=5", "num_classes=7")
    torch.save(ckpt, path)
    one_line_error(lambda: load_official(path), str(path), "cls_head.fc_cls.weight", "num_classes=7")
    del ckpt["meta"]["cfg"]
    torch.save(ckpt, path)
    one_line_error(lambda: load_official(path), str(path), "meta.cfg")
    ckpt["meta"]["cfg"] = "model = dict(backbone=dict(type='ViT_Zero_CLIP', num_frames=8), cls_head=dict())\n"
    torch.save(ckpt, path)
    one_line_error(lambda: load_official(path), str(path), "meta.cfg", "'heads'")

    ckpt["meta"]["cfg"] = text.replace("num_frames=16", "num_frames=8")
    ckpt["state_dict"]["backbone.conv1.weight"] = np.zeros(3)  # read as an inert record, not as a tensor
    torch.save(ckpt, path)
    one_line_error(lambda: load_official(path), str(path), "'state_dict.backbone.conv1.weight' is not a tensor")

    torch.save({"weights": {}}, path)
    one_line_error(lambda: load_official(path), str(path), "model_state_dict")


def test_config_text_is_read_as_data_and_never_executed(tmp_path):
    marker = tmp_path / "executed"
    text = (
        f"import os\nos.system('touch {marker}')\nopen({str(marker)!r}, 'w')\n"
        f"side_effect = open({str(marker)!r}, 'w')\n"
        "num_frames = 8\nscale = -0.5\n"
        "model = dict(backbone=dict(num_frames=num_frames, adapter_scale=scale, stdha_cfg={'shift_div': 12}),"
        " heads=[1, (2, 3)])\n"
    )
    values = read_config(text, "cfg.py")
    assert values["model"] == {"backbone": {"num_frames": 8, "adapter_scale": -0.5, "stdha_cfg": {"shift_div": 12}},
                               "heads": [1, (2, 3)]}
    assert "side_effect" not in values
    evil = f"model = dict(backbone=dict(num_frames=__import__('os').system('touch {marker}')))\n"
    message = one_line_error(lambda: read_config(evil, "cfg.py"), "cfg.py", "'model' (line 1)")
    assert "plain data" in message

    path, _, _ = official_case("zeroi2v K400 B/16-style: shift_div, 4 adapters 8f", tmp_path)
    config = tmp_path / "config.py"
    config.write_text(evil)
    one_line_error(lambda: convert_official(path, config=config), str(config), "model")
    assert not marker.exists()


def test_config_file_overrides_the_checkpoint_text(tmp_path):
    path, _, case = official_case("zeroi2v K400 B/16-style: shift_div, 4 adapters 8f", tmp_path)
    config = tmp_path / "CLIP-B_k400_8x16x1.py"
    text = torch.load(path)["meta"]["cfg"]
    config.write_text(re.sub(r"shift_div=\d+", "shift_div=8", text))
    assert convert_official(path).config.shift_groups == ((-1, 64), (1, 64))
    assert convert_official(path, config=config).config.shift_groups == ((-1, 32), (1, 32))
