"""`nnunetv2_ext proxy make|run` argument handling."""
from __future__ import annotations

import pytest

from nnunetv2_ext import cli


def test_run_without_data_exits_2_and_names_proxy_make(tmp_path, capsys):
    assert cli.main(["proxy", "run", "--out", str(tmp_path)]) == 2
    assert "nnunetv2_ext proxy make --out" in capsys.readouterr().err


def test_make_with_a_bad_count_exits_2_and_writes_nothing(tmp_path, capsys):
    assert cli.main(["proxy", "make", "--out", str(tmp_path / "p"), "--n-test", "0"]) == 2
    assert "n_test" in capsys.readouterr().err
    assert not (tmp_path / "p" / "proxy_manifest.json").exists()


@pytest.mark.parametrize("argv", [["proxy", "run", "--out", "x", "--scale", "huge"], ["proxy"], ["proxy", "make"]])
def test_bad_arguments_exit_2(argv):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
