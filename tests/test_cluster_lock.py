"""The cluster-wide artifact lock (diffinject.cluster.locks): leases outlive no killed holder,
renewals keep a live one, and the lock actor is detached, in its namespace, on the head."""
from __future__ import annotations

import os
import signal
import threading
import time
import uuid

import pytest

LEASE_S = 2.0  # the killed holder's lease (test 1)
MARGIN_S = 1.0  # polling (0.05 s) and Ray call latency on top of it


def _name() -> str:
    return f"s3://bucket/test/{uuid.uuid4().hex}"


def _acquire_in_thread(name: str, lease_s: float = 30.0):
    """Wait for `name` in a daemon thread holding it until `done` is set; returns
    (acquired event, done event, [monotonic time of acquisition])."""
    from diffinject.cluster.locks import cluster_lock

    acquired, done, when = threading.Event(), threading.Event(), []

    def run():
        with cluster_lock(name, lease_s=lease_s, poll_s=0.05):
            when.append(time.monotonic())
            acquired.set()
            done.wait(60)

    threading.Thread(target=run, daemon=True).start()
    return acquired, done, when


def _holder_class(ray):
    @ray.remote(num_cpus=0, max_restarts=0)
    class Holder:
        """Holds a cluster lock in a process of its own, for as long as that process lives."""

        def hold(self, name: str, lease_s: float) -> int:
            from diffinject.cluster.locks import cluster_lock

            held = threading.Event()

            def run():
                with cluster_lock(name, lease_s=lease_s, poll_s=0.05):
                    held.set()
                    time.sleep(3600)

            threading.Thread(target=run, daemon=True).start()
            assert held.wait(30)
            return os.getpid()

    return Holder


def _wait_dead(pid: int, timeout_s: float = 10.0) -> None:
    """Until `pid` is gone or a zombie (killed, not yet reaped by its raylet)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                if stat.read().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                    return
        except FileNotFoundError:
            return
        time.sleep(0.02)
    raise AssertionError(f"process {pid} still alive after SIGKILL")


def test_killed_holder_loses_lock_after_its_lease(ray_session):
    """The acceptance test: a holder killed with SIGKILL while holding the lock (in a process
    of its own) blocks the others for the rest of its lease, no longer."""
    ray = ray_session
    from diffinject.cluster.locks import lock_actor

    name, locks = _name(), lock_actor()
    holder = _holder_class(ray).remote()
    pid = ray.get(holder.hold.remote(name, LEASE_S), timeout=60)
    assert pid != os.getpid()
    time.sleep(0.8)  # a renewal or two (every LEASE_S / 3) before the kill
    killed = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    _wait_dead(pid)
    owner, left = ray.get(locks.holder.remote(name))  # the dead holder still holds it ...
    start = time.monotonic()
    assert 0.3 < left <= LEASE_S, left

    acquired, done, when = _acquire_in_thread(name)
    try:
        assert acquired.wait(LEASE_S + MARGIN_S + 5), "the killed holder's lock was never freed"
        waited = when[0] - start
        print(f"\nlease {LEASE_S:g} s; {left:.3f} s of it left {start - killed:.3f} s after the kill; "
              f"acquired {waited:.3f} s after that, {when[0] - killed:.3f} s after the kill")
        assert waited >= left - 0.05, (waited, left)  # ... for the rest of its lease
        assert waited <= LEASE_S + MARGIN_S, (waited, left)  # and no longer
        assert ray.get(locks.holder.remote(name))[0] != owner
    finally:
        done.set()


def test_live_holder_keeps_lock_across_leases(ray_session):
    """Renewals keep a working holder's lock past many lease lengths; its release frees it at once."""
    ray = ray_session
    from diffinject.cluster.locks import cluster_lock, lock_actor

    name, locks, lease_s = _name(), lock_actor(), 0.5
    with cluster_lock(name, lease_s=lease_s, poll_s=0.05):
        acquired, done, when = _acquire_in_thread(name)
        deadline = time.monotonic() + 5 * lease_s
        while time.monotonic() < deadline:
            assert not ray.get(locks.try_acquire.remote(name, "intruder", lease_s))
            time.sleep(0.1)
        assert not acquired.is_set(), "a waiter took the lock of a live holder"
        released = time.monotonic()
    try:
        assert acquired.wait(5)
        assert when[0] - released < 0.5, when[0] - released
    finally:
        done.set()


def test_key_locks_leases(ray_session):
    """The actor's logic, on an instance of its own: exclusion, expiry, renew and release by owner only."""
    ray = ray_session
    from diffinject.cluster.locks import KeyLocks

    locks, lease = KeyLocks.remote(), 0.3

    def call(method, *args):
        return ray.get(getattr(locks, method).remote(*args))

    assert call("try_acquire", "k", "a", lease)
    assert call("try_acquire", "k", "a", lease)  # already a's
    assert not call("try_acquire", "k", "b", lease)
    assert call("try_acquire", "other", "b", lease)  # locks are per name
    assert call("renew", "k", "a", lease)
    assert not call("renew", "k", "b", lease)  # not b's lock
    time.sleep(lease + 0.1)
    assert call("try_acquire", "k", "b", 10.0)  # a's lease ran out
    assert not call("renew", "k", "a", lease)  # a lost it
    call("release", "k", "a")  # not a's: nothing happens
    assert call("holder", "k")[0] == "b"
    assert not call("try_acquire", "k", "c", lease)
    time.sleep(lease + 0.1)
    assert not call("try_acquire", "k", "c", lease)  # b's 10 s lease still runs
    call("release", "k", "b")
    assert call("holder", "k") is None
    assert call("try_acquire", "k", "c", lease)


def test_lock_actor_detached_in_namespace_on_head(ray_session):
    ray = ray_session
    from ray._private import state  # the public ray.util.state needs the dashboard, off in tests

    from diffinject.cluster.locks import LOCK_ACTOR, LOCK_NAMESPACE, lock_actor

    locks = lock_actor()
    ray.get(locks.__ray_ready__.remote())
    actor_id = locks._actor_id.hex()
    assert lock_actor()._actor_id.hex() == actor_id  # got, not created again
    assert ray.get_actor(LOCK_ACTOR, namespace=LOCK_NAMESPACE)._actor_id.hex() == actor_id
    with pytest.raises(ValueError):
        ray.get_actor(LOCK_ACTOR)  # not in this driver's own namespace
    info = state.actors()[actor_id]
    assert info["IsDetached"] and info["Name"] == LOCK_ACTOR

    heads = [node["NodeID"] for node in ray.nodes() if "node:__internal_head__" in node["Resources"]]
    assert heads == [ray.get_runtime_context().get_node_id()]
    node, resources = ray.get(locks.__ray_call__.remote(
        lambda self: (ray.get_runtime_context().get_node_id(), ray.get_runtime_context().get_assigned_resources())))
    assert node == heads[0] == info["Address"]["NodeID"]
    # one node here: the head resource it asks for is what keeps it there on a real cluster
    assert resources.get("node:__internal_head__", 0) > 0 and not resources.get("CPU")


def test_lost_lock_warns_once(ray_session, capfd):
    """A holder whose lock was taken from it (its lease ran out unrenewed) says so once on
    stderr and carries on; its release then leaves the new holder alone."""
    ray = ray_session
    from diffinject.cluster.locks import cluster_lock, lock_actor

    name, locks, lease_s = _name(), lock_actor(), 0.6
    with cluster_lock(name, lease_s=lease_s, poll_s=0.05):
        owner, _ = ray.get(locks.holder.remote(name))
        ray.get(locks.release.remote(name, owner))  # as if its lease had run out ...
        assert ray.get(locks.try_acquire.remote(name, "thief", 30.0))  # ... and another took it
        time.sleep(4 * lease_s / 3 + 0.3)  # several renewal periods
    assert ray.get(locks.holder.remote(name))[0] == "thief"
    lines = [line for line in capfd.readouterr().err.splitlines() if "lost the cluster lock" in line]
    assert len(lines) == 1 and name in lines[0] and lines[0].startswith("warning: "), lines
