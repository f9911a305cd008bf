"""The quiescer extra-artifact hook: a quiescer's ``artifacts()`` are stored through the target
after release, recorded in its manifest record with a unique ``restore_dir``, and verified with
the backup; a failing ``artifacts()`` fails the run and leaves no backup."""

import contextlib
import io
import tarfile

import pytest

from snapagent import verify
from snapagent.errors import OperationFailed
from snapagent.plugin.quiescer import ExtraArtifact
from tests.helpers.fakeplugins import EVENTS, FakeQ


def tar_of(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


class ExtraQ(FakeQ):
    def artifacts(self):
        EVENTS.append(f"artifacts {self.cfg['n']}")
        if self.cfg.get("fail_extra"):
            raise OperationFailed("no WAL")
        return [ExtraArtifact("v1", lambda: contextlib.nullcontext(io.BytesIO(tar_of({"seg": b"x" * 100}))))]


@pytest.fixture
def extra_run(make_run, monkeypatch):
    def make(quiescers):
        run, cfg, undone = make_run(quiescers)
        run.quiescers = [ExtraQ(q, run.ctx) for q in quiescers]
        return run, cfg
    return make


def test_extra_artifact_stored_recorded_and_verified(extra_run):
    run, cfg = extra_run([{"n": "a"}])
    m = run.run().manifest
    assert EVENTS.index("release a") < EVENTS.index("artifacts a") < EVENTS.index("release /v1")
    rec = m.quiescers[0].artifacts[0]
    assert rec.name == "v1" and rec.format == "tar" and rec.artifact.startswith("q00-fakeq-v1.tar")
    labels = [v.label for v in m.volumes]
    assert rec.restore_dir not in labels  # unique next to the volume labels
    target = cfg.target("local")
    stored = target.get(m.id)
    results = verify.check(stored)  # the fake volumes are not tar; the extra is checked like them
    assert [r.name for r in results][-1] == rec.artifact and all(r.ok for r in results)
    path = next(p for p in (cfg.targets["local"][1].path / "app" / m.id).iterdir() if p.name == rec.artifact)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    assert not verify.check(target.get(m.id))[-1].ok


def test_failing_extra_fails_the_run_and_stores_nothing(extra_run):
    run, cfg = extra_run([{"n": "a", "fail_extra": True}])
    with pytest.raises(OperationFailed, match="no WAL"):
        run.run()
    assert cfg.target("local").list() == []
