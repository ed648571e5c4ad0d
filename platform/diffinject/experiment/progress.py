"""Progress of a table run: one line per finished cell, and a heartbeat while long ones run,
with an estimate of the time left from the cells finished so far."""
from __future__ import annotations

import threading
import time
from collections import Counter, defaultdict

from diffinject.experiment.cells import CellResult


def time_left(pending: Counter, seconds: dict[str, list[float]], parallel: int, since_last: float) -> float | None:
    """Seconds left for the `pending` cells (method -> count): each at the mean time its method's
    built cells took so far (a method not yet seen: the mean of all of them), `parallel` at a
    time, less the `since_last` seconds already spent on the cells in flight. None before any
    cell was built (cached cells say nothing of the time a cell takes)."""
    measured = [s for times in seconds.values() for s in times]
    if not measured:
        return None
    overall = sum(measured) / len(measured)
    work = sum(n * (sum(seconds[m]) / len(seconds[m]) if seconds.get(m) else overall) for m, n in pending.items())
    return max(0.0, work / max(1, parallel) - since_last)


def minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"


class Progress:
    """One line per finished cell (or stage built for the table alone); every `every_s` seconds
    without one, a heartbeat with the overall count and the estimated time left. `methods` is
    the method of every cell to run (for the estimate), `parallel` how many run at once."""

    def __init__(self, total: int, every_s: float = 60.0, methods: list[str] = (), parallel: int = 1):
        self.total, self.done, self.started = total, 0, time.perf_counter()
        self.last_line = self.last_cell = self.started
        self.pending, self.parallel = Counter(methods), parallel
        self.seconds: dict[str, list[float]] = defaultdict(list)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._heartbeat, args=(every_s,), daemon=True)
        self.thread.start()

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def left(self) -> str:
        """"about 12 min left", or "" before the first built cell."""
        estimate = time_left(self.pending, self.seconds, self.parallel, time.perf_counter() - self.last_cell)
        return "" if estimate is None else f"; about {minutes(estimate)} left"

    def cell_done(self, r: CellResult) -> None:
        if self.pending[r.method] > 0:
            self.pending[r.method] -= 1
        if not r.cached:
            self.seconds[r.method].append(r.seconds)
        self.last_cell = time.perf_counter()
        how = "cached" if r.cached else ", ".join(f"{s} {v}" for s, v in sorted(r.stages.items()) if s != "cell")
        self.step_done(f"{r.dataset} {r.ratio}% seed {r.seed} {r.method}: unbiased {100 * r.metrics['reported_acc']:.2f} "
                       f"(best on test {100 * r.metrics['reported_acc_best_test']:.2f})  "
                       f"({how}; {r.seconds:.0f}s){self.left()}")

    def step_done(self, text: str) -> None:
        self.done += 1
        print(f"[{self.done}/{self.total} {self.elapsed():6.0f}s] {text}", flush=True)
        self.last_line = time.perf_counter()

    def _heartbeat(self, every_s: float) -> None:
        while not self.stop.wait(every_s / 4):
            if time.perf_counter() - self.last_line >= every_s:
                print(f"[{self.done}/{self.total} {self.elapsed():6.0f}s] working{self.left()}", flush=True)
                self.last_line = time.perf_counter()

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
