"""RerankClient without a server: requests sized by the served max_batch_size, unreachable servers, CLI errors."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from serving_data import ports

from serving import cli, layout
from serving.client import RerankClient, RerankError


class FakeTriton:
    """Stands in for tritonclient's InferenceServerClient: a model config and an echoing infer()."""

    def __init__(self, protocol: str, max_batch_size: int):
        self.protocol, self.max_batch_size = protocol, max_batch_size
        self.config_reads, self.request_rows, self.scored = 0, [], 0

    def get_model_config(self, model, model_version="", **kwargs):
        self.config_reads += 1
        if self.protocol == "http":
            return {"name": model, "max_batch_size": self.max_batch_size}
        return SimpleNamespace(config=SimpleNamespace(name=model, max_batch_size=self.max_batch_size))

    def infer(self, model, inputs, model_version="", outputs=None, **kwargs):
        rows = inputs[0].shape()[0]
        if self.max_batch_size and rows > self.max_batch_size:
            raise AssertionError(f"{rows} rows sent to a model with max_batch_size {self.max_batch_size}")
        self.request_rows.append(rows)
        scores = np.arange(self.scored, self.scored + rows, dtype=np.float32).reshape(-1, 1)
        self.scored += rows
        response = {"model_version": "3"} if self.protocol == "http" else SimpleNamespace(model_version="3")
        return SimpleNamespace(get_response=lambda: response, as_numpy=lambda name: scores)

    def close(self):
        pass


def fake_client(protocol: str, max_batch_size: int, **kwargs) -> tuple[RerankClient, FakeTriton]:
    client = RerankClient("127.0.0.1:1", protocol=protocol, **kwargs)
    client._client = FakeTriton(protocol, max_batch_size)
    return client, client._client


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_requests_follow_the_served_max_batch_size(protocol):
    client, server = fake_client(protocol, max_batch_size=64)
    products = [f"product {i}" for i in range(150)]
    scores = client.score(["q"] * 150, products)
    assert server.request_rows == [64, 64, 22] and client.last_version == "3"
    np.testing.assert_array_equal(scores, np.arange(150, dtype=np.float32))  # input order kept
    client.rerank("q", products[:10])
    assert server.config_reads == 1 and server.request_rows[-1] == 10  # the config is read once


def test_max_batch_can_only_lower_the_served_limit():
    client, server = fake_client("grpc", max_batch_size=64, max_batch=50)
    client.score(["q"] * 120, ["p"] * 120)
    assert server.request_rows == [50, 50, 20]
    client, server = fake_client("http", max_batch_size=16, max_batch=512)
    client.score(["q"] * 40, ["p"] * 40)
    assert server.request_rows == [16, 16, 8]
    with pytest.raises(ValueError, match="max_batch"):
        RerankClient("127.0.0.1:1", max_batch=0)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_unreachable_server_is_a_rerank_error(protocol):
    url = f"127.0.0.1:{ports()['grpc_port']}"  # free: nothing listens there
    with RerankClient(url, protocol=protocol, timeout_s=10) as client, pytest.raises(RerankError, match=url):
        client.rerank("q", ["p"])
    with RerankClient(url, protocol=protocol, timeout_s=10, max_batch=8) as client:
        client._served_max_batch = 512  # past the config read: infer() itself meets the closed port
        with pytest.raises(RerankError, match=url):
            client.score(["q"], ["p"])


def test_rerank_cli_reports_an_unreachable_server(tmp_path, capsys):
    products = tmp_path / "products.txt"
    products.write_text("drill\nlamp\n")
    url = f"127.0.0.1:{ports()['http_port']}"
    code = cli.main(["rerank", "--query", "q", "--products", str(products), "--url", url, "--protocol", "http",
                     "--timeout", "10", "--model", layout.DEFAULT_MODEL_NAME])
    err = capsys.readouterr().err
    assert code == 2 and f"kdrank rerank: error: {layout.DEFAULT_MODEL_NAME} at {url} (http)" in err
    assert "Traceback" not in err
