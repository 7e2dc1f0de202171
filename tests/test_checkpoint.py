import dataclasses
import os
import pickle

import pytest
import torch

from clipsonic.checkpoint import load_checkpoint, load_state_dict_strict, safe_torch_load, save_checkpoint
from clipsonic.config import Config
from clipsonic.errors import CheckpointError


@dataclasses.dataclass(frozen=True)
class TinyNetConfig(Config):
    width: int = 4


def tiny_net(width: int = 4) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, width), torch.nn.LayerNorm(width))


def test_round_trip(tmp_path):
    net = tiny_net()
    path = save_checkpoint(tmp_path / "net.pt", "unet", TinyNetConfig(), net.state_dict(),
                           version=2, extra={"step": 7, "rng": torch.get_rng_state(), "mel": [-11.5, 2.0]})
    payload = load_checkpoint(path, "unet", max_version=2)
    assert payload["format"] == "clipsonic.unet" and payload["version"] == 2
    assert TinyNetConfig.from_dict(payload["config"]) == TinyNetConfig()
    assert payload["extra"]["step"] == 7 and payload["extra"]["mel"] == [-11.5, 2.0]
    fresh = tiny_net(4)
    torch.nn.init.zeros_(fresh[0].weight)
    load_state_dict_strict(fresh, payload["state_dict"], path)
    for name, tensor in net.state_dict().items():
        torch.testing.assert_close(fresh.state_dict()[name], tensor, rtol=0, atol=0)


def test_the_same_weights_give_the_same_bytes_under_any_name(tmp_path):
    # Shipped files are pinned by sha256: rebuilding them must reproduce the hash, not only the weights.
    first = save_checkpoint(tmp_path / "net.pt", "unet", TinyNetConfig(), tiny_net().state_dict())
    second = save_checkpoint(tmp_path / "other" / "renamed.pt", "unet", TinyNetConfig(), tiny_net().state_dict())
    assert first.read_bytes() == second.read_bytes()


def test_a_failed_write_keeps_the_old_file(tmp_path):
    path = save_checkpoint(tmp_path / "net.pt", "unet", {"width": 4}, tiny_net().state_dict())
    before = path.read_bytes()
    with pytest.raises((AttributeError, TypeError, pickle.PicklingError)):
        save_checkpoint(path, "unet", {"width": 4}, {}, extra={"unpicklable": lambda: None})
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["net.pt"]


def test_kind_and_version_are_checked(tmp_path):
    path = save_checkpoint(tmp_path / "prior.pt", "prior", {}, {}, version=3)
    with pytest.raises(CheckpointError, match="prior.pt: is a prior checkpoint, expected a unet checkpoint"):
        load_checkpoint(path, "unet")
    with pytest.raises(CheckpointError, match="version 3 is newer than this clipsonic reads \\(up to 2\\)"):
        load_checkpoint(path, "prior", max_version=2)


def test_not_a_checkpoint(tmp_path):
    torch.save({"weights": torch.zeros(2)}, tmp_path / "plain.pt")
    with pytest.raises(CheckpointError, match="plain.pt: not a clipsonic checkpoint"):
        load_checkpoint(tmp_path / "plain.pt")
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(CheckpointError, match="text.pt: not a"):
        load_checkpoint(tmp_path / "text.pt")
    with pytest.raises(CheckpointError, match="absent.pt: no such checkpoint file"):
        load_checkpoint(tmp_path / "absent.pt")


class RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("writer", ["torch", "pickle"])
def test_malicious_pickle_is_refused_without_running(tmp_path, writer):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    payload = {"format": "clipsonic.unet", "state_dict": {}, "hook": RunsCode(marker)}
    if writer == "torch":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload))
    with pytest.raises(CheckpointError, match="evil.pt: refused to load: unpickling it would run code"):
        safe_torch_load(path)
    assert not marker.exists()


def test_strict_loading_names_the_keys():
    net = tiny_net(4)
    state = tiny_net(5).state_dict()
    state["extra.weight"] = torch.zeros(1)
    del state["1.bias"]
    with pytest.raises(CheckpointError) as caught:
        load_state_dict_strict(net, state, "model.pt")
    message = str(caught.value)
    assert message.startswith("model.pt: does not fit Sequential")
    assert "missing keys: 1.bias" in message
    assert "unexpected keys: extra.weight" in message
    assert "0.weight (5, 3) vs model (4, 3)" in message
