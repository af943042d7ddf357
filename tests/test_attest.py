"""Signed attestations (`prune-audit attest`): DSSE + in-toto Statement v1 over a real tiny run's artifacts."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import audit
from audit.attest import PAYLOAD_TYPE, PREDICATE_TYPE, STATEMENT_TYPE, pae
from audit.attest_verify import is_sha256, verify_signature
from audit.cli import main
from audit.results import load_results

ROOT = Path(__file__).resolve().parent.parent
VARIANT = "magnitude-s0.50-seed1"


CHECKPOINT_FILES = ("config.json", "model.safetensors", "special_tokens_map.json", "tokenizer.json", "vocab.txt")
VARIANT_FILES = (*CHECKPOINT_FILES, "deploy.json", "tokenizer_config.json")
"""What a tiny run writes (its checkpoint; ``variants/<id>/`` with ``deploy.save_variants: true``)."""


@pytest.fixture(scope="module")
def audited(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A judged run as ``run`` leaves it: results.json, report and model card, a saved variant, the
    checkpoint it audited (fingerprinted as the loader does), the policy file, and two key pairs.

    Built by hand (no torch: seconds), with the file layout a real tiny run with
    ``deploy.save_variants: true`` writes.
    """
    from results_factory import GOLDEN_POLICY, rich_run

    from audit.fingerprint import dir_sha256
    from audit.policy import evaluate_policy, load_policy
    from reports.writer import write_reports

    root = tmp_path_factory.mktemp("attest")
    model = root / "model"
    model.mkdir()
    for i, name in enumerate(CHECKPOINT_FILES):
        (model / name).write_bytes(os.urandom(300 + i))
    (root / "policy.yaml").write_text(GOLDEN_POLICY)
    res = rich_run()
    res.model.source, res.model.fingerprint = str(model), dir_sha256(model)
    pol, label = load_policy(str(root / "policy.yaml"))
    res.verdict = evaluate_policy(pol, res, policy_label=label)
    res.variants = [v for v in res.variants if v.id in (VARIANT, "wanda-s0.30-seed0")]
    out = root / "out"
    saved = res.variants[0]
    saved.deployment.saved_to = f"variants/{saved.id}"
    (out / saved.deployment.saved_to).mkdir(parents=True)
    for i, name in enumerate(VARIANT_FILES):
        (out / saved.deployment.saved_to / name).write_bytes(os.urandom(200 + i))
    (out / "results.json").write_text(res.to_json())
    write_reports(res, out, ["html", "model-card"])
    assert main(["attest", "keygen", "--out", str(root / "keys")]) == 0
    assert main(["attest", "keygen", "--out", str(root / "other")]) == 0
    return root


@pytest.fixture
def run(audited: Path, tmp_path: Path) -> Path:
    """A private copy of the audit (output dir, checkpoint, keys), so a test may change bytes in it."""
    for name in ("out", "model", "keys", "other", "policy.yaml"):
        src = audited / name
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, tmp_path / name)
    # the copied results record the original model and policy paths; point them at the copies (unsigned yet)
    raw = json.loads((tmp_path / "out" / "results.json").read_text())
    raw["model"]["source"] = str(tmp_path / "model")
    raw["verdict"]["policy_source"]["file"] = str(tmp_path / "policy.yaml")
    (tmp_path / "out" / "results.json").write_text(json.dumps(raw, indent=2))
    return tmp_path


def _sign(run: Path, *extra: str) -> int:
    return main(["attest", str(run / "out" / "results.json"), "--key", str(run / "keys" / "attest-key.pem"), *extra])


def _verify(run: Path, *extra: str, key: str = "keys/attest-key.pub.pem") -> int:
    return main(["attest", "verify", str(run / "out" / "attestation.dsse.json"), "--key", str(run / key), *extra])


def _statement(run: Path) -> dict:
    env = json.loads((run / "out" / "attestation.dsse.json").read_text())
    return json.loads(base64.b64decode(env["payload"]))


def _flip(path: Path, at: int = 100) -> None:
    data = bytearray(path.read_bytes())
    data[at % len(data)] ^= 0x01
    path.write_bytes(bytes(data))


def _files(root: Path, prefix: str) -> set[str]:
    return {prefix + p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def test_the_issue_invocation_signs_and_verify_passes(run: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = run / "out"
    cmd = [
        sys.executable,
        "-m",
        "audit",
        "attest",
        str(out / "results.json"),
        "--key",
        str(run / "keys/attest-key.pem"),
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert f"attestation: {out / 'attestation.dsse.json'}" in r.stdout
    v = subprocess.run(
        [sys.executable, "-m", "audit", "attest", "verify", str(out / "attestation.dsse.json")]
        + ["--key", str(run / "keys/attest-key.pub.pem")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    n = 1 + len(_files(run / "model", "")) + len(_files(out / "variants" / VARIANT, ""))
    assert v.returncode == 0, v.stderr
    assert f"verified: {n} subjects match" in v.stdout


def test_subjects_are_results_checkpoint_and_every_saved_variant_file(run: Path) -> None:
    assert _sign(run) == 0
    st = _statement(run)
    names = [s["name"] for s in st["subject"]]
    expected = {"results.json"} | _files(run / "model", "model/") | _files(run / "out" / "variants", "variants/")
    assert set(names) == expected and len(names) == len(expected)
    assert f"variants/{VARIANT}/model.safetensors" in names and "model/model.safetensors" in names
    for s in st["subject"]:
        path = run / "model" / s["name"][6:] if s["name"].startswith("model/") else run / "out" / s["name"]
        assert s["digest"]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


def test_statement_is_structurally_an_in_toto_v1_statement(run: Path) -> None:
    assert _sign(run) == 0
    env = json.loads((run / "out" / "attestation.dsse.json").read_text())
    assert set(env) == {"payload", "payloadType", "signatures"} and env["payloadType"] == PAYLOAD_TYPE
    assert [set(s) for s in env["signatures"]] == [{"keyid", "sig"}] and is_sha256(env["signatures"][0]["keyid"])
    st = _statement(run)
    assert set(st) == {"_type", "subject", "predicateType", "predicate"}
    assert st["_type"] == STATEMENT_TYPE == "https://in-toto.io/Statement/v1" and st["predicateType"] == PREDICATE_TYPE
    assert st["subject"] and all(
        set(s) == {"name", "digest"} and set(s["digest"]) == {"sha256"} and is_sha256(s["digest"]["sha256"])
        for s in st["subject"]
    )
    assert not is_sha256("A" * 64) and not is_sha256("a" * 63)


def test_predicate_carries_verdict_policy_results_digest_version_and_run(run: Path) -> None:
    assert _sign(run) == 0
    res = load_results(run / "out" / "results.json")
    p = _statement(run)["predicate"]
    assert p["run_id"] == res.run_id and p["verdict"]["status"] == res.verdict.status
    assert p["results"] == {
        "name": "results.json",
        "sha256": hashlib.sha256((run / "out" / "results.json").read_bytes()).hexdigest(),
    }
    assert p["policy"]["fingerprint"] == res.verdict.policy_fingerprint
    assert p["policy"]["file_sha256"] == hashlib.sha256((run / "policy.yaml").read_bytes()).hexdigest()
    assert p["tool"] == {"name": "prune-audit", "version": audit.__version__}
    assert [(v["id"], v["saved_to"]) for v in p["variants"]] == [
        (VARIANT, f"variants/{VARIANT}"),
        ("wanda-s0.30-seed0", None),
    ]
    assert p["model"]["fingerprint"] == res.model.fingerprint


def test_a_flipped_byte_in_a_variant_weight_file_fails_naming_it(run: Path, capsys: pytest.CaptureFixture) -> None:
    assert _sign(run) == 0
    _flip(run / "out" / "variants" / VARIANT / "model.safetensors")
    capsys.readouterr()
    assert _verify(run) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert f"1 of {len(_statement(run)['subject'])} subjects do not verify" in err
    assert f"variants/{VARIANT}/model.safetensors changed" in err


def test_a_flipped_byte_in_results_fails_naming_results_json(run: Path, capsys: pytest.CaptureFixture) -> None:
    assert _sign(run) == 0
    _flip(run / "out" / "results.json", at=40)
    capsys.readouterr()
    assert _verify(run) == 1
    err = capsys.readouterr().err
    assert "results.json changed" in err and "variants/" not in err


def test_a_copied_tree_verifies_with_artifacts_and_model(run: Path, tmp_path_factory, capsys) -> None:
    assert _sign(run) == 0
    elsewhere = tmp_path_factory.mktemp("copied")
    shutil.copytree(run / "out", elsewhere / "out")
    shutil.copytree(run / "model", elsewhere / "ckpt")
    shutil.rmtree(run / "out" / "variants")
    args = ["--artifacts", str(elsewhere / "out"), "--model", str(elsewhere / "ckpt")]
    assert _verify(run, *args) == 0
    _flip(elsewhere / "ckpt" / "model.safetensors")
    capsys.readouterr()
    assert _verify(run, *args) == 1
    assert "model/model.safetensors changed" in capsys.readouterr().err


def test_a_missing_subject_fails_naming_it(run: Path, capsys: pytest.CaptureFixture) -> None:
    assert _sign(run) == 0
    (run / "out" / "variants" / VARIANT / "config.json").unlink()
    capsys.readouterr()
    assert _verify(run) == 1
    assert f"variants/{VARIANT}/config.json is missing" in capsys.readouterr().err


def test_a_file_added_to_a_signed_variant_or_checkpoint_directory_fails_naming_it(run: Path, capsys) -> None:
    assert _sign(run) == 0
    (run / "out" / "variants" / VARIANT / "adapter_config.json").write_text("{}")
    (run / "model" / "extra.safetensors").write_bytes(os.urandom(64))
    capsys.readouterr()
    assert _verify(run) == 1
    err = capsys.readouterr().err
    assert f"2 of {len(_statement(run)['subject'])} subjects do not verify" in err
    assert f"variants/{VARIANT}/adapter_config.json is not in the statement" in err
    assert "model/extra.safetensors is not in the statement" in err


def test_a_file_added_beside_results_outside_the_signed_directories_still_verifies(run: Path) -> None:
    assert _sign(run) == 0
    (run / "out" / "notes.txt").write_text("written after signing")
    (run / "out" / "variants" / "scratch").mkdir()
    (run / "out" / "variants" / "scratch" / "x.bin").write_bytes(b"x")
    assert _verify(run) == 0


def test_wrong_public_key_exits_1(run: Path, capsys: pytest.CaptureFixture) -> None:
    assert _sign(run) == 0
    capsys.readouterr()
    assert _verify(run, key="other/attest-key.pub.pem") == 1
    assert "signature does not verify with key" in capsys.readouterr().err


def _nothing_written(run: Path, before: dict[str, bytes]) -> bool:
    out = run / "out"
    after = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    return after == before and not (out / "attestation.dsse.json").exists()


def _snapshot(run: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in (run / "out").iterdir() if p.is_file()}


def test_an_rsa_key_exits_4_and_writes_nothing(run: Path, capsys: pytest.CaptureFixture) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    pem = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    (run / "rsa.pem").write_bytes(pem)
    before = _snapshot(run)
    capsys.readouterr()
    assert main(["attest", str(run / "out" / "results.json"), "--key", str(run / "rsa.pem")]) == 4
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "expected an Ed25519 private key, found an RSA key" in err
    assert _nothing_written(run, before)


def test_a_garbage_key_exits_4_and_writes_nothing(run: Path, capsys: pytest.CaptureFixture) -> None:
    (run / "bad.pem").write_text("-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
    before = _snapshot(run)
    capsys.readouterr()
    assert main(["attest", str(run / "out" / "results.json"), "--key", str(run / "bad.pem")]) == 4
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{run / 'bad.pem'}: expected an unencrypted PEM" in err
    assert _nothing_written(run, before)


def test_results_of_another_schema_version_exit_4_and_write_nothing(run: Path, capsys) -> None:
    p = run / "out" / "results.json"
    p.write_text(p.read_text().replace('"schema_version": "1.0"', '"schema_version": "2.0"'))
    before = _snapshot(run)
    capsys.readouterr()
    assert _sign(run) == 4
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "results schema_version 2.0 is not readable" in err
    assert _nothing_written(run, before)


def test_a_checkpoint_changed_since_the_audit_exits_4(run: Path, capsys: pytest.CaptureFixture) -> None:
    _flip(run / "model" / "model.safetensors")
    before = _snapshot(run)
    capsys.readouterr()
    assert _sign(run) == 4
    assert "the model directory's files are not the audited ones" in capsys.readouterr().err
    assert _nothing_written(run, before)


def test_an_envelope_that_is_not_dsse_exits_4(run: Path, capsys: pytest.CaptureFixture) -> None:
    (run / "out" / "attestation.dsse.json").write_text(json.dumps({"payload": "x", "signatures": []}))
    capsys.readouterr()
    assert _verify(run) == 4
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not a DSSE envelope: expected payload, payloadType and signatures" in err


def test_pae_matches_the_dsse_specs_test_vector() -> None:
    # DSSE protocol.md, "Test Vectors"
    assert (
        pae("http://example.com/HelloWorld", b"hello world")
        == b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    )
    # LEN is the byte length of UTF-8, not the character count
    assert pae("é", b"") == b"DSSEv1 2 \xc3\xa9 0 "


def test_signature_check_agrees_with_dsse_ed25519_vectors() -> None:
    """secure-systems-lab/dsse testvectors/vectors.json, key A = RFC 8032 test 1 (its public key checked here)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from audit.attest import _b64decode

    key = Ed25519PrivateKey.from_private_bytes(
        bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
    ).public_key()
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()
    assert raw == "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
    payload = _b64decode("eyJfdHlwZSI6Imh0dHBzOi8vaW4tdG90by5pby9TdGF0ZW1lbnQvdjEifQ==", "payload", "vector")
    sig = _b64decode(
        "2WAfaHm5jluo0w+0rk8uVkluELJYWjSmU9x7EUzx+AyteDGJ4/nqyJXfmAUVFIAoQafWm7AxBZNw5M9ixNHiCA==", "sig", "vector"
    )
    assert verify_signature(payload, PAYLOAD_TYPE, [sig], key)
    assert not verify_signature(payload, "application/vnd.example.other+json", [sig], key)  # type is signed too
    url_payload = _b64decode("-_-_Pj8=", "payload", "vector")  # URL-safe alphabet, accepted
    url_sig = _b64decode(
        "P-_KHICeR7tI6S_YyejJTRtrXhcQyQ2LYPaL8h90KjC9qN8HU_svOQ6TuDOT1HIrsGW886DbWNWcCmX5twLrAw==", "sig", "vector"
    )
    assert url_payload == b"\xfb\xff\xbf>?" and verify_signature(url_payload, PAYLOAD_TYPE, [url_sig], key)


def test_report_and_model_card_state_the_envelope_digest(run: Path) -> None:
    out = run / "out"
    assert _sign(run) == 0
    digest = hashlib.sha256((out / "attestation.dsse.json").read_bytes()).hexdigest()
    summary = json.loads((out / "attestation.json").read_text())
    assert summary["sha256"] == digest and summary["envelope"] == "attestation.dsse.json"
    assert f"Attestation: <code>sha256:{digest}</code>" in (out / "report.html").read_text()
    assert f"Attestation: `sha256:{digest}` (keyid `{summary['keyid']}`)" in (out / "model-card.md").read_text()


def test_report_command_states_the_attestation_only_for_the_signed_results(run: Path) -> None:
    out = run / "out"
    assert _sign(run) == 0
    digest = json.loads((out / "attestation.json").read_text())["sha256"]
    assert main(["report", str(out / "results.json"), "-o", str(run / "re")]) == 0
    assert f"sha256:{digest}" in (run / "re" / "report.html").read_text()
    (out / "results.json").write_text((out / "results.json").read_text() + "\n")
    assert main(["report", str(out / "results.json"), "-o", str(run / "re2")]) == 0
    assert "Attestation" not in (run / "re2" / "report.html").read_text()


def test_keygen_writes_a_private_key_only_its_owner_reads_and_refuses_to_overwrite(run: Path, capsys) -> None:
    keys = run / "fresh"
    assert main(["attest", "keygen", "--out", str(keys)]) == 0
    assert (keys / "attest-key.pem").stat().st_mode & 0o777 == 0o600
    before = (keys / "attest-key.pem").read_bytes()
    capsys.readouterr()
    assert main(["attest", "keygen", "--out", str(keys)]) == 4
    assert "refusing to overwrite" in capsys.readouterr().err
    assert (keys / "attest-key.pem").read_bytes() == before


def _rewrite_model(run: Path, **model: object) -> None:
    raw = json.loads((run / "out" / "results.json").read_text())
    raw["model"].update(model)
    (run / "out" / "results.json").write_text(json.dumps(raw, indent=2))


def test_a_gguf_checkpoint_is_one_subject_found_again_at_verify(run: Path) -> None:
    gguf = run / "SmolLM2.Q4_1.gguf"
    gguf.write_bytes(b"GGUF" + os.urandom(500))
    digest = hashlib.sha256(gguf.read_bytes()).hexdigest()
    _rewrite_model(run, source=str(gguf), fingerprint=digest, kind="causal-lm", gguf={"sha256": digest})
    assert _sign(run) == 0
    model_subjects = [s for s in _statement(run)["subject"] if s["name"].startswith("model/")]
    assert model_subjects == [{"name": "model/SmolLM2.Q4_1.gguf", "digest": {"sha256": digest}}]
    assert _verify(run) == 0
    _flip(gguf)
    assert _verify(run) == 1


def test_a_hub_model_has_no_checkpoint_subjects_and_says_why(run: Path) -> None:
    _rewrite_model(run, source="org/tiny", fingerprint="hub:org/tiny@abc123")
    assert _sign(run) == 0
    st = _statement(run)
    assert not [s for s in st["subject"] if s["name"].startswith("model/")]
    assert st["predicate"]["model"]["note"] == "hub model hub:org/tiny@abc123: no local checkpoint files are recorded"


def test_a_builtin_policy_is_named_with_its_files_sha256() -> None:
    from results_factory import rich_run

    from audit.attest import policy_record
    from audit.policy import builtin_policies, evaluate_policy, load_policy

    res = rich_run()
    pol, label = load_policy("default")
    res.verdict = evaluate_policy(pol, res, policy_label=label)
    rec = policy_record(res)
    assert (rec["builtin"], rec["fingerprint"]) == ("default", pol.fingerprint())
    assert rec["file_sha256"] == hashlib.sha256(builtin_policies()["default"].read_bytes()).hexdigest()


def test_a_policy_file_edited_since_the_verdict_gets_no_file_digest(run: Path) -> None:
    p = run / "policy.yaml"
    p.write_text(p.read_text().replace("min: -0.03", "min: -0.04"))
    assert _sign(run) == 0
    rec = _statement(run)["predicate"]["policy"]
    assert rec["file"] == str(p) and rec["file_sha256"] is None


def test_sign_and_verify_never_import_torch(run: Path) -> None:
    out, keys = run / "out", run / "keys"
    code = (
        "import sys; from audit.cli import main; "
        f"a = main(['attest', {str(out / 'results.json')!r}, '--key', {str(keys / 'attest-key.pem')!r}]); "
        f"b = main(['attest', 'verify', {str(out / 'attestation.dsse.json')!r}, "
        f"'--key', {str(keys / 'attest-key.pub.pem')!r}]); "
        "print(a, b, 'torch' in sys.modules)"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert r.stdout.strip().splitlines()[-1] == "0 0 False", r.stderr
