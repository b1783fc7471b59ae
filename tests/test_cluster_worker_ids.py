"""``serve --workers N --instance-id NAME``: each worker its own instance id.

Workers share the parent's settings; one ``--instance-id`` for all of them would make
N instances with one name in Redis: one registry snapshot overwriting the others, one
member in ``{ns}:instances`` (the local share of ``--redis-fault-policy local``
computed for one instance instead of N), and a cancel of a sibling worker's stream
answered ``not_found`` (the registry lists it under the asker's own id).
"""

from __future__ import annotations

import json

from streammgr.cli._run import ServeSettings
from streammgr.cli._workers import worker_settings


def _settings(instance_id: str | None) -> ServeSettings:
    return ServeSettings(
        host="127.0.0.1",
        port=0,
        upstream_url=None,
        api_key=None,
        max_streams=10,
        max_streams_per_key=None,
        max_waiting=None,
        acquire_timeout=None,
        reader_timeout=None,
        idle_timeout=None,
        shutdown_grace=1.0,
        key_header=None,
        admin_token=None,
        cors_origins=(),
        log_format="json",
        redis_url="redis://127.0.0.1:6379/0",
        instance_id=instance_id,
    )


def test_each_worker_gets_its_own_instance_id() -> None:
    ids = {worker_settings(_settings("gw-1"), 3, number).instance_id for number in range(3)}
    assert ids == {"gw-1-w0", "gw-1-w1", "gw-1-w2"}


def test_the_default_id_is_left_to_each_worker() -> None:
    # None: each worker computes host:pid itself, already distinct.
    assert worker_settings(_settings(None), 3, 1).instance_id is None


def test_one_worker_keeps_the_id_as_given() -> None:
    assert worker_settings(_settings("gw-1"), 1, 0).instance_id == "gw-1"


def test_the_payload_carries_the_worker_id() -> None:
    from streammgr.cli._workers import _Supervisor

    line = _Supervisor(_settings("gw-1"), 2, []).payload(1)
    assert json.loads(line)["settings"]["instance_id"] == "gw-1-w1"
