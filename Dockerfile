# ferry CNI image: the install step of the DaemonSet (deploy/ferry-daemonset.yaml) and the
# node agent ferryd.
#   docker build -t ferry-cni:0.1.0 .
# Debian 12 to match the nodes: the venv built here (ferry installed in it) is copied to the node by
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
        nftables \
        python3 \
        python3-bpfcc \
        python3-venv \
 && rm -rf /var/lib/apt/lists/*

# ferry installed into a venv as a regular package (sources and BPF files as package data);
# the checkout itself is not kept: only deploy/ (the install script and examples) is.
COPY . /tmp/ferry-src
RUN python3 -m venv --system-site-packages /opt/ferry/venv \
 && /opt/ferry/venv/bin/python -m pip install --no-cache-dir /tmp/ferry-src \
 && cp -a /tmp/ferry-src/deploy /opt/ferry/deploy \
 && rm -rf /tmp/ferry-src \
 && CNI_COMMAND=VERSION /opt/ferry/venv/bin/ferry

ENV FERRY_HOME=/opt/ferry \
    HOST_ROOT=/host \
    FERRY_VENV=/opt/ferry/venv \
    PATH=/opt/ferry/venv/bin:$PATH

LABEL org.opencontainers.image.title="ferry" \
      org.opencontainers.image.description="ferry CNI plugin suite: binaries, install script, node agent ferryd" \
      org.opencontainers.image.licenses="Apache-2.0"

# Default: install into the host filesystem mounted at /host (docker run -v /:/host ...);
# the DaemonSet passes its own arguments.
ENTRYPOINT ["/opt/ferry/deploy/install.sh"]
CMD ["--copy"]
