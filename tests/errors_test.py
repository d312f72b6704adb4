"""errors.py: the one-line user-error report every program shares."""

from __future__ import annotations

import pytest

from lfcsr_jax import errors


def test_reports_user_errors_prints_one_line_and_exits_2(capsys):
    @errors.reports_user_errors("demo")
    def main():
        raise errors.UserError("bad value\n  on two lines")

    with pytest.raises(SystemExit) as caught:
        main()
    assert caught.value.code == 2
    assert capsys.readouterr().err == "demo: error: bad value on two lines\n"
    # Errors that are bugs keep their traceback.
    with pytest.raises(KeyError):
        errors.reports_user_errors("demo")(lambda: {}["x"])()


# ----------------------------------------------------------------------------- atomic writes
