"""Helpers for the metrics tests: scrape an endpoint as Prometheus would, find who holds a port."""

from __future__ import annotations

import os
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


def listening_inodes(port: int) -> set[str]:
    """Socket inodes listening on TCP *port* (IPv4 and IPv6), from /proc/net."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            next(f)
            for line in f:
                fields = line.split()
                local, state, inode = fields[1], fields[3], fields[9]
                if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                    inodes.add(inode)
    return inodes


def holders(port: int, pids) -> set[int]:
    """Which of *pids* have a descriptor on the socket listening on *port*."""
    wanted = {f"socket:[{inode}]" for inode in listening_inodes(port)}
    found = set()
    for pid in pids:
        try:
            names = os.listdir(f"/proc/{pid}/fd")
        except (FileNotFoundError, PermissionError):
            continue
        for name in names:
            try:
                if os.readlink(f"/proc/{pid}/fd/{name}") in wanted:
                    found.add(pid)
                    break
            except OSError:
                continue
    return found
