"""Sparse DNNs: the network and image types, Graph Challenge TSV I/O and a RadiX-Net generator."""

from __future__ import annotations

from fsd.model.network import CHALLENGE_BIAS, YMAX, Images, Network, bias_for
from fsd.model.tsv import (
    available_layers,
    find_neurons,
    load_images,
    load_network,
    read_categories,
    write_images,
    write_network,
)

__all__ = [
    "CHALLENGE_BIAS",
    "YMAX",
    "Images",
    "Network",
    "available_layers",
    "bias_for",
    "find_neurons",
    "load_images",
    "load_network",
    "read_categories",
    "write_images",
    "write_network",
]
