"""Shared foundation of every Synergos service: schemas, envelope, settings, logging,
data formats, alignment, model building, the federation wire codec, algorithms and metrics."""
