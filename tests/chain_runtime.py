"""A tiny libcni for the tests: a conflist driven the way libcni drives one
(AddNetworkList / CheckNetworkList / DelNetworkList):

- ADD runs the plugins in order; each gets the conflist's name and cniVersion injected and
  the previous plugin's result as prevResult; the last result is the chain's (and is cached);
- CHECK runs every plugin in order with the cached result as prevResult;
- DEL runs the plugins in reverse order with the cached result as prevResult (none if ADD
  never completed).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from harness import CNI_PATH, CniCall, Node, Pod


class ChainError(AssertionError):
    def __init__(self, plugin: str, call: CniCall) -> None:
        super().__init__(f"{plugin} failed rc={call.rc}: {call.stdout} {call.stderr}")
        self.plugin = plugin
        self.call = call


@dataclass
class Runtime:
    """A tiny libcni: one conflist, one pod, a result cache."""

    node: Node
    conflist: dict[str, Any]
    cache: dict[str, dict[str, Any]] = field(default_factory=dict)
    steps: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # per-plugin results

    def _conf(self, plugin: dict[str, Any], prev: dict[str, Any] | None) -> dict[str, Any]:
        conf = {**plugin, "name": self.conflist["name"],
                "cniVersion": self.conflist["cniVersion"]}
        if prev is not None:
            conf["prevResult"] = prev
        return conf

    def _exec(self, command: str, pod: Pod, plugin: dict[str, Any],
              prev: dict[str, Any] | None) -> CniCall:
        return self.node.cni(command, pod, self._conf(plugin, prev),
                             plugin=f"{CNI_PATH}/{plugin['type']}")

    def add(self, pod: Pod) -> dict[str, Any]:
        prev: dict[str, Any] | None = None
        steps = self.steps[pod.container_id] = []
        for plugin in self.conflist["plugins"]:
            call = self._exec("ADD", pod, plugin, prev)
            if call.rc != 0:
                raise ChainError(plugin["type"], call)
            prev = call.json
            steps.append(prev)
        assert prev is not None
        self.cache[pod.container_id] = prev
        pod.result = prev
        return prev

    def check(self, pod: Pod) -> list[tuple[str, CniCall]]:
        prev = self.cache[pod.container_id]
        return [(p["type"], self._exec("CHECK", pod, p, prev)) for p in self.conflist["plugins"]]

    def delete(self, pod: Pod) -> None:
        prev = self.cache.get(pod.container_id)
        for plugin in reversed(self.conflist["plugins"]):
            call = self._exec("DEL", pod, plugin, prev)
            if call.rc != 0:
                raise ChainError(plugin["type"], call)
        self.cache.pop(pod.container_id, None)
