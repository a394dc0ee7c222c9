"""Engines by name: ``Settings.engine`` picks one. Adding a backend is a module and a line here.

Only engine processes (``serving/host.py``) build one; the API server speaks to them (``serving/pool.py``)
and never imports torch.
"""

from __future__ import annotations

from collections.abc import Callable

from modelport.serving.engine import Engine
from modelport.settings import Settings


def _torch(settings: Settings) -> Engine:
    from modelport.serving.engines.torch.engine import TorchEngine  # torch imports cost seconds

    return TorchEngine(settings)


def _fake(settings: Settings) -> Engine:
    from modelport.serving.engines.fake import FakeEngine

    return FakeEngine(max_num_seqs=settings.max_num_seqs, token_delay_s=settings.engine_fake_token_delay_s)


ENGINES: dict[str, Callable[[Settings], Engine]] = {"transformers": _torch, "fake": _fake}
