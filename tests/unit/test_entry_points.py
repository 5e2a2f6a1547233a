"""No traceback ever reaches a user: each entry point turns an unexpected exception into its
documented error form and puts the traceback in the log file.

An unexpected exception cannot be provoked from outside (that is what makes it unexpected):
each test runs the real entry point in a fresh interpreter with one internal function
replaced by one that raises, the only fake here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run_entry(patch: str, entry: str, env: dict[str, str], stdin: bytes = b"",
              argv: list[str] | None = None) -> subprocess.CompletedProcess[bytes]:
    code = (f"import sys\nsys.path.insert(0, {str(ROOT)!r})\n"
            "def boom(*a, **k):\n    raise RuntimeError('injected fault')\n"
            f"{patch}\nsys.argv = ['entry', *{argv or []!r}]\n{entry}\n")
    # -I -S as the CNI launchers run: the code must find its site-packages itself.
    return subprocess.run([sys.executable, "-I", "-S", "-c", code], input=stdin, env=env,
                          capture_output=True, timeout=60, check=False)


def config(tmp: Path, **extra: object) -> dict[str, object]:
    return {"cniVersion": "1.0.0", "name": "ep", "type": "ferry",
            "stateDir": str(tmp / "state"), "agentSocket": str(tmp / "none.sock"),
            "log": {"file": str(tmp / "log" / "ferry.log")},
            "ipam": {"type": "host-local", "dataDir": str(tmp / "ipam"),
                     "ranges": [[{"subnet": "10.77.0.0/24"}]]}, **extra}


def cni_env(command: str = "ADD") -> dict[str, str]:
    return {"CNI_COMMAND": command, "CNI_CONTAINERID": "ctr1", "CNI_NETNS": "/run/netns/x",
            "CNI_IFNAME": "eth0", "CNI_PATH": "/nonexistent", "PATH": "/usr/bin:/bin"}


def logged_traceback(tmp: Path) -> str:
    text = (tmp / "log" / "ferry.log").read_text()
    assert "Traceback" in text and "injected fault" in text, text
    return text


CNI_CASES = {
    "ferry-relay-path": ("import plugin.relay as r\nr.socket_path = boom",
                         "from plugin.cli import main\nmain()"),
    "ferry-engine": ("import site; site.main()\nimport plugin.handler as h\nh.run = boom",
                     "from plugin.cli import main\nmain()"),
    "ferry-host-local": ("import site; site.main()\nimport plugin.ipam as i\ni.add = boom",
                         "from plugin.ipam.cli import main\nmain()"),
    "ferry-egress": ("import site; site.main()\nimport plugin.egress.engine as e\ne.run = boom",
                     "from plugin.egress.cli import main\nmain()"),
}


@pytest.mark.parametrize("name", list(CNI_CASES))
def test_cni_binary_turns_an_unexpected_exception_into_error_100(tmp_path: Path,
                                                                 name: str) -> None:
    patch, entry = CNI_CASES[name]
    stdin = json.dumps(config(tmp_path)).encode()
    env = cni_env() if name == "ferry-relay-path" else {**cni_env(), "FERRY_STANDALONE": "1"}
    proc = run_entry(patch, entry, env, stdin)
    assert proc.returncode == 1, proc
    assert proc.stderr == b"", proc.stderr.decode()
    err = json.loads(proc.stdout)
    assert set(err) == {"cniVersion", "code", "msg", "details"}
    assert err["code"] == 100 and err["cniVersion"] == "1.0.0", err
    assert "RuntimeError" in err["details"], err
    logged_traceback(tmp_path)


def write_conflist(tmp: Path) -> Path:
    conf = config(tmp)
    path = tmp / "net.conflist"
    path.write_text(json.dumps({"cniVersion": "1.0.0", "name": "ep", "plugins": [
        {k: v for k, v in conf.items() if k not in ("name", "cniVersion")}]}))
    return path


@pytest.mark.parametrize("patch, entry, argv", [
    ("import site; site.main()\nimport plugin.agent.daemon as d\nd.Agent.run = boom",
     "from plugin.agent.daemon import main\nmain()", ["--metrics", "off"]),
    ("import site; site.main()\nimport plugin.dataplane.mode as dp\ndp.choose = boom",
     "from plugin.ctl import run\nrun()", ["inspect"]),
], ids=["ferryd", "ferryctl"])
def test_daemon_and_ctl_print_one_line_and_exit_1(tmp_path: Path, patch: str, entry: str,
                                                  argv: list[str]) -> None:
    conflist = write_conflist(tmp_path)
    args = [*argv[:1], "--config", str(conflist), *argv[1:]] if entry.endswith("run()") \
        else ["--config", str(conflist), *argv]
    proc = run_entry(patch, entry, {"PATH": "/usr/bin:/bin"}, argv=args)
    assert proc.returncode == 1, proc
    lines = proc.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and "injected fault" in lines[0], proc.stderr.decode()
    logged_traceback(tmp_path)


def test_ferryd_config_error_is_one_line(tmp_path: Path) -> None:
    conflist = write_conflist(tmp_path)
    data = json.loads(conflist.read_text())
    data["name"] = "../escaped"
    conflist.write_text(json.dumps(data))
    proc = run_entry("import site; site.main()", "from plugin.agent.daemon import main\nmain()",
                     {"PATH": "/usr/bin:/bin"}, argv=["--config", str(conflist)])
    assert proc.returncode == 1
    lines = proc.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ferryd: [7]"), lines
