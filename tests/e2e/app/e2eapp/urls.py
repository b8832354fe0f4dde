import django_eventstream
from django.urls import include, path

from . import views

urlpatterns = [
    path("plain/", views.plain),
    path("longpoll/<str:ch>/", views.longpoll),
    path("stream/<str:ch>/", views.stream),
    path("send/<str:ch>/", views.send),
    path("store/<str:ch>/", views.store),
    path("login/", views.login_view),
    path("revoke/<str:ch>/", views.revoke),
    # WebSocket-over-HTTP (route over_http): django-grip's request.wscontext
    path("ws/", views.ws),
    # A page whose EventSource reads /events/<ch>/ (tests/e2e/test_browser.py)
    path("browser/<str:ch>/", views.browser),
    # django-eventstream: one channel from the URL, or several with ?channel=a&channel=b
    path("events/<str:channel>/", include(django_eventstream.urls), {"format-channels": ["{channel}"]}),
    path("events/", include(django_eventstream.urls)),
]
