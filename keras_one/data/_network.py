"""Whether a dataset's download servers answer, asked in seconds.

Offline, tensorflow-datasets retries every download ten times with an
exponential backoff: about 3.5 minutes before it gives up. Before it
downloads, `keras_one.data.load_tfds` asks here whether the servers in the
builder's checksums can be reached at all (a name lookup and a TCP
connection, or the connection to the proxy that would carry them), all
within `TIMEOUT_SECONDS`.
"""

import os
import socket
import threading
import time
import urllib.parse
import urllib.request

TIMEOUT_SECONDS = 5.0
_DEFAULT_PORTS = {"http": 80, "https": 443, "ftp": 21}


def download_urls(builder):
    """The URLs `builder.download_and_prepare()` would download.

    Those of its checksums file whose download is not already in the
    data_dir's `downloads/` folder (tfds reuses those without the network);
    none for a dataset downloaded by hand (manual_dir) or without checksums.
    """
    if getattr(builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", None):
        return []
    try:
        infos = dict(builder.url_infos or {})
    except Exception:  # no or unreadable checksums: nothing to ask
        return []
    downloaded = _downloaded_files(builder)
    return [
        url
        for url, info in infos.items()
        if _download_name(url, info) not in downloaded
    ]


def _download_name(url, info):
    """The file name tfds gives the download of `url`, or `None`."""
    try:
        from tensorflow_datasets.core.download import resource

        return resource.get_dl_fname(url, getattr(info, "checksum", None))
    except Exception:  # another tfds version: treat as not downloaded
        return None


def _downloaded_files(builder):
    """Names of the files in `<data_dir>/downloads` and its subfolders."""
    try:
        root = os.path.join(os.fspath(builder._data_dir_root), "downloads")
        names = set()
        for entry in os.scandir(root):
            if entry.is_dir() and entry.name != "extracted":
                names.update(os.listdir(entry.path))
            else:
                names.add(entry.name)
        return names
    except (AttributeError, TypeError, OSError):
        return set()


def unreachable(urls, timeout=TIMEOUT_SECONDS):
    """`"host:port (reason)"` of the first server of `urls` that does not
    answer within `timeout` seconds (all are asked at once), else `None`."""
    addresses = []
    for url in urls:
        address = _address(url)
        if address is not None and address not in addresses:
            addresses.append(address)
    if not addresses:
        return None
    failures = {}

    def ask(address):
        try:
            with socket.create_connection(address, timeout=timeout):
                pass
        except OSError as error:
            failures[address] = str(error) or type(error).__name__
        else:
            failures[address] = None

    # Name lookups take no timeout: each runs in a daemon thread, given up
    # on (and left to end by itself) at the deadline.
    threads = [
        threading.Thread(target=ask, args=(address,), daemon=True)
        for address in addresses
    ]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    for address in addresses:
        reason = failures.get(address, f"no answer within {timeout:g} s")
        if reason is not None:
            return f"{address[0]}:{address[1]} ({reason})"
    return None


def _address(url):
    """`(host, port)` to connect to for `url`: its proxy's if it has one."""
    parts = urllib.parse.urlsplit(url)
    if not parts.hostname:
        return None
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(parts.hostname):
        if "://" not in proxy:
            proxy = "http://" + proxy
        proxy_parts = urllib.parse.urlsplit(proxy)
        if proxy_parts.hostname:
            port = proxy_parts.port or _DEFAULT_PORTS.get(
                proxy_parts.scheme, 80
            )
            return proxy_parts.hostname, port
    port = parts.port or _DEFAULT_PORTS.get(parts.scheme)
    return (parts.hostname, port) if port else None
