"""Integration-test fixtures: ``hub_server``, a local Hub-compatible server that the real huggingface_hub talks to."""

import pytest
from hub_server import HubServer


@pytest.fixture
def hub_server(monkeypatch):
    """A running :class:`~hub_server.HubServer` (tests/integrations/hub_server.py), with huggingface_hub online and
    pointed at it.

    tests/conftest.py sets ``HF_HUB_OFFLINE=1`` before huggingface_hub is imported, and huggingface_hub reads its
    environment once, at import time, into ``huggingface_hub.constants``; so, for the duration of the test, this
    patches the constants the client consults at call time:

    - ``HF_HUB_OFFLINE = False`` (every request goes through ``constants.is_offline_mode()``);
    - ``HF_HUB_DISABLE_XET = True`` (with ``hf_xet`` installed, uploads otherwise go through Xet, which the server
      does not implement);
    - ``ENDPOINT`` and ``HUGGINGFACE_CO_URL_TEMPLATE`` = the server, and the endpoint of the module-level ``HfApi``
      behind ``huggingface_hub.upload_folder`` & co. (created at import time), so code that passes no ``endpoint``
      reaches the server too, never the real Hub;

    and sets ``HF_ENDPOINT``, ``HF_HUB_OFFLINE=0`` and ``HF_HUB_DISABLE_XET=1`` in ``os.environ`` for subprocesses.
    """
    from huggingface_hub import constants, hf_api

    with HubServer() as hub:
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
        monkeypatch.setattr(constants, "ENDPOINT", hub.url)
        monkeypatch.setattr(
            constants, "HUGGINGFACE_CO_URL_TEMPLATE", hub.url + "/{repo_id}/resolve/{revision}/{filename}"
        )
        monkeypatch.setattr(hf_api.api, "endpoint", hub.url)
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        monkeypatch.setenv("HF_HUB_OFFLINE", "0")
        monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
        monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
        yield hub
