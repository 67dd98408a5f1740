"""JSON logging."""

from __future__ import annotations

import io
import json
import logging

import pytest
from hami_shared.logging import configure_logging, get_logger


def test_json_lines_with_level_and_service() -> None:
    out = io.StringIO()
    configure_logging("info", stream=out, service="demo")
    get_logger("hami.test").info("device registered", uuid="GPU-a")
    get_logger("hami.test").debug("hidden")
    logging.getLogger("aiohttp.access").warning("from stdlib")
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [line["event"] for line in lines] == ["device registered", "from stdlib"]
    assert lines[0]["level"] == "info"
    assert lines[0]["uuid"] == "GPU-a"
    assert lines[0]["service"] == "demo"
    assert lines[0]["logger"] == "hami.test"
    assert "timestamp" in lines[0]
    assert lines[1]["level"] == "warning"


def test_unknown_level_is_refused() -> None:
    with pytest.raises(ValueError, match="is not one of"):
        configure_logging("verbose")
