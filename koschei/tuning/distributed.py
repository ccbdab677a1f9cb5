"""Candidate evaluations on the workers of a Dask distributed cluster (``koschei evolve SPEC
--scheduler ADDRESS``).

``Cluster.connect(address)`` connects to the scheduler (``distributed.Client``), asks every
worker who it is (``worker_identity``: its machine fingerprint and description, its cores, and
the digest of its koschei engine helpers) and refuses, with a UsageError, a cluster a search
cannot use: one it cannot reach, one without workers, a worker that cannot run koschei or runs
another version of it (other helpers compile other code), or workers of different machine
fingerprints (the search's objective, a time ratio, would mix machines: one search per kind of
machine). The search's fingerprint is then the workers' common one: its cache lookups, its new
records and the tuning file of its winner are that machine's, whatever machine the search is
started from.

``Cluster.evaluate_many(requests, timeout_s)`` runs ``koschei.tuning.evaluate.evaluate`` on the
workers, one request per worker at a time: each task is pinned to its worker
(``workers=[address], allow_other_workers=False``) and never cached by Dask (``pure=False``: a
key of its own), and a wave of tasks is over before the next one starts. The requests carry
texts, not paths (koschei.tuning.evaluate.make_request): a worker writes the modules into its own
per-user cache folder and evaluates them in a child process of its own, so that a candidate that
crashes or hangs takes down that child, never the worker. Each outcome says which worker measured
it. A task that brings no answer within its timeout (plus ``ANSWER_MARGIN_S``), whose worker
left the cluster (a task pinned to a worker that is gone would wait for ever), or that fails in
Dask is an ``error`` outcome marked ``transient``: not the candidate's fault, so the caller does
not keep it.

Dask's distributed package is an optional dependency: ``pip install 'koschei[distributed]'``.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Self

from koschei.errors import UsageError

CONNECT_TIMEOUT_S = 10.0
DEFAULT_PORT = 8786  # `dask scheduler`'s
# beyond a request's own timeout: the transfer, and the worker's imports on its first task
ANSWER_MARGIN_S = 60.0
POLL_S = 1.0  # how often a wait for an answer checks that its worker is still there
INSTALL_HINT = "pip install 'koschei[distributed]'"
START_HINT = ("start a scheduler with `dask scheduler` (it prints its address) and, on each "
              "machine, workers with `dask worker ADDRESS --nworkers 1 --nthreads 1`")


def worker_identity() -> dict[str, Any]:
    """Who a worker is (run on each worker): ``fingerprint`` and ``helpers``
    (koschei.tuning.evaluate.machine_identity), the machine's description and its cores."""
    from koschei.bench import machine
    from koschei.tuning.evaluate import machine_identity

    return {**machine_identity(), "machine": machine.describe(), "cores": os.cpu_count() or 1}


def _distributed() -> Any:
    try:
        import distributed
    except ImportError:
        raise UsageError("--scheduler needs Dask's distributed package, which is not installed",
                         hint=INSTALL_HINT) from None
    return distributed


def _unreachable(address: str, error: BaseException) -> UsageError:
    reason = str(error).strip() or type(error).__name__
    return UsageError(f"cannot reach a Dask scheduler at {address}: {reason}",
                      hint=f"check the address and the network, or {START_HINT}")


def _probe(address: str, timeout_s: float) -> None:
    """Fail at once, naming the address, when it is malformed or nothing listens at a tcp
    address (the client itself would wait for its whole timeout)."""
    from distributed.comm.addressing import parse_address, parse_host_port

    try:
        scheme, location = parse_address(address)
        if scheme != "tcp":
            return
        host, port = parse_host_port(location, default_port=DEFAULT_PORT)
    except ValueError as error:
        raise UsageError(f"--scheduler {address}: not a scheduler address ({error})",
                         hint="give it as tcp://HOST:PORT, as `dask scheduler` prints it"
                         ) from None
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            pass
    except OSError as error:
        raise _unreachable(address, error) from None


def check_workers(address: str, identities: Mapping[str, Any], helpers: str) -> None:
    """Raise UsageError unless every worker's identity (``worker_identity``) is one this search
    can use: answered, with this koschei's engine ``helpers``, all of one fingerprint."""
    if not identities:
        raise UsageError(f"the Dask scheduler at {address} has no workers", hint=START_HINT)
    for worker, identity in sorted(identities.items()):
        if not isinstance(identity, Mapping):
            raise UsageError(f"worker {worker} cannot run koschei: "
                             f"{type(identity).__name__}: {identity}",
                             hint=f"install koschei there as here ({INSTALL_HINT})")
        if identity.get("helpers") != helpers:
            raise UsageError(f"worker {worker} runs a different koschei (engine helpers "
                             f"{identity.get('helpers')}, here {helpers})",
                             hint="install the same version of koschei there as here")
    kinds: dict[str, list[str]] = {}
    for worker, identity in sorted(identities.items()):
        kinds.setdefault(identity["fingerprint"], []).append(worker)
    if len(kinds) > 1:
        listed = "; ".join(f"{fingerprint}: {', '.join(workers)}"
                           for fingerprint, workers in sorted(kinds.items()))
        raise UsageError(f"the workers of {address} are {len(kinds)} kinds of machine "
                         f"({listed}): one search's time ratios would mix machines",
                         hint="run one search per kind of machine: a scheduler whose workers "
                              "share one fingerprint")


@dataclass
class Cluster:
    """A connection to a Dask scheduler whose workers are all of one machine fingerprint."""

    address: str
    client: Any  # distributed.Client
    identities: dict[str, dict[str, Any]]  # worker address -> worker_identity()
    refused: set[str] = field(default_factory=set)  # workers that joined later, of another kind

    @classmethod
    def connect(cls, address: str, timeout_s: float = CONNECT_TIMEOUT_S) -> Cluster:
        """Connect to the scheduler at ``address`` and check its workers (module docstring)."""
        from koschei.engine._runtime import helpers_key

        distributed = _distributed()
        _probe(address, timeout_s)
        try:
            client = distributed.Client(address, timeout=timeout_s, set_as_default=False)
        except (OSError, TimeoutError) as error:
            raise _unreachable(address, error) from None
        try:
            try:
                client.wait_for_workers(1, timeout=timeout_s)
            except TimeoutError:
                raise UsageError(f"the Dask scheduler at {address} has no workers",
                                 hint=START_HINT) from None
            identities = client.run(worker_identity, on_error="return")
            check_workers(address, identities, helpers_key())
        except BaseException:
            client.close()
            raise
        return cls(address, client, dict(identities))

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.client.close()

    @property
    def workers(self) -> list[str]:
        return sorted(self.identities)

    def _first(self) -> dict[str, Any]:
        return self.identities[self.workers[0]]

    @property
    def fingerprint(self) -> str:
        """The workers' machine fingerprint (one for all)."""
        return self._first()["fingerprint"]

    @property
    def machine(self) -> dict[str, Any]:
        """The workers' machine, described (koschei.bench.machine.describe)."""
        return self._first()["machine"]

    @property
    def cores(self) -> int:
        return int(self._first()["cores"])

    @property
    def helpers(self) -> str:
        return self._first()["helpers"]

    def _adopt(self, present: set[str]) -> None:
        """Take in the workers that joined since (a worker its nanny restarted comes back at
        a new address) when they are of the search's kind: same fingerprint, same helpers."""
        new = sorted(present - set(self.identities) - self.refused)
        if not new:
            return
        for worker, identity in self.client.run(worker_identity, workers=new,
                                                on_error="return").items():
            if isinstance(identity, Mapping) and identity.get("helpers") == self.helpers \
                    and identity.get("fingerprint") == self.fingerprint:
                self.identities[worker] = identity
            else:
                self.refused.add(worker)

    def _live_workers(self) -> list[str]:
        """The search's workers present now (waiting a little for one when none is)."""
        deadline = time.monotonic() + CONNECT_TIMEOUT_S
        while True:
            present = set(self.client.nthreads())
            self._adopt(present)
            live = [worker for worker in self.workers if worker in present]
            if live:
                return live
            if time.monotonic() >= deadline:
                raise UsageError(f"every worker of the Dask scheduler at {self.address} has "
                                 "left", hint=START_HINT)
            time.sleep(POLL_S)

    def evaluate_many(self, requests: Sequence[Mapping[str, Any]], timeout_s: float,
                      ) -> list[dict[str, Any]]:
        """Each request's outcome (koschei.tuning.evaluate.evaluate on a worker), in order; one
        request per worker at a time. A request's ``folder`` is this machine's: a worker uses its
        own."""
        from koschei.tuning.evaluate import evaluate

        remote = [{name: value for name, value in request.items() if name != "folder"}
                  for request in requests]
        outcomes: list[dict[str, Any]] = []
        while len(outcomes) < len(remote):
            wave = list(zip(remote[len(outcomes):], self._live_workers(), strict=False))
            futures = [self.client.submit(evaluate, request, timeout_s, workers=[worker],
                                          allow_other_workers=False, pure=False)
                       for request, worker in wave]
            try:
                deadline = time.monotonic() + timeout_s + ANSWER_MARGIN_S
                outcomes += [self._outcome(future, worker, deadline, timeout_s)
                             for future, (_, worker) in zip(futures, wave, strict=True)]
            except BaseException:
                # the tasks stop being waited for; a child under way on a worker ends by its
                # own timeout
                self.client.cancel(futures)
                raise
        return outcomes

    def _outcome(self, future: Any, worker: str, deadline: float, timeout_s: float,
                 ) -> dict[str, Any]:
        failed = {"verdict": "error", "transient": True, "worker": worker}
        while True:
            try:
                wait_s = min(POLL_S, max(0.0, deadline - time.monotonic()))
                outcome = dict(future.result(timeout=wait_s))
                break
            except TimeoutError:
                if time.monotonic() >= deadline:
                    future.cancel()
                    return {**failed, "reason": f"no answer from worker {worker} in "
                                                f"{timeout_s + ANSWER_MARGIN_S:g} s"}
                if worker not in self.client.nthreads():
                    future.cancel()
                    return {**failed, "reason": f"worker {worker} left the cluster during the "
                                                "evaluation"}
            except Exception as error:  # noqa: BLE001 - the worker's, not the candidate's
                return {**failed, "reason": f"worker {worker}: {type(error).__name__}: {error}"}
        if outcome.get("helpers") != self.helpers:
            raise UsageError(f"worker {worker} runs a different koschei now (engine helpers "
                             f"{outcome.get('helpers')}, here {self.helpers})",
                             hint="install the same version of koschei there as here")
        if outcome.get("fingerprint") != self.fingerprint:
            raise UsageError(f"worker {worker} measured on machine {outcome.get('fingerprint')}, "
                             f"not {self.fingerprint} as when the search began",
                             hint="run one search per kind of machine")
        outcome["worker"] = worker
        return outcome


__all__ = ["Cluster", "check_workers", "worker_identity"]
