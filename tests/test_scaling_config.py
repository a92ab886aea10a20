"""deploy/ray-cluster-aws.yaml, checked offline by Ray's own cluster-config code.

`ray up` does, in order (ray/autoscaler/_private/commands.py `_bootstrap_config`):
`prepare_config` (merge with ray/autoscaler/aws/defaults.yaml, merge setup commands, check the
docker section, fill per-type min/max workers), import the AWS provider (needs boto3), ask EC2
for the instance types' CPU/GPU counts, `validate_config` (ray-schema.json through jsonschema,
then the node-type rules), and the provider's `bootstrap_config` (IAM role, key pair, subnets,
security groups: AWS calls). This test runs the two steps that need no cloud: `prepare_config`
and `validate_config`, and checks that neither imported boto3 or Ray's AWS provider modules.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

CONFIG = Path(__file__).resolve().parents[1] / "deploy" / "ray-cluster-aws.yaml"
NODE_RESOURCE = "avatar_node"  # server.cluster.front.NODE_RESOURCE
CLOUD_MODULES = ("boto3", "botocore", "ray.autoscaler._private.aws")


def _load() -> dict[str, Any]:
    with CONFIG.open() as f:
        config = yaml.safe_load(f)
    assert isinstance(config, dict)
    return config


def _cloud_modules() -> set[str]:
    return {m for m in sys.modules if m.startswith(CLOUD_MODULES)}


@pytest.fixture(scope="module")
def prepared() -> dict[str, Any]:
    before = _cloud_modules()
    config = prepare_config(copy.deepcopy(_load()))
    validate_config(config)  # raises jsonschema.ValidationError / ValueError when wrong
    assert _cloud_modules() == before, "validation must not touch the AWS provider"
    return config


def test_ray_validates_the_config_offline(prepared: dict[str, Any]) -> None:
    assert prepared["provider"]["type"] == "aws"
    assert prepared["provider"]["region"]
    assert prepared["auth"]["ssh_user"] == "ubuntu"
    assert prepared["head_node_type"] in prepared["available_node_types"]


def test_the_worker_type_offers_avatar_node_and_the_head_does_not(
    prepared: dict[str, Any],
) -> None:
    types = prepared["available_node_types"]
    head = prepared["head_node_type"]
    assert types[head]["resources"].get(NODE_RESOURCE, 0) == 0
    assert types[head]["max_workers"] == 0  # filled by prepare_config
    workers = {name: t for name, t in types.items() if name != head}
    assert workers, "no worker node type"
    for name, t in workers.items():
        assert t["resources"].get(NODE_RESOURCE) == 1, name
        assert 0 < t["min_workers"] <= t["max_workers"] <= prepared["max_workers"], name
        assert t["node_config"]["InstanceType"].startswith(("g", "p")), "a GPU instance type"


def test_start_commands_name_the_resource(prepared: dict[str, Any]) -> None:
    worker = " ".join(prepared["worker_start_ray_commands"])
    assert "ray start --address=$RAY_HEAD_IP:6379" in worker
    assert f"--resources='{{\"{NODE_RESOURCE}\": 1}}'" in worker
    head = " ".join(prepared["head_start_ray_commands"])
    assert "ray start --head --port=6379" in head
    assert NODE_RESOURCE not in head
    assert "run.py --cluster auto --host 0.0.0.0" in head


def test_setup_installs_the_project_from_requirements(prepared: dict[str, Any]) -> None:
    setup = " ".join(prepared["worker_setup_commands"])  # setup_commands merged in
    assert "make setup" in setup
    assert any(p == "." for p in prepared["file_mounts"].values())
    assert "boto3" in " ".join(prepared["head_setup_commands"])  # the head's autoscaler


def test_validation_rejects_a_bad_config() -> None:
    """The same functions catch mistakes (so the passes above mean something)."""
    bad = _load()
    bad["available_node_types"]["avatar.gpu"]["resources"] = {NODE_RESOURCE: "one"}
    with pytest.raises(Exception, match="is not of type 'integer'"):
        validate_config(prepare_config(bad))
    bad = _load()
    bad["head_node_type"] = "missing"
    with pytest.raises(ValueError, match="head_node_type"):
        validate_config(prepare_config(bad))
