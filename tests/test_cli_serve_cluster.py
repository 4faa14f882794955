"""``tempomem serve --address``: options that make no sense on a cluster are refused before Ray.

Serving from a running cluster is tested end to end in tests/test_services_node_loss.py.
"""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from services.cli import app


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        ([], "embedded redis-server"),  # the default store: loopback on this machine
        (["--store", "redis://10.0.0.2:6379/0", "--num-cpus", "2"], "--num-cpus"),
    ],
)
def test_address_refuses_a_loopback_store_and_a_local_cpu_count(
    extra: list[str], named: str
) -> None:
    result = CliRunner().invoke(app, ["serve", "--address", "10.0.0.1:6379", *extra])
    assert result.exit_code == 2, result.output
    assert named in result.output, result.output
