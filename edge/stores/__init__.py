"""Stores: what the device keeps on disk. The evidence store (anomalous frames and a sample of good ones,
bounded; edge-evidence reads it) and the recipes (verified bundles per product, the operator's choice per
camera, install and rollback).

May import: edge.util, edge.commands, edge.config, edge.capture, edge.trust, edge.results; not edge.faces."""
