import dataclasses
import json

import pytest

from clipsonic.audio import MelConfig
from clipsonic.config import Config
from clipsonic.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class BlockConfig(Config):
    channels: int = 8
    dropout: float = 0.0


@dataclasses.dataclass(frozen=True)
class NetConfig(Config):
    width: int = 128
    multipliers: tuple[int, ...] = (1, 2, 3, 4)
    block: BlockConfig = BlockConfig()
    context: int | None = None

    PRESETS = {"paper": {}, "tiny": {"width": 16, "multipliers": (1, 2), "block": {"channels": 2}}}


def test_presets():
    assert NetConfig.preset("paper") == NetConfig()
    tiny = NetConfig.preset("tiny")
    assert tiny.width == 16 and tiny.multipliers == (1, 2) and tiny.block == BlockConfig(channels=2)
    assert NetConfig.preset("tiny", width=32).width == 32
    with pytest.raises(ConfigError, match="unknown NetConfig preset 'huge' \\(choose from: paper, tiny\\)"):
        NetConfig.preset("huge")


def test_json_round_trip(tmp_path):
    config = NetConfig(width=64, multipliers=(1, 1, 2), block=BlockConfig(4, 0.1), context=77)
    text = config.to_json(tmp_path / "net.json")
    assert json.loads(text)["multipliers"] == [1, 1, 2]
    assert NetConfig.from_json(tmp_path / "net.json") == config
    assert NetConfig.from_json(text) == config
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.width = 3  # type: ignore[misc]


def test_bad_configs_are_named():
    with pytest.raises(ConfigError, match="NetConfig has no field\\(s\\) depth, heads"):
        NetConfig.from_dict({"depth": 3, "heads": 2})
    with pytest.raises(ConfigError, match="missing.json: cannot read config"):
        NetConfig.from_json("missing.json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        NetConfig.from_json("{width: 3")
    with pytest.raises(ConfigError, match="invalid MelConfig: win_size 4096 exceeds n_fft 2048"):
        MelConfig.from_dict({"win_size": 4096})


def test_mel_config_paper_preset():
    config = MelConfig.preset("paper")
    assert (config.sample_rate, config.n_fft, config.hop_size, config.n_mels, config.fmax) == (16000, 2048, 512, 64, 8000)
    assert config.replace(n_mels=80).n_mels == 80
