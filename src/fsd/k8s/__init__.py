"""The fsd operator: ``InferenceModel`` objects (``fsd.dev/v1alpha1``) served on a FaaS platform.

One concern per module:

- :mod:`fsd.k8s.config`: the operator's settings, from its environment;
- :mod:`fsd.k8s.spec`: an InferenceModel's spec, parsed and defaulted as the CRD says;
- :mod:`fsd.k8s.names`: names of the functions (``<name>-<namespace>-<role>``) and of the model
  in the store;
- :mod:`fsd.k8s.platforms`: where the functions run, one entry per platform, each in its own
  module (:mod:`fsd.k8s.openfaas`, with its gateway client :mod:`fsd.k8s.openfaas_gateway`;
  :mod:`fsd.k8s.knative`);
- :mod:`fsd.k8s.desired`: what every platform's functions share (environment, labels, memory);
- :mod:`fsd.k8s.functions`: what every platform shares to deploy them (touching only functions
  that carry this object's owner label) and to report their readiness;
- :mod:`fsd.k8s.secrets`: the functions' secrets, made from the operator's own files;
- :mod:`fsd.k8s.source`: fetching a Graph Challenge folder from S3;
- :mod:`fsd.k8s.models`: making sure the model store holds the model, and removing it;
- :mod:`fsd.k8s.status`: the status block (phase, conditions) the operator reports;
- :mod:`fsd.k8s.handlers`: the kopf handlers that tie it together.

Run it with ``python -m fsd.k8s`` or ``kopf run --standalone --all-namespaces operator/main.py``.
The CRD is charts/fsd/crds/inferencemodels.fsd.dev.yaml.
"""

from __future__ import annotations

GROUP = "fsd.dev"
VERSION = "v1alpha1"
PLURAL = "inferencemodels"
KIND = "InferenceModel"
