"""Cluster-wide exclusive locks by name, for artifact roots that many nodes share (s3://...).

A lock is a *lease*: its holder renews it from a background thread while it works, and a
lock whose lease has run out goes to the next one asking. A cell whose process is killed
while it holds a lock (SIGKILL, OOM killer, a lost node) can release nothing; with leases
the others wait at most one lease for it instead of polling forever.

The locks live in one actor, detached and named in a fixed namespace, so every driver and
task of the cluster finds the same one and it outlives the driver that created it; it is
pinned to the head node, which the autoscaler never removes (a worker node scaled down
would take the locks with it).
"""
from __future__ import annotations

import contextlib
import sys
import threading
import time
import uuid

import ray

LOCK_ACTOR = "diffinject-artifact-locks"
LOCK_NAMESPACE = "diffinject"
HEAD_NODE_RESOURCE = "node:__internal_head__"  # every Ray head node has it (ray._common.constants)

# A holder renews every DEFAULT_LEASE_S / 3, so it loses its lock only if two renewals in a
# row fail to land: 60 s rides out a long GC pause, a busy GIL or a slow GCS/actor call,
# while a killed holder keeps the other cells waiting at most a minute, short against the
# minutes-long stage builds the lock guards.
DEFAULT_LEASE_S = 60.0


@ray.remote(num_cpus=0)
class KeyLocks:
    """Exclusive named locks with leases, timed by this actor's own monotonic clock (the
    holders' clocks, on other nodes, are never compared)."""

    def __init__(self):
        self.leases: dict[str, tuple[str, float]] = {}  # name -> (owner, monotonic expiry)

    def try_acquire(self, name: str, owner: str, lease_s: float) -> bool:
        """Take `name` for `lease_s` seconds if it is free, already `owner`'s, or its
        holder's lease has run out."""
        now = time.monotonic()
        held = self.leases.get(name)
        if held is not None and held[0] != owner and held[1] > now:
            return False
        self.leases[name] = (owner, now + lease_s)
        return True

    def renew(self, name: str, owner: str, lease_s: float) -> bool:
        """Extend `owner`'s lease on `name` to `lease_s` from now; False if it no longer
        holds it (released, or taken by another after its lease ran out)."""
        held = self.leases.get(name)
        if held is None or held[0] != owner:
            return False
        self.leases[name] = (owner, time.monotonic() + lease_s)
        return True

    def release(self, name: str, owner: str) -> None:
        """Free `name` if `owner` holds it; otherwise do nothing."""
        held = self.leases.get(name)
        if held is not None and held[0] == owner:
            del self.leases[name]

    def holder(self, name: str) -> tuple[str, float] | None:
        """(owner, seconds left on its lease) of `name`, or None when nobody holds it."""
        held = self.leases.get(name)
        if held is None:
            return None
        return held[0], held[1] - time.monotonic()


def lock_actor():
    """The cluster's KeyLocks actor, created on first use (detached, on the head node)."""
    options = dict(
        name=LOCK_ACTOR,
        namespace=LOCK_NAMESPACE,
        lifetime="detached",
        get_if_exists=True,
        num_cpus=0,
        resources={HEAD_NODE_RESOURCE: 0.001},
        scheduling_strategy="DEFAULT",  # not in the placement group of a caller that runs in one
        max_restarts=-1,  # a crashed actor comes back (with no locks held: holders warn, see below)
        max_task_retries=-1,
    )
    # get_if_exists resolves most races of two processes creating it at once; the name can
    # still be taken but not yet resolvable for a moment: look again.
    for attempt in range(10):
        try:
            return KeyLocks.options(**options).remote()
        except ValueError:
            time.sleep(0.05 * (attempt + 1))
    return ray.get_actor(LOCK_ACTOR, namespace=LOCK_NAMESPACE)


def _renew_until(stop: threading.Event, locks, name: str, owner: str, lease_s: float) -> None:
    while not stop.wait(lease_s / 3):
        try:
            held = ray.get(locks.renew.remote(name, owner, lease_s), timeout=lease_s)
        except ray.exceptions.RayError:
            continue  # a slow or failed call: the next renewal may still land within the lease
        if not held and not stop.is_set():
            print(f"warning: lost the cluster lock {name} (its lease of {lease_s:g} s ran out or the "
                  "lock actor restarted); another cell may build the same artifact",
                  file=sys.stderr, flush=True)
            return


@contextlib.contextmanager
def cluster_lock(name: str, lease_s: float = DEFAULT_LEASE_S, poll_s: float = 1.0):
    """Hold the cluster-wide lock `name`, waiting for it (a try every `poll_s`); a daemon
    thread renews its lease every `lease_s / 3` until the block ends."""
    locks = lock_actor()
    owner = uuid.uuid4().hex
    while not ray.get(locks.try_acquire.remote(name, owner, lease_s)):
        time.sleep(poll_s)
    stop = threading.Event()
    renewer = threading.Thread(target=_renew_until, args=(stop, locks, name, owner, lease_s),
                               name=f"lease-renewal {name}", daemon=True)
    renewer.start()
    try:
        yield
    finally:
        stop.set()
        renewer.join(timeout=1.0)
        try:
            ray.get(locks.release.remote(name, owner), timeout=lease_s)
        except ray.exceptions.RayError:
            pass  # the lease runs out on its own
