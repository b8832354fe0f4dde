"""Channel permissions for the end-to-end app.

- `auth-*` channels can be read only by an authenticated user (tests that the user survives recovery:
  next-link requests carry no cookies, so the user must come back from django-eventstream's es-meta).
- A user in the group `deny:<channel>` may not read <channel> (set by the /revoke/ view, which then
  calls channel_permission_changed(), which kicks the user's streams).
"""
from django_eventstream.channelmanager import DefaultChannelManager


class ChannelManager(DefaultChannelManager):
    def can_read_channel(self, user, channel):
        if channel.startswith("auth-") and user is None:
            return False
        if user is not None and user.groups.filter(name="deny:" + channel).exists():
            return False
        return True
