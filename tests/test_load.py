"""Load (issue 18): 8 concurrent clients x 3 edits with the tiny model, on loopback, bounded in count and
time. Marked `load` (about 2 minutes on 2 cores): run with `python -m pytest -m load`."""

from __future__ import annotations

import concurrent.futures
import socket
import zipfile

import numpy as np
import psutil
import pytest

pytestmark = pytest.mark.load

CLIENTS, EDITS = 8, 3


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _frames(path: str) -> np.ndarray:
    from PIL import Image

    with zipfile.ZipFile(path) as archive:
        names = sorted(n for n in archive.namelist() if n.endswith(".png"))
        return np.stack([np.asarray(Image.open(archive.open(n)).convert("RGB")) for n in names])


def _edit(client, video, number: int) -> np.ndarray:
    from gradio_client import handle_file

    outputs = client.predict(
        video=handle_file(video),
        prompt=f"edit number {number}",
        model="tiny",
        frames=2,
        size=64,
        steps=1,
        seed=number,
        api_name="/edit",
    )
    return _frames(outputs[2])  # the PNG zip: the exact frames


@pytest.fixture(scope="module")
def served():
    from ui import build_demo

    demo = build_demo(default_model="tiny")
    port = _free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        yield f"http://127.0.0.1:{port}/", demo
    finally:
        demo.close()


def test_concurrent_clients_get_their_own_edits_and_memory_stays_flat(served, car):
    from gradio_client import Client

    url, _ = served
    first = Client(url, verbose=False)
    _edit(first, str(car), 999)  # warm up: the model is loaded and cached after this
    rss_after_first = psutil.Process().memory_info().rss

    def client_run(index: int) -> dict[int, np.ndarray]:
        client = Client(url, verbose=False)
        return {index * EDITS + j: _edit(client, str(car), index * EDITS + j) for j in range(EDITS)}

    with concurrent.futures.ThreadPoolExecutor(CLIENTS) as pool:
        results = {}
        for part in pool.map(client_run, range(CLIENTS), timeout=900):
            results |= part
    rss_after_run = psutil.Process().memory_info().rss
    assert len(results) == CLIENTS * EDITS
    # No mix-ups: each output equals its sequential rerun, and different requests made different frames.
    for number in (0, 7, 13, 23):
        assert np.array_equal(results[number], _edit(first, str(car), number)), number
    assert not np.array_equal(results[0], results[1])
    assert rss_after_run <= 1.10 * rss_after_first, (rss_after_first, rss_after_run)


def test_a_full_queue_refuses_the_jobs_beyond_it_with_its_message(served, car):
    from gradio_client import Client, handle_file

    from ui.layout import QUEUE_SIZE

    url, _ = served
    client = Client(url, verbose=False)
    jobs = [
        client.submit(
            video=handle_file(str(car)), prompt=f"queued {i}", model="tiny", frames=2, size=64, steps=1, seed=i, api_name="/edit"
        )
        for i in range(QUEUE_SIZE + 8)
    ]
    refusals = []
    for job in jobs:
        try:
            job.result(timeout=900)
        except Exception as exc:  # the queue's refusal reaches the client as an error
            refusals.append(" ".join(str(exc).split()))
    assert refusals, "no job was refused although more were sent than the queue holds"
    assert all("Queue is full" in text and str(QUEUE_SIZE) in text for text in refusals), refusals[:3]  # Gradio's own message
