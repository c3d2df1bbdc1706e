"""`python -m tests.pipeline.worker_process`: one arq worker as an OS process, built exactly as
`fhir-gateway worker` builds it (our worker_settings over open_services, settings from the
environment), with the test's JobTuning (harness.FAST: short timeouts, so that the job of a
worker killed with SIGKILL comes back within seconds instead of job_timeout + 10 s = 310 s)."""

from __future__ import annotations

import json
import logging
import os

from arq.worker import Worker

from fhir_gateway.config import Settings
from fhir_gateway.jobs.tasks import JobTuning
from fhir_gateway.jobs.worker import worker_settings
from fhir_gateway.services import open_services
from tests.pipeline.harness import FAST, SWEEP_EVERY_SECONDS, TUNING_VARIABLE, with_sweep_every


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    settings = Settings.from_env()
    raw = os.environ.get(TUNING_VARIABLE)
    tuning = JobTuning(**json.loads(raw)) if raw else FAST
    options = worker_settings(settings, open_services, tuning=tuning)
    Worker(**with_sweep_every(options, SWEEP_EVERY_SECONDS), poll_delay=0.05).run()


if __name__ == "__main__":
    main()
