"""An agent that bootstraps itself: no init container, no file holding a secret zero.

Run in a pod annotated ``cubbyhole.dev/self-bootstrap: "true"`` and selected by an
AgentSecretBinding with ``delivery: Request``; the webhook injects everything read here. The
token stays in memory (cubbyhole renews it while the pod lives); this sample only proves it
works by looking itself up once a minute.
"""

import json
import logging
import os
import sys
import time
import urllib.request

from cubbyhole_agent import CubbyholeError, Endpoint, Refused, Vault, bootstrap

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
log = logging.getLogger("agent")


def main() -> int:
    try:
        token = bootstrap(
            Endpoint.from_env(),
            Vault.from_env(),
            expect_path=os.environ["CUBBYHOLE_EXPECT_PATH"],
        )
    except Refused as e:
        # AlreadyServed, NotSelected, ...: nothing will change by asking again in this run.
        log.error("the operator refused (%s): %s", e.reason, e.message)
        return e.exit_code
    except CubbyholeError as e:
        log.error("no token: %s", e)
        return e.exit_code
    log.info("got %s", token)  # prints the accessor, never the token
    while True:
        request = urllib.request.Request(
            os.environ["VAULT_ADDR"].rstrip("/") + "/v1/auth/token/lookup-self",
            headers={"X-Vault-Token": token.reveal()},
        )
        with urllib.request.urlopen(request, timeout=10) as answer:
            ttl = json.load(answer)["data"]["ttl"]
        log.info("token %s alive, %d s left", token.accessor, ttl)
        time.sleep(60)


if __name__ == "__main__":
    sys.exit(main())
