"""Artifacts through a real S3 server (moto, signatures enforced): upload, verify, pull, serve, and every
way it can go wrong leaving the local artifact as it was."""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
from minio import Minio

from kiln.artifact.remote import ObjectStore, S3Settings
from kiln.artifact.store import ArtifactStore, verify
from kiln.errors import StorageError

from conftest import Served, run_kiln, store_snapshot
from services import start_s3


def s3_client(env: dict[str, str]) -> Minio:
    return Minio(env["KILN_S3_ENDPOINT"], env["KILN_S3_ACCESS_KEY"], env["KILN_S3_SECRET_KEY"], secure=False)


def test_upload_pull_and_serve_from_s3(digits_artifact, digits_program, kiln_env, s3, tmp_path):
    env = {**kiln_env, **s3.env}
    before = store_snapshot(digits_artifact)
    proc = run_kiln(["upload", str(digits_artifact), "s3://models/team"], env)
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((digits_artifact / "manifest.json").read_text())
    remote = proc.stdout.strip()
    assert remote == f"s3://models/team/digits/{manifest['id']}"
    assert manifest["uploads"][-1]["uri"] == remote  # recorded; the artifact's files are untouched
    after = store_snapshot(digits_artifact)
    assert {k: v for k, v in after.items() if k != "manifest.json"} == \
        {k: v for k, v in before.items() if k != "manifest.json"}

    base = f"team/digits/{manifest['id']}/"
    # listed without a prefix: moto with auth rejects signed listings whose prefix has a '/' (seen here)
    keys = {o.object_name[len(base):] for o in s3_client(env).list_objects("models", recursive=True)
            if o.object_name.startswith(base)}
    assert keys == set(manifest["files"]) | {"manifest.json"}
    head = s3_client(env).stat_object("models", base + "model.onnx")
    assert head.metadata["x-amz-meta-sha256"] == manifest["files"]["model.onnx"]

    fresh = tmp_path / "fresh-store"
    proc = run_kiln(["pull", "s3://models/team/digits", "--store", str(fresh)], env)  # newest version of NAME
    assert proc.returncode == 0, proc.stderr
    pulled = Path(proc.stdout.strip())
    assert pulled == fresh / "digits" / manifest["id"]
    assert verify(pulled)[1] == []
    assert (pulled / "model.onnx").read_bytes() == (digits_artifact / "model.onnx").read_bytes()

    # `kiln serve s3://...` pulls into its own (empty) store and serves what it verified
    served_env = {**env, "KILN_STORE": str(tmp_path / "serve-store")}
    server = Served(f"s3://models/team/digits/{manifest['id']}", env=served_env)
    try:
        import kiln
        from kiln.client import connect

        row = np.load(digits_program / "digits.npz")["x_test"][0]
        with connect(server.address) as client:  # message classes by reflection: nothing local needed
            reply = client.predict(pixels=row.tolist())
        want = kiln.load(digits_artifact).run({"pixels": row.reshape(1, 64)})["probabilities"][0]
        np.testing.assert_allclose(reply.probabilities, want, rtol=1e-6, atol=1e-7)
        assert (tmp_path / "serve-store" / "digits" / manifest["id"] / "manifest.json").is_file()
    finally:
        server.stop()


def test_large_files_go_up_in_parts_and_come_back_verified(s3, tmp_path):
    """A 12 MiB module with 5 MiB parts: multipart upload (ETag 'md5-N'), sha256 kept in metadata."""
    from kiln.artifact.manifest import Manifest, ModelInfo, ProgramInfo

    def fill(folder):
        (folder / "model.so").write_bytes(os.urandom(12 * 1024 * 1024))
        return Manifest(name="big", created_at="2026-01-01T00:00:00", model=ModelInfo(path="model.so", sha256="",
                        source_sha256=""), program=ProgramInfo(sha256="", source="-"), target="llvm", inputs=[],
                        outputs=[], dataset="-", candidates=[], selected="tvm", backend="tvm",
                        speedup_vs_baseline=1.0)

    folder = ArtifactStore(tmp_path / "store").publish(fill)
    store = ObjectStore(S3Settings(endpoint=s3.env["KILN_S3_ENDPOINT"], access_key=s3.env["KILN_S3_ACCESS_KEY"],
                                   secret_key=s3.env["KILN_S3_SECRET_KEY"], secure=False, part_size_mb=5))
    remote = store.upload_artifact(folder, "s3://models/parts")
    head = s3_client(s3.env).stat_object("models", remote[len("s3://models/"):] + "/model.so")
    assert head.etag.strip('"').endswith("-3"), head.etag  # 5 + 5 + 2 MiB
    pulled = store.pull_artifact(remote, ArtifactStore(tmp_path / "other"))
    assert verify(pulled)[1] == []


def test_wrong_key_missing_bucket_and_corrupt_object(digits_artifact, kiln_env, s3, tmp_path):
    env = {**kiln_env, **s3.env}
    before = store_snapshot(digits_artifact)

    wrong = run_kiln(["upload", str(digits_artifact), "s3://models/x"], {**env, "KILN_S3_SECRET_KEY": "not-the-key"})
    assert wrong.returncode == 2
    assert "refused the credentials" in wrong.stderr  # HEAD has no body: S3 says AccessDenied, not why
    assert "KILN_S3_SECRET_KEY" in wrong.stderr and "Traceback" not in wrong.stderr

    missing = run_kiln(["upload", str(digits_artifact), "s3://no-such-bucket/x"], env)
    assert missing.returncode == 2
    assert "bucket 'no-such-bucket' does not exist" in missing.stderr and "Traceback" not in missing.stderr
    assert store_snapshot(digits_artifact) == before  # nothing recorded, nothing altered

    unset = run_kiln(["upload", str(digits_artifact), "s3://models/x"],
                     {k: v for k, v in env.items() if not k.startswith("KILN_S3_")})
    assert unset.returncode == 2 and "KILN_S3_ENDPOINT is not set" in unset.stderr

    # a remote object altered after upload: the pull refuses it and the local store gets nothing
    assert run_kiln(["upload", str(digits_artifact), "s3://models/tamper"], env).returncode == 0
    manifest = json.loads((digits_artifact / "manifest.json").read_text())
    s3_client(env).put_object("models", f"tamper/digits/{manifest['id']}/model.onnx", io.BytesIO(b"not onnx"), 8)
    fresh = tmp_path / "fresh"
    bad = run_kiln(["pull", f"s3://models/tamper/digits/{manifest['id']}", "--store", str(fresh)], env)
    assert bad.returncode == 2
    assert "model.onnx does not match the sha256 in its manifest" in bad.stderr
    assert not (fresh / "digits").exists()


def test_stopped_server_is_retried_then_reported(digits_artifact, tmp_path):
    server = start_s3(tmp_path / "s3")
    settings = S3Settings(endpoint=server.address, access_key=server.env["KILN_S3_ACCESS_KEY"],
                          secret_key=server.env["KILN_S3_SECRET_KEY"], secure=False, attempts=3)
    server.stop()
    retries: list[str] = []
    before = store_snapshot(digits_artifact)
    try:
        ObjectStore(settings, on_retry=retries.append).upload_artifact(digits_artifact, "s3://models/x")
    except StorageError as exc:
        assert exc.transient
        assert f"cannot reach http://{server.address}" in exc.message and "after 3 attempts" in exc.message
    else:
        raise AssertionError("upload to a stopped server succeeded")
    assert len(retries) == 2 and "retry 1/2" in retries[0]
    assert store_snapshot(digits_artifact) == before


def test_optimize_a_program_stored_in_s3(digits_program, kiln_env, s3, tmp_path):
    """A program folder (every object below a prefix) and a program archive, both given as s3:// URIs."""
    client = s3_client(s3.env)
    for p in sorted(digits_program.rglob("*")):
        if p.is_file() and "__pycache__" not in p.parts:
            client.fput_object("models", f"programs/digits/{p.relative_to(digits_program)}", str(p))
    shutil.make_archive(str(tmp_path / "digits"), "zip", digits_program)
    client.fput_object("models", "programs/digits.zip", str(tmp_path / "digits.zip"))
    env = {**kiln_env, **s3.env}
    for uri in ("s3://models/programs/digits", "s3://models/programs/digits.zip"):
        proc = run_kiln(["optimize", uri, "--candidates", "onnxruntime", "--json", "--ignore-current"], env)
        assert proc.returncode == 0, proc.stderr
        manifest = json.loads(proc.stdout)
        assert manifest["name"] == "digits" and manifest["program"]["source"] == uri
    missing = run_kiln(["optimize", "s3://models/programs/nothing-here", "--candidates", "onnxruntime"], env)
    assert missing.returncode == 2 and "no program here" in missing.stderr and "Traceback" not in missing.stderr
