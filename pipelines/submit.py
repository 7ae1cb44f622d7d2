"""Upload the compiled training pipeline to a Kubeflow Pipelines endpoint and start a run."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

TOKEN_ENV = "KDRANK_KFP_TOKEN"


@dataclass(frozen=True)
class SubmitOptions:
    """Where and how a run starts; `arguments` override the compiled parameter defaults."""

    host: str
    experiment: str = "kdrank"
    run_name: str | None = None
    namespace: str | None = None
    pipeline_root: str | None = None  # e.g. gs://bucket/kdrank; None = the cluster's default
    enable_caching: bool | None = None  # None = as compiled (every step cached); False = rerun everything
    service_account: str | None = None
    arguments: dict = field(default_factory=dict)

    def __post_init__(self):
        if not self.host.startswith(("http://", "https://")):
            raise ValueError(f"host must be the http(s) URL of a Kubeflow Pipelines API, got '{self.host}'")


def submit(options: SubmitOptions, package: str) -> str:
    """Start a run of the compiled `package` (a path or gs:// URI) at `options.host`; returns the run id."""
    import kfp
    import kfp_server_api
    from urllib3.exceptions import HTTPError

    from components import storage

    with storage.local_file(package) as local:
        try:
            client = kfp.Client(host=options.host, namespace=options.namespace or "kubeflow",
                                existing_token=os.environ.get(TOKEN_ENV) or None)
            result = client.create_run_from_pipeline_package(
                local, arguments=options.arguments, run_name=options.run_name,
                experiment_name=options.experiment, namespace=options.namespace,
                pipeline_root=options.pipeline_root, enable_caching=options.enable_caching,
                service_account=options.service_account,
            )
        except (HTTPError, kfp_server_api.ApiException) as err:
            raise RuntimeError(f"Kubeflow Pipelines at {options.host} refused the run or is unreachable "
                               f"(token from ${TOKEN_ENV} when it needs one): {err}") from err
    log.info("started run %s at %s", result.run_id, options.host)
    return str(result.run_id)
