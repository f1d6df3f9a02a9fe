"""cli_error: run the `resforce` CLI on bad input and return its one `error:` line."""

import pytest

from resforce.cli.main import main


def cli_error(argv, capsys) -> str:
    """The stderr of `resforce ARGV`, checked: exit 2, one `error: ...` line, no traceback."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err
