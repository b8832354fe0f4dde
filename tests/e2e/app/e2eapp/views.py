"""Views of the end-to-end app. Test helpers take and return JSON; none of them is CSRF-protected
(the app runs on loopback only, for tests)."""
import json
import os

from django.contrib.auth import get_user_model, login
from django.contrib.auth.models import Group
from django.http import HttpResponse, HttpResponseBadRequest, JsonResponse
from django.views.decorators.http import require_POST
from django_eventstream import channel_permission_changed, send_event
from django_eventstream.utils import get_storage
from django_grip import set_hold_longpoll, set_hold_stream


def _json_body(request):
    if not request.body:
        return {}
    return json.loads(request.body.decode("utf-8"))


def plain(request):
    """A plain (non-GRIP) response: what the origin saw, for pass-through checks."""
    interesting = [
        "HTTP_HOST",
        "HTTP_GRIP_SIG",
        "HTTP_GRIP_FEATURE",
        "HTTP_LAST_EVENT_ID",
        "HTTP_X_E2E",
        "HTTP_USER_AGENT",
    ]
    return JsonResponse(
        {
            "method": request.method,
            "path": request.path,
            "query": request.META.get("QUERY_STRING", ""),
            "proxied": bool(request.grip.proxied),
            "signed": bool(request.grip.signed),
            "headers": {k: request.META.get(k) for k in interesting if k in request.META},
            "body": request.body.decode("utf-8", "replace"),
            "pid": os.getpid(),
        },
        headers={"X-Plain": "yes"},
    )


def longpoll(request, ch):
    """django-grip long-poll hold: `Grip-Hold: response` on channel <ch>; the body is the timeout answer."""
    timeout = int(request.GET.get("timeout", "20"))
    set_hold_longpoll(request, ch, timeout=timeout)
    resp = HttpResponse("longpoll-timeout channel=%s\n" % ch, content_type="text/plain")
    resp["X-Longpoll"] = "timeout"
    return resp


def stream(request, ch):
    """django-grip stream hold on channel <ch>, with keep-alive data `ka\\n` every ?ka= seconds."""
    ka = int(request.GET.get("ka", "55"))
    set_hold_stream(request, ch, keep_alive_data="ka\n", keep_alive_timeout=ka)
    resp = HttpResponse("stream-open\n", content_type="text/plain")
    resp["X-Stream"] = "open"
    return resp


@require_POST
def send(request, ch):
    """Publish with django-eventstream's send_event from this gunicorn worker.

    JSON body: {"type": "message", "data": <any>, "count": 1, "json_encode": true,
                "skip_user_ids": [], "async": false}
    With count > 1 and a dict `data`, each event gets `"i": <1-based index>` added.
    """
    body = _json_body(request)
    event_type = body.get("type", "message")
    data = body.get("data", {})
    count = int(body.get("count", 1))
    json_encode = bool(body.get("json_encode", True))
    skip = body.get("skip_user_ids") or None
    async_publish = bool(body.get("async", False))
    for i in range(count):
        d = data
        if count > 1 and isinstance(data, dict):
            d = dict(data, i=i + 1)
        send_event(
            ch,
            event_type,
            d,
            skip_user_ids=skip,
            async_publish=async_publish,
            json_encode=json_encode,
        )
    return JsonResponse({"pid": os.getpid(), "current_id": get_storage().get_current_id(ch)})


@require_POST
def store(request, ch):
    """Store an event without publishing it: the proxy never sees it, so the next publish has a prev-id
    gap (wire-formats.md §7 "Lost publish"). JSON body: {"type", "data", "count"} as for /send/."""
    body = _json_body(request)
    count = int(body.get("count", 1))
    data = body.get("data", {})
    storage = get_storage()
    for i in range(count):
        d = data
        if count > 1 and isinstance(data, dict):
            d = dict(data, i=i + 1)
        # As send_event does: storage keeps the already JSON-encoded text.
        e = storage.append_event(ch, body.get("type", "message"), json.dumps(d))
    return JsonResponse({"id": e.id})


@require_POST
def login_view(request):
    """Log in as `username` (created on first use); the session cookie authenticates later requests."""
    body = _json_body(request)
    username = body.get("username")
    if not username:
        return HttpResponseBadRequest("username required\n")
    user, _ = get_user_model().objects.get_or_create(username=username)
    login(request, user, backend="django.contrib.auth.backends.ModelBackend")
    return JsonResponse({"id": user.pk, "username": user.username})


@require_POST
def revoke(request, ch):
    """Revoke the logged-in user's (or `user_id`'s) permission to read <ch>, then tell
    django-eventstream, which kicks the user's streams (publish_kick)."""
    body = _json_body(request)
    if body.get("user_id") is not None:
        user = get_user_model().objects.get(pk=body["user_id"])
    elif request.user.is_authenticated:
        user = request.user
    else:
        return HttpResponseBadRequest("log in or give user_id\n")
    group, _ = Group.objects.get_or_create(name="deny:" + ch)
    user.groups.add(group)
    channel_permission_changed(user, ch)
    return JsonResponse({"kicked": user.pk})


def ws(request):
    """WebSocket-over-HTTP with django-grip's `request.wscontext` (route `over_http`).

    On open: accept, subscribe to ?channel=, send `welcome`. Then echo each message as `echo:<msg>`;
    the message `close` closes the socket with 1000, as does the client closing.
    """
    ws = getattr(request, "wscontext", None)
    if ws is None:
        return HttpResponseBadRequest("not a WebSocket-over-HTTP request\n")
    channel = request.GET.get("channel", "ws")
    if ws.is_opening():
        ws.accept()
        ws.subscribe(channel)
        ws.send("welcome")
    while ws.can_recv():
        try:
            message = ws.recv()
        except IOError:  # DISCONNECT: the client went away
            break
        if message is None:
            ws.close()
            break
        if message == "close":
            ws.close(code=1000)
            break
        ws.send("echo:%s" % message)
    return HttpResponse()


BROWSER_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>gripd e2e: EventSource</title></head>
<body>
<p>channel <code id="channel"></code>, readyState <code id="state">-</code></p>
<ol id="events"></ol>
<ol id="log"></ol>
<script>
"use strict";
const channel = %(channel)s;
const events = document.getElementById("events");
const log = document.getElementById("log");
document.getElementById("channel").textContent = channel;
window.e2e = {opens: 0, errors: 0, messages: []};
function note(what) {
  const li = document.createElement("li");
  li.textContent = what;
  log.appendChild(li);
  document.getElementById("state").textContent = String(es.readyState);
}
const es = new EventSource("/events/" + encodeURIComponent(channel) + "/");
es.addEventListener("open", () => { window.e2e.opens += 1; note("open"); });
es.addEventListener("error", () => { window.e2e.errors += 1; note("error readyState=" + es.readyState); });
es.addEventListener("message", (ev) => {
  window.e2e.messages.push([ev.lastEventId, ev.data]);
  const li = document.createElement("li");
  li.dataset.id = ev.lastEventId;
  li.textContent = ev.data;
  events.appendChild(li);
});
</script>
</body></html>
"""


def browser(request, ch):
    """An HTML page that opens `new EventSource('/events/<ch>/')` and appends every `message` event
    (lastEventId, data) to the DOM (`#events li[data-id]`) and to `window.e2e.messages`; `open` and
    `error` events are counted in `window.e2e` and listed in `#log`."""
    channel = json.dumps(ch).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return HttpResponse(BROWSER_PAGE % {"channel": channel}, content_type="text/html; charset=utf-8")
