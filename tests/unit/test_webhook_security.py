"""The webhook's trust boundaries (#14 items 6, 10, 11): the namespace is the admission request's
own, inline environment specs are read strictly, and the webhook's CA is kept and its
certificates re-issued before they expire."""

from __future__ import annotations

import asyncio
import base64
import copy
import datetime
from collections.abc import Callable
from typing import Any

import pytest
from cryptography import x509

from envkiln.adapters import webhookcert
from envkiln.adapters.builders.jobs import JobBuilder
from envkiln.adapters.registryclient import RegistryClient
from envkiln.core.decisions.admission import (
    StoredCertificates,
    Validity,
    certificate_action,
    refusal,
    renewal_due,
    request_namespace,
    scoped_review,
)
from envkiln.core.settings import OperatorSettings
from envkiln.core.trust import Signer
from envkiln.core.workloads import WorkloadError, parse_inline_spec, parse_request
from envkiln.reconcile.context import OperatorContext
from envkiln.reconcile.webhook import admit_pod, scoped_to_request_namespace
from fakes import FakeKube

# --- the namespace is the request's ---------------------------------------------------------------


def review(namespace: Any = "team-a", object_namespace: Any = None, old: dict[str, Any] | None = None,
           **request: Any) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": "p", "labels": {"envkiln.dev/environment": "train"}}
    if object_namespace is not None:
        metadata["namespace"] = object_namespace
    body: dict[str, Any] = {"uid": "u-1", "operation": "CREATE", "object": {"metadata": metadata, "spec": {}}}
    if namespace is not None:
        body["namespace"] = namespace
    if old is not None:
        body["oldObject"] = old
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {**body, **request}}


# (case, review, the namespace, or the refusal message's words)
NAMESPACES: list[tuple[str, dict[str, Any], str]] = [
    ("object-without-namespace", review(), "team-a"),
    ("object-in-the-same-namespace", review(object_namespace="team-a"), "team-a"),
    ("object-with-empty-namespace", review(object_namespace=""), "team-a"),
    ("object-in-another-namespace", review(object_namespace="curated"),
     "request.object.metadata.namespace is 'curated' but the request is for namespace 'team-a'"),
    ("old-object-in-another-namespace", review(old={"metadata": {"namespace": "curated"}}),
     "request.oldObject.metadata.namespace is 'curated'"),
    ("no-namespace-in-the-request", review(namespace=None, object_namespace="team-a"),
     "names no valid namespace (None)"),
    ("empty-namespace-in-the-request", review(namespace=""), "names no valid namespace ('')"),
    ("namespace-with-newline", review(namespace="team-a\n"), "names no valid namespace ('team-a\\n')"),
    ("namespace-not-a-string", review(namespace=["team-a"]), "names no valid namespace"),
    ("object-not-a-mapping", review(object="pod"), "request.object is not an object with metadata"),
    ("metadata-not-a-mapping", review(object={"metadata": ["x"]}), "request.object is not an object"),
    ("no-request", {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}, "it has no request"),
]


@pytest.mark.parametrize(("case", "given", "expected"), NAMESPACES, ids=[c[0] for c in NAMESPACES])
def test_namespace_comes_from_the_request(case: str, given: dict[str, Any], expected: str) -> None:
    if expected == "team-a":
        before = copy.deepcopy(given)
        assert request_namespace(given) == "team-a"
        scoped = scoped_review(given)
        assert scoped["request"]["object"]["metadata"]["namespace"] == "team-a"
        assert scoped["request"]["object"]["metadata"]["name"] == "p", "the rest of the object is kept"
        assert given == before, "the review itself is not modified"
        return
    with pytest.raises(WorkloadError) as error:
        request_namespace(given)
    assert expected in str(error.value)


def test_refusal_answers_the_review() -> None:
    answer = refusal(review(), "no")
    assert answer == {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                      "response": {"uid": "u-1", "allowed": False, "status": {"code": 400, "message": "no"}}}
    garbage = refusal({"apiVersion": "evil/v1", "request": "x"}, "no")
    assert garbage["apiVersion"] == "admission.k8s.io/v1" and garbage["response"]["uid"] == ""


# (case, review, does the admission function run, the namespace it sees)
WRAPPED = [
    ("same-namespace", review(object_namespace="team-a"), True),
    ("namespace-filled-from-the-request", review(), True),
    ("mismatch-refused-before-the-handler", review(object_namespace="curated"), False),
    ("no-namespace-refused-before-the-handler", review(namespace=None), False),
]


@pytest.mark.parametrize(("case", "given", "reaches"), WRAPPED, ids=[c[0] for c in WRAPPED])
def test_the_server_check_runs_before_the_handler(case: str, given: dict[str, Any], reaches: bool) -> None:
    seen: list[tuple[dict[str, Any], dict[str, Any]]] = []

    async def handler(request: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        seen.append((request, kwargs))
        return {"response": {"allowed": True}}

    async def review_it() -> dict[str, Any]:
        answered: dict[str, Any] = await scoped_to_request_namespace(handler)(
            given, webhook="envkiln-environment", sslpeer={})
        return answered

    answer = asyncio.run(review_it())
    if reaches:
        (request, kwargs), = seen
        assert request["request"]["object"]["metadata"]["namespace"] == "team-a"
        assert kwargs == {"webhook": "envkiln-environment", "sslpeer": {}}
        assert answer == {"response": {"allowed": True}}
    else:
        assert not seen
        assert answer["response"]["allowed"] is False and answer["response"]["status"]["code"] == 400


def test_admit_pod_refuses_a_pod_from_another_namespace() -> None:
    pod = {"metadata": {"name": "p", "namespace": "curated", "labels": {"envkiln.dev/environment": "train"}},
           "spec": {"containers": [{"name": "main", "image": "x"}]}}
    kube, settings = FakeKube(), OperatorSettings()
    ctx = OperatorContext(settings=settings, kube=kube, registry=RegistryClient(),
                          builder=JobBuilder(kube, settings, None), signer=Signer(b"k" * 32))
    with pytest.raises(WorkloadError, match="the pod says namespace 'curated' but the request is for namespace"):
        admit_pod(ctx, pod, "team-a")
    assert kube.calls == [], "refused before any lookup"


# --- inline specs are read strictly, names matched whole ----------------------------------------------

SPEC = "envkiln.dev/environment-spec"
# (case, annotation text, words of the message)
INLINE: list[tuple[str, str, str]] = [
    ("duplicate-key", "image: python:3.11\npip: [six]\npip: [evil]", "found duplicate key 'pip'"),
    ("duplicate-key-json", '{"image": "python:3.11", "image": "evil:1"}', "found duplicate key 'image'"),
    ("duplicate-nested-key", "image: python:3.11\nenvironmentVariables: {A: '1', A: '2'}",
     "found duplicate key 'A'"),
    ("deep-nesting", "[" * 5000, "nested more than 64 levels deep"),
    ("deep-mapping-nesting", "a: " + "{a: " * 200 + "1" + "}" * 200, "nested more than 64 levels deep"),
    ("two-documents", "image: a\n---\nimage: b", "expected a single document"),
    ("python-tag", "image: !!python/object/apply:os.system [id]", "could not determine a constructor"),
    ("impossible-date", "image: python:3.11\ndescription: 2024-13-01", "not valid YAML/JSON: month must be"),
    ("not-yaml", "{not yaml", "not valid YAML/JSON"),
    ("not-a-mapping", "[1, 2]", "must be a mapping"),
    ("empty", "  \n", "is empty"),
    ("unknown-field", "image: python:3.11\npips: [six]", "spec.pips: unknown field"),
]


@pytest.mark.parametrize(("case", "text", "expected"), INLINE, ids=[c[0] for c in INLINE])
def test_inline_spec_errors(case: str, text: str, expected: str) -> None:
    with pytest.raises(WorkloadError) as error:
        parse_inline_spec(text)
    assert expected in str(error.value)
    assert str(error.value).startswith(f"annotation {SPEC}")


def test_inline_spec_still_reads_yaml_and_json() -> None:
    for text in ("image: python:3.11-slim\npip: [six]", '{"image": "python:3.11-slim", "pip": ["six"]}'):
        assert parse_inline_spec(text).pip == ["six"]


# (case, label, annotations, the message's words; "" when accepted)
NAMES: list[tuple[str, str, dict[str, str], str]] = [
    ("plain", "train", {}, ""),
    ("dotted", "train.v2", {}, ""),
    ("with-version", "train", {"envkiln.dev/environment": "train:3"}, ""),
    ("version-annotation", "train", {"envkiln.dev/environment-version": "2024.06"}, ""),
    ("trailing-newline-label", "train\n", {}, "is not an Environment name"),
    ("trailing-newline-annotation", "train", {"envkiln.dev/environment": "train\n:3"}, "is not an Environment name"),
    ("uppercase", "Train", {}, "is not an Environment name"),
    ("leading-dash", "-train", {}, "is not an Environment name"),
    ("too-long", "a" * 254, {}, "is not an Environment name"),
    ("version-trailing-newline", "train", {"envkiln.dev/environment": "train:3\n"}, "version '3\\n' is not a"),
    ("version-annotation-newline", "train", {"envkiln.dev/environment-version": "3\n"},
     "envkiln.dev/environment-version: version '3\\n' is not a version label"),
    ("version-with-colon", "train", {"envkiln.dev/environment": "train:3:4"}, "is not a version label"),
]


@pytest.mark.parametrize(("case", "label", "annotations", "refused"), NAMES, ids=[c[0] for c in NAMES])
def test_environment_names_are_matched_whole(case: str, label: str, annotations: dict[str, str],
                                             refused: str) -> None:
    if refused:
        with pytest.raises(WorkloadError) as error:
            parse_request({"envkiln.dev/environment": label}, annotations)
        assert refused in str(error.value)
    else:
        assert parse_request({"envkiln.dev/environment": label}, annotations).name in ("train", "train.v2")


# --- certificates: when to re-issue -------------------------------------------------------------------

T0 = datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)
DAY = datetime.timedelta(days=1)


def valid(days: float, start: datetime.datetime = T0) -> Validity:
    return Validity(start, start + days * DAY)


# (case, validity, now, due?)
RENEWALS: list[tuple[str, Validity | None, datetime.datetime, bool]] = [
    ("missing", None, T0, True),
    ("fresh", valid(90), T0, False),
    ("two-thirds-used-minus-a-day", valid(90), T0 + 59 * DAY, False),
    ("less-than-a-third-left", valid(90), T0 + 61 * DAY, True),
    ("expired", valid(90), T0 + 91 * DAY, True),
    ("not-valid-yet", valid(90), T0 - DAY, True),
    ("empty-lifetime", Validity(T0, T0), T0, True),
    ("ca-after-six-years", valid(3650), T0 + 6 * 365 * DAY, False),
    ("ca-after-seven-years", valid(3650), T0 + 7 * 365 * DAY, True),
]


@pytest.mark.parametrize(("case", "validity", "now", "due"), RENEWALS, ids=[c[0] for c in RENEWALS])
def test_renewal_due(case: str, validity: Validity | None, now: datetime.datetime, due: bool) -> None:
    assert renewal_due(validity, now) is due


NAMES_WANTED = frozenset({"envkiln-webhook.envkiln-system.svc", "envkiln-webhook"})


CA_10Y, SERVING_90D = valid(3650), valid(90)


def stored(ca: Validity | None = CA_10Y, serving: Validity | None = SERVING_90D, from_ca: bool = True,
           names: frozenset[str] = NAMES_WANTED) -> StoredCertificates:
    return StoredCertificates(ca, serving, from_ca, names)


# (case, what the Secrets hold, now, action)
ACTIONS: list[tuple[str, StoredCertificates, datetime.datetime, str]] = [
    ("nothing-yet", stored(ca=None, serving=None, from_ca=False, names=frozenset()), T0, "rotate-ca"),
    ("old-format-ca-key-discarded", stored(ca=None, serving=valid(3650), from_ca=False), T0, "rotate-ca"),
    ("all-fresh", stored(), T0 + DAY, "keep"),
    ("ca-but-no-serving", stored(serving=None, from_ca=False, names=frozenset()), T0, "issue"),
    ("serving-due", stored(), T0 + 61 * DAY, "issue"),
    ("serving-expired", stored(), T0 + 120 * DAY, "issue"),
    ("serving-from-another-ca", stored(from_ca=False), T0 + DAY, "issue"),
    ("serving-for-other-names", stored(names=frozenset({"other.svc"})), T0 + DAY, "issue"),
    ("serving-missing-a-name", stored(names=frozenset({"envkiln-webhook"})), T0 + DAY, "issue"),
    ("ca-due-first", stored(serving=valid(90, T0 + 2400 * DAY)), T0 + 2450 * DAY, "rotate-ca"),
    ("ca-not-valid-yet", stored(ca=valid(3650, T0 + DAY)), T0, "rotate-ca"),
]


@pytest.mark.parametrize(("case", "given", "now", "action"), ACTIONS, ids=[c[0] for c in ACTIONS])
def test_certificate_action(case: str, given: StoredCertificates, now: datetime.datetime, action: str) -> None:
    assert certificate_action(given, NAMES_WANTED, now) == action


# --- certificates: kept in Secrets, shared by replicas (a stand-in for Kube) -----------------------------


NS, CA_SECRET, TLS_SECRET, CONFIGURATION = "envkiln-system", "envkiln-webhook-tls-ca", "envkiln-webhook-tls", "envkiln"
WRITES = ("create", "update", "patch", "delete")


def webhook_kube() -> FakeKube:
    """A cluster holding the webhook's MutatingWebhookConfiguration (no caBundle yet) and no Secrets."""
    kube = FakeKube()
    kube.put("MutatingWebhookConfiguration", "", {"metadata": {"name": CONFIGURATION}, "webhooks": [
        {"name": "pods.envkiln.dev", "clientConfig": {"url": "https://x"}, "admissionReviewVersions": ["v1"],
         "sideEffects": "None"}]})
    return kube


def secret(kube: FakeKube, name: str) -> dict[str, Any]:
    return kube.objects[("Secret", NS, name)]


def ca_bundle(kube: FakeKube) -> str | None:
    webhook = kube.objects[("MutatingWebhookConfiguration", "", CONFIGURATION)]["webhooks"][0]
    bundle: str | None = webhook["clientConfig"].get("caBundle")
    return bundle


def before_next_write(kube: FakeKube, hook: Callable[[], None]) -> None:
    """Run `hook` once, just before the next write reaches the store: another replica's turn."""
    def intercept(verb: str, kind: str, namespace: str, name: str) -> None:
        if verb in WRITES:
            kube.intercept = None
            hook()
    kube.intercept = intercept


HOSTS = ["envkiln-webhook.envkiln-system.svc", "envkiln-webhook", "127.0.0.1"]


def ensure(kube: FakeKube, now: datetime.datetime, hosts: list[str] = HOSTS) -> webhookcert.WebhookCertificate:
    return webhookcert.ensure_certificate(kube, NS, TLS_SECRET, hosts, clock=lambda: now)


def certs(pem: bytes) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(pem)


def test_first_start_keeps_the_ca_and_issues_a_short_serving_certificate() -> None:
    kube = webhook_kube()
    first = ensure(kube, T0)
    assert kube.writes == [("create", "Secret", CA_SECRET), ("create", "Secret", TLS_SECRET)]
    ca_secret = secret(kube, CA_SECRET)
    assert set(ca_secret["data"]) == {"ca.crt", "ca.key"} and ca_secret["type"] == "Opaque"
    (ca,) = certs(first.ca_pem)
    serving = x509.load_pem_x509_certificate(first.cert_pem)
    serving.verify_directly_issued_by(ca)
    assert serving.not_valid_after_utc - T0 == datetime.timedelta(days=90)
    assert ca.not_valid_after_utc - T0 == datetime.timedelta(days=3650)
    san = serving.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == set(HOSTS[:2])
    assert base64.b64decode(secret(kube, TLS_SECRET)["data"]["ca.crt"]) == first.ca_pem
    # Another replica, or a restart: the same certificates, nothing written.
    assert ensure(kube, T0 + 10 * DAY) == first and len(kube.writes) == 2


def test_serving_certificate_is_reissued_from_the_same_ca_when_due() -> None:
    kube = webhook_kube()
    first = ensure(kube, T0)
    assert ensure(kube, T0 + 59 * DAY) == first
    renewed = ensure(kube, T0 + 61 * DAY)
    assert renewed.ca_pem == first.ca_pem and renewed.cert_pem != first.cert_pem
    assert kube.writes[2:] == [("update", "Secret", TLS_SECRET)]
    assert x509.load_pem_x509_certificate(renewed.cert_pem).not_valid_after_utc == T0 + 151 * DAY


def test_other_names_get_a_new_serving_certificate() -> None:
    kube = webhook_kube()
    first = ensure(kube, T0)
    moved = ensure(kube, T0 + DAY, hosts=["envkiln-webhook.other.svc"])
    assert moved.ca_pem == first.ca_pem and moved.cert_pem != first.cert_pem


def test_ca_rotation_keeps_the_old_ca_in_the_bundle_until_it_expires() -> None:
    kube = webhook_kube()
    first = ensure(kube, T0)
    (old_ca,) = certs(first.ca_pem)
    later = T0 + 7 * 365 * DAY
    rotated = ensure(kube, later)
    assert kube.writes[2:] == [("update", "Secret", CA_SECRET), ("update", "Secret", TLS_SECRET)]
    new_ca, kept = certs(rotated.ca_pem)
    assert kept == old_ca and new_ca != old_ca and new_ca.subject != old_ca.subject
    x509.load_pem_x509_certificate(rotated.cert_pem).verify_directly_issued_by(new_ca)
    assert "previous-ca.crt" in secret(kube, CA_SECRET)["data"]
    # Once the old CA has expired it leaves the bundle.
    after = ensure(kube, old_ca.not_valid_after_utc + DAY)
    assert certs(after.ca_pem) == [new_ca]


def test_old_format_secret_is_replaced_by_one_from_a_kept_ca() -> None:
    kube = webhook_kube()
    legacy = webhookcert.generate(HOSTS)  # what envkiln wrote before: its CA key was thrown away
    kube.create_or_get_secret("envkiln-system", webhookcert._secret_body(
        "envkiln-system", "envkiln-webhook-tls", "kubernetes.io/tls",
        {"ca.crt": legacy.ca_pem, "tls.crt": legacy.cert_pem, "tls.key": legacy.key_pem}))
    current = ensure(kube, datetime.datetime.now(datetime.UTC))
    assert current.cert_pem != legacy.cert_pem and current.ca_pem != legacy.ca_pem
    assert kube.writes == [("create", "Secret", TLS_SECRET), ("create", "Secret", CA_SECRET),
                           ("update", "Secret", TLS_SECRET)]


def test_another_replicas_write_wins() -> None:
    kube = webhook_kube()
    other = webhook_kube()
    theirs = ensure(other, T0)  # the other replica's certificates, written just before ours
    before_next_write(kube, lambda: kube.objects.update(
        {key: {**body, "metadata": {**body["metadata"], "resourceVersion": "theirs-" + key[2]}}
         for key, body in other.objects.items() if key[0] == "Secret"}))
    ours = ensure(kube, T0)
    assert ours == theirs
    assert kube.writes == [], "our CA lost to theirs; their serving certificate was then kept as it is"


def test_patch_ca_bundle_writes_only_changes() -> None:
    kube = webhook_kube()
    assert webhookcert.patch_ca_bundle(kube, CONFIGURATION, b"PEM") is True
    assert ca_bundle(kube) == base64.b64encode(b"PEM").decode()
    assert webhookcert.patch_ca_bundle(kube, CONFIGURATION, b"PEM") is False
    assert kube.writes == [("patch", "MutatingWebhookConfiguration", CONFIGURATION)]


def test_webhook_tls_file_changes_only_with_the_certificate(tmp_path: Any) -> None:
    from envkiln.core.settings import OperatorSettings

    kube = webhook_kube()
    now = [T0]
    settings = OperatorSettings(operator_namespace=NS, webhook_configuration=CONFIGURATION,
                                webhook_hosts=HOSTS)
    tls = webhookcert.WebhookTLS(kube, settings, directory=tmp_path, clock=lambda: now[0])
    assert tls.refresh() is True
    assert oct(tls.pem_file.stat().st_mode & 0o777) == "0o600"
    content = tls.pem_file.read_bytes()
    assert b"PRIVATE KEY" in content and b"CERTIFICATE" in content
    assert ca_bundle(kube) == base64.b64encode(tls.ca_bundle).decode()
    now[0] = T0 + 30 * DAY
    assert tls.refresh() is False and tls.pem_file.read_bytes() == content
    now[0] = T0 + 61 * DAY
    assert tls.refresh() is True and tls.pem_file.read_bytes() != content


def test_renewal_loop_outlives_failures(tmp_path: Any) -> None:
    import time

    from envkiln.core.settings import OperatorSettings

    kube = webhook_kube()
    reads: list[str] = []

    def flaky(verb: str, kind: str, namespace: str, name: str) -> None:
        if (verb, kind) != ("get", "Secret"):
            return
        reads.append(name)
        if len(reads) == 7:  # the start took 6 reads (new CA, new serving certificate, kept); the next check fails
            raise ConnectionError("the API server went away")

    kube.intercept = flaky
    settings = OperatorSettings(operator_namespace=NS, webhook_hosts=HOSTS)
    tls = webhookcert.WebhookTLS(kube, settings, directory=tmp_path, clock=lambda: T0)
    tls.start(interval=0.01)
    try:
        deadline = time.monotonic() + 10
        while len(reads) < 14 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        tls.stop()
    assert len(reads) >= 14, "checks go on after a failure"
    assert tls._thread is not None and not tls._thread.is_alive()


def _anonymous(spec: dict[str, Any]) -> dict[str, Any]:
    from envkiln.core.models import EnvironmentSpec
    from envkiln.core.workloads import anonymous_environment

    return anonymous_environment(EnvironmentSpec.model_validate(spec), "team")


@pytest.mark.parametrize(("case", "existing_spec", "trusted"), [
    ("same-spec", {"image": "python:3.11", "pip": ["six==1.16.0"]}, True),
    ("same-spec-other-key-order", {"pip": ["six==1.16.0"], "image": "python:3.11"}, True),
    ("pre-created-with-other-packages", {"image": "python:3.11", "pip": ["evil==1.0"]}, False),
    ("pre-created-with-other-base", {"image": "evil.example/python:3.11", "pip": ["six==1.16.0"]}, False),
    ("invalid-spec", {"image": 3}, False),
])
def test_an_existing_anonymous_environment_must_hold_the_inline_spec(case: str, existing_spec: dict[str, Any],
                                                                   trusted: bool) -> None:
    from envkiln.core.workloads import anonymous_mismatch

    wanted = _anonymous({"image": "python:3.11", "pip": ["six==1.16.0"]})
    existing = {"metadata": dict(wanted["metadata"]), "spec": existing_spec}
    problem = anonymous_mismatch(existing, wanted)
    assert (problem is None) is trusted
    if problem:
        assert wanted["metadata"]["name"] in problem and "kubectl delete environment -n team" in problem
