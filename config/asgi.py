"""The ASGI application of the control plane: ``uvicorn config.asgi:application``.

Django, with the sidecar gateway's long-polls and audit intake served without
the middleware (``gateway.asgi``). ``make run``, the tests and production all
serve this one.
"""

import gc
import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
django_application = get_asgi_application()

from gateway.asgi import with_gateway  # noqa: E402 - needs the app registry

application = with_gateway(django_application)

# Everything imported so far (Django, the apps, their modules) lives as long as the
# process: move it out of the collector's reach, so a full collection does not walk
# it again and again. An audit batch allocates ~10,000 containers (its events'
# dicts and lists), which at the default threshold of 700 meant a dozen young
# collections per batch; they are all garbage by the batch's end.
gc.collect()  # what imports left behind, so it is not frozen for good
gc.freeze()
gc.set_threshold(20_000, 10, 10)
