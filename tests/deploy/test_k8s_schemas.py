"""Every built object validates offline: Kubernetes kinds against the OpenAPI schemas that
``kubernetes-validate`` bundles (strict: unknown fields refused), KEDA and Prometheus-operator
kinds against their CRDs' schemas (tests/deploy/data, sources in its README)."""

from __future__ import annotations

import copy
import json
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest

from tests.deploy.test_k8s_render import OVERLAYS, built

pytestmark = pytest.mark.integration

KUBERNETES_VERSION = "1.30.0"  # the oldest release the manifests promise to run on
DATA = Path(__file__).resolve().parent / "data"
CRD_SCHEMAS = {
    ("keda.sh/v1alpha1", "ScaledObject"): "keda.sh_scaledobjects.v1alpha1.json",
    ("monitoring.coreos.com/v1", "PodMonitor"): "monitoring.coreos.com_podmonitors.v1.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "monitoring.coreos.com_prometheusrules.v1.json",
}


def strict(schema: Any) -> Any:
    """Refuse properties a schema does not list (where it lists them and keeps no others)."""
    if isinstance(schema, dict):
        out = {key: strict(value) for key, value in schema.items()}
        if (
            "properties" in out
            and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")
        ):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    return schema


@cache
def crd_validator(filename: str) -> jsonschema.Draft7Validator:
    schema = json.loads((DATA / filename).read_text())
    return jsonschema.Draft7Validator(strict(schema))


def validate_object(obj: dict[str, Any]) -> None:
    """A CRD kind against its CRD's schema, any other against Kubernetes' (strict)."""
    crd = CRD_SCHEMAS.get((obj["apiVersion"], obj["kind"]))
    if crd is not None:
        errors = [e.message for e in crd_validator(crd).iter_errors(obj)]
        assert errors == [], (obj["kind"], obj["metadata"]["name"], errors[:3])
    else:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_every_object_validates_against_its_schema(overlay: str) -> None:
    for obj in built(overlay):
        validate_object(obj)


def test_the_crd_schemas_catch_a_misspelt_field() -> None:
    scaled = next(o for o in built("rtx4090-llama-3.1-8b-awq") if o["kind"] == "ScaledObject")
    broken = copy.deepcopy(scaled)
    broken["spec"]["cooldownPeriods"] = 300
    assert list(crd_validator(CRD_SCHEMAS["keda.sh/v1alpha1", "ScaledObject"]).iter_errors(broken))
    broken = copy.deepcopy(scaled)
    broken["spec"]["triggers"][0].pop("type")
    assert list(crd_validator(CRD_SCHEMAS["keda.sh/v1alpha1", "ScaledObject"]).iter_errors(broken))


def test_kubernetes_validate_refuses_a_broken_workload() -> None:
    sts = next(o for o in built("rtx4090-llama-3.1-8b-awq") if o["kind"] == "StatefulSet")
    broken = copy.deepcopy(sts)
    broken["spec"]["template"]["spec"]["containers"][0]["startupProbe"]["periodSecond"] = 5
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)
