"""The real tritonserver on the tiny exported student: HTTP and gRPC, parity, malformed requests, CLI."""

from __future__ import annotations

import json
import socket
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from serving_data import NON_ASCII, make_pairs, ports, start_server
from tritonclient.utils import InferenceServerException

from serving import cli, layout
from serving.client import RerankClient, RerankError, text_tensor
from serving.requestlog import read_request_log
from serving.server import ServerConfig, ServerError, TritonServer

PROTOCOLS = {"grpc": grpcclient, "http": httpclient}


def url(server, protocol: str) -> str:
    return server.grpc_url if protocol == "grpc" else server.http_url


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_server_is_ready_and_reranks(triton_server, reference_scorer, protocol):
    products = ["cordless drill 18 volt kit", "garden hose 50 ft", "drill bit set", "Küchenarmatur Edelstahl"]
    with RerankClient(url(triton_server, protocol), protocol=protocol) as client:
        assert client.is_ready()
        ranked = client.rerank("cordless drill", products)
        assert client.last_version == "1"
    expected = reference_scorer.score(["cordless drill"] * len(products), products, progress=False).score
    # the reference scores are far enough apart that the served ones (within 1e-4) rank the same way
    assert np.diff(np.sort(expected)).min() > 1e-3
    order = np.argsort(-np.asarray(expected, dtype=np.float64), kind="stable")  # serving.requestlog.rank_order
    assert [p for p, _ in ranked] == [products[i] for i in order]
    np.testing.assert_allclose([s for _, s in ranked], np.asarray(expected)[order], atol=1e-4, rtol=0)


def test_parity_with_pytorch_on_1000_pairs(triton_server, reference_scorer):
    """1,000 pairs in requests of mixed sizes, sent concurrently so the batcher merges unequal widths."""
    queries, products = make_pairs(1000, seed=11)
    expected = reference_scorer.score(queries, products, progress=False).score
    sizes = [1, 7, 50, 100, 3, 200, 13, 64, 2, 31]
    chunks, start = [], 0
    while start < len(queries):
        size = sizes[len(chunks) % len(sizes)]
        chunks.append((start, min(start + size, len(queries))))
        start += size

    def send(chunk: tuple[int, int]) -> np.ndarray:
        a, b = chunk
        protocol = "grpc" if a % 2 == 0 else "http"
        with RerankClient(url(triton_server, protocol), protocol=protocol) as client:
            return client.score(queries[a:b], products[a:b])

    with ThreadPoolExecutor(max_workers=6) as pool:
        got = np.concatenate(list(pool.map(send, chunks)))
    assert got.dtype == np.float32 and got.shape == (1000,)
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
    assert np.std(expected) > 0.1


def _good_request_still_served(server, protocol, reference_scorer):
    with RerankClient(url(server, protocol), protocol=protocol) as client:
        got = client.score(["lamp"], ["led bulb warm white"])
    expected = reference_scorer.score(["lamp"], ["led bulb warm white"], progress=False).score
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


def _bytes_input(module, name: str, values: np.ndarray):
    tensor = module.InferInput(name, list(values.shape), "BYTES")
    tensor.set_data_from_numpy(values)
    return tensor


def _malformed(module, case: str) -> list:
    good = text_tensor(["drill"])
    if case == "wrong_dtype":
        query = module.InferInput(layout.QUERY, [1, 1], "INT32")
        query.set_data_from_numpy(np.array([[7]], dtype=np.int32))
        return [query, _bytes_input(module, layout.PRODUCT, good)]
    if case == "wrong_shape":
        pair = np.array([[b"a", b"b"]], dtype=object)
        return [_bytes_input(module, layout.QUERY, pair), _bytes_input(module, layout.PRODUCT, pair)]
    if case == "empty_batch":
        empty = np.zeros((0, 1), dtype=object)
        return [_bytes_input(module, layout.QUERY, empty), _bytes_input(module, layout.PRODUCT, empty)]
    if case == "missing_input":
        return [_bytes_input(module, layout.QUERY, good)]
    if case == "row_mismatch":
        return [_bytes_input(module, layout.QUERY, text_tensor(["a", "b"])),
                _bytes_input(module, layout.PRODUCT, text_tensor(["a", "b", "c"]))]
    if case == "very_long_text":
        return [_bytes_input(module, layout.QUERY, good),
                _bytes_input(module, layout.PRODUCT, text_tensor(["cordless drill " * 400]))]
    if case == "invalid_utf8":
        return [_bytes_input(module, layout.QUERY, good),
                _bytes_input(module, layout.PRODUCT, np.array([[b"caf\xe9 \xff\xfe"]], dtype=object))]
    raise AssertionError(case)


EXPECTED_MESSAGES = {  # Triton's own checks, then the tokenizer model's
    "wrong_dtype": "data-type is 'INT32'", "wrong_shape": "unexpected shape", "empty_batch": "got 0",
    "missing_input": "missing required input", "row_mismatch": "batch size does not match",
    "very_long_text": "max_text_chars", "invalid_utf8": "not valid UTF-8",
}


@pytest.mark.parametrize("protocol", ["grpc", "http"])
@pytest.mark.parametrize("case", ["wrong_dtype", "wrong_shape", "empty_batch", "missing_input",
                                  "row_mismatch", "very_long_text", "invalid_utf8"])
def test_malformed_request_gets_an_error_and_server_keeps_serving(triton_server, reference_scorer, protocol,
                                                                   case):
    module = PROTOCOLS[protocol]
    client = module.InferenceServerClient(url(triton_server, protocol))
    try:
        with pytest.raises(InferenceServerException) as err:
            client.infer(layout.DEFAULT_MODEL_NAME, _malformed(module, case))
    finally:
        client.close()
    assert EXPECTED_MESSAGES[case] in err.value.message()
    assert triton_server.is_alive()
    _good_request_still_served(triton_server, protocol, reference_scorer)


def test_tokenizer_model_pads_to_a_multiple_with_masked_columns(triton_server, reference_scorer):
    """The production tokenizer setting (pad_multiple 16): encode_pairs' ids, then masked padding."""
    from components import pairs

    client = grpcclient.InferenceServerClient(triton_server.grpc_url)
    queries, products = ["drill", "lamp"], ["cordless drill 18 volt", "led"]
    inputs = [_bytes_input(grpcclient, layout.QUERY, text_tensor(queries)),
              _bytes_input(grpcclient, layout.PRODUCT, text_tensor(products))]
    result = client.infer(layout.tokenizer_model(layout.DEFAULT_MODEL_NAME), inputs)
    client.close()
    expected = pairs.encode_pairs(reference_scorer.members[0][0], queries, products, role="student",
                                  max_length=64, return_tensors="np")
    ids, mask = result.as_numpy("input_ids"), result.as_numpy("attention_mask")
    width = expected["input_ids"].shape[1]
    assert ids.shape == (2, 16) and width < 16
    np.testing.assert_array_equal(ids[:, :width], expected["input_ids"])
    np.testing.assert_array_equal(mask[:, :width], expected["attention_mask"])
    assert not mask[:, width:].any()


def test_client_error_names_the_server_reason(triton_server):
    with RerankClient(triton_server.grpc_url) as client, pytest.raises(RerankError, match="not valid UTF-8"):
        client.score(["q"], [b"\xff"])
    with RerankClient(triton_server.http_url, protocol="http", model="no_such_model") as client, \
            pytest.raises(RerankError, match="no_such_model"):
        client.rerank("q", ["p"])


def test_rerank_cli_prints_ranking_and_logs_requests(triton_server, reference_scorer, tmp_path, capsys):
    products = ["led bulb 60 w", "oak table", NON_ASCII[2], "lamp shade white"]
    product_file = tmp_path / "products.txt"
    product_file.write_text("\n".join(products) + "\n\n", encoding="utf-8")
    log_dir = tmp_path / "log"
    argv = ["rerank", "--query", "lamp", "--products", str(product_file), "--url", triton_server.http_url,
            "--protocol", "http", "--log", str(log_dir), "--log-format", "parquet", "--json"]
    assert cli.main(argv) == 0
    ranked = json.loads(capsys.readouterr().out)
    expected = reference_scorer.score(["lamp"] * 4, products, progress=False).score
    assert [r["product"] for r in ranked] == [products[i] for i in np.argsort(-expected, kind="stable")]
    logged = read_request_log(str(log_dir))
    assert len(logged) == 4 and set(logged["product_text"]) == set(products)
    assert set(logged["model_version"]) == {"1"} and set(logged["model_name"]) == {layout.DEFAULT_MODEL_NAME}
    np.testing.assert_allclose(logged.sort_values("rank")["score"], [r["score"] for r in ranked], atol=1e-6)
    assert logged["request_id"].nunique() == 1 and (logged["latency_ms"] > 0).all()


def test_rerank_cli_prints_the_ranking_when_the_log_sink_fails(triton_server, tmp_path, capsys):
    products = ["led bulb 60 w", "oak table", "lamp shade white"]
    product_file = tmp_path / "products.txt"
    product_file.write_text("\n".join(products) + "\n", encoding="utf-8")
    (tmp_path / "blocker").write_text("a file, not a directory")
    sink = tmp_path / "blocker" / "log"
    argv = ["rerank", "--query", "lamp", "--products", str(product_file), "--url", triton_server.grpc_url,
            "--log", str(sink), "--json"]
    assert cli.main(argv) == 2
    out, err = capsys.readouterr()
    assert sorted(r["product"] for r in json.loads(out)) == sorted(products)  # the result is not lost
    assert f"kdrank rerank: error: request log {sink}: could not write 3 rows" in err and "Traceback" not in err


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_client_reads_max_batch_size_from_the_served_config(triton_server, exported_repo, protocol):
    with RerankClient(url(triton_server, protocol), protocol=protocol) as client:
        assert client.served_max_batch() == exported_repo[1]["serving_options"]["max_batch_size"] == 512
        assert client.batch_limit() == 512
    with RerankClient(url(triton_server, protocol), protocol=protocol, max_batch=100) as client:
        assert client.batch_limit() == 100


def _successful_requests(server) -> float:
    """The ensemble's nv_inference_request_success counter, summed over its versions."""
    import urllib.request

    with urllib.request.urlopen(server.metrics_url, timeout=10) as response:
        text = response.read().decode()
    counts = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
              if line.startswith('nv_inference_request_success{model="kdrank_student",')]
    assert counts, f"no nv_inference_request_success line for kdrank_student in:\n{text}"
    return sum(counts)


def test_metrics_endpoint_counts_inferences(triton_server):
    """One rerank request is one more successful inference on the ensemble (read around our own request:
    the server is shared with the other tests)."""
    import time

    before = _successful_requests(triton_server)
    with RerankClient(triton_server.grpc_url) as client:
        assert len(client.rerank("drill", ["cordless drill", "garden hose"])) == 2
    # the response may reach us a moment before Triton counts the request: wait for the count to move
    after, deadline = _successful_requests(triton_server), time.monotonic() + 10
    while after == before and time.monotonic() < deadline:
        time.sleep(0.05)
        after = _successful_requests(triton_server)
    assert after - before == 1


def test_port_in_use_is_a_clear_error(exported_repo):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        taken = sock.getsockname()[1]
        config = ServerConfig(repository=exported_repo[0], **{**ports(), "grpc_port": taken})
        with pytest.raises(ServerError, match=f"grpc port {taken} .* already in use"):
            TritonServer(config).start()


def test_missing_repository_is_a_clear_error(tmp_path):
    with pytest.raises(ServerError, match="holds no model"):
        TritonServer(ServerConfig(repository=str(tmp_path), **ports())).start()


@pytest.mark.slow
def test_model_that_fails_to_load_stops_startup_with_its_error(exported_repo, tmp_path):
    import shutil

    repo = tmp_path / "broken"
    shutil.copytree(Path(exported_repo[0], layout.LOCAL), repo)
    Path(repo, layout.scorer_model(layout.DEFAULT_MODEL_NAME), "1", layout.ONNX_FILE).write_bytes(b"not onnx")
    with pytest.raises(ServerError, match="kdrank_student_onnx") as err:
        start_server(str(repo)).stop()
    assert "failed to load" in str(err.value) or "UNAVAILABLE" in str(err.value)
    kept = str(err.value).rsplit("(full log: ", 1)[1].rstrip(")")
    assert "kdrank_student_onnx" in Path(kept).read_text()  # the log outlives the failed server
    Path(kept).unlink()
