# ferry CNI image: the install step of the DaemonSet (deploy/ferry-daemonset.yaml) and the
# node agent ferryd.
#   docker build -t ferry-cni:0.1.0 .
# Debian 12 to match the nodes: the venv built here and the source are copied to the node by
# `deploy/install.sh --copy` and run there on /usr/bin/python3.11; bcc (python3-bpfcc) is a
# Debian package, hence --system-site-packages.
FROM debian:bookworm-slim

ARG DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
        bpftool \
        ca-certificates \
        containernetworking-plugins \
        iproute2 \
        iptables \
        python3 \
        python3-bpfcc \
        python3-venv \
 && rm -rf /var/lib/apt/lists/*

# The repository (see .dockerignore), then ferry and its dependencies installed into a venv.
# The CNI launchers run plugin/ from the source directory (FERRY_SRC) with this venv.
# Editable on purpose: loader/pins.py finds bpf/*.c next to loader/ in the source tree, and
# bpf/ is not part of the wheel, so ferryd/ferryctl must run from /opt/ferry/src as well.
COPY . /opt/ferry/src
RUN python3 -m venv --system-site-packages /opt/ferry/venv \
 && /opt/ferry/venv/bin/python -m pip install --no-cache-dir -e /opt/ferry/src \
 && CNI_COMMAND=VERSION /opt/ferry/venv/bin/ferry

ENV FERRY_HOME=/opt/ferry \
    HOST_ROOT=/host \
    FERRY_SRC=/opt/ferry/src \
    FERRY_VENV=/opt/ferry/venv \
    PATH=/opt/ferry/venv/bin:$PATH

LABEL org.opencontainers.image.title="ferry" \
      org.opencontainers.image.description="ferry CNI plugin suite: binaries, install script, node agent ferryd" \
      org.opencontainers.image.licenses="Apache-2.0"

# Default: install into the host filesystem mounted at /host (docker run -v /:/host ...);
# the DaemonSet passes its own arguments.
ENTRYPOINT ["/opt/ferry/src/deploy/install.sh"]
CMD ["--copy"]
