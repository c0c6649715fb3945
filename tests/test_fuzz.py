"""Fuzz (issue 18): any value in any field of the request schema gives a valid request or one sentence, and
hostile files (random bytes, a header claiming 100000x100000, a zip bomb) are refused cheaply."""

from __future__ import annotations

import math

import pytest

hypothesis = pytest.importorskip("hypothesis")  # pinned in requirements.lock
from pathlib import Path  # noqa: E402

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from editing.errors import EditingError  # noqa: E402

from .api_helpers import answer, base_values, endpoint_functions, kind, launched_app  # noqa: E402

HOSTILE = st.one_of(
    st.just(math.nan), st.just(math.inf), st.just(-math.inf), st.just(10**30), st.just(-(10**30)), st.just(2**63), st.just(-1), st.just(-0.5),
    st.integers(), st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=40), st.booleans(), st.none(),
    st.lists(st.one_of(st.text(max_size=8), st.integers(), st.floats()), max_size=3), st.just("abc"), st.just("/etc/passwd"), st.just("\u202e\u0000\ud7ff"),
)  # fmt: skip


def _edit_api_parameters() -> list[str]:
    """The /edit API's parameters as the app describes them (its API info), but the clip itself."""
    from ui import build_demo

    parameters = build_demo(default_model="tiny").get_api_info()["named_endpoints"]["/edit"]["parameters"]
    return [p["parameter_name"] for p in parameters if p["parameter_name"] != "video"]


FIELDS = _edit_api_parameters()


def _request(values: dict, video: str, out: str):
    from ui.edit_tab import request_from

    return request_from(values | {"video": video}, out, (".mp4",))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(field=st.sampled_from(FIELDS), value=HOSTILE)
def test_any_value_in_any_field_gives_a_request_or_one_sentence(car, tmp_path, field, value):
    values = {"prompt": "a cat", "model": "tiny", field: value}
    try:
        _request(values, str(car), str(tmp_path))
    except EditingError as exc:
        text = str(exc)
        assert text and "\n" not in text and len(text) < 400, text
    # any other exception fails the test


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(prompt=st.one_of(st.text(max_size=300), st.none(), st.integers(), st.floats()))
def test_any_prompt_gives_a_request_or_one_sentence(car, tmp_path, prompt):
    try:
        _request({"prompt": prompt, "model": "tiny"}, str(car), str(tmp_path))
    except EditingError as exc:
        assert "\n" not in str(exc)


# ---------------------------------------------------------------- issue 32 item 6: every parameter of every endpoint


CASES = {
    "wrong type": lambda p: (
        "abc" if kind(p) in ("number", "bool", "list") else ({"x": 1} if kind(p) == "json" else "x" if kind(p) == "file" else 123)
    ),
    "NaN": lambda p: math.nan,
    "inf": lambda p: math.inf,
    "huge": lambda p: 10**30,
    "negative": lambda p: -1,
    "empty": lambda p: "",
    "missing": None,  # the call stops before this parameter
    "over-long": lambda p: "x" * 100_000,
}


def _one_sentence_naming(message: str, name: str) -> bool:
    import re

    return (
        bool(message)
        and "\n" not in message
        and len(message) < 400
        and re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", message) is not None
    )


@pytest.fixture(scope="module")
def api_app(tmp_path_factory, car):
    """One app on loopback whose backend runs nothing (it answers ACCEPTED once a request is validated)."""
    from ui.serving import LOCAL

    root = tmp_path_factory.mktemp("api")
    with launched_app(root, car, LOCAL) as (demo, video, session):
        yield demo, video, session, root


def test_every_parameter_of_every_endpoint_refuses_a_bad_value_in_one_sentence_naming_it(api_app):
    """Generated from the app's own API description, so a new parameter or endpoint is fuzzed with no edit: each
    parameter gets a wrong type, NaN, infinity, a huge and a negative number, an empty text, a call that stops
    before it, and a 100,000-character text. Each answer is the endpoint's answer to its valid defaults (the
    value was accepted: the test's backend runs nothing) or one sentence naming the parameter; and nothing is written."""
    import time

    demo, video, session, root = api_app
    endpoints = demo.get_api_info()["named_endpoints"]
    functions = endpoint_functions(demo)
    begin, tried, failures = time.perf_counter(), 0, []
    for api_name, endpoint in endpoints.items():
        parameters = endpoint["parameters"]
        base = base_values(parameters, video)
        accepted = {
            answer(demo, functions[api_name], list(base), session) for _ in range(2)
        }  # the first time and again (a session exists then)
        for index, parameter in enumerate(parameters):
            name = parameter["parameter_name"]
            for case, make in CASES.items():
                data = base[:index] if make is None else base[:index] + [make(parameter)] + base[index + 1 :]
                before = _files(root)
                said = answer(demo, functions[api_name], data, session)
                tried += 1
                if said not in accepted and not _one_sentence_naming(said, name):
                    failures.append(f"{api_name} {name} {case}: {said!r}")
                elif said not in accepted and _files(root) != before:
                    failures.append(f"{api_name} {name} {case}: refused, but wrote {sorted(_files(root) - before)}")  # half-made
    seconds = time.perf_counter() - begin
    print(
        f"{len(endpoints)} endpoints, {sum(len(e['parameters']) for e in endpoints.values())} parameters x {len(CASES)} cases = {tried} calls in {seconds:.1f} s"
    )
    assert not failures, "\n".join(failures[:40])
    assert tried >= 8 * 200  # every endpoint's every parameter


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


# ---------------------------------------------------------------- hostile files


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(head=st.integers(min_value=0, max_value=2048), tail=st.binary(max_size=4096))
def test_random_bytes_named_mp4_are_refused_in_one_sentence(car, tmp_path, head, tail):
    """Random bytes, or a real clip's first bytes followed by random ones: a VideoError, never another exception."""
    from editing.config import FrameSelection
    from editing.errors import VideoError
    from editing.video_io import probe, read_clip

    path = tmp_path / "random.mp4"
    path.write_bytes(car.read_bytes()[:head] + tail)
    for read in (probe, lambda p: read_clip(p, FrameSelection(max_frames=2, size=64))):
        try:
            read(path)
        except VideoError as exc:
            assert "\n" not in str(exc) and str(path.parent) not in str(exc)


def _raw_avi_claiming(path, width: int, height: int):
    """A 3-frame 16x16 raw-video AVI whose headers then claim width x height (raw video has no other header)."""
    import struct

    import av
    import numpy as np

    with av.open(str(path), "w", format="avi") as out:
        stream = out.add_stream("rawvideo", rate=10)
        stream.width = stream.height = 16
        stream.pix_fmt = "bgr24"
        for i in range(3):
            frame = av.VideoFrame.from_ndarray(np.zeros((16, 16, 3), np.uint8), format="rgb24")
            frame.pts = i
            out.mux(stream.encode(frame))
    data = bytearray(path.read_bytes())
    strf, avih = data.find(b"strf"), data.find(b"avih")
    data[strf + 12 : strf + 20] = struct.pack("<ii", width, height)  # BITMAPINFOHEADER biWidth, biHeight
    data[avih + 40 : avih + 48] = struct.pack("<II", width, height)  # AVIMAINHEADER dwWidth, dwHeight
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize(("side", "message"), [(100000, "no usable frame size"), (5000, "largest side allowed is 4096")])
def test_a_header_claiming_a_huge_frame_is_refused_before_any_frame_is_decoded(tmp_path, side, message):
    import time

    import av

    from editing.config import FrameSelection
    from editing.errors import VideoError
    from editing.video_io import probe, read_clip

    path = _raw_avi_claiming(tmp_path / "huge.avi", side, side)
    with av.open(str(path)) as container:  # the claim is what FFmpeg reads (or refuses) from the header
        assert container.streams.video[0].codec_context.width in (side, 0)
    begin = time.perf_counter()
    for read in (probe, lambda p: read_clip(p, FrameSelection(max_frames=2, size=64))):
        with pytest.raises(VideoError, match=message):
            read(path)
    assert time.perf_counter() - begin < 5  # refused from the header: no 30 GB frame was ever allocated


def test_a_zip_bomb_is_refused_as_a_session_import_before_unpacking(tmp_path):
    """A 10 MB export whose source unpacks to 2.1 GB (the cap is 2 GB): refused from the declared sizes."""
    import json
    import zipfile

    from editing.sessions import MAX_IMPORT_BYTES, SessionStore

    bomb = tmp_path / "bomb.zip"
    chunk = bytes(16 * 1024 * 1024)
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        archive.writestr("session.json", json.dumps({"name": "bomb", "source": "source.mp4"}))
        with archive.open("source.mp4", "w", force_zip64=True) as member:
            for _ in range(MAX_IMPORT_BYTES // len(chunk) + 8):
                member.write(chunk)
    assert bomb.stat().st_size < 50e6
    root = tmp_path / "sessions"
    with pytest.raises(EditingError, match="unpacks to more than 2 GB"):
        SessionStore(root).import_zip(bomb)
    assert not root.exists() or not [p for p in root.rglob("*") if p.is_file()]


def test_a_zip_member_that_lies_about_its_size_is_refused_and_nothing_is_kept(tmp_path, car):
    """A member declaring 1 kB that inflates to 64 MB: unpacking stops at the declared size and fails its CRC."""
    import json
    import struct
    import zipfile

    from editing.sessions import SessionStore

    liar = tmp_path / "liar.zip"
    with zipfile.ZipFile(liar, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("session.json", json.dumps({"name": "liar", "source": "source.mp4"}))
        archive.writestr("source.mp4", bytes(64 * 1024 * 1024))
    data = bytearray(liar.read_bytes())
    for signature, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):  # local header, central directory
        start = 0
        while (start := data.find(signature, start)) >= 0:
            name_length = struct.unpack(
                "<H",
                data[start + offset + 4 : start + offset + 6] if signature == b"PK\x03\x04" else data[start + 28 : start + 30],
            )[0]
            name_start = start + (30 if signature == b"PK\x03\x04" else 46)
            if data[name_start : name_start + name_length] == b"source.mp4":
                data[start + offset : start + offset + 4] = struct.pack("<I", 1000)  # uncompressed size
            start += 4
    liar.write_bytes(bytes(data))
    with zipfile.ZipFile(liar) as archive:
        assert archive.getinfo("source.mp4").file_size == 1000
    root = tmp_path / "sessions"
    with pytest.raises(EditingError, match="damaged|not a readable video|truncated|corrupt"):
        SessionStore(root).import_zip(liar)
    assert not root.exists() or not [p for p in root.rglob("*") if p.is_file()]
