"""Settings for the end-to-end test app.

Everything that differs per run comes from the environment, set by tests/e2e/conftest.py:
  E2E_DB_PATH     sqlite file (migrated by the fixture before gunicorn starts)
  E2E_CONTROL_URL the proxy's HTTP control port, e.g. http://127.0.0.1:5561
  E2E_SIG_KEY     the key the proxy signs Grip-Sig with; django-grip verifies it
"""
import os
from urllib.parse import quote

SECRET_KEY = "e2e-not-secret-django-key-0123456789abcdef"
DEBUG = False
ALLOWED_HOSTS = ["*"]
USE_TZ = True
ROOT_URLCONF = "e2eapp.urls"
WSGI_APPLICATION = "e2eapp.wsgi.application"
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django_eventstream",
    "e2eapp",
]

MIDDLEWARE = [
    "django_grip.GripMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
]

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("E2E_DB_PATH", "/tmp/e2e-django.sqlite3"),
        # Several gunicorn workers write events concurrently: take the write lock at BEGIN so that
        # django-eventstream's counter update never races, and wait for the lock instead of failing.
        "OPTIONS": {"timeout": 30, "transaction_mode": "IMMEDIATE"},
    }
}

SESSION_ENGINE = "django.contrib.sessions.backends.signed_cookies"

# django-grip: publish to the proxy's control port, and verify Grip-Sig with the shared key. django-grip
# 3.5.2 needs `key` (a lone `verify-key` raises KeyError in its middleware); with `key` and no `iss`,
# pubcontrol also sends `Authorization: Bearer <key>` on publishes, which the proxy must accept.
_control = os.environ.get("E2E_CONTROL_URL", "http://127.0.0.1:5561")
_sig_key = os.environ.get("E2E_SIG_KEY", "changeme")
GRIP_URL = "%s?key=%s" % (_control, quote(_sig_key, safe=""))

EVENTSTREAM_STORAGE_CLASS = "django_eventstream.storage.DjangoModelStorage"
EVENTSTREAM_CHANNELMANAGER_CLASS = "e2eapp.channels.ChannelManager"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": "WARNING"},
}
