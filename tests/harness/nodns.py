"""A network namespace where every name lookup fails at once, without traffic leaving it.

`ip netns exec NAME` bind-mounts /etc/netns/NAME/resolv.conf over /etc/resolv.conf; ours
names 127.0.0.1 inside the namespace, where nothing listens on port 53, so the resolver
is refused immediately: a DNS failure as a station without DNS sees it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.harness.netns import Lab, Netns


def namespace_without_dns(lab: Lab) -> Netns:
    ns = lab.namespace()
    etc = Path("/etc/netns") / ns.name
    etc.mkdir(parents=True, exist_ok=True)
    (etc / "resolv.conf").write_text("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
    lab._stack.callback(shutil.rmtree, etc, True)
    return ns
