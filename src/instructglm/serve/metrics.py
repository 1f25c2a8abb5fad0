"""``/metrics`` in the Prometheus text format, and one log line per finished request.

Written here rather than with ``prometheus_client``: five series do not justify a dependency.
Times are what a client sees: time to first token is from the request's arrival at the scheduler
to its first visible text, inter-token latency the gap between two pieces of text of one answer.
"""

from __future__ import annotations

import bisect
import logging
import threading
from collections import Counter

log = logging.getLogger("instructglm.serve.requests")

TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Histogram:
    def __init__(self, name: str, help_: str, buckets: tuple[float, ...]):
        self.name, self.help, self.buckets = name, help_, buckets
        self.counts = [0] * (len(buckets) + 1)  # the last one is +Inf
        self.sum, self.count = 0.0, 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value
        self.count += 1

    def lines(self) -> list[str]:
        out = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        total = 0
        for bound, n in zip([*map(repr, self.buckets), "+Inf"], self.counts):
            total += n
            out.append(f'{self.name}_bucket{{le="{bound}"}} {total}')
        return out + [f"{self.name}_sum {self.sum!r}", f"{self.name}_count {self.count}"]


class Metrics:
    """Counters shared by the HTTP side (statuses) and the scheduler thread (tokens, latencies)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.statuses: Counter[int] = Counter()
        self.tokens = 0
        self.ttft = Histogram("instructglm_time_to_first_token_seconds", "arrival to first text of an answer",
                              TTFT_BUCKETS)
        self.itl = Histogram("instructglm_inter_token_latency_seconds", "gap between two pieces of one answer",
                             ITL_BUCKETS)

    def status(self, code: int) -> None:
        with self.lock:
            self.statuses[code] += 1

    def text(self, req, now: float) -> None:
        """``req`` (a GenRequest) showed text at ``now``."""
        with self.lock:
            if req.first_at is None:
                req.first_at = now
                self.ttft.observe(now - req.arrived)
            else:
                self.itl.observe(now - req.last_at)
        req.last_at = now

    def finished(self, req, reason: str, tokens: int, now: float) -> None:
        with self.lock:
            self.tokens += tokens
        ttft = "-" if req.first_at is None else f"{req.first_at - req.arrived:.3f}s"
        log.info("request %s adapter=%s prompt_tokens=%d answer_tokens=%d ttft=%s total=%.3fs finish=%s",
                 req.id, req.adapter, len(req.prompt_ids), tokens, ttft, now - req.arrived, reason)

    def render(self, queued: int, running: int) -> str:
        with self.lock:
            lines = ["# HELP instructglm_requests_total HTTP API requests answered, by status",
                     "# TYPE instructglm_requests_total counter"]
            lines += [f'instructglm_requests_total{{status="{code}"}} {n}' for code, n in sorted(self.statuses.items())]
            lines += ["# HELP instructglm_queue_length requests waiting for a batch slot",
                      "# TYPE instructglm_queue_length gauge", f"instructglm_queue_length {queued}",
                      "# HELP instructglm_running_requests requests being generated",
                      "# TYPE instructglm_running_requests gauge", f"instructglm_running_requests {running}",
                      "# HELP instructglm_generated_tokens_total answer tokens generated",
                      "# TYPE instructglm_generated_tokens_total counter",
                      f"instructglm_generated_tokens_total {self.tokens}"]
            lines += self.ttft.lines() + self.itl.lines()
        return "\n".join(lines) + "\n"
