"""koschei.tuning.distributed and ``evolve --scheduler``: candidate evaluations on the workers of a
Dask cluster (a LocalCluster of two worker processes here). A search on the cluster replays what
a local one measured, measures on the workers' machine and keys its results by it; the search
takes its configurations in batches, one per worker, within its budgets; a cluster a search
cannot use is a usage error."""

from __future__ import annotations

import logging
import sys

import pytest
from evolve_toy import toy_workspace
from test_tuning_search import SPACE, objective

from koschei.bench import machine
from koschei.errors import UsageError
from koschei.phases import evolve
from koschei.tuning import values
from koschei.tuning.cache import CacheLog
from koschei.tuning.distributed import Cluster, check_workers
from koschei.tuning.search import STRATEGIES, config_id, search

distributed = pytest.importorskip("distributed")

MODES = ("slow", "right", "wrong", "crash")  # no hanging candidate: its timeout costs time
QUICK = {"spec": "double", "strategy": "exhaustive", "candidate_budget_s": 0.2,
         "confirm_budget_s": 1.0, "timeout_s": 120.0}


@pytest.fixture(scope="module")
def worker_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("worker-cache")


@pytest.fixture(scope="module")
def cluster(worker_cache):
    """Two worker processes of one thread each, whose per-user cache (where they write the
    candidates' modules) is a folder of the test's."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CACHE_HOME", str(worker_cache))
        with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                      dashboard_address=None,
                                      silence_logs=logging.ERROR) as local:
            yield local


def workers_fingerprint(address: str) -> str:
    with distributed.Client(address, set_as_default=False) as client:
        [fingerprint] = set(client.run(machine.fingerprint).values())
    return fingerprint


def test_a_search_on_the_cluster_replays_the_local_search_from_its_log(tmp_path, cluster):
    workspace = toy_workspace(tmp_path, MODES)
    local = evolve.run(workspace, evolve.Options(**QUICK, apply=False))
    assert local.measured == 4 and local.best["tunables"] == {"mode": "right"}
    remote = evolve.run(workspace, evolve.Options(**QUICK, apply=False,
                                                  scheduler=cluster.scheduler_address))
    assert remote.measured == 0 and remote.cache_hits == 4  # every candidate from the log
    assert remote.fingerprint == local.fingerprint and remote.cache_file == local.cache_file
    assert remote.best == local.best
    assert remote.scheduler == cluster.scheduler_address and len(remote.workers) == 2
    # the confirmation ran on a worker, beside the current configuration
    assert remote.confirmation is not None and remote.confirmation["gain"] > 1


def test_a_search_on_the_cluster_measures_on_the_workers_and_keys_by_their_machine(
        tmp_path, cluster, worker_cache, monkeypatch):
    theirs = workers_fingerprint(cluster.scheduler_address)
    monkeypatch.setattr(machine, "fingerprint", lambda: "0" * 16)  # this one: another machine
    workspace = toy_workspace(tmp_path, MODES)
    result = evolve.run(workspace, evolve.Options(**QUICK, scheduler=cluster.scheduler_address))
    assert result.fingerprint == theirs and result.measured == 4 and result.cache_hits == 0
    assert result.threads >= 1
    log = CacheLog(workspace.runs_dir / "tuning" / theirs / "double.jsonl")
    verdicts = {dict(r.key.tunables)["mode"]: r for r in log.results()}
    assert {r.key.fingerprint for r in log.results()} == {theirs} and len(verdicts) == 4
    assert verdicts["wrong"].verdict == "wrong" and "elements differ" in verdicts["wrong"].reason
    assert verdicts["crash"].verdict == "crashed" and "SIGSEGV" in verdicts["crash"].reason
    assert verdicts["slow"].verdict == verdicts["right"].verdict == "ok"
    assert result.best["tunables"] == {"mode": "right"}
    # the modules reached the workers as text, into their own folder
    written = {path.name for path in (worker_cache / "koschei" / "candidates").glob("*.py")}
    assert len(written) == 4 and all(name.startswith("koschei_tune_double_") for name in written)
    # the winner is kept for the workers' machine, neither rendered nor tested on this one
    assert result.verdict == "improved", result.reason
    assert result.tuned_values_file == f"tuning/{theirs}.json"
    assert values.tunables_for(workspace.root, theirs) == {"double": {"mode": "right"}}
    assert "not rendered or tested here" in result.reason and result.tests is None
    assert not (workspace.engine_dir / "double.py").exists()


def test_a_batch_search_evaluates_each_configuration_once_within_its_budgets():
    batches = []

    def evaluate_batch(configs):
        batches.append(len(configs))
        return [objective(config) for config in configs]

    everything = search(SPACE, None, strategy="exhaustive", evaluate_batch=evaluate_batch,
                        batch=2, start=[{"rows": 12}])
    assert len(everything.evaluations) == SPACE.valid_count() and everything.stopped == "exhausted"
    assert len({config_id(e.config) for e in everything.evaluations}) == SPACE.valid_count()
    assert everything.evaluations[0].config == SPACE.complete({"rows": 12})
    assert max(batches) == 2
    for strategy in [s for s in STRATEGIES if s != "exhaustive"]:
        batches.clear()
        runs = [search(SPACE, None, strategy=strategy, seed=3, max_evaluations=7,
                       evaluate_batch=evaluate_batch, batch=2) for _ in range(2)]
        found = runs[0]
        assert len(found.evaluations) == 7 and found.stopped == "budget", strategy
        assert batches[:4] == [2, 2, 2, 1]  # never more than the budget leaves
        assert len({config_id(e.config) for e in found.evaluations}) == 7
        assert all(SPACE.valid(e.config) for e in found.evaluations)
        assert [e.config for e in runs[1].evaluations] == [e.config for e in found.evaluations]
    # a time budget and a stop asked for are seen between batches
    assert search(SPACE, None, strategy="tpe", budget_s=0.0, evaluate_batch=evaluate_batch,
                  batch=2).evaluations == []
    batches.clear()
    stopped = search(SPACE, None, strategy="random", evaluate_batch=evaluate_batch, batch=3,
                     should_stop=lambda: len(batches) >= 1, max_evaluations=50)
    assert stopped.stopped == "interrupted" and len(stopped.evaluations) == 3


def test_a_cluster_a_search_cannot_use_is_a_usage_error(tmp_path, monkeypatch):
    workspace = toy_workspace(tmp_path, MODES)
    with pytest.raises(UsageError, match="cannot reach a Dask scheduler at tcp://127.0.0.1:9"):
        evolve.run(workspace, evolve.Options(spec="double", scheduler="tcp://127.0.0.1:9"))
    with pytest.raises(UsageError, match="not a scheduler address"):
        Cluster.connect("tcp://nonsense:::")
    one = {"fingerprint": "a" * 16, "helpers": "h", "machine": {}, "cores": 2}
    with pytest.raises(UsageError, match="2 kinds of machine") as mixed:
        check_workers("tcp://s:8786", {"tcp://w1:1": one,
                                       "tcp://w2:1": {**one, "fingerprint": "b" * 16}}, "h")
    assert "one search per kind of machine" in str(mixed.value)
    with pytest.raises(UsageError, match="tcp://w1:1 runs a different koschei") as other:
        check_workers("tcp://s:8786", {"tcp://w1:1": {**one, "helpers": "g"}}, "h")
    assert "install the same version of koschei" in str(other.value)
    with pytest.raises(UsageError, match="has no workers"):
        check_workers("tcp://s:8786", {}, "h")
    monkeypatch.setitem(sys.modules, "distributed", None)  # as if it were not installed
    with pytest.raises(UsageError, match="distributed") as missing:
        Cluster.connect("tcp://127.0.0.1:9")
    assert "pip install 'koschei[distributed]'" in str(missing.value)
