"""Helpers for the metrics tests: scrape an endpoint as Prometheus would, find who holds a port."""

from __future__ import annotations

import os
import socket
import urllib.request

from prometheus_client.parser import text_string_to_metric_families


class Samples(dict):
    """``{(sample name, frozenset of label pairs): value}`` from one exposition, with look-ups."""

    @classmethod
    def parse(cls, text: str) -> "Samples":
        samples = cls()
        samples.text = text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
        return samples

    def get_value(self, name: str, **labels):
        """The sample's value, None when it is absent."""
        return self.get((name, frozenset(labels.items())))

    def series(self, name: str) -> dict:
        """Every sample of *name*: ``{frozenset of label pairs: value}``."""
        return {labels: value for (sample, labels), value in self.items() if sample == name}


def scrape(address: tuple[str, int], path: str = "/metrics", timeout: float = 5.0) -> Samples:
    host, port = address
    with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=timeout) as response:
        assert response.status == 200
        return Samples.parse(response.read().decode("utf-8"))


def listening_inodes(address: tuple[str, int]) -> set[str]:
    """Inodes of the IPv4 sockets listening at exactly *address* ``(host, port)``, from /proc/net/tcp.

    The address, not only the port: another family or address may listen on the same port number.
    """
    host, port = address
    local = "%08X:%04X" % (int.from_bytes(socket.inet_aton(host), "little"), port)  # the kernel's byte order
    inodes = set()
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            fields = line.split()
            if fields[1] == local and fields[3] == "0A":  # 0A: LISTEN
                inodes.add(fields[9])
    return inodes


def holders(address: tuple[str, int], pids) -> dict[int, list[str]]:
    """Which of *pids* have a descriptor on the socket listening at *address*: ``{pid: [its fds]}``."""
    wanted = {f"socket:[{inode}]" for inode in listening_inodes(address)}
    assert wanted, f"nothing listens at {address}"
    found = {}
    for pid in pids:
        try:
            names = os.listdir(f"/proc/{pid}/fd")
        except (FileNotFoundError, PermissionError):
            continue
        for name in names:
            try:
                if os.readlink(f"/proc/{pid}/fd/{name}") in wanted:
                    found.setdefault(pid, []).append(name)
            except OSError:
                continue
    return found
