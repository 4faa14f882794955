"""The HTTP app's counters and step latency histogram, rendered as Prometheus text."""

from __future__ import annotations

import threading

from services.schemas import StepResponse

#: Upper bounds (seconds) of the step latency histogram buckets.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """Counters and a histogram in the Prometheus text format (this process's view)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, str, int], int] = {}
        self.steps = 0
        self.degraded_steps = 0
        self.replayed_steps = 0
        self.buckets = [0] * len(LATENCY_BUCKETS)
        self.latency_sum = 0.0
        self.latency_count = 0

    def request(self, method: str, route: str, status: int) -> None:
        with self._lock:
            key = (method, route, status)
            self.requests[key] = self.requests.get(key, 0) + 1

    def step(self, response: StepResponse, seconds: float) -> None:
        with self._lock:
            self.steps += 1
            self.degraded_steps += int(response.degraded)
            self.replayed_steps += int(response.replayed)
            for i, bound in enumerate(LATENCY_BUCKETS):
                if seconds <= bound:
                    self.buckets[i] += 1
            self.latency_sum += seconds
            self.latency_count += 1

    def render(self) -> str:
        with self._lock:
            lines = [
                "# HELP tempomem_steps_total Steps answered over HTTP (replays included).",
                "# TYPE tempomem_steps_total counter",
                f"tempomem_steps_total {self.steps}",
                "# HELP tempomem_degraded_steps_total Steps that ran memoryless (store down).",
                "# TYPE tempomem_degraded_steps_total counter",
                f"tempomem_degraded_steps_total {self.degraded_steps}",
                "# HELP tempomem_replayed_steps_total Steps answered from the replay window.",
                "# TYPE tempomem_replayed_steps_total counter",
                f"tempomem_replayed_steps_total {self.replayed_steps}",
                "# HELP tempomem_step_latency_seconds Step latency inside the HTTP app.",
                "# TYPE tempomem_step_latency_seconds histogram",
            ]
            for bound, count in zip(LATENCY_BUCKETS, self.buckets, strict=True):
                lines.append(f'tempomem_step_latency_seconds_bucket{{le="{bound}"}} {count}')
            lines += [
                f'tempomem_step_latency_seconds_bucket{{le="+Inf"}} {self.latency_count}',
                f"tempomem_step_latency_seconds_sum {self.latency_sum:.6f}",
                f"tempomem_step_latency_seconds_count {self.latency_count}",
                "# HELP tempomem_http_requests_total HTTP requests by method, route, status.",
                "# TYPE tempomem_http_requests_total counter",
            ]
            for (method, route, status), count in sorted(self.requests.items()):
                lines.append(
                    f'tempomem_http_requests_total{{method="{method}",route="{route}",'
                    f'status="{status}"}} {count}'
                )
        return "\n".join(lines) + "\n"
