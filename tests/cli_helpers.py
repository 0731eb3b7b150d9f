"""Running the ``lcron`` command in the test process, and reading its one error line."""

from __future__ import annotations

from lcron import cli


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    """``lcron ARGV`` in this process: (exit code, stdout, stderr)."""
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def error_line(err: str, cmd: str) -> str:
    """The one error line of a user error (exit 2); progress lines may precede it, no traceback."""
    lines = [ln for ln in err.strip().splitlines() if ln.startswith(f"lcron {cmd}: error: ")]
    assert len(lines) == 1, f"expected one error line, got:\n{err}"
    assert err.strip().splitlines()[-1] == lines[0]
    assert "Traceback" not in err
    return lines[0]
