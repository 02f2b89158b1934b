"""``conf/explore.yaml`` composes and passes its schema; wrong values are named; hosts other than this machine are
recognised."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from cxr_vlp.explore.__main__ import is_loopback
from cxr_vlp.utils.config import config_dir
from cxr_vlp.utils.validate import EXPLORE_SCHEMA, ConfigValidationError, validate_config


def _compose(overrides: list[str]):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir(), version_base="1.3"):
        return compose("explore", overrides=overrides)


def test_explore_config_defaults_are_valid_and_local() -> None:
    cfg = _compose(["ckpt_path=x.ckpt"])
    validate_config(cfg, EXPLORE_SCHEMA)
    assert cfg.host == "127.0.0.1" and is_loopback(cfg.host) and cfg.split == "test" and cfg.export is None


def test_explore_config_errors_name_the_keys() -> None:
    cfg = _compose(["ckpt_path=x.ckpt", "port=70000", "split=dev", "k=0"])
    with pytest.raises(ConfigValidationError) as err:
        validate_config(cfg, EXPLORE_SCHEMA)
    for key in ("port=70000", "split='dev'", "k=0"):
        assert key in str(err.value)
    with pytest.raises(ConfigValidationError, match=r"ckpt_path is required"):
        validate_config(_compose([]), EXPLORE_SCHEMA)


@pytest.mark.parametrize(
    ("host", "local"),
    [
        ("127.0.0.1", True),
        ("localhost", True),
        ("::1", True),
        ("127.0.0.2", True),
        ("0.0.0.0", False),
        ("192.168.1.4", False),
        ("example.org", False),
        ("::", False),
    ],
)
def test_loopback_hosts(host: str, local: bool) -> None:
    assert is_loopback(host) is local
