"""Federated MLOps: the MLflow server launcher and the tracking adapter used by TTP and Director."""

from .tracking import Tracker, default_uri_for, tracking_uri

__all__ = ["Tracker", "default_uri_for", "tracking_uri"]
