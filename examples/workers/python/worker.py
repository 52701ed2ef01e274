"""An example worker on regent-client: it carries the `charge` step of shop.checkout
(examples/workers/greeting) over the HTTP API, with a worker token.

    pip install ./clients/python
    REGENT_URLS=http://127.0.0.1:8080,http://127.0.0.1:8081 REGENT_TOKEN=rgt_... python3 examples/workers/python/worker.py

SIGTERM or SIGINT shut it down gracefully: running steps finish, then it deregisters.
"""

import logging
import os
import sys

from regent_client import NonRetryable, Worker

urls = [u for u in os.environ.get("REGENT_URLS", "").split(",") if u]
token = os.environ.get("REGENT_TOKEN", "")
if not urls or not token:
    sys.exit("set REGENT_URLS (comma-separated node URLs) and REGENT_TOKEN (a worker token)")

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
worker = Worker(urls, token, lanes=["python"], worker_id="example-python", instance_id=os.environ.get("REGENT_WORKER_NAME"))


@worker.step("charge")
def charge(ctx, order):
    quote = ctx.outputs["quote"]
    if order.get("customer") == "mallory":
        raise NonRetryable("card refused")  # the step fails for good, no retry
    ctx.sleep(0.05)  # the card processor; wakes with Cancelled if the run is cancelled
    ctx.report_cost(quote["price"], unit="cents")
    ctx.logger.info("charged %s %s", quote["price"], quote["currency"])
    return {"charged": quote["price"], "by": worker.instance_id}


worker.install_signal_handlers()
worker.run()
