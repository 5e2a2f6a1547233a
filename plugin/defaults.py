"""Defaults that more than one layer needs, each written once here.

No imports at all: the CNI binary's relay hot path (plugin.relay, builtin modules only) reads
the agent socket from here, and the loader the bpffs root, without loading anything else.
"""

AGENT_SOCKET = "/run/ferry/ferryd.sock"  # config agentSocket; the relay's fallback
BPFFS_ROOT = "/sys/fs/bpf/ferry"  # config bpffsRoot, where loader.pins pins a network's maps
CNI_BIN_DIR = "/opt/cni/bin"  # CNI_PATH of the requests ferryd makes itself (reconcile, gRPC)
