"""Rerank client: one query and its candidate products in one Triton request, ordered by score.

Talks to the repository's ensemble over gRPC (default) or HTTP with tritonclient, sending raw UTF-8
text (QUERY and PRODUCT as [n, 1] BYTES tensors) and reading SCORE back with the model version that
produced it; optionally records every scored request with a `RequestLogger` for monitoring.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import numpy as np

from serving import layout
from serving.requestlog import RequestLogger, rank_order

log = logging.getLogger(__name__)

PROTOCOLS = ("grpc", "http")
DEFAULT_URLS = {"grpc": "127.0.0.1:8001", "http": "127.0.0.1:8000"}


class RerankError(RuntimeError):
    """The server refused or failed the request; the message is the server's."""


def text_tensor(values: Sequence[str | bytes]) -> np.ndarray:
    """[n, 1] object array of UTF-8 bytes, the layout of a TYPE_STRING input with dims [1]."""
    return np.array([[v if isinstance(v, bytes) else str(v).encode("utf-8")] for v in values], dtype=object)


class RerankClient:
    """Scores (query, product) pairs through the Triton ensemble `model`; use `.rerank()`.

    Requests carry at most the served model's max_batch_size pairs (read once from its config);
    `max_batch` can lower that. Server errors and an unreachable server raise `RerankError`.
    """

    def __init__(self, url: str | None = None, *, protocol: str = "grpc",
                 model: str = layout.DEFAULT_MODEL_NAME, model_version: str = "", timeout_s: float = 60.0,
                 max_batch: int | None = None, logger: RequestLogger | None = None):
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
        if max_batch is not None and max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.protocol, self.model, self.model_version = protocol, model, str(model_version)
        self.url = url or DEFAULT_URLS[protocol]
        self.timeout_s, self.max_batch, self.logger = timeout_s, max_batch, logger
        self._served_max_batch: int | None = None
        if protocol == "grpc":
            import tritonclient.grpc as triton
        else:
            import tritonclient.http as triton
        self._triton = triton
        kwargs = {"network_timeout": timeout_s, "connection_timeout": timeout_s} if protocol == "http" else {}
        self._client = triton.InferenceServerClient(self.url, **kwargs)
        self.last_version: str | None = None

    def is_ready(self) -> bool:
        try:
            return bool(self._client.is_server_ready() and self._client.is_model_ready(self.model))
        except Exception:  # noqa: BLE001 - unreachable counts as not ready
            return False

    def _where(self) -> str:
        return f"{self.model} at {self.url} ({self.protocol})"

    def served_max_batch(self) -> int:
        """The served model's max_batch_size (read once from its config): the most pairs per request."""
        if self._served_max_batch is None:
            from tritonclient.utils import InferenceServerException

            kwargs = {"client_timeout": self.timeout_s} if self.protocol == "grpc" else {}
            try:
                config = self._client.get_model_config(self.model, model_version=self.model_version, **kwargs)
            except InferenceServerException as err:
                raise RerankError(f"{self._where()}: {err.message()}") from err
            except OSError as err:  # http: refused, reset, timed out
                raise RerankError(f"{self._where()}: cannot reach the server: {err}") from err
            config = config.config if self.protocol == "grpc" else config
            size = config.max_batch_size if self.protocol == "grpc" else config.get("max_batch_size", 0)
            self._served_max_batch = int(size)
        return self._served_max_batch

    def batch_limit(self) -> int | None:
        """Pairs per request: the served max_batch_size, capped by `max_batch` (None: no limit)."""
        served = self.served_max_batch() or None  # 0: the model does not batch, so no row limit
        return min(filter(None, (served, self.max_batch)), default=None)

    def _infer(self, queries: Sequence[str | bytes],
               products: Sequence[str | bytes]) -> tuple[np.ndarray, str]:
        from tritonclient.utils import InferenceServerException

        inputs = []
        for name, values in ((layout.QUERY, queries), (layout.PRODUCT, products)):
            tensor = text_tensor(values)
            inputs.append(self._triton.InferInput(name, list(tensor.shape), "BYTES"))
            inputs[-1].set_data_from_numpy(tensor)
        outputs = [self._triton.InferRequestedOutput(layout.SCORE)]
        kwargs = {"client_timeout": self.timeout_s} if self.protocol == "grpc" else {}
        try:
            result = self._client.infer(self.model, inputs, model_version=self.model_version, outputs=outputs,
                                        **kwargs)
        except InferenceServerException as err:
            raise RerankError(f"{self._where()}: {err.message()}") from err
        except OSError as err:  # http: refused, reset, timed out (gRPC reports these as the exception above)
            raise RerankError(f"{self._where()}: cannot reach the server: {err}") from err
        response = result.get_response()
        version = response.model_version if self.protocol == "grpc" else response["model_version"]
        return result.as_numpy(layout.SCORE).reshape(-1).astype(np.float32), str(version)

    def score(self, queries: Sequence[str], products: Sequence[str]) -> np.ndarray:
        """Raw scores for aligned queries and products, in input order (requests of at most `batch_limit()`
        pairs)."""
        if len(queries) != len(products):
            raise ValueError(f"{len(queries)} queries but {len(products)} products")
        if not len(products):
            return np.zeros(0, dtype=np.float32)
        step = self.batch_limit() or len(products)
        parts = []
        for start in range(0, len(products), step):
            scores, self.last_version = self._infer(queries[start:start + step], products[start:start + step])
            parts.append(scores)
        return np.concatenate(parts)

    def rerank(self, query: str, products: Sequence[str], *,
               product_ids: Sequence[str] | None = None) -> list[tuple[str, float]]:
        """`products` as (product, score), best first (ties keep input order); logs the request if asked."""
        products = list(products)
        if products:
            self.batch_limit()  # the config is read once, outside the request's latency
        began = time.perf_counter()
        scores = self.score([query] * len(products), products)
        latency_ms = (time.perf_counter() - began) * 1000
        if self.logger is not None and products:
            self.logger.log(query, products, scores, model_name=self.model,
                            model_version=self.last_version or "", product_ids=product_ids,
                            latency_ms=latency_ms)
        order = rank_order(scores)
        return [(products[i], float(scores[i])) for i in order]

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> RerankClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
