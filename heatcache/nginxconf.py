"""nginx in front of the edge: the server block that makes it so (pure text from settings).

nginx takes the clients; every request goes to the edge, which answers a hit with
``X-Accel-Redirect: <edge_accel_prefix><object path>`` and nginx sends the file itself from an
internal location aliased to the cache root (sendfile, ranges and validators are then nginx's);
misses are streamed through unbuffered, as the edge sends them. ``heatcache nginx-conf`` prints it.
"""

from __future__ import annotations

from heatcache.settings import Settings


def server_block(settings: Settings, listen: str) -> str:
    """A ``server { }`` block for the ``http { }`` context (e.g. a file in /etc/nginx/conf.d)."""
    prefix = settings.edge_accel_prefix
    if not prefix:
        raise ValueError("set HEATCACHE_EDGE_ACCEL_PREFIX (e.g. /.heatcache/cache/) for the edge and nginx alike")
    root = str(settings.cache_root.resolve()).rstrip("/") + "/"
    edge = f"{settings.edge_host}:{settings.edge_port}"
    return f"""upstream heatcache_edge {{
    server {edge};
    keepalive 64;
}}
server {{
    listen {listen} reuseport;
    # every request goes to the edge: it decides hit (X-Accel-Redirect), pass-through or refusal
    location / {{
        proxy_pass http://heatcache_edge;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_set_header Host $http_host;
        proxy_buffering off;  # misses stream through as they arrive
        proxy_request_buffering off;
        proxy_read_timeout 120s;
    }}
    # only reachable through the edge's X-Accel-Redirect, never from a client's URL
    location {prefix} {{
        internal;
        alias {root};
        sendfile on;
        tcp_nopush on;
        add_header X-Cache HIT always;
    }}
}}
"""


def standalone(settings: Settings, listen: str, workdir: str, worker_processes: str = "1") -> str:
    """A whole nginx.conf around ``server_block`` (tests, the lab): no system paths used."""
    return private_conf(server_block(settings, listen), workdir, worker_processes)


def private_conf(http_body: str, workdir: str, worker_processes: str = "1") -> str:
    """A whole nginx.conf for a root-run nginx that keeps pid, logs and temp files in ``workdir``,
    around ``http_body`` (the http context's directives and servers)."""
    return f"""user root;
worker_processes {worker_processes};
daemon off;
pid {workdir}/nginx.pid;
error_log {workdir}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {workdir}/tmp;
    proxy_temp_path {workdir}/tmp;
    fastcgi_temp_path {workdir}/tmp;
    uwsgi_temp_path {workdir}/tmp;
    scgi_temp_path {workdir}/tmp;
{http_body}}}
"""
