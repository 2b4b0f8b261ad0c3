"""Fixtures shared by the site tests."""
from __future__ import annotations

import pytest

from fl_common.config import example_federation_path, load_federation


@pytest.fixture(autouse=True)
def node_identity(request):
    """What Flower's ClientApp runtime sets before a handler runs (messages built in a
    handler need it), for the modules that call the handlers directly as node ``NODE``."""
    node = getattr(request.module, "NODE", None)
    if node is None:
        yield
        return
    from flwr.supercore.task_identity import TaskIdentity
    saved = TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 3, 42, node
    yield
    TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = saved


@pytest.fixture(scope="module")
def tiny_worker(tmp_path_factory):
    """A SiteWorker of hospital_a on a small generated example (a tiny UNet, 24^3 patches)."""
    from fl_client.worker import SiteWorker
    from sites_example.generate import generate
    base = tmp_path_factory.mktemp("worker")
    generate(base / "data", zoom=0.7, cases=0.5, seed=0)
    fed = load_federation(example_federation_path(), data_base=base / "data").updated(
        {"model": {"channels": [4, 8, 16], "strides": [2, 2]},
         "sampling": {"patch_size": [24, 24, 24], "samples_per_case": 2}})
    worker = SiteWorker(fed, fed.sites[0], base / "work")
    yield worker
    worker.close()  # no local-only training left running at exit
