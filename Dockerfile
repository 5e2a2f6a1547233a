# ferry CNI image: the install step of the DaemonSet (deploy/ferry-daemonset.yaml) and the
# node agent ferryd.
#   docker build -t ferry-cni:0.1.0 .
# Debian 12 to match the nodes: the venv built here (ferry installed in it) is copied to the node by
# `deploy/install.sh --copy` and run there on /usr/bin/python3.11.
#
# Two stages. `build` has clang and libbpf-dev and builds the wheel, whose build compiles the
# prebuilt BPF objects (bpf/snat.o, bpf/redirect.o: package data, see setup.py). The final
# image installs that wheel and carries the objects, but no compiler, no kernel headers and no
# bcc: ferryd loads the objects with the ELF loader (pyelftools + bpf(2)).

FROM debian:bookworm-slim AS build
ARG DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
        ca-certificates clang libbpf-dev linux-libc-dev python3 python3-pip python3-venv \
 && rm -rf /var/lib/apt/lists/*
COPY . /src
RUN rm -f /src/bpf/*.o \
 && python3 -m venv /build-venv \
 && /build-venv/bin/python -m pip wheel --no-cache-dir --no-deps -w /dist /src \
 && python3 -c "import sys, zipfile; n = set(zipfile.ZipFile(sys.argv[1]).namelist()); \
      sys.exit(0 if {'bpf/snat.o', 'bpf/redirect.o'} <= n else 'no BPF objects in the wheel')" \
      /dist/ferry_cni-*.whl \
 && mkdir /deploy && cp -a /src/deploy/. /deploy/

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
        python3-venv \
        util-linux \
 && rm -rf /var/lib/apt/lists/*

# ferry installed into a venv from the build stage's wheel (sources, prebuilt objects as
# package data); only deploy/ (the install script and examples) is kept of the checkout.
COPY --from=build /dist /tmp/dist
COPY --from=build /deploy /opt/ferry/deploy
RUN python3 -m venv --system-site-packages /opt/ferry/venv \
 && /opt/ferry/venv/bin/python -m pip install --no-cache-dir /tmp/dist/ferry_cni-*.whl \
 && rm -rf /tmp/dist \
 && CNI_COMMAND=VERSION /opt/ferry/venv/bin/ferry \
 && /opt/ferry/venv/bin/python -c "from loader import pins; print(pins.choose_loader('elf'))"

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
