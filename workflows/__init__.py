"""Reusable pieces the apps are made of: models for the backends, data generators."""
