"""The CRD's user-facing lists follow the registries (issue 19): ``spec.channel``'s enum and
default are the transports whose servers the chart runs (:func:`fsd.channels.stacked`) and the
deployed default (:data:`fsd.channels.DEPLOYED`), which the operator checks a spec against;
``spec.platform``'s enum is the operator's platforms. A transport added with ``STACK`` and an
operator declaration (``CLUSTER``) fails here until the chart lists it."""

from __future__ import annotations

from typing import Any

import yaml

from fsd import channels
from fsd.k8s import platforms, spec
from fsd.k8s.config import DEFAULT_SECRETS, OperatorConfig
from paths import ROOT

CRD = ROOT / "charts" / "fsd" / "crds" / "inferencemodels.fsd.dev.yaml"


def _spec_properties() -> dict[str, Any]:
    crd = yaml.safe_load(CRD.read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1"]
    spec: dict[str, Any] = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    properties: dict[str, Any] = spec["properties"]
    return properties


def test_the_crd_channels_are_the_registrys_stacked_transports() -> None:
    channel = _spec_properties()["channel"]
    assert tuple(channel["enum"]) == channels.stacked() == spec.CHANNELS
    assert channel["default"] == channels.DEPLOYED == spec.ModelSpec.channel
    assert tuple(_spec_properties()["platform"]["enum"]) == tuple(platforms.PLATFORMS)


def test_the_operator_takes_the_functions_servers_and_secrets_from_the_transports() -> None:
    """What the functions get for each stacked transport's server, and the secrets they mount,
    are the transports' own declarations, not a list in the operator."""
    config = OperatorConfig.from_env({"FSD_S3_ENDPOINT": "http://s3:9000"})
    assert dict(config.transport_env) == channels.cluster_env({})
    for kind in channels.stacked():
        options = channels.options_class(kind)
        assert set(options.CLUSTER_SECRETS) <= set(DEFAULT_SECRETS), kind
        secret_files = {v.secret_file for v in options.VARIABLES if v.secret_file}
        assert set(options.CLUSTER_SECRETS) <= secret_files, kind
        for name in options.cluster_env({}):
            assert name in {v.name for v in options.VARIABLES}, (kind, name)
