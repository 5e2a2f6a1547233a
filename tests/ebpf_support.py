"""Former name of dataplane_support (generalised to every dataplane mode); kept so that code
written against it keeps importing."""

from dataplane_support import (  # noqa: F401
    DataplaneNode,
    EbpfNode,
    client,
    dataplane_node,
    ebpf_node,
    link_stats,
    recorder,
    seen,
    tc_show,
)
