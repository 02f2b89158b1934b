"""The shared key=value argument parser of the small command-line tools."""

from __future__ import annotations

import pytest

from cxr_vlp.utils.cli import parse_key_values

TYPES = {"in_csv": str, "n": int, "ratio": float, "overwrite": bool, "cols": list}


def test_values_are_cast_to_their_declared_types() -> None:
    args = parse_key_values(
        ["in_csv=a.csv", "+n=3", "ratio=0.5", "overwrite=Yes", "cols=[findings, impression]"],
        TYPES,
        defaults={"overwrite": False},
    )
    assert args == {"in_csv": "a.csv", "n": 3, "ratio": 0.5, "overwrite": True, "cols": ["findings", "impression"]}
    assert parse_key_values(["in_csv=x"], TYPES, defaults={"n": 7})["n"] == 7


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["in_csv"], "expected key=value, got 'in_csv'"),
        (["inn_csv=a"], "unknown key 'inn_csv'; valid keys: in_csv, n, ratio, overwrite, cols"),
        (["in_csv=a", "n=three"], "n='three' is not a valid int"),
        (["in_csv=a", "overwrite=maybe"], "overwrite='maybe' is not a valid bool"),
        (["in_csv=a", "cols=,"], "cols is empty"),
        (["n=1"], "in_csv=... required"),
    ],
)
def test_mistakes_exit_with_a_message_naming_the_key(argv: list[str], message: str) -> None:
    with pytest.raises(SystemExit) as err:
        parse_key_values(argv, TYPES, required=("in_csv",))
    assert message in str(err.value)
