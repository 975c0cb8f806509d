"""AWS Lambda handlers: thin over :mod:`fsd.functions`, like the OpenFaaS ``functions/``."""
