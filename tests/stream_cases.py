"""Bad stream messages and the answers every stream server must give them (the stream route
through the proxy, a session host's direct stream): shared by their tests."""

from __future__ import annotations

import json
from typing import Any

from services.schemas import StepResponse


def answer_bad_messages(ws: Any, good: dict[str, Any], max_bytes: int) -> None:
    """Send each bad message on the greeted connection ``ws`` (websockets sync) and check its
    status and that the detail names the problem; then ``good`` is answered normally."""
    cases: list[tuple[str | bytes, int, str]] = [
        ("{not json", 422, "not JSON"),
        ("[1, 2]", 422, "dictionary"),
        (json.dumps({**good, "prefix_len": 99}), 422, '["prefix_len"]'),
        (json.dumps({**good, "prefixlen": 1}), 422, '["prefixlen"]'),
        ('{"step_id": 0, "input_ids": [1, 2], "prefix_len": 1, "t": NaN}', 422, '["t"]'),
        ('{"step_id": 0, "input_ids": [1, 2], "prefix_len": 1, "t": 1e999}', 422, '["t"]'),
        (json.dumps({**good, "step_id": 2**80}), 422, '["step_id"]'),
        (json.dumps({**good, "input_ids": [1, 500, 3], "prefix_len": 2}), 422, "input_ids[1]"),
        (b"\xff\xfe", 422, "not JSON"),
        ("x" * (max_bytes + 1), 413, str(max_bytes)),
    ]
    for message, status, named in cases:
        ws.send(message)
        answer = json.loads(ws.recv(timeout=60))
        assert answer["status"] == status and named in json.dumps(answer["detail"]), (
            message[:40],
            answer,
        )
    ws.send(json.dumps(good))
    answer = json.loads(ws.recv(timeout=60))
    assert answer["status"] == 200 and answer["step_id"] == good["step_id"], answer
    assert StepResponse.model_validate({k: v for k, v in answer.items() if k != "status"})
