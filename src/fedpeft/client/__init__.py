"""Client side: the client application (training on private data) and update mods."""

from fedpeft.client.app import ClientApp, LoraClientApp
from fedpeft.client.mods import ModContext, UpdateMod, clip_l2, reject_nonfinite

__all__ = ["ClientApp", "LoraClientApp", "ModContext", "UpdateMod", "clip_l2", "reject_nonfinite"]
