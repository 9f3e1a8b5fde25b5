"""WSGI entry point for gunicorn (`api.wsgi:app`), configured from the environment through settings."""

from api import create_app

app = create_app()
