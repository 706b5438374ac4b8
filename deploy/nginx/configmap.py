"""Print deploy/k8s/nginx-configmap.yaml from deploy/nginx/nginx.conf (one source of truth):

    python3 deploy/nginx/configmap.py > deploy/k8s/nginx-configmap.yaml
"""

from __future__ import annotations

import sys
from pathlib import Path

HEADER = """# Generated from deploy/nginx/nginx.conf (tests/test_nginx_sidecar.py checks they are the same):
#   python3 deploy/nginx/configmap.py > deploy/k8s/nginx-configmap.yaml
apiVersion: v1
kind: ConfigMap
metadata:
  name: legpain-cds-nginx
  labels:
    app.kubernetes.io/name: legpain-cds
    app.kubernetes.io/component: proxy
    app.kubernetes.io/part-of: legpain-cds
data:
  nginx.conf: |
"""


def render(conf: str) -> str:
    return HEADER + "".join(("    " + line if line.strip() else "") + "\n" for line in conf.splitlines())


if __name__ == "__main__":
    sys.stdout.write(render((Path(__file__).resolve().parent / "nginx.conf").read_text()))
