"""The NEAT Studio web app (Gradio 6): `build_app(studio, auth=None)` and `launch(...)` (`python -m neat_studio serve`).

Tabs are modules of this package, each with `build(ctx) -> dict[str, component]` and NO business logic: they call
`ctx.studio` (neat_studio.studio.Studio). To add a tab, add its module to `TABS`.
"""
from __future__ import annotations

import functools
import json
import logging
import os
from pathlib import Path

import gradio as gr

from . import admin, annotate, compare, data, prompts, studio_tab, train
from .auth import LoginGuard, UserDB, load_auth
from .common import ANNOTATOR_COOKIE, Ctx, browser_name, error_box, esc, ok_box, valid_annotator_name

log = logging.getLogger(__name__)

# (tab label, module, elem_id). Order = order of the tabs.
TABS = [
    ("Prompts", prompts, "tab-prompts"),
    ("Negative Prompt Studio", studio_tab, "tab-studio"),
    ("Annotate", annotate, "tab-annotate"),
    ("Data", data, "tab-data"),
    ("Train", train, "tab-train"),
    ("Compare", compare, "tab-compare"),
    ("Admin", admin, "tab-admin"),
]

CSS_PATH = Path(__file__).with_name("studio.css")
# uploads (imports, evaluation sets): at most this size each (NEAT_STUDIO_MAX_UPLOAD_MB), and gradio's upload cache
# is cleaned: every hour, files older than a day go
MAX_UPLOAD_MB = int(os.environ.get("NEAT_STUDIO_MAX_UPLOAD_MB", "256"))
UPLOAD_CACHE_CLEAN = (3600, 86400)


class StudioBlocks(gr.Blocks):
    """gr.Blocks whose `launch()` defaults to the studio's auth, theme, CSS and safe server settings, so
    `build_app(...).launch(prevent_thread_lock=True, server_port=p)` in a test behaves like `serve`."""

    neat_auth: UserDB | None = None

    def launch(self, *args, **kwargs):
        if self.neat_auth is not None:
            kwargs.setdefault("auth", self.neat_auth.check)
            kwargs.setdefault("auth_message", "NEAT Studio: sign in with your studio account.")
        kwargs.setdefault("css_paths", [CSS_PATH])
        kwargs.setdefault("theme", gr.themes.Soft(primary_hue="indigo", neutral_hue="slate"))
        kwargs.setdefault("ssr_mode", False)
        kwargs.setdefault("footer_links", [])
        kwargs.setdefault("show_error", True)
        kwargs.setdefault("mcp_server", False)
        kwargs.setdefault("max_file_size", f"{MAX_UPLOAD_MB}mb")
        if self.neat_auth is not None:  # client addresses for the login limit; sessions that expire
            from starlette.middleware import Middleware

            app_kwargs = dict(kwargs.pop("app_kwargs", None) or {})
            app_kwargs["middleware"] = [*app_kwargs.get("middleware", []), Middleware(LoginGuard, auth=self.neat_auth)]
            kwargs["app_kwargs"] = app_kwargs
        return super().launch(*args, **kwargs)


def _unless_pending(ctx: Ctx, fn, n_out: int):
    """A page-load handler that does nothing (no error toast) for an account that must first change its one-time
    password: the page shows only the password form then, and reloads when it is changed."""
    @functools.wraps(fn)
    def run(*args, **kwargs):
        req = kwargs.get("request") or next((a for a in args if isinstance(a, gr.Request)), None)
        if ctx.auth is not None and ctx.auth.must_change(getattr(req, "username", None)):
            return gr.update() if n_out == 1 else [gr.update()] * n_out
        return fn(*args, **kwargs)
    return run


def build_app(studio, auth: UserDB | None = None) -> gr.Blocks:
    """The whole UI on top of one `Studio`. `auth`: a UserDB (login required) or None (single local user)."""
    ctx = Ctx(studio=studio, auth=auth)
    with StudioBlocks(title="NEAT Studio", analytics_enabled=False, fill_width=True,
                      delete_cache=UPLOAD_CACHE_CLEAN) as demo:
        demo.neat_auth = auth
        with gr.Row(elem_id="neat-header", equal_height=True):
            gr.HTML("<div class='neat-brand'><b>NEAT Studio</b> <span>negative-prompt-driven alignment"
                    "</span></div>", js_on_load=None, elem_id="neat-brand")
            who = gr.HTML("", js_on_load=None, elem_id="neat-who")
        # without login: each browser annotates under a name of its own, asked once and kept in a cookie
        # with login: an account with a one-time password chooses its own before anything else
        with gr.Row(visible=False, elem_id="neat-password-row") as pw_row:
            pw_old = gr.Textbox(label="One-time (current) password", type="password", elem_id="neat-pw-old")
            pw_new = gr.Textbox(label="New password (10+ characters)", type="password", elem_id="neat-pw-new")
            pw_btn = gr.Button("Set my password", size="sm", variant="primary", elem_id="neat-pw-save")
        pw_msg = gr.HTML("", js_on_load=None, elem_id="neat-pw-msg")
        with gr.Row(visible=False, elem_id="neat-name-row") as name_row:
            name_box = gr.Textbox(label="Who is annotating? Your name is kept in this browser, so your rankings "
                                  "are yours (without it every browser is 'local').", placeholder="your name",
                                  elem_id="neat-name", scale=4)
            name_btn = gr.Button("Use this name", size="sm", elem_id="neat-name-save", scale=1)
        shows = []
        with gr.Tabs(elem_id="neat-tabs") as tabs:
            for label, mod, elem_id in TABS:
                module = mod.__name__.rsplit(".", 1)[-1]
                with gr.Tab(label, id=module, elem_id=elem_id) as tab:
                    comps = mod.build(ctx) or {}
                ctx.components.update({f"{module}.{k}": v for k, v in comps.items() if not k.startswith("_")})
                if "_on_show" in comps:
                    spec = comps["_on_show"]
                    fn, inputs, outputs = spec if len(spec) == 3 else (spec[0], None, spec[1])
                    tab.select(fn, inputs=inputs, outputs=outputs, show_progress="hidden")
                    if comps.get("_load_with_page", True):  # Annotate: only when opened (it leases a prompt)
                        shows.append((fn, inputs, outputs))
                if "_restore" in comps:  # once per page: the user's remembered settings (Train)
                    shows.append(comps["_restore"])
        ctx.components["tabs"] = tabs

        def whoami(request: gr.Request):
            if ctx.auth is None:
                user, role, pending = ctx.user(request), "admin", False
            else:
                user = ctx.signed_in(request)
                role, pending = ctx.auth.role(user) or "annotator", ctx.auth.must_change(user)
            logout = " · <a href='logout'>sign out</a>" if ctx.auth is not None else ""
            admin = role == "admin" and not pending
            ask = ctx.auth is None and browser_name(request) is None
            return [f"<div class='neat-who'>{esc(user)} <span class='neat-role'>{esc(role)}</span>{logout}</div>",
                    gr.update(visible=ask), gr.update(visible=pending), gr.update(visible=not pending),
                    "" if not pending else ok_box("Welcome. Choose your own password to start: the one you were "
                                                  "given works only once.")] + \
                [gr.update(visible=admin) for _ in ctx.admin_only]

        demo.load(whoami, inputs=None, outputs=[who, name_row, pw_row, tabs, pw_msg, *ctx.admin_only],
                  show_progress="hidden")

        def change_password(old, new, request: gr.Request):
            user = ctx.signed_in(request)
            try:
                ctx.auth.change_password(user, old, new)
            except ValueError as e:
                return error_box(f"Password not changed: {e}."), gr.update(), gr.update()
            return ok_box("Password changed. Welcome!"), gr.update(visible=False), gr.update(visible=True)

        if ctx.auth is not None and hasattr(ctx.auth, "change_password"):
            pw_btn.click(change_password, [pw_old, pw_new], [pw_msg, pw_row, tabs]).then(
                None, pw_msg, None,  # changed: reload, so every tab loads its data for the signed-in account
                js="(m) => { if (m && m.includes('Password changed')) setTimeout(() => location.reload(), 800); }")

        def check_name(name):
            try:
                return valid_annotator_name(name)
            except ValueError as e:
                raise gr.Error(f"Name not used: {e}.") from None

        name_btn.click(check_name, name_box, name_box).success(
            None, name_box, None,
            js=f"(n) => {{ document.cookie = '{ANNOTATOR_COOKIE}=' + encodeURIComponent(n) + "
               "'; path=/; max-age=31536000; SameSite=Lax'; location.reload(); }")

        def backup(out: str, parquet: bool, request: gr.Request) -> str:
            """API only (`python -m neat_studio backup` while the app owns the database): admins only."""
            if ctx.role(request) != "admin":
                raise gr.Error("Only admins can make backups.")
            try:  # JSON text: gradio would take a dict with a "path" key for a file to serve
                return json.dumps(studio.backup_in_workspace(out, parquet, actor=ctx.user(request)))
            except ValueError as e:
                raise gr.Error(str(e)) from e

        gr.api(backup, api_name="backup")
        for fn, inputs, outputs in shows:
            demo.load(_unless_pending(ctx, fn, len(outputs)), inputs=inputs, outputs=outputs, show_progress="hidden")
    demo.neat_ctx = ctx
    return demo


def launch(workspace=None, db=None, model: str = "default", host: str = "127.0.0.1", port: int = 7860,
           auth_file=None, share: bool = False, block: bool = True, dtype: str = "auto", accounts: bool = False):
    """Start the studio (what `python -m neat_studio serve` runs). `model` "default" (serve's default) starts with
    the generator chosen last with "Use as generator" in this workspace, when there is one; any other model
    is used as given."""
    from ..config import Workspace
    from ..studio import Studio

    seed = load_auth(auth_file)
    studio = Studio(Workspace.from_env(workspace), db_path=db,
                    model_spec=None if model in (None, "", "default") else model, gen_dtype=dtype)
    auth = None
    if accounts or seed is not None or studio.accounts().count():
        # accounts live in the store; a users file / NEAT_STUDIO_USERS adds the users the store does not have
        auth = studio.accounts()
        if seed is not None:
            auth.seed(seed)
        first = auth.ensure_admin()
        if first:
            print(f"NEAT Studio: created the first account: user 'admin', one-time password {first} "
                  "(shown once; choose your own at first sign-in)", flush=True)
    try:
        studio.seed_if_empty(actor="system")
    except Exception as e:  # noqa: BLE001 - seeding is a convenience; the app still starts empty
        log.warning("seeding the workspace failed: %s", e)
    restored = " (chosen with 'Use as generator')" if studio.generator_restored else ""
    print(f"NEAT Studio: loading the generation model {studio.model_spec!r}{restored} ...", flush=True)
    try:
        lm = studio.policy()  # the studio answers with its model loaded (first start converts the GGUF once)
    except Exception as e:  # noqa: BLE001 - a remembered generator that no longer loads must not block the app
        if not studio.generator_restored:
            raise
        log.warning("the remembered generator %s does not load (%s); starting with the default model",
                    studio.model_spec, e)
        studio.model_spec, studio.generator_restored = "default", False
        lm = studio.policy()
    print(f"NEAT Studio: model {lm.model_id} loaded ({str(studio.gen_dtype).removeprefix('torch.')})", flush=True)
    demo = build_app(studio, auth=auth)
    studio.start_background_embedding()  # new prompts/responses get vectors without blocking anyone
    print(f"NEAT Studio: workspace {studio.workspace.root}, model {studio.model_spec}, "
          f"{'login required (' + str(len(auth.users)) + ' accounts)' if auth else 'no login (each browser names itself)'}")
    # Saves and page loads run concurrently (the store serialises writes); model work is limited per handler.
    demo.queue(default_concurrency_limit=16)
    try:
        return demo.launch(server_name=host, server_port=port, share=share, prevent_thread_lock=not block)
    finally:
        if block:
            studio.close()
