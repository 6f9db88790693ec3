"""``routeplane serve`` checks every numeric flag before anything starts: finite and in range,
or one line ``error: invalid --FLAG VALUE: ...`` and exit 1 (``--load-report-interval inf``
used to start, and then every LRS stream failed)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from control_plane.cli.serve import NUMERIC_FLAGS, check_numbers, serve

WHOLE_NUMBERS = {"--max-concurrent-pushes", "--max-node-groups", "--max-groups-per-fleet"} | {
    "--max-names-per-stream"
}


@pytest.mark.parametrize("flag", sorted(NUMERIC_FLAGS))
@pytest.mark.parametrize(
    "value", ["inf", "-inf", "nan", "1e308", "0", "-1", "99999999999", "9" * 400]
)
def test_a_numeric_flag_that_is_not_finite_or_in_range_is_refused_naming_it(
    flag: str, value: str
) -> None:
    result = CliRunner().invoke(
        serve, ["--registry", "sqlite:///nonexistent/never-opened.db", flag, value]
    )
    assert "Traceback" not in result.output
    if flag in WHOLE_NUMBERS and not value.lstrip("-").isdigit():
        # Not a whole number at all: click refuses it, naming the flag (usage error, exit 2).
        assert result.exit_code == 2, result.output
        assert f"Invalid value for '{flag}'" in result.output
        return
    lines = result.output.strip().splitlines()
    assert result.exit_code == 1, result.output
    assert len(lines) == 1, result.output
    assert lines[0].startswith(f"error: invalid {flag} "), lines[0]
    assert "expected a number from" in lines[0]


@pytest.mark.parametrize(("flag", "bounds"), sorted(NUMERIC_FLAGS.items()))
def test_the_bounds_themselves_pass(flag: str, bounds: tuple[float, float]) -> None:
    for value in bounds:
        check_numbers({flag: value})  # returns: fail() would exit
