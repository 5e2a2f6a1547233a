#!/usr/bin/env bash
# Install (or remove) ferry as the node's CNI plugin. Idempotent: a second run changes nothing.
#
#   deploy/install.sh [--copy] [--conflist FILE]     install
#   deploy/install.sh [--copy] --uninstall           remove what install put there
#   deploy/install.sh --bin-only                     only the launchers (scripts/setup.sh)
#
# $CNI_BIN_DIR/{ferry,ferry-host-local,ferry-egress} are small launchers:
# `#!<venv>/bin/python -IS`, the venv's site-packages (where ferry is pip-installed) put first
# on sys.path, main(). -IS keeps the interpreter start-up minimal on the relay path; the code
# enables the rest of site (Debian's bcc) itself when it needs it. Two ways to provide the
# venv they point at:
#   link (default)  a node where ferry is installed in $FERRY_VENV (scripts/setup.sh does it).
#   --copy          the DaemonSet's init container: the image's venv (ferry installed in it)
#                   is copied to the host as $FERRY_HOME/ferry.<digest>, and
#                   $FERRY_HOME/current is switched to it atomically. The venv runs on the
#                   host's interpreter (its pyvenv.cfg names it: /usr/bin/python3.11 for
#                   Debian 12), which the node must have; python3-bpfcc is not copied.
# Reference plugins the conflist chains (e.g. tuning) are taken from $REF_PLUGIN_DIR when the
# node has none; the ones added are recorded and removed again by --uninstall.
#
# Environment (defaults in brackets):
#   HOST_ROOT         where the host's filesystem is mounted, e.g. /host in a container;
#                     required by --copy [""]
#   CNI_BIN_DIR       the runtime's plugin directory, as a host path [/opt/cni/bin]
#   CNI_CONF_DIR      the runtime's config directory, as a host path [/etc/cni/net.d]
#   FERRY_VENV        the venv ferry is installed in [<repo>/.venv]
#   FERRY_HOME        --copy: where the venv goes on the host [/opt/ferry]
#   FERRY_STATE_DIR   ferry's state directory (the install manifest lives there) [/var/lib/ferry]
#   REF_PLUGIN_DIR    the reference CNI plugins [/usr/lib/cni]
#   FERRY_POD_CIDR, FERRY_POD_CIDR_V6
#                     if set, replace the conflist's IPv4 / IPv6 pod range with this node's
set -euo pipefail

here=$(dirname "$(readlink -f "$0")")
HOST_ROOT=${HOST_ROOT:-}
HOST_ROOT=${HOST_ROOT%/}
CNI_BIN_DIR=${CNI_BIN_DIR:-/opt/cni/bin}
CNI_CONF_DIR=${CNI_CONF_DIR:-/etc/cni/net.d}
FERRY_VENV=${FERRY_VENV:-$here/../.venv}
FERRY_HOME=${FERRY_HOME:-/opt/ferry}
FERRY_STATE_DIR=${FERRY_STATE_DIR:-/var/lib/ferry}
REF_PLUGIN_DIR=${REF_PLUGIN_DIR:-/usr/lib/cni}
declare -A BINARIES=([ferry]=plugin.cli [ferry-host-local]=plugin.ipam.cli
                    [ferry-egress]=plugin.egress.cli)

mode=link action=install conflist=$here/10-ferry.conflist
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
while (($#)); do
    case $1 in
        --copy) mode=copy ;;
        --uninstall) action=uninstall ;;
        --bin-only) action=bin-only ;;
        --conflist) conflist=${2:?--conflist needs a file}; shift ;;
        -h | --help) usage; exit 0 ;;
        *) echo "install.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

bin_dir=$HOST_ROOT$CNI_BIN_DIR
conf_dir=$HOST_ROOT$CNI_CONF_DIR
manifest=$HOST_ROOT$FERRY_STATE_DIR/installed-plugins
conf_name=$(basename "$conflist")
if [[ $mode == copy && -z $HOST_ROOT ]]; then
    # --copy moves the image's files onto the host: without a separate host root it would
    # write into this machine's (the container's) own directories.
    echo "install.sh: --copy needs HOST_ROOT (where the host's filesystem is mounted)" >&2
    exit 2
fi
say() { echo "ferry install: $*"; }

# Replace $2 by a symlink to $1 atomically (rename over it), unless it already is one.
link() {
    local target=$1 dest=$2
    [[ -L $dest && $(readlink "$dest") == "$target" ]] && return 0
    ln -s "$target" "$dest.tmp.$$"
    mv -Tf "$dest.tmp.$$" "$dest"
    say "linked ${dest#"$HOST_ROOT"} -> $target"
}

python() { "$FERRY_VENV/bin/python" "$@"; }

# Where the venv's python imports ferry from (its site-packages; the checkout for an editable
# install), as a path inside the venv when it is one, so that a copied venv keeps it.
package_dir() {
    local venv dir
    venv=$(readlink -f "$FERRY_VENV")
    dir=$(python -I -c 'import os, plugin; print(os.path.dirname(os.path.dirname(
        os.path.realpath(plugin.__file__))))') || return 1
    echo "${dir#"$venv"/}"
}

# Write the launcher for binary $1 (module $2) running <venv $3> with ferry's package dir <$4>
# (relative: inside the venv), unless the node has exactly that already; atomic.
launcher() {
    local name=$1 module=$2 venv=$3 pkg=$4 dest=$bin_dir/$1 tmp
    [[ $pkg == /* ]] || pkg=$venv/$pkg
    tmp=$(mktemp "$bin_dir/.$name.XXXXXX")
    printf '#!%s/bin/python -IS\nimport sys\nsys.path.insert(0, "%s")\nfrom %s import main\nmain()\n' \
        "$venv" "$pkg" "$module" >"$tmp"
    chmod 0755 "$tmp"
    if [[ ! -L $dest ]] && cmp -s "$tmp" "$dest"; then
        rm -f "$tmp"
        return 0
    fi
    mv -f "$tmp" "$dest"
    say "wrote $CNI_BIN_DIR/$name (launcher: $venv, $pkg)"
}

# The conflist with this node's pod CIDRs substituted, on stdout.
render_conflist() {
    python - "$conflist" <<'EOF'
import ipaddress, json, os, sys
conf = json.load(open(sys.argv[1]))
for plugin in conf["plugins"]:
    if plugin.get("type") != "ferry":
        continue
    ranges = plugin["ipam"]["ranges"]
    for var, version in (("FERRY_POD_CIDR", 4), ("FERRY_POD_CIDR_V6", 6)):
        cidr = os.environ.get(var)
        if not cidr:
            continue
        net = ipaddress.ip_network(cidr, strict=False)
        if net.version != version:
            sys.exit(f"{var}={cidr} is not an IPv{version} network")
        fresh = [[{"subnet": str(net)}]]
        kept = [rs for rs in ranges
                if ipaddress.ip_network(rs[0]["subnet"], strict=False).version != version]
        ranges[:] = kept + fresh if version == 6 else fresh + kept
json.dump(conf, sys.stdout, indent=2)
print()
EOF
}

# Plugin types the conflist chains besides ferry itself.
chained_types() {
    python -c 'import json, sys
print("\n".join(p["type"] for p in json.load(open(sys.argv[1]))["plugins"]
                if p["type"] not in ("ferry", "ferry-host-local")))' "$conflist"
}

# --copy: the venv into $FERRY_HOME/ferry.<digest>; $FERRY_HOME/current -> it, swapped
# atomically. Launchers name .../current, so a pod exec'd during the swap sees old or new.
copy_bundle() {
    local venv dest_home digest bundle previous
    venv=$(readlink -f "$FERRY_VENV")
    dest_home=$HOST_ROOT$FERRY_HOME
    digest=$( (cd "$venv" && find . -name __pycache__ -prune -o -printf 'venv/%P %s %T@ %l\n') \
              | sort | sha256sum | cut -c1-12)
    bundle=ferry.$digest
    mkdir -p "$dest_home"
    if [[ ! -d $dest_home/$bundle ]]; then
        rm -rf "${dest_home:?}/$bundle.tmp"
        mkdir -p "$dest_home/$bundle.tmp"
        cp -a "$venv/." "$dest_home/$bundle.tmp/venv"
        mv -T "$dest_home/$bundle.tmp" "$dest_home/$bundle"
        say "copied the venv to $FERRY_HOME/$bundle"
    fi
    previous=$(readlink "$dest_home/current" 2>/dev/null || true)
    link "$bundle" "$dest_home/current"
    if [[ -n $previous && $previous != "$bundle" && -d $dest_home/$previous ]]; then
        rm -rf "${dest_home:?}/$previous"  # new execs use the new bundle from now on
    fi
    # The interpreter the venv was made with, by major.minor (compiled wheels depend on it).
    local interp
    interp=$(sed -n 's/^home = //p' "$venv/pyvenv.cfg")/python$(sed -n \
        's/^version = \([0-9]*\.[0-9]*\).*/\1/p' "$venv/pyvenv.cfg")
    if [[ ! -e $HOST_ROOT$interp ]]; then
        say "WARNING: the host has no $interp; ferry cannot run there until it does"
    fi
}

provide_chained() {
    local t
    mkdir -p "$(dirname "$manifest")"
    touch "$manifest"
    for t in $(chained_types); do
        if [[ -e $bin_dir/$t || -L $bin_dir/$t ]]; then
            continue  # the node's own copy wins; never overwritten
        fi
        if [[ ! -x $REF_PLUGIN_DIR/$t ]]; then
            echo "install.sh: the conflist chains '$t' and neither $bin_dir nor" \
                 "$REF_PLUGIN_DIR has it" >&2
            exit 1
        fi
        if [[ $mode == copy ]]; then
            install -m 0755 "$REF_PLUGIN_DIR/$t" "$bin_dir/$t.tmp.$$"
            mv -f "$bin_dir/$t.tmp.$$" "$bin_dir/$t"
            say "copied $REF_PLUGIN_DIR/$t to $bin_dir"
        else
            link "$REF_PLUGIN_DIR/$t" "$bin_dir/$t"
        fi
        grep -qxF "$t" "$manifest" || echo "$t" >>"$manifest"
    done
}

# Write the rendered conflist ($1) unless the node has exactly that already.
install_conflist() {
    local rendered
    mkdir -p "$conf_dir"
    rendered=$(mktemp "$conf_dir/.$conf_name.XXXXXX")
    printf '%s\n' "$1" >"$rendered"
    chmod 0644 "$rendered"
    if cmp -s "$rendered" "$conf_dir/$conf_name"; then
        rm -f "$rendered"
    else
        mv -f "$rendered" "$conf_dir/$conf_name"  # rename: the runtime never reads half a file
        say "wrote $CNI_CONF_DIR/$conf_name"
    fi
}

write_launchers() {
    local b pkg
    pkg=$(package_dir) || {
        echo "install.sh: ferry is not installed in the venv $FERRY_VENV" \
             "(run scripts/setup.sh, or set FERRY_VENV)" >&2
        exit 1
    }
    mkdir -p "$bin_dir"
    [[ $mode == copy ]] && copy_bundle
    for b in "${!BINARIES[@]}"; do
        if [[ $mode == copy ]]; then
            launcher "$b" "${BINARIES[$b]}" "$FERRY_HOME/current/venv" "$pkg"
        else
            launcher "$b" "${BINARIES[$b]}" "$(readlink -f "$FERRY_VENV")" "$pkg"
        fi
    done
}

do_install() {
    local rendered
    [[ -r $conflist ]] || { echo "install.sh: cannot read $conflist" >&2; exit 1; }
    rendered=$(render_conflist)  # before touching the node: a bad CIDR changes nothing
    write_launchers
    provide_chained
    # The config last: the runtime may start using ferry the moment it appears.
    install_conflist "$rendered"
    say "done ($mode mode): $CNI_BIN_DIR/{$(IFS=,; echo "${!BINARIES[*]}")}, $CNI_CONF_DIR/$conf_name"
}

do_uninstall() {
    local b t
    # The config first, so that no new pod is sent to ferry while it goes away.
    if [[ -e $conf_dir/$conf_name ]]; then
        rm -f "$conf_dir/$conf_name"
        say "removed $CNI_CONF_DIR/$conf_name"
    fi
    for b in "${!BINARIES[@]}"; do
        if [[ -e $bin_dir/$b || -L $bin_dir/$b ]]; then
            rm -f "$bin_dir/$b"
            say "removed $CNI_BIN_DIR/$b"
        fi
    done
    if [[ -f $manifest ]]; then
        while read -r t; do
            [[ -n $t ]] || continue
            rm -f "${bin_dir:?}/$t"
            say "removed $CNI_BIN_DIR/$t (installed by ferry)"
        done <"$manifest"
        rm -f "$manifest"
    fi
    if [[ $mode == copy && -d $HOST_ROOT$FERRY_HOME ]]; then
        rm -rf "$HOST_ROOT$FERRY_HOME/current" "$HOST_ROOT$FERRY_HOME"/ferry.*
        rmdir "$HOST_ROOT$FERRY_HOME" 2>/dev/null || true
        say "removed $FERRY_HOME/current and its bundle"
    fi
    local records
    records=$(find "$HOST_ROOT$FERRY_STATE_DIR" -name '*.json' 2>/dev/null | wc -l)
    if ((records)); then
        say "WARNING: $records pod attachment(s) still recorded in $FERRY_STATE_DIR;" \
            "their DEL cannot run without the plugin (state and IPAM data are left in place)"
    fi
    say "uninstalled"
}

case $action in
    install) do_install ;;
    bin-only) write_launchers ;;
    uninstall) do_uninstall ;;
esac
