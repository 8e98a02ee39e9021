"""One inference, from the parsed request to what the viewer is served.

``InferenceRequest`` (request.py) is what the route parsed and authorised, frozen;
``InferenceRunner`` (runner.py) owns everything after: admission, the body plan and
its pipeline, the model call, the result cache and coalescing. It hands the route an
``Outcome`` to serve and never calls back into it.
"""

from .request import InferenceRequest
from .runner import InferenceRunner, Outcome

__all__ = ["InferenceRequest", "InferenceRunner", "Outcome"]
