"""WSGI entry point for gunicorn: `gunicorn e2eapp.wsgi:application`."""
import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "e2eapp.settings")
application = get_wsgi_application()
