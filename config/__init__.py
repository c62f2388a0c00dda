"""Django project configuration for the Warden control plane."""

from .celery import app as celery_app

__all__ = ["celery_app"]
