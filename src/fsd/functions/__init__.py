"""The logic behind the two OpenFaaS functions (``functions/*/handler.py`` are thin over this)."""
