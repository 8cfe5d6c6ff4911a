"""One catalogue of error codes, and no internal text in any answer.

The completeness test reads every module under src/ with `ast` and fails, naming file and line,
for any error code a raise site, an error object or a Driver error uses that `ErrorCode` does not
hold; the translator tests show what clients get of an unexpected exception (code, public text,
correlation id) and that the service's log has the rest under the same id.
"""

from __future__ import annotations

import ast
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from synergos_contract.envelope import CORRELATION_HEADER, install_error_handlers
from synergos_contract.jobs import JobBoard, failure_reason
from synergos_contract.tables import KINDS
from synergos_core import errors
from synergos_core.errors import (
    STRICT_ENV,
    Conflict,
    ErrorCode,
    FederationError,
    Forbidden,
    InvalidRequest,
    NotFound,
    ServiceError,
    SynergosError,
    UpstreamError,
    lookup,
    public_error,
)
from synergos_mq import messages
from synergos_mq.errors import JobFailed

SRC = Path(__file__).resolve().parents[2] / "src"
CODE_PATTERN = re.compile(r"^[a-z]+(?:_[a-z]+)*\.[a-z]+(?:_[a-z]+)*$")
SECRET = "secret internal text: /srv/data/participant_1.csv"

# The classes of synergos_core.errors, by the names a module may import them under.
ERROR_CLASSES = {
    name: cls for name, cls in vars(errors).items() if isinstance(cls, type) and issubclass(cls, ServiceError)
}

# Codes put together at runtime: each site, by file and expression, with every code it can make.
BUILT_CODES: dict[tuple[str, str], list[str]] = {
    ("synergos_contract/store.py", "f'{kind.code}.exists'"): [f"{k.code}.exists" for k in KINDS.values()],
    ("synergos_contract/store.py", "f'{kind.code}.conflict'"): [f"{k.code}.conflict" for k in KINDS.values()],
    ("synergos_contract/store.py", "f'{kind.code}.not_found'"): [f"{k.code}.not_found" for k in KINDS.values()],
    ("synergos_contract/store.py", "f'{ancestor.code}.not_found'"): [f"{k.code}.not_found" for k in KINDS.values()],
    # the Driver's label for an answer no Synergos service sends (a proxy's 418 page): not ours
    ("synergos_driver/_exceptions.py", "f'http.{status}'"): [],
}


@dataclass(frozen=True)
class Use:
    """One place a code is used: a literal, an `ErrorCode.X`, or an expression that makes one."""

    where: str  # path:line
    path: str  # relative to src/
    cls: str | None  # the synergos_core error class constructed there, if any
    code: str | None  # the literal's (or member's) value
    built: str | None  # the expression, for a code made at runtime
    literal: bool = False  # written as a string literal rather than an `ErrorCode` member


def _member_value(node: ast.AST) -> str | None:
    """`ErrorCode.RUN_NOT_FOUND` -> "run.not_found"; a name the enum lacks -> a marker that fails."""
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "ErrorCode":
        member = ErrorCode.__members__.get(node.attr)
        return member.value if member is not None else f"<no member ErrorCode.{node.attr}>"
    return None


def _codes_in_table(node: ast.AST) -> list[str]:
    """Every dotted literal and `ErrorCode.X` in a table of codes (`_DEFAULT_CODES = {...}`)."""
    found = []
    for n in ast.walk(node):
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and CODE_PATTERN.match(n.value):
            found.append(n.value)
        elif (member := _member_value(n)) is not None:
            found.append(member)
    return found


def _fallbacks(node: ast.AST) -> list[ast.AST]:
    """What a relayed code falls back to: `reply.code or "worker.failed"`, `error.get("code",
    "worker.failed")`, `str(...)` of those; literals, members and f-strings, to check in turn."""
    if isinstance(node, (ast.Constant, ast.JoinedStr)) or _member_value(node) is not None:
        return [node]
    if isinstance(node, ast.BoolOp):
        return [leaf for value in node.values for leaf in _fallbacks(value)]
    if isinstance(node, ast.IfExp):
        return _fallbacks(node.body) + _fallbacks(node.orelse)
    if isinstance(node, ast.Call):
        func = node.func
        if isinstance(func, ast.Attribute) and func.attr == "get":
            return [leaf for arg in node.args[1:] for leaf in _fallbacks(arg)]
        if isinstance(func, ast.Name) and func.id in ("str", "ErrorCode", "lookup") and node.args:
            return _fallbacks(node.args[0])
    return []


class _Scanner(ast.NodeVisitor):
    """The codes one module uses (see the module docstring of this test for what counts)."""

    def __init__(self, path: str, tree: ast.Module) -> None:
        self.path = path
        self.uses: list[Use] = []
        self.classes = self._imported_error_classes(tree)
        # functions that take a `code` parameter and pass it on (`_invalid(detail, code, path)`)
        self.forwarders: dict[str, tuple[int, bool]] = {}
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                params = [a.arg for a in node.args.posonlyargs + node.args.args]
                if "code" in params:
                    self.forwarders[node.name] = (params.index("code"), bool(params) and params[0] in ("self", "cls"))

    def _imported_error_classes(self, tree: ast.Module) -> dict[str, str]:
        """The synergos_core error classes this module can call, by local name -> class name."""
        names: dict[str, str] = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                from_core = node.module == "synergos_core.errors" or (
                    node.module == "errors" and node.level == 1 and self.path.startswith("synergos_core/")
                )
                if from_core:
                    names.update({a.asname or a.name: a.name for a in node.names if a.name in ERROR_CLASSES})
        if self.path == "synergos_core/errors.py":
            names.update({name: name for name in ERROR_CLASSES})
        return names

    def _add(self, node: ast.AST, expr: ast.AST, cls: str | None) -> None:
        where = f"{self.path}:{getattr(node, 'lineno', '?')}"
        if isinstance(expr, ast.Constant):
            if isinstance(expr.value, str):
                self.uses.append(Use(where, self.path, cls, expr.value, None, literal=True))
            return
        member = _member_value(expr)
        if member is not None:
            self.uses.append(Use(where, self.path, cls, member, None))
        elif isinstance(expr, ast.JoinedStr) or (isinstance(expr, ast.BinOp) and isinstance(expr.op, ast.Add)):
            self.uses.append(Use(where, self.path, cls, None, ast.unparse(expr)))
        else:
            # a code relayed from elsewhere (a Worker's reply, a parameter): check what it falls back to
            for leaf in _fallbacks(expr):
                self._add(node, leaf, None)

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None
        code_kw = next((kw.value for kw in node.keywords if kw.arg == "code"), None)
        if name in self.classes:
            expr = node.args[1] if len(node.args) >= 2 else code_kw
            if expr is not None:
                self._add(node, expr, self.classes[name])
        elif name in self.forwarders and code_kw is None:
            index, bound = self.forwarders[name]
            index -= 1 if bound and isinstance(func, ast.Attribute) else 0
            if 0 <= index < len(node.args):
                self._add(node, node.args[index], None)
        if code_kw is not None and name not in self.classes:  # any error built with code= (the Driver's too)
            self._add(node, code_kw, None)
        self.generic_visit(node)

    def visit_Dict(self, node: ast.Dict) -> None:  # error objects built by hand: {"code": "..."}
        for key, value in zip(node.keys, node.values, strict=True):
            if isinstance(key, ast.Constant) and key.value == "code":
                self._add(node, value, None)
        self.generic_visit(node)

    def visit_Assign(self, node: ast.Assign) -> None:
        names = [t.id if isinstance(t, ast.Name) else None for t in node.targets]
        if "code" in names:  # a class's default code
            self._add(node, node.value, None)
        elif any(n and n.upper().endswith(("CODES", "CODE")) for n in names):  # tables of codes
            for value in _codes_in_table(node.value):
                self.uses.append(Use(f"{self.path}:{node.lineno}", self.path, None, value, None))
        self.generic_visit(node)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        name = node.target.id if isinstance(node.target, ast.Name) else None
        if name == "code" and node.value is not None:
            self._add(node, node.value, None)
        elif name and name.upper().endswith(("CODES", "CODE")) and node.value is not None:
            for value in _codes_in_table(node.value):
                self.uses.append(Use(f"{self.path}:{node.lineno}", self.path, None, value, None))
        self.generic_visit(node)

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        if re.search(r"(^|_)code$", node.name):  # default_code(status) and the like: they return codes
            for ret in ast.walk(node):
                if isinstance(ret, ast.Return) and ret.value is not None:
                    self._add(ret, ret.value, None)
        args = node.args  # a `code` parameter's default (`code: str = "synergos.error"`)
        positional = args.posonlyargs + args.args
        defaults = list(zip(positional[len(positional) - len(args.defaults) :], args.defaults, strict=True))
        defaults += [(a, d) for a, d in zip(args.kwonlyargs, args.kw_defaults, strict=True) if d is not None]
        for arg, default in defaults:
            if arg.arg == "code":
                self._add(node, default, None)
        self.generic_visit(node)

    visit_AsyncFunctionDef = visit_FunctionDef


def scan() -> list[Use]:
    uses = []
    for file in sorted(SRC.rglob("*.py")):
        path = file.relative_to(SRC).as_posix()
        tree = ast.parse(file.read_text(encoding="utf-8"), str(file))
        scanner = _Scanner(path, tree)
        scanner.visit(tree)
        uses.extend(scanner.uses)
    return uses


USES = scan()


# ---- the catalogue -------------------------------------------------------------------------


def test_every_code_used_in_src_is_catalogued() -> None:
    known = set(ErrorCode)
    missing = sorted(f"{u.where}: {u.code!r}" for u in USES if u.code is not None and u.code not in known)
    assert not missing, "codes missing from synergos_core.errors.ErrorCode:\n" + "\n".join(missing)


def test_services_raise_with_catalogue_members_not_strings() -> None:
    # the Driver is installed without the core, so it alone spells codes as strings
    literals = sorted(
        f"{u.where}: {u.code!r}"
        for u in USES
        if u.literal and u.cls is not None and not u.path.startswith(("synergos_driver/", "synergos_core/errors.py"))
    )
    assert not literals, "raise with ErrorCode members:\n" + "\n".join(literals)


def test_the_scan_sees_the_raise_sites() -> None:
    # a scanner that found nothing would pass the test above: check it sees what is known to be there
    codes = {u.code for u in USES}
    assert {
        "run.not_found",
        "dataset.invalid",
        "route.not_found",
        "internal.error",
        "request.too_large",
        "model.unknown_layer",
        "connection.failed",
    } <= codes
    assert len([u for u in USES if u.cls is not None]) > 100


def test_the_scanner_sees_every_kind_of_use() -> None:
    source = """
from synergos_core.errors import InvalidRequest, NotFound as Missing
def _invalid(detail, code, path):
    return InvalidRequest(detail, code, fields=[path])
class Special(Exception):
    code = "a.class_default"
def default_code(status):
    return "b.returned"
_FALLBACK_CODES = {400: "c.in_table"}
def f(reply, code: str = "d.default"):
    raise Missing("gone", "e.positional")
    raise InvalidRequest("bad", code="f.keyword")
    raise _invalid("bad", "g.forwarded", "model")
    send({"op": "error", "code": "h.by_hand"})
    raise Missing("x", reply.code or "i.fallback")
    raise Missing("x", ErrorCode.NO_SUCH_MEMBER)
    raise Missing("x", f"{reply}.built")
"""
    scanner = _Scanner("synergos_example/module.py", tree := ast.parse(source))
    scanner.visit(tree)
    assert {u.code for u in scanner.uses} == {
        "a.class_default",
        "b.returned",
        "c.in_table",
        "d.default",
        "e.positional",
        "f.keyword",
        "g.forwarded",
        "h.by_hand",
        "i.fallback",
        "<no member ErrorCode.NO_SUCH_MEMBER>",
        None,
    }
    assert [u.built for u in scanner.uses if u.built] == ["f'{reply}.built'"]
    assert {u.cls for u in scanner.uses if u.code == "e.positional"} == {"NotFound"}


def test_every_code_built_at_runtime_is_listed_and_catalogued() -> None:
    built = {(u.path, u.built): u.where for u in USES if u.built is not None}
    unlisted = sorted(f"{where}: {expr}" for (path, expr), where in built.items() if (path, expr) not in BUILT_CODES)
    assert not unlisted, (
        "codes made at runtime must be listed in BUILT_CODES with every code they can make:\n" + "\n".join(unlisted)
    )
    missing = sorted({code for codes in BUILT_CODES.values() for code in codes} - set(ErrorCode))
    assert not missing, f"codes made at runtime missing from ErrorCode: {missing}"


def test_a_class_and_the_codes_it_is_raised_with_agree_on_the_status() -> None:
    wrong = sorted(
        f"{u.where}: {u.cls}({u.code!r}) answers {ERROR_CLASSES[u.cls].status}, the catalogue says "
        f"{lookup(u.code).status}"
        for u in USES
        if u.cls
        and u.code in set(ErrorCode)
        and ERROR_CLASSES[u.cls] is not ServiceError
        and ERROR_CLASSES[u.cls].status != lookup(u.code).status
    )
    assert not wrong, "\n".join(wrong)


def test_catalogue_entries_are_well_formed() -> None:
    # a repeated value would make an alias, not a member: count the names
    assert len(ErrorCode.__members__) == len({member.value for member in ErrorCode}) >= 90
    for member in ErrorCode:
        assert CODE_PATTERN.match(member.value), member
        assert member.name == member.value.upper().replace(".", "_"), member
        assert 400 <= member.status <= 599, member
        assert isinstance(member.public_title, str) and member.public_title.strip(), member
    for cls in ERROR_CLASSES.values():  # every class's default code is in the catalogue, with its status
        assert cls.code in set(ErrorCode) and (cls is ServiceError or cls.code.status == cls.status), cls


def test_members_are_their_strings() -> None:
    assert ErrorCode.RUN_NOT_FOUND == "run.not_found" and f"{ErrorCode.RUN_NOT_FOUND}" == "run.not_found"
    assert json.dumps({"code": ErrorCode.RUN_NOT_FOUND}) == '{"code": "run.not_found"}'
    assert lookup("run.not_found") is ErrorCode.RUN_NOT_FOUND
    with pytest.raises(ValueError, match="not in the catalogue"):
        lookup("run.missing")


def test_an_error_takes_title_from_the_catalogue_and_status_from_its_class() -> None:
    error = NotFound("run 'r' does not exist", "run.not_found")
    assert (error.status, error.code, error.title) == (404, ErrorCode.RUN_NOT_FOUND, "Run not found")
    assert error.public() == {"code": "run.not_found", "title": "Run not found", "detail": "run 'r' does not exist"}
    assert SynergosError is ServiceError  # the old name still works for code in flight
    relayed = UpstreamError("p1: bad data", "dataset.invalid")  # a Worker's 422 is the TTP's 502
    assert relayed.status == 502 and relayed.code == "dataset.invalid"
    assert ServiceError("a node failed", "worker.failed").status == 502  # the base class takes the code's


def test_an_uncatalogued_code_raises_under_test_and_falls_back_at_runtime(monkeypatch, caplog) -> None:
    monkeypatch.setenv(STRICT_ENV, "1")
    with pytest.raises(ValueError, match="not in the catalogue"):
        InvalidRequest("bad", "request.made_up")
    monkeypatch.delenv(STRICT_ENV)
    with caplog.at_level(logging.WARNING, logger="synergos_core.errors"):
        error = FederationError("bad", "federation.made_up")
    assert error.code is ErrorCode.FEDERATION_FAILED  # the class's own code: a failure path never crashes
    assert "federation.made_up" in caplog.text


@pytest.mark.parametrize("cls", [InvalidRequest, NotFound, Conflict, Forbidden, UpstreamError, FederationError])
def test_every_class_builds_with_each_code_of_its_status(cls, monkeypatch) -> None:
    monkeypatch.setenv(STRICT_ENV, "1")
    for member in ErrorCode:
        if member.status == cls.status:
            assert cls("detail", member).code is member


# ---- what a client gets: the REST translator ----------------------------------------------


def _app() -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError(SECRET)

    @app.get("/missing")
    def missing() -> None:
        raise NotFound("run 'r' does not exist", "run.not_found")

    @app.get("/upstream")
    def upstream() -> None:
        raise UpstreamError("participant_1's node is unreachable", "worker.unreachable")

    @app.get("/typed/{n}")
    def typed(n: int) -> None:
        return None

    return app


def _error_of(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["success"] == 0 and body["status"] == status and body["data"] is None
    error = body["error"]
    assert error["code"] == code and error["title"] == ErrorCode(code).public_title
    assert re.fullmatch(r"[0-9a-f]{16}", error["correlation_id"])
    assert response.headers[CORRELATION_HEADER] == error["correlation_id"]
    return error


def test_an_unexpected_exception_is_a_500_with_an_id_and_no_internal_text(caplog) -> None:
    with caplog.at_level(logging.ERROR), TestClient(_app(), raise_server_exceptions=False) as client:
        response = client.get("/boom")
    error = _error_of(response, 500, "internal.error")
    assert SECRET not in response.text and "RuntimeError" not in response.text
    assert error["correlation_id"] in error["detail"]
    # the log has the rest, under the same id
    (record,) = [r for r in caplog.records if error["correlation_id"] in r.getMessage()]
    assert record.exc_info and SECRET in str(record.exc_info[1]) and "/boom" in record.getMessage()


def test_every_error_answer_carries_code_title_detail_and_id(caplog) -> None:
    with caplog.at_level(logging.WARNING), TestClient(_app()) as client:
        assert _error_of(client.get("/missing"), 404, "run.not_found")["detail"] == "run 'r' does not exist"
        upstream = _error_of(client.get("/upstream"), 502, "worker.unreachable")
        assert _error_of(client.get("/typed/x"), 422, "request.invalid")["fields"][0]["path"] == "path.n"
        _error_of(client.get("/nowhere"), 404, "route.not_found")
        not_allowed = client.post("/missing")
        _error_of(not_allowed, 405, "method.not_allowed")
        assert not_allowed.headers["allow"] == "GET"
    # a 5xx ServiceError is logged with its id too
    assert any(upstream["correlation_id"] in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)


def test_a_body_over_the_limit_gets_an_id_too(tmp_path) -> None:
    from synergos_core.settings import TTPSettings
    from synergos_ttp.app import create_app

    settings = TTPSettings(
        insecure=True,
        id="t",
        data_dir=tmp_path,
        outputs_dir=tmp_path / "out",
        mlflow_dir=tmp_path / "mlflow",
        max_body_bytes=64,
    )
    with TestClient(create_app(settings)) as client:
        response = client.post(
            "/ttp/connect/collaborations", content=b"x" * 100, headers={"content-type": "application/json"}
        )
    _error_of(response, 413, "request.too_large")


# ---- what a client gets: the job board, the TTP app, the MQ's failed events ---------------


def test_failure_reason_is_public_text_only(caplog) -> None:
    assert failure_reason(UpstreamError("participant_1's node is unreachable")) == "participant_1's node is unreachable"
    error = RuntimeError(SECRET)
    with caplog.at_level(logging.ERROR):
        reason = failure_reason(error)
    assert SECRET not in reason and "RuntimeError" not in reason
    cid = public_error(error)["correlation_id"]
    assert cid in reason and any(cid in r.getMessage() and r.exc_info for r in caplog.records)


def test_a_job_failing_unexpectedly_shows_no_internal_text_on_the_board() -> None:
    board = JobBoard()
    job = board.start("training", {"collab_id": "c", "project_id": "p"}, rounds=3)
    with pytest.raises(RuntimeError), board.failing(job):
        raise RuntimeError(SECRET)
    (listed,) = board.list(collab_id="c")
    assert listed["state"] == "failed" and SECRET not in json.dumps(listed)
    assert re.search(r"correlation id [0-9a-f]{16}$", listed["detail"])


TABULAR_MODEL = [
    {
        "activation": "sigmoid",
        "is_input": True,
        "l_type": "Linear",
        "structure": {"bias": True, "in_features": 4, "out_features": 1},
    }
]


def _project_to_train(client: TestClient) -> str:
    """A project with one run and two registered participants; returns its train URL."""
    c = "/ttp/connect/collaborations"
    p = f"{c}/c/projects"
    for url, body in [
        (c, {"collab_id": "c"}),
        (p, {"project_id": "p", "action": "classify", "incentives": {}}),
        (f"{p}/p/experiments", {"expt_id": "e", "model": TABULAR_MODEL}),
        (
            f"{p}/p/experiments/e/runs",
            {"run_id": "r", "rounds": 2, "epochs": 1, "criterion": "BCELoss", "lr_scheduler": "none"},
        ),
    ]:
        assert client.post(url, json=body).status_code == 201, client.post(url, json=body).text
    for i in (1, 2):
        assert client.post("/ttp/connect/participants", json={"id": f"u{i}"}).status_code == 201
        node = {"host": f"127.0.0.{i}", "port": 8020, "f_port": 5000}
        url = f"{p}/p/participants/u{i}/registration"
        assert (
            client.post(url, json={"role": "host" if i == 1 else "guest", "n_count": 1, "node_0": node}).status_code
            == 201
        )
        assert client.post(f"{url}/tags", json={"train": [["d", "train"]]}).status_code == 201
    return "/ttp/train/collaborations/c/projects/p/models"


def test_the_ttp_answers_an_internal_failure_with_an_id_and_its_job_board_shows_no_internal_text(
    tmp_path, monkeypatch, caplog
) -> None:
    from synergos_core.settings import TTPSettings
    from synergos_ttp import operations
    from synergos_ttp.app import create_app

    async def train_run(*args, **kwargs):
        raise RuntimeError(SECRET)

    monkeypatch.setattr(operations, "train_run", train_run)
    settings = TTPSettings(
        insecure=True, id="t", data_dir=tmp_path, outputs_dir=tmp_path / "out", mlflow_dir=tmp_path / "mlflow"
    )
    with caplog.at_level(logging.ERROR), TestClient(create_app(settings), raise_server_exceptions=False) as client:
        train = _project_to_train(client)
        response = client.post(train, json={"auto_align": False})
        jobs = client.get("/ttp/status/jobs", params={"collab_id": "c"})
    error = _error_of(response, 500, "internal.error")
    assert SECRET not in response.text
    (job,) = jobs.json()["data"]
    assert job["state"] == "failed" and SECRET not in jobs.text
    assert error["correlation_id"] in job["detail"]  # one failure, one id: the board and the answer agree
    logged = [r for r in caplog.records if error["correlation_id"] in r.getMessage()]
    assert logged and any(r.exc_info and SECRET in str(r.exc_info[1]) for r in logged)


def test_the_ttp_answers_a_broken_store_with_an_id(tmp_path, monkeypatch) -> None:
    from synergos_contract.store import Store
    from synergos_core.settings import TTPSettings
    from synergos_ttp.app import create_app

    def broken(self, *args, **kwargs):
        raise RuntimeError(SECRET)

    monkeypatch.setattr(Store, "list_collaborations", broken)
    settings = TTPSettings(
        insecure=True, id="t", data_dir=tmp_path, outputs_dir=tmp_path / "out", mlflow_dir=tmp_path / "mlflow"
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        response = client.get("/ttp/connect/collaborations")
    _error_of(response, 500, "internal.error")
    assert SECRET not in response.text


def test_a_failed_event_carries_the_public_error_only(caplog) -> None:
    job = {"job_id": "j", "process": "train", "keys": {"run_id": "r"}}
    unexpected = messages.failed_event(job, RuntimeError(SECRET), attempt=3, consumer="ttp")["error"]
    assert unexpected["code"] == "internal.error" and unexpected["correlation_id"] in unexpected["detail"]
    assert SECRET not in json.dumps(unexpected)
    try:  # what the cluster TTP raises for a permanent failure: JobFailed from the ServiceError
        try:
            raise InvalidRequest("run 'r' has no trained model yet; train it first", "model.not_trained")
        except InvalidRequest as exc:
            raise JobFailed(f"{exc.code}: {exc.detail}") from exc
    except JobFailed as wrapped:
        permanent = messages.failed_event(job, wrapped, attempt=1, consumer="ttp")["error"]
    assert permanent["code"] == "model.not_trained" and permanent["title"] == "Model not trained yet"
    assert permanent["detail"] == "run 'r' has no trained model yet; train it first" and permanent["correlation_id"]
