"""`helm test`: the operator answers on its health endpoint, and the API server serves the MLWorkflow CRD.

Run by the test Pod with `python -c`; it needs only the standard library. HEALTH_URL names the endpoint;
the API server and the credentials are the Pod's own (KUBERNETES_SERVICE_HOST/PORT, the ServiceAccount
token; discovery is open to every authenticated account, so no RBAC rule is needed).
"""

import json
import os
import ssl
import sys
import urllib.request

SERVICE_ACCOUNT = os.environ.get("SERVICE_ACCOUNT_DIR", "/var/run/secrets/kubernetes.io/serviceaccount")


def main() -> int:
    health = os.environ["HEALTH_URL"]
    try:
        with urllib.request.urlopen(health, timeout=10) as answer:
            print(f"{health}: {answer.status}")
    except OSError as error:
        print(f"FAIL: the operator's health endpoint {health} did not answer: {error}")
        return 1
    host, port = os.environ["KUBERNETES_SERVICE_HOST"], os.environ["KUBERNETES_SERVICE_PORT"]
    host = f"[{host}]" if ":" in host else host
    url = f"https://{host}:{port}/apis/mlworkflow.io/v1alpha1"
    with open(os.path.join(SERVICE_ACCOUNT, "token")) as token_file:
        token = token_file.read().strip()
    context = ssl.create_default_context(cafile=os.path.join(SERVICE_ACCOUNT, "ca.crt"))
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, context=context, timeout=10) as answer:
            resources = {r["name"] for r in json.load(answer)["resources"]}
    except OSError as error:
        print(f"FAIL: {url}: {error}")
        return 1
    if not {"mlworkflows", "mlworkflows/status"} <= resources:
        print(f"FAIL: {url} serves {sorted(resources)}, not mlworkflows and its status")
        return 1
    print(f"{url}: mlworkflows served")
    return 0


sys.exit(main())
