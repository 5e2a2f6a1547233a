"""A network config file (.conf or .conflist) read as a runtime would: the entry ferry's
tools (ferryd, ferryctl, the benches) serve, validated into ferry's or ferry-egress's model.

Apart from plugin.config, which both models build on, so that neither config module needs
the other.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from plugin.config import NetConf, parse
from plugin.egress.config import EgressConf
from plugin.protocol import CniError, Code


def load_file(path: str, plugin_type: str | None = None) -> tuple[NetConf, dict[str, Any]]:
    """The `plugin_type` entry of a .conf or .conflist file (default: the first ferry* entry,
    so a conflist of the reference ptp then ferry-egress has one), with the list's name and
    cniVersion filled in as a runtime would: (validated model, raw config)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError, RecursionError) as e:
        raise CniError(Code.INVALID_CONFIG, f"cannot read network config {path}", str(e)) from None
    plugins = data.get("plugins") if isinstance(data, dict) else None
    if not isinstance(data, dict) or (plugins is not None and not isinstance(plugins, list)):
        raise CniError(Code.INVALID_CONFIG, f"{path} is not a network config or list")
    if plugins is not None:
        entry = next((p for p in plugins if isinstance(p, dict) and (
            p.get("type") == plugin_type or
            (plugin_type is None and str(p.get("type", "")).startswith("ferry")))), None)
        if entry is None:
            raise CniError(Code.INVALID_CONFIG,
                           f"{path} has no plugin of type {plugin_type or 'ferry*'}")
        data = {**entry, "name": data.get("name"), "cniVersion": data.get("cniVersion")}
    model = EgressConf if data.get("type") == "ferry-egress" else NetConf
    return parse(model, data), data
