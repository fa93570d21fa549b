"""The kiln web service (FastAPI, server-rendered HTML): `uvicorn --factory web.app:create_app`.

Pages: login, the upload form with recent runs, a run's state (linked to the Prefect UI), the models and
their versions, the devices of the configured RPC trackers (KILN_TRACKERS; also as JSON at /api/devices).
Webhooks: /webhooks/mlflow and /webhooks/huggingface. /healthz answers 200 once Prefect does.
"""

from __future__ import annotations

import logging
from pathlib import Path

from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from kiln import registries
from kiln.artifact.store import ArtifactStore
from kiln.errors import KilnError
from kiln.optimize import candidates as registry
from kiln.optimize.request import OptimizeRequest
from kiln.program import sources
from kiln.program.naming import clean_name, parse_shapes
from web import devices, security, uploads
from web.deliveries import Deliveries
from web.prefect_runs import PrefectUnavailable, Runs
from web.settings import WebSettings

log = logging.getLogger("kiln.web")
FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def create_app(settings: WebSettings | None = None) -> FastAPI:
    settings = settings or WebSettings.of()
    app = FastAPI(title="kiln", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(uploads.BodyLimit, max_bytes=int(settings.max_upload_mb * 2**20))
    runs = Runs(settings.prefect_api, settings.prefect_ui, settings.deployment)
    deliveries = Deliveries()
    templates = Jinja2Templates(directory=Path(__file__).parent / "templates")
    token = settings.token

    def page(request: Request, name: str, status: int = 200, **context) -> HTMLResponse:
        sid = security.session_id(request, token)
        context.setdefault("csrf", security.csrf_token(token, sid) if sid else "")
        return templates.TemplateResponse(request, name, {"ui": settings.prefect_ui, **context}, status_code=status)

    def authorized(request: Request) -> bool:
        return security.bearer_ok(request, token) or security.session_id(request, token) is not None

    def login_required(request: Request, message: str = "sign in with the kiln web token") -> HTMLResponse:
        return page(request, "login.html", 401, message=message)

    def unavailable(request: Request, exc: PrefectUnavailable) -> HTMLResponse:
        return page(request, "error.html", 503, title="Prefect is not reachable",
                    message=f"{exc} - nothing was started; submit again once it is back.")

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        ok = await runs.healthy()
        return JSONResponse({"status": "ok" if ok else "unavailable", "prefect": settings.prefect_api},
                            status_code=200 if ok else 503)

    @app.get("/login", response_class=HTMLResponse)
    async def login_page(request: Request) -> HTMLResponse:
        return page(request, "login.html", message="")

    @app.post("/login")
    async def login(request: Request, token_given: str = Form("", alias="token")) -> Response:
        import hmac

        if not hmac.compare_digest(token_given.encode(), token.encode()):
            return login_required(request, "wrong token")
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(security.COOKIE, security.new_session(token), httponly=True, samesite="strict",
                            max_age=12 * 3600)
        return response

    @app.post("/logout")
    async def logout() -> Response:
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(security.COOKIE)
        return response

    @app.get("/", response_class=HTMLResponse)
    async def index(request: Request) -> HTMLResponse:
        if not authorized(request):
            return login_required(request)
        try:
            recent = await runs.recent()
            problem = None
        except PrefectUnavailable as exc:
            recent, problem = [], str(exc)
        return page(request, "index.html", recent=recent, problem=problem, link=runs.ui_link,
                    candidates=registry.all_names(), defaults=registry.DEFAULT,
                    max_mb=settings.max_upload_mb)

    @app.post("/runs")
    async def submit(request: Request, csrf: str = Form(""), archive: UploadFile | None = File(None),
                     model: UploadFile | None = File(None), files: list[UploadFile] = File(default_factory=list),
                     trials: str = Form(""), target: str = Form("host"), candidates: list[str] = Form([]),
                     shapes: str = Form(""), upload: str = Form(""), image: str = Form(""),
                     data: UploadFile | None = File(None), ranges: str = Form(""), name: str = Form(""),
                     tune_time: str = Form(""), dims: str = Form(""), device: str = Form("")) -> Response:
        if not authorized(request):
            return login_required(request)
        sid = security.session_id(request, token)
        if not security.bearer_ok(request, token) and not security.csrf_ok(token, sid, csrf):
            return page(request, "error.html", 403, title="Forbidden", message="the form's CSRF token is missing "
                        "or stale: reload the form and submit again")
        try:  # every field checked before the upload is unpacked, so a typo fails in the browser
            form = _form_fields(trials, target, candidates, shapes, upload, image, ranges, name, tune_time, dims,
                                device)
            OptimizeRequest.of(program="-", **form)
        except KilnError as exc:
            return page(request, "error.html", 400, title="Cannot start this run", message=exc.render())
        area = uploads.new_area(settings.uploads)
        try:
            program = await uploads.program_from_upload(area, archive, model, files)
            if program.suffix.lower() == ".onnx" and not form.get("name"):  # not the upload folder's name
                form["name"] = clean_name(program.stem)
            if data is not None and data.filename:
                form["data"] = str(await uploads.data_from_upload(area, data, program))
            elif form.get("ranges"):
                uploads.check_bare(program, "ranges")
            run = OptimizeRequest.of(program=str(program), **form)
        except KilnError as exc:
            uploads.discard(area)
            return page(request, "error.html", 400, title="Cannot use this upload", message=exc.render())
        try:
            flow_run = await runs.create(run.parameters(), tags=["web"])
        except PrefectUnavailable as exc:
            uploads.discard(area)
            return unavailable(request, exc)
        log.info("web: flow run %s for %s", flow_run.id, run.program)
        if "application/json" in request.headers.get("accept", ""):
            return JSONResponse({"flow_run_id": str(flow_run.id), "ui": runs.ui_link(str(flow_run.id))}, 201)
        return RedirectResponse(f"/runs/{flow_run.id}", status_code=303)

    @app.get("/runs/{flow_run_id}", response_class=HTMLResponse)
    async def run_page(request: Request, flow_run_id: str) -> HTMLResponse:
        if not authorized(request):
            return login_required(request)
        try:
            flow_run = await runs.read(flow_run_id)
        except PrefectUnavailable as exc:
            return unavailable(request, exc)
        except Exception:
            return page(request, "error.html", 404, title="No such run", message=flow_run_id)
        state = flow_run.state.type.value if flow_run.state else "PENDING"
        return page(request, "run.html", run=flow_run, state=state, final=state in FINAL,
                    state_name=flow_run.state.name if flow_run.state else "Pending",
                    message=flow_run.state.message if flow_run.state else "", link=runs.ui_link(flow_run_id))

    @app.get("/models", response_class=HTMLResponse)
    async def models(request: Request) -> HTMLResponse:
        if not authorized(request):
            return login_required(request)
        by_name: dict[str, list] = {}
        for _, manifest in ArtifactStore(settings.store).manifests():
            by_name.setdefault(manifest.name, []).append(manifest)
        return page(request, "models.html", models=by_name, store=settings.store)

    @app.get("/devices", response_class=HTMLResponse)
    async def devices_page(request: Request) -> HTMLResponse:
        if not authorized(request):
            return login_required(request)
        return page(request, "devices.html", trackers=await devices.listing(settings.kiln.tracker_list))

    @app.get("/api/devices")
    async def devices_json(request: Request) -> JSONResponse:
        if not authorized(request):
            return JSONResponse({"error": "sign in with the kiln web token"}, 401)
        return JSONResponse({"trackers": await devices.listing(settings.kiln.tracker_list)})

    @app.post("/webhooks/{registry_name}")
    async def webhook(registry_name: str, request: Request) -> JSONResponse:
        """A model registry's delivery (kiln.registries): verified and read by that registry, then the run for
        its key is started, or found."""
        registry = registries.get(registry_name)
        if registry is None:
            return JSONResponse({"status": "rejected", "detail": f"no registry {registry_name!r} (known: "
                                                                 f"{', '.join(registries.REGISTRIES)})"}, 404)
        try:
            trigger = registry.delivery({k.lower(): v for k, v in request.headers.items()}, await request.body(),
                                        settings.kiln)
        except registries.Rejected as exc:
            return JSONResponse({"status": "rejected", "detail": exc.message}, exc.status)
        if trigger is None:
            return JSONResponse({"status": "ignored", "reason": "not an event kiln acts on"}, 200)
        if not sources.is_location(trigger.source):
            return JSONResponse({"status": "rejected", "detail": (
                f"{registry.name}: the model version's source {trigger.source!r} is not a local path or a URI kiln "
                f"resolves ({', '.join(sources.schemes())}) of a program folder, archive or .onnx file")}, 422)
        accepted = {"status": "accepted", "key": trigger.key}
        if (known := deliveries.known(trigger.key)) is not None:  # a retried delivery: no Prefect call
            return JSONResponse({**accepted, "flow_run_id": known}, 202)
        report_to = {"registry": registry.name, "name": trigger.model, "version": trigger.version} \
            if registry.tags_versions else None
        try:
            # a registered model's open axes: ranges from its program's data, else defaults (batch 1, 1..512)
            run = OptimizeRequest.of(**{"default_dims": True, **settings.kiln.webhook_parameters},
                                     program=trigger.source,
                                     name=clean_name(trigger.model), report_to=report_to)
        except KilnError as exc:  # KILN_WEBHOOK_PARAMETERS was checked at start-up; the source may be wrong
            return JSONResponse({"status": "rejected", "detail": exc.render()}, 422)

        async def create() -> str:
            flow_run = await runs.create(run.parameters(), idempotency_key=trigger.key,
                                         tags=["webhook", trigger.registry],
                                         name=clean_name(f"{trigger.registry}-{trigger.model}-{trigger.version}"))
            return str(flow_run.id)

        try:
            flow_run_id, created = await deliveries.run_for(trigger.key, create)
        except PrefectUnavailable as exc:
            return JSONResponse({"status": "unavailable", "detail": f"{exc}; retry later"}, 503)
        if created:
            log.info("webhook %s: flow run %s (%s)", trigger.key, flow_run_id, trigger.event)
        return JSONResponse({**accepted, "flow_run_id": flow_run_id}, 202)

    return app


def _form_fields(trials: str, target: str, candidates: list[str], shapes: str, upload: str, image: str,
                 ranges: str = "", name: str = "", tune_time: str = "", dims: str = "", device: str = "") -> dict:
    """The form's fields as OptimizeRequest fields (which checks them); the baseline is always measured."""
    out: dict = {"targets": target}
    if device.strip():  # the target is the device's own CPU (a target other than the form's default is refused)
        out["device"] = device.strip()
    if str(trials).strip():
        out["trials"] = str(trials).strip()
    if candidates:
        out["candidates"] = list(dict.fromkeys([registry.BASELINE, *candidates]))
    parsed = parse_shapes([s.strip() for s in shapes.replace(",", "\n").splitlines() if s.strip()])
    if parsed:
        out["shapes"] = parsed
    ranged = [d.strip() for d in dims.replace(",", "\n").splitlines() if d.strip()]
    if ranged:
        out["dims"] = ranged  # NAME=LOW..HIGH: the request reads them
    out.update({k: v.strip() for k, v in (("upload", upload), ("image", image), ("name", name)) if v.strip()})
    if ranges.strip():
        out["ranges"] = ranges
    if tune_time.strip():
        out["tune_time"] = tune_time.strip()
    return out
