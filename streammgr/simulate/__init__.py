"""A simulated OpenAI-compatible upstream: deterministic answers, paced, with faults.

Three layers, each usable alone:

- ``_scenario.py`` and ``_response.py``, sans-IO: :func:`plan_request` turns a
  chat-completions body and a seed into a :class:`Scenario` (tokens, delays, fault);
  :func:`render` and :func:`respond` turn it into a :class:`SimulatedResponse`
  (status, headers, :class:`Write` and :class:`Pause` steps) in OpenAI's wire format;
- ``_app.py``: :class:`SimulatedUpstream`, a pure ASGI app (no web framework) that
  carries responses out with ``trio.sleep`` and counts the ones it holds
  (:class:`ConnectionStats`); serve it with
  ``hypercorn --worker-class trio "streammgr.simulate:SimulatedUpstream()"``;
- ``_transport.py``: :class:`SimulatedTransport`, an ``httpx.AsyncBaseTransport``
  answering from the same upstream in-process, streaming bodies incrementally.

A request picks its own behaviour with the extra body field ``streammgr_simulate``
(see :class:`Behaviour` and docs/simulate.md).
"""

from ._app import SimulatedUpstream as SimulatedUpstream
from ._response import DEFAULT_MODELS as DEFAULT_MODELS
from ._response import Pause as Pause
from ._response import SimulatedResponse as SimulatedResponse
from ._response import Write as Write
from ._response import error_response as error_response
from ._response import render as render
from ._response import respond as respond
from ._scenario import CREATED as CREATED
from ._scenario import EXTRA_FIELD as EXTRA_FIELD
from ._scenario import MID_STREAM_FAULTS as MID_STREAM_FAULTS
from ._scenario import Behaviour as Behaviour
from ._scenario import Fault as Fault
from ._scenario import InvalidRequest as InvalidRequest
from ._scenario import Scenario as Scenario
from ._scenario import plan_request as plan_request
from ._stats import ConnectionStats as ConnectionStats
from ._stats import Ending as Ending
from ._transport import SimulatedTransport as SimulatedTransport

__all__ = [
    "CREATED",
    "DEFAULT_MODELS",
    "EXTRA_FIELD",
    "MID_STREAM_FAULTS",
    "Behaviour",
    "ConnectionStats",
    "Ending",
    "Fault",
    "InvalidRequest",
    "Pause",
    "Scenario",
    "SimulatedResponse",
    "SimulatedTransport",
    "SimulatedUpstream",
    "Write",
    "error_response",
    "plan_request",
    "render",
    "respond",
]
